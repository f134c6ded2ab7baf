"""Segmentation reports: ``/api/job/<id>/segmentation/<seg_id>/report.html|.pdf``.

Thin over :func:`ml4paleo.report.build_report`. A report is built on first request and
cached in ``jobs/<id>/exports/``; it is rebuilt when the segmentation's statistics,
meshes, model metadata or class names are newer than the cached file.
"""

from __future__ import annotations

import logging
import threading

from flask import Blueprint, abort, request, send_file

from ml4paleo.workspace import JobPaths, SegmentationRegistry

from .common import get_job, job_paths, segmentation_dir

log = logging.getLogger(__name__)
bp = Blueprint("reports", __name__)

_MIMETYPES = {"html": "text/html", "pdf": "application/pdf"}  # send_file adds the charset
#: without meshing's stats.csv the statistics are computed in the request: only when small
MAX_VOXELS_WITHOUT_STATS = 64 * 1024**2
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _inputs_mtime(paths: JobPaths, seg_id: str, record: dict) -> float:
    """Newest modification time of what the report shows."""
    meshes = paths.meshes(seg_id)
    candidates = [paths.stats(seg_id), paths.segmentation_meta(seg_id), meshes,
                  paths.labels(seg_id), paths.classes,
                  paths.segmentation_files(seg_id).morphometry_summary]
    if meshes.is_dir():
        candidates += list(meshes.iterdir())
    model_id = record.get("model_id")
    if model_id:
        try:
            candidates.append(paths.model_meta(str(model_id)))
        except ValueError:
            pass  # a malformed id in an old record names no file
    times = [p.stat().st_mtime for p in candidates if p.exists()]
    return max(times, default=0.0)


def _check_size(paths: JobPaths, seg_id: str) -> None:
    """409 when the statistics would have to be computed over a big label volume here."""
    if SegmentationRegistry(paths).stats_file(seg_id) is not None:
        return
    from ml4paleo.formats import open_image

    try:
        shape = open_image(paths.labels(seg_id)).shape
    except (FileNotFoundError, ValueError):
        abort(404, f"segmentation {seg_id!r} has no label image (yet)")
    voxels = 1
    for s in shape:
        voxels *= int(s)
    if voxels > MAX_VOXELS_WITHOUT_STATS:
        abort(409, "the statistics of this segmentation are not computed yet: mesh it first "
                   "(or run `ml4paleo report` on the server)")


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/report.<fmt>")
def segmentation_report(job_id: str, seg_id: str, fmt: str):
    """The quantification report of a segmentation (``?download=1`` as an attachment)."""
    from ml4paleo.report import ReportError, build_report

    if fmt not in _MIMETYPES:
        abort(404, f"no report format {fmt!r}; use report.html or report.pdf")
    record = get_job(job_id)
    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    cache = paths.report(seg_id, fmt)
    with _lock(f"{job_id}/{seg_id}"):
        if not cache.is_file() or cache.stat().st_mtime < _inputs_mtime(paths, seg_id, record):
            _check_size(paths, seg_id)
            # both formats at once: the figures are the expensive part
            try:
                build_report(paths.root, cache, formats=("html", "pdf"), segmentation_id=seg_id)
            except (ReportError, FileNotFoundError) as exc:
                abort(404, str(exc))
            log.info("built %s report of job %s segmentation %s", fmt, job_id, seg_id)
    name = f"{record.get('name') or job_id}-{seg_id}-report.{fmt}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    attachment = request.args.get("download") in ("1", "true", "yes")
    return send_file(cache, mimetype=_MIMETYPES[fmt], as_attachment=attachment,
                     download_name=safe, max_age=0)
