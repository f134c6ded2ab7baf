"""The workspace: each job's files, between the library and its users.

The web app, the runners, the CLI, the report and the DICOM listener reach a job's
files only through this package, so the layout and the rules about it (names, atomic
writes, registries of models and segmentations, upload state) are written once.

Modules: :mod:`.paths` (:class:`JobPaths`, every file name), :mod:`.ids` (new ids),
:mod:`.models` (model versions), :mod:`.segmentations` (segmentations, meshes, stats,
what exists on disk), :mod:`.uploads` (resumable chunked uploads).
"""

from __future__ import annotations

from ml4paleo.workspace.ids import new_id
from ml4paleo.workspace.models import (
    ModelNotFound,
    ModelRegistry,
    RecordUpdate,
    choose_model,
    record_model,
)
from ml4paleo.workspace.paths import (
    ARTIFACT_NAME_RE,
    ID_RE,
    JobPaths,
    SegmentationPaths,
    check_id,
    check_name,
    label_store_classes_file,
    model_meta_file,
)
from ml4paleo.workspace.segmentations import (
    SegmentationNotFound,
    SegmentationRegistry,
    job_outputs,
    record_meshes,
    record_segmentation,
)

__all__ = [
    "ARTIFACT_NAME_RE",
    "ID_RE",
    "JobPaths",
    "ModelNotFound",
    "ModelRegistry",
    "RecordUpdate",
    "SegmentationNotFound",
    "SegmentationPaths",
    "SegmentationRegistry",
    "check_id",
    "check_name",
    "choose_model",
    "job_outputs",
    "label_store_classes_file",
    "model_meta_file",
    "new_id",
    "record_meshes",
    "record_model",
    "record_segmentation",
]
