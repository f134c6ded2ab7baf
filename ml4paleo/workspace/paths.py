"""Where each of a job's files lives: the one place that names them.

A job folder (``data/jobs/<job_id>/``) holds its record, upload, converted image,
annotations, model versions, segmentations (labels, meshes, statistics) and cached
exports. Everything that reads or writes those files asks a :class:`JobPaths` for the
name instead of joining strings, so the layout can change in one place.

Names given by users or clients (model, segmentation and export ids) are checked by
:func:`check_name` before they are joined, so no name can leave the job folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARTIFACT_NAME_RE", "ID_RE", "JobPaths", "SegmentationPaths", "check_id",
           "check_name", "label_store_classes_file", "model_meta_file", "without_server_paths"]

#: The NGFF group of an image holding its label images (``ml4paleo.formats.LABELS_GROUP``)
IMAGE_LABELS_GROUP = "labels"

#: Names of models, segmentations and export files: letters, digits, ``_ . -``, not
#: starting with a dot or dash, at most 128 characters (so never ``..`` or a path).
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


#: Model and segmentation ids: like artifact names, but a leading ``-`` is allowed (ids of
#: older versions were URL-safe base64 that could start with one; their folders still open).
ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` when it is a safe model / segmentation id, else raise ``ValueError``.

    Examples
    --------
    >>> check_id("-abc")
    '-abc'
    >>> check_id("a/b")
    Traceback (most recent call last):
    ...
    ValueError: invalid id 'a/b'
    """
    if not isinstance(value, str) or not ID_RE.match(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}")
    return value


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` when it is a safe artifact name, else raise ``ValueError``.

    Examples
    --------
    >>> check_name("m1")
    'm1'
    >>> check_name("../x")
    Traceback (most recent call last):
    ...
    ValueError: invalid name '../x'
    """
    if not isinstance(value, str) or not ARTIFACT_NAME_RE.match(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}")
    return value


def label_store_classes_file(folder: str | os.PathLike) -> Path:
    """The class list (names and colours) of a label store folder (a job's annotations,
    or any :class:`ml4paleo.segmentation.LabelStore` folder)."""
    from ml4paleo.segmentation.labels import CLASSES_NAME  # the label store's format

    return Path(folder) / CLASSES_NAME


def model_meta_file(folder: str | os.PathLike) -> Path:
    """The ``meta.json`` of a model folder (anywhere: a job's version or a copy)."""
    from ml4paleo.segmentation.model import META_FILE  # the model folder's format

    return Path(folder) / META_FILE


@dataclass(frozen=True)
class SegmentationPaths:
    """The file names of one segmentation folder (inside a job, or a copy elsewhere).

    Examples
    --------
    >>> SegmentationPaths("/x/s1").labels.as_posix()
    '/x/s1/labels.ome.zarr'
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def meta(self) -> Path:
        """``segmentation.json``: model, classes, settings and timings."""
        return self.root / "segmentation.json"

    @property
    def labels(self) -> Path:
        """The OME-Zarr label image of a segmentation folder copied elsewhere, or of a job of
        an older version (a job's segmentations are labels of its image now:
        :meth:`JobPaths.labels`)."""
        return self.root / "labels.ome.zarr"

    @property
    def probabilities(self) -> Path:
        """Class probabilities (c, z, y, x; uint8) written beside the labels, when asked."""
        return self.root / "labels.ome.zarr_probabilities"

    @property
    def meshes(self) -> Path:
        """Folder of the meshes (one file per label and format)."""
        return self.root / "meshes"

    @property
    def stats(self) -> Path:
        """Per-label statistics CSV."""
        return self.root / "stats.csv"

    @property
    def mesh_stats(self) -> Path:
        """Statistics inside the meshes folder (older layout; read as a fallback)."""
        return self.meshes / "stats.csv"

    @property
    def morphometry(self) -> Path:
        """Folder of the segmentation's morphometry (replaced whole by each run)."""
        return self.root / "morphometry"

    @property
    def morphometry_summary(self) -> Path:
        """``morphometry.json``: every measure per class, objects, profiles, histograms."""
        return self.morphometry / "morphometry.json"

    @property
    def morphometry_table(self) -> Path:
        """``morphometry.csv``: one row per class (BV/TV, thickness, Conn.D, DA, ...)."""
        return self.morphometry / "morphometry.csv"

    @property
    def morphometry_objects(self) -> Path:
        """``objects.csv``: one row per object (volume, surface, centroid, axes, class name)."""
        return self.morphometry / "objects.csv"

    @property
    def thickness_map(self) -> Path:
        """``thickness.ome.zarr``: local thickness of every voxel (of its own class)."""
        return self.morphometry / "thickness.ome.zarr"

    @property
    def thickness_meshes(self) -> Path:
        """Folder of the meshes coloured by local thickness (``<label>.ply|glb``)."""
        return self.morphometry / "meshes"

    @property
    def class_files(self) -> tuple[Path, Path]:
        """A class list (``classes.json``) or model metadata (``meta.json``) copied beside
        the segmentation by older versions."""
        return label_store_classes_file(self.root), model_meta_file(self.root)


@dataclass(frozen=True)
class JobPaths:
    """The file names of one job folder.

    Parameters
    ----------
    root : path
        The job's folder, ``<data>/jobs/<job_id>``.

    Examples
    --------
    >>> p = JobPaths("/data/jobs/abc")
    >>> p.image.name
    'image.ome.zarr'
    >>> p.labels("s1").relative_to(p.root).as_posix()
    'image.ome.zarr/labels/s1'
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # -- the record -----------------------------------------------------------------------
    @property
    def job_id(self) -> str:
        return self.root.name

    @property
    def record(self) -> Path:
        """``job.json``: the job record (written only by :mod:`ml4paleo.jobs.store`)."""
        return self.root / "job.json"

    @property
    def lock(self) -> Path:
        """The per-job lock file."""
        return self.root / ".lock"

    # -- upload ---------------------------------------------------------------------------
    @property
    def upload(self) -> Path:
        """Raw uploaded files, as the client named them."""
        return self.root / "upload"

    @property
    def upload_state(self) -> Path:
        """Received byte ranges per uploaded file (resumable uploads)."""
        return self.root / ".uploads"

    @property
    def upload_lock(self) -> Path:
        return self.root / ".upload.lock"

    @property
    def upload_manifest(self) -> Path:
        """What the client said it will upload (paths, sizes, modification times), so an
        upload left unfinished can be listed and resumed from another page."""
        return self.root / "upload-manifest.json"

    def upload_file(self, rel: str) -> Path:
        """Where the uploaded file ``rel`` (a sanitised relative path, ``a/b.tif``) goes."""
        return self.upload.joinpath(*rel.split("/"))

    def upload_state_file(self, rel: str) -> Path:
        """The received-ranges record of uploaded file ``rel`` (named by a hash of it)."""
        digest = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:32]
        return self.upload_state / f"{digest}.json"

    # -- image ----------------------------------------------------------------------------
    @property
    def image(self) -> Path:
        """The converted OME-Zarr image (+ pyramid)."""
        return self.root / "image.ome.zarr"

    # -- annotations ----------------------------------------------------------------------
    @property
    def annotations(self) -> Path:
        """The label store folder (see :class:`ml4paleo.segmentation.LabelStore`)."""
        return self.root / "annotations"

    @property
    def classes(self) -> Path:
        """Class names and colours of the annotations."""
        return label_store_classes_file(self.annotations)

    # -- models ---------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, model_id: str) -> Path:
        """Folder of model version ``model_id`` (model file + ``meta.json``)."""
        return self.models / check_id(model_id, "model id")

    def model_meta(self, model_id: str) -> Path:
        return model_meta_file(self.model(model_id))

    # -- segmentations --------------------------------------------------------------------
    @property
    def segmentations(self) -> Path:
        return self.root / "segmentations"

    def segmentation(self, seg_id: str) -> Path:
        """Folder of segmentation ``seg_id``."""
        return self.segmentations / check_id(seg_id, "segmentation id")

    def segmentation_files(self, seg_id: str) -> SegmentationPaths:
        """The :class:`SegmentationPaths` of segmentation ``seg_id``."""
        return SegmentationPaths(self.segmentation(seg_id))

    def segmentation_meta(self, seg_id: str) -> Path:
        """``segmentation.json``: model, classes, settings and timings of a segmentation."""
        return self.segmentation_files(seg_id).meta

    def labels(self, seg_id: str) -> Path:
        """The segmentation's OME-Zarr label image: an NGFF label of the job's image.

        ``image.ome.zarr/labels/<seg_id>`` (listed in ``image.ome.zarr/labels/.zattrs``, so
        NGFF readers open the scan with its segmentations); a segmentation made by an
        older version, ``segmentations/<seg_id>/labels.ome.zarr``, is found where it is.
        """
        legacy = self.segmentation_files(seg_id).labels
        if legacy.exists():
            return legacy
        return self.image_labels(seg_id)

    def image_labels(self, seg_id: str) -> Path:
        """Where a segmentation's label image goes inside the job's image (NGFF ``labels/``)."""
        return self.image / IMAGE_LABELS_GROUP / check_id(seg_id, "segmentation id")

    def probabilities(self, seg_id: str) -> Path:
        """Class probabilities (c, z, y, x; uint8) written beside the labels, when asked."""
        return self.segmentation_files(seg_id).probabilities

    def meshes(self, seg_id: str) -> Path:
        """Folder of the segmentation's meshes (one file per label and format)."""
        return self.segmentation_files(seg_id).meshes

    def stats(self, seg_id: str) -> Path:
        """Per-label statistics CSV."""
        return self.segmentation_files(seg_id).stats

    def mesh_stats(self, seg_id: str) -> Path:
        """Statistics written inside the meshes folder (older layout; read as a fallback)."""
        return self.segmentation_files(seg_id).mesh_stats

    def morphometry(self, seg_id: str) -> Path:
        """Folder of the segmentation's morphometry; its files are named by
        :meth:`segmentation_files` (``morphometry_summary``, ``morphometry_table``,
        ``morphometry_objects``, ``thickness_map``)."""
        return self.segmentation_files(seg_id).morphometry

    def segmentation_class_files(self, seg_id: str) -> tuple[Path, Path]:
        """A class list or model metadata copied beside a segmentation by older versions;
        read as fallbacks for its class names."""
        return self.segmentation_files(seg_id).class_files

    # -- temp files -----------------------------------------------------------------------
    def temp_homes(self, names: Iterable[str] | None = None) -> list[Path]:
        """Every folder where a writer of this job puts temp files beside what it writes
        (record, image, staging; upload state; exports; models; each segmentation, the
        image's labels group and the annotations) that exists: what a sweep after a crash looks through (not
        recursively: big stores are never walked).

        ``names``: the job folder's listing when the caller has it (saves a listing).
        """
        try:
            listed = set(os.listdir(self.root)) if names is None else set(names)
        except OSError:
            return []
        homes = [self.root]
        for folder in (self.upload_state, self.exports, self.models, self.segmentations,
                       self.annotations, self.image):
            if folder.name in listed:
                homes.append(folder)
        if self.image.name in listed and (self.image / IMAGE_LABELS_GROUP).is_dir():
            homes.append(self.image / IMAGE_LABELS_GROUP)  # the segmentations' listing
        for parent in (self.segmentations, self.annotations):
            if parent.name not in listed:
                continue
            try:
                with os.scandir(parent) as it:
                    homes += [Path(e.path) for e in it
                              if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        return homes

    # -- exports --------------------------------------------------------------------------
    @property
    def exports(self) -> Path:
        """Cached export files (zips, NIfTI, previews, reports), written atomically."""
        return self.root / "exports"

    def export(self, name: str) -> Path:
        return self.exports / check_name(name, "export name")

    def image_export(self, kind: str, ext: str) -> Path:
        """Cached download of the converted image as ``kind`` (``image-<kind>.<ext>``)."""
        return self.export(f"image-{kind}.{ext}")

    def segmentation_export(self, seg_id: str, kind: str, ext: str) -> Path:
        """Cached download of a segmentation as ``kind``."""
        return self.export(f"segmentation-{check_id(seg_id, 'segmentation id')}-{kind}.{ext}")

    def meshes_export(self, seg_id: str) -> Path:
        """Cached zip of a segmentation's meshes."""
        return self.export(f"meshes-{check_id(seg_id, 'segmentation id')}.zip")

    @property
    def image_preview(self) -> Path:
        """Small NIfTI copy of the image for browser volume viewers."""
        return self.export("preview-image.nii.gz")

    def segmentation_preview(self, seg_id: str) -> Path:
        """Small NIfTI copy of a segmentation."""
        return self.export(f"preview-segmentation-{check_id(seg_id, 'segmentation id')}.nii.gz")

    def report(self, seg_id: str, fmt: str) -> Path:
        """Cached quantification report (``html`` / ``pdf``) of a segmentation."""
        return self.export(f"report-{check_id(seg_id, 'segmentation id')}.{fmt}")


def without_server_paths(text: str, data_dir: str | os.PathLike) -> str:
    """``text`` with the data folder's absolute paths made relative: a path inside a job
    folder becomes relative to the job (``upload/scan.zip``), any other path under the
    data folder relative to it, so messages shown to users name no server folders.

    Examples
    --------
    >>> without_server_paths("/srv/d/jobs/AbCdEfGhIjKlMnOpQrStUv/upload/a.png: bad", "/srv/d")
    'upload/a.png: bad'
    >>> without_server_paths("cannot read /srv/d/jobs/AbCdEfGhIjKlMnOpQrStUv", "/srv/d")
    'cannot read the job folder'
    """
    text = str(text)
    roots = {str(Path(data_dir))}
    try:
        roots.add(str(Path(data_dir).resolve()))
    except OSError:
        pass
    for root in sorted(roots, key=len, reverse=True):
        if not root or root == "/":
            continue
        base = re.escape(root.rstrip("/"))
        text = re.sub(base + r"/jobs/[A-Za-z0-9_-]+/", "", text)
        text = re.sub(base + r"/jobs/[A-Za-z0-9_-]+\b", "the job folder", text)
        text = re.sub(base + r"/", "", text)
        text = re.sub(base + r"\b", "the data folder", text)
    return text
