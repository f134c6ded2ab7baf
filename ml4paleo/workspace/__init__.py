"""The workspace: each job's files, between the library and its users.

The web app, the runners, the CLI, the report and the DICOM listener reach a job's
files only through this package, so the layout and the rules about it (names, atomic
writes, registries of models and segmentations) are written once.
"""

from __future__ import annotations

from ml4paleo.workspace.paths import ARTIFACT_NAME_RE, JobPaths, check_name

__all__ = ["ARTIFACT_NAME_RE", "JobPaths", "check_name"]
