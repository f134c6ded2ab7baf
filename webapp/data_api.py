"""Data routes: job record + outputs, image metadata, raw Zarr keys, mesh files, slice tiles.

Slice tiles are PNGs cut from the pyramid level the viewer asks for (it picks the level
matching its zoom), so a 2048^2 slice shows after a few small reads.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Blueprint, Response, abort, current_app, jsonify, request, send_file

from ml4paleo.formats import open_image
from ml4paleo.io import is_zarr_store
from ml4paleo.workspace import SegmentationRegistry

from .common import (
    get_job,
    image_path,
    int_arg,
    job_paths,
    job_state,
    json_body,
    outputs,
    safe_join,
    segmentation_dir,
    store,
    with_state,
)

log = logging.getLogger(__name__)
bp = Blueprint("data_api", __name__)

AXES = {"z": 0, "y": 1, "x": 2, "0": 0, "1": 1, "2": 2}
MAX_TILE = 2048
_stats_lock = threading.Lock()
_stats_cache: dict[tuple, dict] = {}
#: group metadata files, the first present names the image's version (attributes of a
#: v2 group live in .zattrs)
_GROUP_METADATA = ("zarr.json", ".zattrs", ".zgroup")
_OPEN_CACHE_SIZE = 64
_open_lock = threading.Lock()
_open_cache: dict[str, _OpenImage] = {}


@dataclass(frozen=True)
class _OpenImage:
    """An opened image and its level arrays, valid while its group metadata is the same."""

    img: Any
    arrays: tuple
    version: tuple

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arrays[0].shape)


def _public_record(record: dict) -> dict:
    rec = dict(record)
    status = rec.get("status")
    rec["status"] = getattr(status, "value", status)
    return with_state(rec, rec["status"], record)


@bp.get("/api/job/<job_id>")
def job_record(job_id: str):
    """The whole job record plus what exists on disk (``available``)."""
    record = _public_record(get_job(job_id))
    record["job_id"] = record.get("id", job_id)
    record["available"] = outputs(job_id)
    return jsonify(record)


@bp.get("/api/job/<job_id>/outputs")
def job_outputs(job_id: str):
    """What exists on disk: image, segmentations with meshes and stats, cached exports."""
    return jsonify(job_id=job_id, **outputs(job_id))


@bp.delete("/api/job/<job_id>")
@bp.post("/api/job/<job_id>/delete")
def delete_job(job_id: str):
    """Delete a job and all its files."""
    get_job(job_id)
    record = store().get(job_id)
    status = getattr(record.get("status"), "value", record.get("status"))
    state = job_state(status) or {}
    if record.get("lease") and state.get("running"):
        abort(409, f"job {job_id!r} is {status}; wait for it to finish or fail before deleting")
    store().delete(job_id)
    return jsonify(status="deleted", job_id=job_id)


def _user_action(job_id: str, action: str):
    """Run a job-store user action (``retry`` / ``cancel``); a refused move is a 409."""
    from ml4paleo.jobs import InvalidTransition

    get_job(job_id)
    try:
        record = getattr(store(), action)(job_id)
    except InvalidTransition as exc:
        abort(409, str(exc))
    rec = _public_record(record)
    return jsonify(job_id=job_id, status=rec["status"], state=rec["state"])


@bp.post("/api/job/<job_id>/retry")
def retry_job(job_id: str):
    """Queue the failed step again (from ``convert_error``, ``segment_error``, ``mesh_error``)."""
    return _user_action(job_id, "retry")


@bp.post("/api/job/<job_id>/cancel")
def cancel_job(job_id: str):
    """Stop queued or running work; the step goes to its error status."""
    return _user_action(job_id, "cancel")


def _image_or_404(path: Path, what: str):
    if not is_zarr_store(path):
        abort(404, f"{what} does not exist (yet)")
    try:
        return open_image(path)
    except (FileNotFoundError, ValueError) as exc:
        abort(404, f"{what} cannot be opened: {exc}")


def _metadata_version(path: Path) -> tuple | None:
    """(file, inode, mtime, size) of the group metadata of the image at ``path``; None
    when it is no Zarr group. A rewritten or replaced image has another version."""
    base = os.fspath(path)
    for name in _GROUP_METADATA:
        try:
            st = os.stat(os.path.join(base, name))
        except (FileNotFoundError, NotADirectoryError):
            continue
        return name, st.st_ino, st.st_mtime_ns, st.st_size
    return None


def _open_cached(path: Path, what: str) -> _OpenImage:
    """The image at ``path`` with its level arrays, opened once per metadata version
    (slice tiles are the most frequent reads: opening the group and its levels costs
    more than cutting a tile). 404 like :func:`_image_or_404`."""
    version = _metadata_version(path)
    if version is None:
        abort(404, f"{what} does not exist (yet)")
    key = os.fspath(path)
    with _open_lock:
        hit = _open_cache.get(key)
    if hit is not None and hit.version == version:
        return hit
    img = _image_or_404(path, what)
    opened = _OpenImage(img, tuple(img.level(i) for i in range(len(img.levels))), version)
    with _open_lock:
        _open_cache.pop(key, None)
        while len(_open_cache) >= _OPEN_CACHE_SIZE:
            _open_cache.pop(next(iter(_open_cache)))
        _open_cache[key] = opened
    return opened


def _intensity_stats(img, version: tuple | None = None) -> dict:
    """Min/max and 0.5/99.5 percentiles of full-resolution voxels (sampled; cached per
    metadata version of the image)."""
    from ml4paleo.preview import intensity_stats

    if version is None:
        version = _metadata_version(img.path)
    key = (str(img.path), version)
    with _stats_lock:
        if key in _stats_cache:
            return _stats_cache[key]
    stats = intensity_stats(img)
    with _stats_lock:
        _stats_cache[key] = stats
    return stats


def _image_info(img) -> dict:
    levels = []
    for i in range(len(img.levels)):
        arr = img.level(i)
        levels.append({"shape": list(arr.shape), "chunks": list(arr.chunks),
                       "scale": list(img.level_scale(i))})
    return {
        "shape": list(img.shape),
        "dtype": str(img.dtype),
        "voxel_size": list(img.voxel_size),
        "unit": img.unit,
        "levels": levels,
    }


def _orientation(path: Path) -> str | None:
    """Axis codes of the image's world (``"RAS"``, ``"LPS"``, ...), None without a frame."""
    from ml4paleo.io import InputError, open_any

    try:
        with open_any(path) as vol:
            return vol.world.orientation
    except (InputError, ValueError) as exc:
        log.info("no orientation for %s: %s", path.name, exc)
        return None


@bp.get("/api/job/<job_id>/image")
def image_info(job_id: str):
    """Image metadata: shape, dtype, voxel size and how well it is known (``voxel_size_status``:
    known / assumed / unknown), orientation (axis codes of x, y, z when the scan has an
    anatomical frame) and how to show each plane (``planes``: flips and edge letters, as
    3D Slicer shows them), pyramid levels, intensity range (full-resolution sample),
    warnings of the conversion, source. Slice indices in the API count from 0; the pages
    show slice numbers from 1 (index + 1)."""
    from ml4paleo.convert import voxel_size_status
    from ml4paleo.world import plane_orientation

    record = get_job(job_id)
    img = _image_or_404(image_path(job_id), "the converted image")
    info = _image_info(img)
    info["intensity"] = _intensity_stats(img)
    extra = img.attrs.get("ml4paleo", {}) if isinstance(img.attrs, dict) else {}
    info["voxel_size_status"] = voxel_size_status(img.attrs)
    info["orientation"] = _orientation(img.path)
    info["planes"] = plane_orientation(info["orientation"])
    info["warnings"] = record.get("warnings") or []
    info["source_type"] = extra.get("source_type") or record.get("source_type")
    info["source"] = extra.get("source") or (record.get("metadata") or {}).get("source") or {}
    return jsonify(info)


@bp.post("/api/job/<job_id>/voxel-size")
def set_voxel_size(job_id: str):
    """Set the voxel size: ``{voxel_size: [z, y, x], unit}`` (metadata only, no
    reconversion). The image and every label image get it; cached exports are dropped;
    meshes and statistics made before say they need making again. 409 while work runs."""
    from ml4paleo.jobs import InvalidTransition

    get_job(job_id)
    body = json_body()
    try:
        record = store().set_voxel_size(job_id, body.get("voxel_size"), body.get("unit"))
    except InvalidTransition as exc:
        abort(409, str(exc))
    except ValueError as exc:
        abort(400, str(exc))
    with _stats_lock:  # the image's .zattrs changed: its cache key too
        _stats_cache.clear()
    annotators = current_app.extensions.get("ml4paleo_annotators")
    if annotators is not None:  # its volume (and features) carry the old voxel size
        annotators.drop(job_id)
    meta = record.get("metadata") or {}
    return jsonify(job_id=job_id, voxel_size=meta.get("voxel_size"), unit=meta.get("unit"),
                   warnings=record.get("warnings") or [])


def _send_key(base: Path, path: str):
    target = safe_join(base, path)
    if not target.is_file():
        abort(404, f"no such key {path!r}")
    name = target.name
    mimetype = "application/json" if name.startswith(".z") or name.endswith(".json") else (
        "application/octet-stream")
    return send_file(target, mimetype=mimetype, conditional=True, max_age=60)


@bp.get("/api/job/<job_id>/zarr/<path:path>")
def image_zarr(job_id: str, path: str):
    """A raw key of the converted image's Zarr store (for Zarr viewers)."""
    base = image_path(job_id)
    if not base.is_dir():
        abort(404, "the converted image does not exist (yet)")
    return _send_key(base, path)


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/zarr/<path:path>")
def segmentation_zarr(job_id: str, seg_id: str, path: str):
    """A raw key of a segmentation's label Zarr store."""
    segmentation_dir(job_id, seg_id)
    base = job_paths(job_id).labels(seg_id)
    if not base.is_dir():
        abort(404, f"segmentation {seg_id!r} has no label image")
    return _send_key(base, path)


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/obj/<path:path>")
def segmentation_mesh(job_id: str, seg_id: str, path: str):
    """A mesh file (``<label>.stl|obj|ply|glb``) of a segmentation."""
    segmentation_dir(job_id, seg_id)
    base = job_paths(job_id).meshes(seg_id)
    target = safe_join(base, path)
    if not target.is_file():
        abort(404, f"no mesh {path!r}")
    mimetypes = {".glb": "model/gltf-binary", ".stl": "model/stl", ".obj": "model/obj",
                 ".ply": "application/octet-stream", ".csv": "text/csv"}
    # re-meshing replaces these files in place (same names, often the same size):
    # revalidate every time (ETag / 304) so the 3D view never shows a stale surface
    return send_file(target, mimetype=mimetypes.get(target.suffix.lower(),
                                                    "application/octet-stream"),
                     conditional=True, max_age=0)


@bp.get("/api/job/<job_id>/segmentation/<seg_id>")
def segmentation_info(job_id: str, seg_id: str):
    """A segmentation's label image metadata, classes and meshes."""
    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    info = SegmentationRegistry(paths).describe(seg_id)
    if info["labels"]:
        info.update(_image_info(_image_or_404(paths.labels(seg_id), "the label image")))
    return jsonify(info)


def _plane_region(img: _OpenImage, axis: int, index: int, level: int,
                  tile: tuple[int, int] | None, tile_size: int) -> np.ndarray:
    """Read one plane (or one tile of it) at pyramid ``level`` without the rest."""
    # a level, plane or tile beyond the image is a resource that does not exist: 404
    if not 0 <= level < len(img.arrays):
        abort(404, f"no pyramid level {level}: the image has levels 0..{len(img.arrays) - 1}")
    full = img.shape[axis]
    if not 0 <= index < full:
        abort(404, f"no plane {index} along this axis: planes are 0..{full - 1}")
    arr = img.arrays[level]
    idx = min(index // (2**level), arr.shape[axis] - 1)
    plane_dims = [d for d in range(3) if d != axis]
    sl: list = [slice(None)] * 3
    sl[axis] = idx
    if tile is not None:
        ty, tx = tile
        for d, t in zip(plane_dims, (ty, tx), strict=True):
            start = t * tile_size
            if start >= arr.shape[d] or t < 0:
                abort(404, f"no tile {tile}: it is outside the plane")
            sl[d] = slice(start, min(start + tile_size, arr.shape[d]))
    return np.asarray(arr[tuple(sl)])


def _parse_tile() -> tuple[tuple[int, int] | None, int]:
    tile_size = int_arg("tile_size", 512, 16, MAX_TILE)
    raw = request.args.get("tile")
    if not raw:
        return None, tile_size
    try:
        ty, tx = (int(v) for v in raw.split(","))
    except ValueError:
        abort(400, f"tile must be 'row,col', got {raw!r}")
    return (ty, tx), tile_size


def _axis() -> int:
    raw = request.args.get("axis", "z").lower()
    if raw not in AXES:
        abort(400, f"axis must be z, y or x, got {raw!r}")
    return AXES[raw]


def _png(array2d: np.ndarray) -> Response:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array2d)).save(buf, format="PNG", compress_level=1)
    resp = Response(buf.getvalue(), mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=300"
    return resp


@bp.get("/api/job/<job_id>/slice")
def image_slice(job_id: str):
    """A plane of the image as an 8-bit PNG.

    Query: ``axis`` z|y|x, ``index`` (full-resolution voxels), ``level`` (pyramid level),
    ``window`` ``low,high`` in raw intensity (default: 0.5-99.5 percentiles),
    ``tile`` ``row,col`` and ``tile_size`` to cut one tile of the plane.
    """
    get_job(job_id)
    img = _open_cached(image_path(job_id), "the converted image")
    axis = _axis()
    index = int_arg("index", img.shape[axis] // 2, 0, 2**31 - 1)
    level = int_arg("level", 0, 0, 64)
    tile, tile_size = _parse_tile()
    raw = request.args.get("window")
    if raw:
        try:
            lo, hi = (float(v) for v in raw.split(","))
        except ValueError:
            abort(400, f"window must be 'low,high', got {raw!r}")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            abort(400, "window must be finite numbers")
    else:
        stats = _intensity_stats(img.img, img.version)
        lo, hi = stats["p_low"], stats["p_high"]
    plane = _plane_region(img, axis, index, level, tile, tile_size).astype(np.float32)
    if hi > lo:
        out = np.clip((plane - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    else:  # an empty window (e.g. a constant image) thresholds at its value
        out = np.where(plane >= lo, 255, 0).astype(np.uint8)
    return _png(out)


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/slice")
def segmentation_slice(job_id: str, seg_id: str):
    """A plane of a segmentation as a greyscale PNG whose values are the labels.

    Same query as the image slice (without ``window``); the viewer colours the labels
    with the per-class colours and opacity the user picks.
    """
    segmentation_dir(job_id, seg_id)
    img = _open_cached(job_paths(job_id).labels(seg_id), "the label image")
    axis = _axis()
    index = int_arg("index", img.shape[axis] // 2, 0, 2**31 - 1)
    level = int_arg("level", 0, 0, 64)
    tile, tile_size = _parse_tile()
    plane = _plane_region(img, axis, index, level, tile, tile_size)
    return _png(np.clip(plane, 0, 255).astype(np.uint8))


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/thickness/slice")
def thickness_slice(job_id: str, seg_id: str):
    """A plane of a segmentation's local-thickness map as a colour PNG (RGBA).

    Same query as the segmentation slice; colours on the scale of
    ``GET /api/job/<id>/measure`` (``legend``), transparent outside every class.
    404 until the segmentation is measured with a thickness map.
    """
    from ml4paleo.morphometry.colours import colorize

    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    labels = _image_or_404(paths.labels(seg_id), "the label image")
    tmap = _open_cached(paths.segmentation_files(seg_id).thickness_map, "the thickness map")
    extra = tmap.img.attrs.get("ml4paleo") or {}
    vmax = float(extra.get("max_thickness") or 1.0)
    box = extra.get("box") or [[0, n] for n in labels.shape]
    axis = _axis()
    index = int_arg("index", labels.shape[axis] // 2)
    level = int_arg("level", 0)
    tile, tile_size = _parse_tile()
    if [list(b) for b in box] == [[0, n] for n in labels.shape]:
        plane = _plane_region(tmap, axis, index, level, tile, tile_size)
    else:  # a map of a box: place its plane in the labels' plane, then cut the tile
        if not 0 <= level < len(labels.levels) or not 0 <= index < labels.shape[axis]:
            abort(400, f"level or index outside the label image ({labels.shape})")
        dims = [d for d in range(3) if d != axis]
        full = tuple(labels.level(level).shape[d] for d in dims)
        plane = np.zeros(full, np.float32)
        start = int(box[axis][0])
        if start <= index < int(box[axis][1]) and level < len(tmap.arrays):
            part = _plane_region(tmap, axis, index - start, level, None, MAX_TILE * 64)
            o = [int(box[d][0]) // 2**level for d in dims]
            h, w = min(part.shape[0], full[0] - o[0]), min(part.shape[1], full[1] - o[1])
            plane[o[0]:o[0] + h, o[1]:o[1] + w] = part[:h, :w]
        if tile is not None:
            ty, tx = tile
            if ty < 0 or tx < 0 or ty * tile_size >= full[0] or tx * tile_size >= full[1]:
                abort(400, f"tile {tile} is outside the plane")
            plane = plane[ty * tile_size:(ty + 1) * tile_size, tx * tile_size:(tx + 1) * tile_size]
    return _png(colorize(plane, vmax))


def _preview(source: Path, cache: Path, what: str):
    from ml4paleo.preview import write_nifti_preview

    if not is_zarr_store(source):
        abort(404, f"{what} does not exist (yet)")
    zattrs = source / ".zattrs"
    stale = cache.is_file() and zattrs.is_file() and cache.stat().st_mtime < zattrs.stat().st_mtime
    if not cache.is_file() or stale:
        write_nifti_preview(source, cache)
    return send_file(cache, mimetype="application/gzip", conditional=True, max_age=60)


@bp.get("/api/job/<job_id>/preview/image.nii.gz")
def image_preview(job_id: str):
    """The image downsampled to at most 256 voxels per edge, as NIfTI (for volume viewers)."""
    paths = job_paths(job_id)
    return _preview(paths.image, paths.image_preview, "the converted image")


@bp.get("/api/job/<job_id>/segmentation/<seg_id>/preview.nii.gz")
def segmentation_preview(job_id: str, seg_id: str):
    """A segmentation downsampled like the image preview, as NIfTI."""
    segmentation_dir(job_id, seg_id)
    paths = job_paths(job_id)
    return _preview(paths.labels(seg_id), paths.segmentation_preview(seg_id), "the label image")
