"""Downloads: every export of :mod:`ml4paleo.export`, built once and cached in ``exports/``.

A download is built completely before its first byte is sent
(:func:`ml4paleo.export.cached_export`: temp file, renamed into ``jobs/<id>/exports/``
when complete) and then sent as a file with its length (ranges and conditional requests
work). So a 200 never ends early: a build that fails (a full disk, a corrupt chunk)
answers an error instead - 507 when the disk cannot hold it, checked against the export's
estimated size before building. The next request sends the cached file.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from flask import Blueprint, abort, jsonify, send_file

from ml4paleo.io import is_zarr_store
from ml4paleo.workspace import JobPaths, SegmentationRegistry
from ml4paleo.workspace.space import check_free

from .common import get_job, job_paths, outputs, segmentation_dir, settings

log = logging.getLogger(__name__)
bp = Blueprint("downloads", __name__)

#: kind -> (file extension of the export, mimetype, what it holds)
SEGMENTATION_KINDS = {
    "zarr": ("zarr.zip", "application/zip", "label image as an OME-Zarr folder (zip)"),
    "png": ("png.zip", "application/zip", "label image as a stack of 8/16-bit PNG slices (zip)"),
    "tiff": ("tiff.zip", "application/zip", "label image as a stack of TIFF slices (zip)"),
    "nifti": ("nii.gz", "application/gzip", "label image as one NIfTI file"),
    "stats": ("csv", "text/csv", "per-label volume, surface area and components (CSV)"),
}
IMAGE_KINDS = {
    "zarr": ("zarr.zip", "application/zip", "converted image and its segmentations as an OME-Zarr store (zip)"),
    "png": ("png.zip", "application/zip", "converted image as a stack of PNG slices (zip)"),
    "tiff": ("tiff.zip", "application/zip", "converted image as a stack of TIFF slices (zip)"),
    "nifti": ("nii.gz", "application/gzip", "converted image as one NIfTI file"),
}
MESH_KIND = ("zip", "application/zip", "meshes of every label (STL/OBJ/PLY/GLB) + stats (zip)")
#: report format -> what it holds (built on first request, see :mod:`webapp.reports`)
REPORT_KINDS = {
    "pdf": "quantification report: volumes, surfaces, montages (PDF)",
    "html": "quantification report: volumes, surfaces, montages (web page)",
}
_FILENAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_build_locks: dict[str, threading.Lock] = {}
_build_guard = threading.Lock()


def _filename(record: dict, *parts: str) -> str:
    base = _FILENAME_RE.sub("_", str(record.get("name") or record.get("id") or "job")).strip("_")
    return "-".join([base[:60] or "job", *parts])


def _build_lock(cache: Path) -> threading.Lock:
    """One build at a time per export (a second request waits and sends the result)."""
    with _build_guard:
        return _build_locks.setdefault(str(cache), threading.Lock())


def _stream(kind: str, source: Path, cache: Path, filename: str, mimetype: str, **options):
    """Send ``kind`` of ``source`` from the export cache, building it first if needed."""
    try:
        from ml4paleo.export import cached_export, estimate_bytes, is_cached
    except ImportError:
        abort(503, "exports are not available in this installation")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache):
        try:
            if not is_cached(cache, source):
                # the whole file must fit, with the free space the settings keep
                check_free(cache.parent, settings().min_free_mb, estimate_bytes(kind, source))
            path = cached_export(kind, source, cache, **options)
        except (ValueError, FileNotFoundError) as exc:
            abort(404, f"cannot export {kind}: {exc}")
    resp = send_file(path, mimetype=mimetype, as_attachment=True, download_name=filename,
                     conditional=True, max_age=0)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _kind_or_404(kinds: dict, kind: str):
    if kind not in kinds:
        abort(404, f"unknown export {kind!r}; choose from {', '.join(kinds)}")
    return kinds[kind]


def _seg_source(paths: JobPaths, seg_id: str, kind: str) -> Path:
    if kind == "stats":
        stats = SegmentationRegistry(paths).stats_file(seg_id)
        if stats is not None:
            return stats
    labels = paths.labels(seg_id)
    if not is_zarr_store(labels):
        abort(404, f"segmentation {seg_id!r} has no label image (yet)")
    return labels


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/download/<kind>")
def segmentation_download(job_id: str, seg_id: str, kind: str):
    """Download a segmentation: ``zarr``, ``png``, ``tiff`` (zips), ``nifti`` or ``stats``."""
    record = get_job(job_id)
    ext, mimetype, _ = _kind_or_404(SEGMENTATION_KINDS, kind)
    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    source = _seg_source(paths, seg_id, kind)
    cache = paths.segmentation_export(seg_id, kind, ext)
    return _stream(kind, source, cache, _filename(record, seg_id, f"labels.{ext}"), mimetype)


@bp.get("/api/job/<job_id>/meshes/<seg_id>/download")
def meshes_download(job_id: str, seg_id: str):
    """Download the meshes of a segmentation as one zip."""
    record = get_job(job_id)
    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    meshes = paths.meshes(seg_id)
    if not meshes.is_dir() or not any(meshes.iterdir()):
        abort(404, f"segmentation {seg_id!r} has no meshes (yet)")
    cache = paths.meshes_export(seg_id)
    return _stream("meshes", meshes, cache, _filename(record, seg_id, "meshes.zip"), MESH_KIND[1])


@bp.get("/api/job/<job_id>/image/download/<kind>")
def image_download(job_id: str, kind: str):
    """Download the converted image: ``zarr``, ``png``, ``tiff`` (zips) or ``nifti``."""
    record = get_job(job_id)
    ext, mimetype, _ = _kind_or_404(IMAGE_KINDS, kind)
    paths = job_paths(job_id)
    source = paths.image
    if not is_zarr_store(source):
        abort(404, "the converted image does not exist (yet)")
    cache = paths.image_export(kind, ext)
    return _stream(kind, source, cache, _filename(record, f"image.{ext}"), mimetype)


def _size(kind: str, cached: Path, source: Path | None, label: bool | None = None
          ) -> tuple[int | None, str]:
    """(bytes, how well known) of a download: exact once cached, else an estimate."""
    from ml4paleo.export import estimate_size

    if cached.is_file():
        return cached.stat().st_size, "exact"
    if source is None:
        return None, "unknown"
    try:
        return estimate_size(kind, source, label=label)
    except (FileNotFoundError, ValueError) as exc:
        log.info("no size estimate for %s of %s: %s", kind, source.name, exc)
        return None, "unknown"


def download_list(job_id: str) -> list[dict]:
    """Every download that exists for a job, with its URL and size: ``bytes`` and
    ``size_kind`` (``exact`` once cached, ``about`` / ``at_most`` estimates before, or
    ``unknown`` for a report not built yet), grouped by the image and each segmentation
    (``group`` is its human name)."""
    paths = job_paths(job_id)
    segs = SegmentationRegistry(paths)
    out = outputs(job_id)
    items: list[dict] = []

    def add(group: str, kind: str, url: str, cached: Path, source: Path | None, about: str,
            *, size_as: str | None = None, label: bool | None = None, **extra):
        size, how = _size(size_as or kind, cached, source, label)
        items.append({
            "group": group, "kind": kind, "url": url, "description": about,
            "cached": cached.is_file(), "bytes": size, "size_kind": how,
            "size_is_estimate": how != "exact", **extra,
        })

    if out["image"]["exists"]:
        for kind, (ext, _, about) in IMAGE_KINDS.items():
            add("image", kind, f"/api/job/{job_id}/image/download/{kind}",
                paths.image_export(kind, ext), paths.image, about, label=False)
    names = segs.names()
    for seg in out["segmentations"]:
        sid = seg["id"]
        group = names.get(sid, f"segmentation {sid}")
        base = f"/api/job/{job_id}/segmentation/{sid}"
        if seg["labels"]:
            for kind, (ext, _, about) in SEGMENTATION_KINDS.items():
                if kind == "stats":
                    continue
                add(group, kind, f"{base}/download/{kind}",
                    paths.segmentation_export(sid, kind, ext), paths.labels(sid), about,
                    label=True, segmentation_id=sid)
        if seg["labels"] or seg["stats"]:
            stats_src = segs.stats_file(sid) or paths.labels(sid)
            ext = SEGMENTATION_KINDS["stats"][0]
            add(group, "stats", f"{base}/download/stats",
                paths.segmentation_export(sid, "stats", ext), stats_src,
                SEGMENTATION_KINDS["stats"][2], segmentation_id=sid)
        if seg["meshes"]:
            add(group, "meshes", f"/api/job/{job_id}/meshes/{sid}/download",
                paths.meshes_export(sid), paths.meshes(sid), MESH_KIND[2], segmentation_id=sid)
        if seg["labels"]:
            for fmt, about in REPORT_KINDS.items():
                add(group, f"report_{fmt}", f"{base}/report.{fmt}?download=1",
                    paths.report(sid, fmt), None, about, segmentation_id=sid,
                    view_url=f"{base}/report.{fmt}")
    return items


@bp.get("/api/job/<job_id>/downloads")
def downloads_index(job_id: str):
    """The downloads that exist for a job, with sizes (exact once cached)."""
    get_job(job_id)
    return jsonify(job_id=job_id, downloads=download_list(job_id))
