"""Helpers shared by the blueprints: store access, id checks, safe paths, job files
(through :mod:`ml4paleo.workspace`) and the status description every job answer carries."""

from __future__ import annotations

import functools
from pathlib import Path

from flask import abort, current_app, request

from ml4paleo.config import Settings
from ml4paleo.jobs.statuses import describe, retry_helps
from ml4paleo.workspace import (
    ARTIFACT_NAME_RE,
    JobPaths,
    SegmentationNotFound,
    SegmentationRegistry,
    job_outputs,
)
from ml4paleo.workspace.segmentations import MESH_EXTENSIONS, dir_size

__all__ = [
    "MESH_EXTENSIONS", "SAFE_NAME_RE", "check_name", "dir_size", "get_job", "image_path",
    "int_arg", "job_dir", "job_paths", "job_state", "json_body", "outputs", "safe_join",
    "segmentation_dir", "settings", "store", "with_state",
]

#: export / mesh file names: no separators, no dots at the start
SAFE_NAME_RE = ARTIFACT_NAME_RE
#: longest file name / relative path :func:`safe_join` looks up (Linux NAME_MAX; well
#: below PATH_MAX once joined onto the data directory)
MAX_NAME = 255
MAX_REL_PATH = 1024


def settings() -> Settings:
    return current_app.config["ML4PALEO_SETTINGS"]


def store():
    """The app's :class:`ml4paleo.jobs.JobStore`."""
    return current_app.extensions["ml4paleo_store"]


def get_job(job_id: str) -> dict:
    """The job record, or a 404 JSON error for a malformed or unknown id."""
    from ml4paleo.jobs import JobNotFound, JobStore

    if not JobStore.is_valid_id(job_id):
        abort(404, f"no job {job_id!r}")
    try:
        return store().get(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    except ValueError:
        abort(404, f"no job {job_id!r}")


def job_dir(job_id: str) -> Path:
    """Folder of an existing job (404 when unknown)."""
    get_job(job_id)
    return Path(store().job_dir(job_id))


def check_name(value: str, what: str) -> str:
    """A segmentation id / file name safe to join onto a path, else 404."""
    if not isinstance(value, str) or not SAFE_NAME_RE.match(value) or ".." in value:
        abort(404, f"no {what} {value!r}")
    return value


def safe_join(base: Path, rel: str) -> Path:
    """``base / rel`` resolved, refusing anything that leaves ``base`` (404)."""
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        abort(404, "no such file")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith("..") for p in parts):
        abort(404, "no such file")
    # names the file system cannot hold (ENAMETOOLONG) cannot exist: 404, not an OSError
    if len(rel.encode("utf-8", "surrogateescape")) > MAX_REL_PATH or any(
        len(p.encode("utf-8", "surrogateescape")) > MAX_NAME for p in parts
    ):
        abort(404, "no such file")
    base_resolved = base.resolve()
    try:
        target = base_resolved.joinpath(*parts).resolve() if parts else base_resolved
    except (OSError, RuntimeError):  # a symlink loop, or a path the OS refuses
        abort(404, "no such file")
    if target != base_resolved and base_resolved not in target.parents:
        abort(404, "no such file")
    return target


def json_body() -> dict:
    """The request's JSON object, or a 400 JSON error."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "request body must be a JSON object")
    return data


def int_arg(name: str, default: int | None = None, lo: int | None = None, hi: int | None = None):
    """Integer query argument with bounds, 400 when malformed or out of range."""
    raw = request.args.get(name)
    if raw is None:
        if default is None:
            abort(400, f"query parameter {name!r} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be an integer, got {raw!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        abort(400, f"query parameter {name!r} must be in {lo}..{hi}, got {value}")
    return value


def job_paths(job_id: str) -> JobPaths:
    """The :class:`~ml4paleo.workspace.JobPaths` of an existing job (404 when unknown)."""
    return JobPaths(job_dir(job_id))


def image_path(job_id: str) -> Path:
    """The job's converted image (may not exist yet)."""
    return job_paths(job_id).image


def segmentation_dir(job_id: str, seg_id: str) -> Path:
    """Folder of an existing segmentation of the job, else 404."""
    try:
        return SegmentationRegistry(job_paths(job_id)).folder(seg_id)
    except SegmentationNotFound:
        abort(404, f"no segmentation {seg_id!r} in job {job_id!r}")


def outputs(job_id: str) -> dict:
    """What exists on disk for a job (:func:`ml4paleo.workspace.job_outputs`)."""
    return job_outputs(job_paths(job_id))


def job_state(status: object) -> dict | None:
    """The UI description of a status (:func:`ml4paleo.jobs.describe`); None when unknown."""
    described = _described(str(getattr(status, "value", status)))
    return dict(described) if described is not None else None


@functools.lru_cache(maxsize=256)
def _described(status: str) -> dict | None:
    try:
        return describe(status)
    except ValueError:
        return None


def with_state(answer: dict, status: object, record: dict | None = None) -> dict:
    """``answer`` with ``state``: what every job JSON of the API carries about its status;
    with the ``record``, also ``error_kind`` and ``retry_helps`` (whether a Retry can change
    the outcome: :func:`ml4paleo.jobs.statuses.retry_helps`)."""
    answer["state"] = job_state(status)
    if record is not None:
        kind = record.get("error_kind")
        answer["error_kind"] = kind
        answer["retry_helps"] = retry_helps(str(getattr(status, "value", status)), kind)
    return answer
