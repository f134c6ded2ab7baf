"""Closed, seam-free meshes per label and label statistics, computed block by block.

The surface of label ``L`` is the 0.5 iso-surface of the binary mask ``labels == L``,
padded with background outside the volume so every object is closed.  Marching cubes
(classic Lorensen tables, which are watertight and manifold on binary masks) runs on
each block of a regular grid.  A block owns the marching-cubes cells whose lower corner
lies in its write region (the first block along an axis also owns the padding cell), and
reads one voxel more on its upper side so those cells are complete.  Every cell is
therefore triangulated exactly once, by exactly one block, with the same corner values
as in a whole-volume run.  On a binary mask at level 0.5 every vertex is the midpoint of
a voxel edge, so its coordinates are exact half-integers: the parts are welded by exact
integer keys and the result is *identical* to meshing the whole volume at once (same
vertices, same faces, and — after the canonical ordering applied here — the same files).

Vertex coordinates are ``(x, y, z)`` in physical units: the centre of voxel
``(z, y, x)`` sits at ``(x * sx, y * sy, z * sz)``; the surface passes half a voxel
outside the outermost voxel centres.  Objects are face-connected (6-connectivity), which
is the connectivity this surface realises, so one closed body per object (plus one per
enclosed cavity).

Memory stays flat: blocks stream their triangles to ``.npz`` parts on disk, and each
label is welded from its own parts at the end.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from ml4paleo.blocks import Block, block_grid, run_blocks
from ml4paleo.smooth_surfaces import (
    DEFAULT_SMOOTH,
    Smoothing,
    Surface,
    block_window,
    smoothing_params,
    surface_name,
    window_surfaces,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

#: mesh file formats :func:`mesh` can write (trimesh file types)
MESH_FORMATS = ("stl", "obj", "ply", "glb")

#: columns of the statistics CSV, in order
STATS_COLUMNS = (
    "label",
    "voxel_count",
    "volume",
    "mesh_volume",
    "surface_area",
    "components",
    "mesh_bodies",
    "unit",
    "min_x_vox",
    "min_y_vox",
    "min_z_vox",
    "max_x_vox",
    "max_y_vox",
    "max_z_vox",
    "min_x",
    "min_y",
    "min_z",
    "max_x",
    "max_y",
    "max_z",
    "surface",
)

_ZARR_MARKERS = (".zgroup", ".zattrs", ".zarray", "zarr.json")


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """Picklable description of a label volume, reopened inside each worker."""

    kind: str  # "zarr" (path of a zarr array), "npy", "volume" (ml4paleo.io), "array"
    path: str | None = None
    array: Any = None


@dataclass(frozen=True)
class LabelVolume:
    """A label volume opened for meshing: where it is, its shape and its voxel size."""

    source: _Source
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: tuple[float, float, float]
    unit: str | None


_OPENED: dict[tuple[str, str], Any] = {}


def _array_of(source: _Source) -> Any:
    """The sliceable array behind ``source`` (opened once per process)."""
    if source.kind == "array":
        return source.array
    key = (source.kind, str(source.path))
    arr = _OPENED.get(key)
    if arr is None:
        if source.kind == "zarr":
            import zarr

            arr = zarr.open_array(source.path, mode="r")
        elif source.kind == "npy":
            arr = np.load(source.path, mmap_mode="r")
        elif source.kind == "volume":
            from ml4paleo.io import open_volume

            arr = open_volume(source.path)
        else:  # pragma: no cover - guarded by open_labels
            raise ValueError(f"unknown label source kind {source.kind!r}")
        if len(_OPENED) >= 8:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[key] = arr
    return arr


def _is_zarr_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS)


def _is_bare_array(path: Path) -> bool:
    if (path / ".zarray").exists():
        return True
    meta = path / "zarr.json"
    if meta.is_file():
        import json

        try:
            return json.loads(meta.read_text()).get("node_type") == "array"
        except (OSError, ValueError):
            return False
    return False


def open_labels(
    labels: Any,
    voxel_size: Sequence[float] | float | None = None,
    unit: str | None = None,
) -> LabelVolume:
    """Open a label volume from a path, an OME-Zarr image or an array.

    Parameters
    ----------
    labels : path, OmeImage, zarr array, numpy array or array-like
        An OME-Zarr label image (full resolution is used), a bare zarr array, a ``.npy``
        file, any source :func:`ml4paleo.io.open_volume` reads, or an in-memory array
        with axes ``(z, y, x)``.
    voxel_size : float or sequence of 3 floats, optional
        Physical voxel size ``(z, y, x)``; overrides the one stored with ``labels``.
        Voxel units (1.0) when neither is known.
    unit : str, optional
        Unit of the voxel size (e.g. ``"micrometer"``); overrides the stored one.

    Returns
    -------
    LabelVolume

    Raises
    ------
    FileNotFoundError
        When a path does not exist.
    ValueError
        When the volume is not 3D, not integer typed, or the voxel size is invalid.
    """
    from ml4paleo.omezarr import OmeImage, open_image

    stored_vs: Sequence[float] | None = None
    stored_unit = None
    name = repr(type(labels).__name__)
    if isinstance(labels, OmeImage):
        source = _Source("zarr", str(Path(labels.path) / labels.levels[0]))
        shape, dtype = labels.shape, labels.dtype
        stored_vs, stored_unit, name = labels.voxel_size, labels.unit, str(labels.path)
    elif isinstance(labels, str | os.PathLike):
        path = Path(labels)
        name = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if _is_zarr_folder(path) and _is_bare_array(path):
            source = _Source("zarr", str(path))
            arr = _array_of(source)
            shape, dtype = arr.shape, arr.dtype
        elif _is_zarr_folder(path):
            image = open_image(path)
            source = _Source("zarr", str(path / image.levels[0]))
            shape, dtype = image.shape, image.dtype
            stored_vs, stored_unit = image.voxel_size, image.unit
        elif path.suffix.lower() == ".npy":
            source = _Source("npy", str(path))
            arr = _array_of(source)
            shape, dtype = arr.shape, arr.dtype
        else:
            try:
                from ml4paleo.io import open_volume  # noqa: F401
            except ImportError as exc:
                raise ValueError(
                    f"{path}: unsupported label source (use an OME-Zarr image or a .npy file)"
                ) from exc
            source = _Source("volume", str(path))
            vol = _array_of(source)
            shape, dtype = vol.shape, vol.dtype
            stored_vs, stored_unit = getattr(vol, "voxel_size", None), getattr(vol, "unit", None)
    elif hasattr(labels, "shape") and hasattr(labels, "__getitem__") and hasattr(labels, "dtype"):
        source = _Source("array", array=labels)
        shape, dtype = labels.shape, labels.dtype
        stored_vs = getattr(labels, "voxel_size", None)
        stored_unit = getattr(labels, "unit", None)
    else:
        raise ValueError(f"labels must be a path, an OME-Zarr image or an array, got {name}")
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if len(shape) != 3:
        raise ValueError(f"{name}: labels must be 3D (z, y, x), got shape {shape}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name}: label volume is empty, shape {shape}")
    if dtype.kind not in "biu":
        raise ValueError(f"{name}: labels must be integers, got dtype {dtype}")
    vs = _voxel_size(voxel_size if voxel_size is not None else stored_vs)
    return LabelVolume(source, shape, dtype, vs, unit or stored_unit)


def _voxel_size(value: Sequence[float] | float | None) -> tuple[float, float, float]:
    if value is None:
        return (1.0, 1.0, 1.0)
    if isinstance(value, int | float | np.number):
        value = (float(value),) * 3
    vs = tuple(float(v) for v in value)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {vs}")
    return vs


# --------------------------------------------------------------------------- one block


def _present_values(ext: np.ndarray) -> np.ndarray:
    """Sorted non-zero values present in ``ext``."""
    if ext.dtype.kind == "u" and ext.dtype.itemsize <= 2:
        counts = np.bincount(ext.ravel())
        vals = np.flatnonzero(counts)
    else:
        vals = np.unique(ext)
    return vals[vals != 0]


def _compact(ext: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids usable by ``ndimage.find_objects`` (1..n) and the value of each id."""
    if ext.dtype.kind == "u" and ext.dtype.itemsize <= 2:
        ids = vals.astype(np.int64)
        return ext, ids
    compact = np.zeros(ext.shape, np.int32)
    idx = np.searchsorted(vals, ext)
    hit = (idx < len(vals)) & (vals[np.minimum(idx, len(vals) - 1)] == ext)
    compact[hit] = idx[hit] + 1
    return compact, np.arange(1, len(vals) + 1)


def _triangle_measures(v2: np.ndarray, faces: np.ndarray, vs: np.ndarray) -> tuple[float, float]:
    """Surface area and signed enclosed volume contributed by these triangles.

    ``v2`` holds doubled (z, y, x) voxel coordinates; both sums are additive over blocks.
    """
    p = (v2[:, ::-1] * 0.5) * vs[::-1]
    a, b, c = p[faces[:, 0]], p[faces[:, 1]], p[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * float(np.linalg.norm(cross, axis=1).sum())
    volume = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0
    return area, volume


def _process_block(
    block: Block,
    *,
    source: _Source,
    shape: tuple[int, int, int],
    selection: tuple[int, ...] | None,
    work_dir: str,
    write_parts: bool,
    voxel_size: tuple[float, float, float],
    smooth: Smoothing | None = None,
    shared: bool = False,
) -> dict:
    """Triangulate the cells one block owns, for every label, and measure its voxels.

    Writes ``parts/<label>/<block>.npz`` (when ``write_parts``) and
    ``faces/<block>.npz`` (component ids on the six block faces) under ``work_dir``.
    With ``smooth``, the block reads :attr:`Smoothing.halo` more cells on every side and
    its parts also hold the smoothed positions (``p``, see
    :func:`ml4paleo.smooth_surfaces.window_surfaces`).
    """
    from skimage.measure import marching_cubes

    arr = _array_of(source)
    # cells with lower corner in [start, stop) need the points [start, stop + 1)
    read, pad, start, owned_cells = block_window(block.write, shape, smooth.halo if smooth else 0)
    data = np.asarray(arr[read])
    if data.dtype == bool:
        data = data.view(np.uint8)
    window = np.pad(data, pad) if any(p != (0, 0) for p in pad) else data
    # the owned cells' points: what the unsmoothed pass reads (padding included)
    first = owned_cells[0] - start
    ext = window[tuple(slice(int(a), int(w.stop + 1 - b))
                       for a, w, b in zip(first, block.write, start, strict=True))]
    pad = [(int(w.start == 0), int(w.stop == s)) for w, s in zip(block.write, shape, strict=True)]
    origin = np.array([w.start - p[0] for w, p in zip(block.write, pad, strict=True)], np.int64)
    own = tuple(
        slice(p[0], p[0] + w.stop - w.start) for w, p in zip(block.write, pad, strict=True)
    )
    own_start = np.array([w.start for w in block.write], np.int64)
    vs = np.asarray(voxel_size, np.float64)

    vals = _present_values(ext)
    if selection is not None:
        vals = vals[np.isin(vals, np.asarray(selection, dtype=vals.dtype))]
    owned_shape = tuple(w.stop - w.start for w in block.write)
    planes_lo = [np.zeros(_drop(owned_shape, k), np.int32) for k in range(3)]
    planes_hi = [np.zeros(_drop(owned_shape, k), np.int32) for k in range(3)]
    comp_values: list[np.ndarray] = []
    n_comps = 0
    per_label: dict[int, dict] = {}
    if vals.size:
        compact, ids = _compact(ext, vals)
        max_id = int(ids.max())
        ext_boxes = ndimage.find_objects(compact, max_label=max_id)
        owned = compact[own]
        own_boxes = ndimage.find_objects(owned, max_label=max_id)
        for value, ident in zip(vals.tolist(), ids.tolist(), strict=True):
            stats = {"voxels": 0, "bbox_min": None, "bbox_max": None, "area": 0.0,
                     "volume": 0.0, "faces": 0}
            box = own_boxes[ident - 1]
            if box is not None:
                mask = owned[box] == ident
                stats["voxels"] = int(np.count_nonzero(mask))
                lo = np.array([s.start for s in box], np.int64)
                hi = np.array([s.stop - 1 for s in box], np.int64)
                stats["bbox_min"] = (own_start + lo).tolist()
                stats["bbox_max"] = (own_start + hi).tolist()
                comps, n = ndimage.label(mask)
                if n:
                    comps[comps > 0] += n_comps
                    _fill_planes(comps, box, owned_shape, planes_lo, planes_hi)
                    comp_values.append(np.full(n, value, dtype=ext.dtype))
                    n_comps += n
            if smooth is None:
                _mesh_label(stats, compact, ext_boxes[ident - 1], ident, value, origin, vs,
                            write_parts, Path(work_dir), block.name, marching_cubes)
            per_label[int(value)] = stats
    if smooth is not None:
        _mesh_window(per_label, window, start, owned_cells, vals, selection, shape=shape,
                     voxel_size=voxel_size, smooth=smooth, shared=shared,
                     parts=Path(work_dir) / "parts" if write_parts else None, name=block.name)
    if n_comps:
        _save_planes(Path(work_dir) / "faces" / f"{block.name}.npz", planes_lo, planes_hi,
                     np.concatenate(comp_values))
    return {"index": block.index, "name": block.name, "n_comps": n_comps, "labels": per_label}


def _save_planes(path: Path, planes_lo, planes_hi, values) -> None:
    np.savez_compressed(
        path,
        lo0=planes_lo[0], lo1=planes_lo[1], lo2=planes_lo[2],
        hi0=planes_hi[0], hi1=planes_hi[1], hi2=planes_hi[2],
        values=values,
    )


def _drop(shape: Sequence[int], axis: int) -> tuple[int, ...]:
    return tuple(s for i, s in enumerate(shape) if i != axis)


def _fill_planes(comps, box, owned_shape, planes_lo, planes_hi) -> None:
    """Copy the component ids of one label lying on the block's faces into the planes."""
    for k in range(3):
        rest = tuple(s for i, s in enumerate(box) if i != k)
        for at_edge, index, planes in (
            (box[k].start == 0, 0, planes_lo),
            (box[k].stop == owned_shape[k], -1, planes_hi),
        ):
            if at_edge:
                plane = np.take(comps, index, axis=k)
                target = planes[k][rest]
                np.copyto(target, plane, where=plane > 0)


def _mesh_label(stats, compact, ebox, ident, value, origin, vs, write_parts, work_dir, name,
                marching_cubes) -> None:
    """Marching cubes of one label in the owned cells (no smoothing): exact integer parts."""
    crop_sl = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, size))
        for s, size in zip(ebox, compact.shape, strict=True)
    )
    crop = compact[crop_sl] == ident
    if crop.all():
        return
    verts, faces, _, _ = marching_cubes(crop, 0.5, method="lorensen")
    corner = origin + np.array([s.start for s in crop_sl], np.int64)
    v2 = np.rint(verts * 2.0).astype(np.int64) + 2 * corner
    faces = faces.astype(np.int64)
    area, volume = _triangle_measures(v2, faces, vs)
    stats["area"], stats["volume"], stats["faces"] = area, volume, len(faces)
    if write_parts and len(faces):
        folder = work_dir / "parts" / str(value)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{name}.npz", v=v2.astype(np.int32), f=faces.astype(np.int32))


def _mesh_window(per_label, window, start, owned_cells, vals, selection, *, shape, voxel_size,
                 smooth, shared, parts: Path | None, name: str) -> None:
    """Smoothed surfaces of the owned cells, measured and (optionally) written as parts."""
    if shared:
        present = _present_values(window)  # every label shapes the shared interfaces
    else:
        present = vals
    present = [int(v) for v in present]
    if not present:
        return
    found = window_surfaces(window, start, owned_cells, present, shape=shape,
                            voxel_size=voxel_size, smooth=smooth, shared=shared,
                            keep=[int(v) for v in vals])
    for value, surf in found.items():
        stats = per_label.setdefault(value, {"voxels": 0, "bbox_min": None, "bbox_max": None,
                                             "area": 0.0, "volume": 0.0, "faces": 0})
        stats["area"], stats["volume"] = _surface_measures(surf)
        stats["faces"] = len(surf.faces)
        if parts is not None:
            folder = parts / str(value)
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / f"{name}.npz", v=surf.v2.astype(np.int32), p=surf.points,
                     f=surf.faces.astype(np.int32))


def _surface_measures(surf: Surface) -> tuple[float, float]:
    """Area and signed volume of a block's smoothed triangles (additive over blocks)."""
    p = surf.points[:, ::-1]
    a, b, c = p[surf.faces[:, 0]], p[surf.faces[:, 1]], p[surf.faces[:, 2]]
    area = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    volume = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0
    return area, volume


# --------------------------------------------------------------------------- reduce


def _count_components(results: list[dict], blocks: list[Block], work_dir: Path) -> dict[int, int]:
    """Objects per label: block components joined across block faces (6-connectivity)."""
    bases = np.cumsum([0] + [r["n_comps"] for r in results])
    total = int(bases[-1])
    if total == 0:
        return {}
    by_index = {b.index: i for i, b in enumerate(blocks)}
    values = np.concatenate(
        [np.load(work_dir / "faces" / f"{r['name']}.npz")["values"] for r in results
         if r["n_comps"]]
    )
    rows, cols = [], []
    for i, b in enumerate(blocks):
        if not results[i]["n_comps"]:
            continue  # no objects, no face planes written
        planes = np.load(work_dir / "faces" / f"{b.name}.npz")
        for k in range(3):
            nb = list(b.index)
            nb[k] += 1
            j = by_index.get(tuple(nb))
            if j is None or not results[j]["n_comps"]:
                continue
            a = planes[f"hi{k}"].ravel()
            c = np.load(work_dir / "faces" / f"{blocks[j].name}.npz")[f"lo{k}"].ravel()
            both = (a > 0) & (c > 0)
            ga = a[both].astype(np.int64) - 1 + bases[i]
            gc = c[both].astype(np.int64) - 1 + bases[j]
            same = values[ga] == values[gc]
            pairs = np.unique(np.stack([ga[same], gc[same]], axis=1), axis=0)
            rows.append(pairs[:, 0])
            cols.append(pairs[:, 1])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = sparse.coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
    _, root = csgraph.connected_components(graph, directed=False)
    # one (label, object) pair per object: count the distinct roots of each label's pieces
    order = np.lexsort((root, values))
    v, r = values[order], root[order]
    first = np.ones(len(v), bool)
    first[1:] = (v[1:] != v[:-1]) | (r[1:] != r[:-1])
    labels, counts = np.unique(v[first], return_counts=True)
    return {int(v): int(n) for v, n in zip(labels, counts, strict=True)}


def _merge_stats(
    results: list[dict], components: dict[int, int], vol: LabelVolume, surface: str
) -> dict[int, dict]:
    vs = np.asarray(vol.voxel_size)
    merged: dict[int, dict] = {}
    for r in results:
        for value, s in r["labels"].items():
            m = merged.setdefault(
                value,
                {"voxels": 0, "area": 0.0, "volume": 0.0, "faces": 0, "lo": None, "hi": None},
            )
            m["voxels"] += s["voxels"]
            m["area"] += s["area"]
            m["volume"] += s["volume"]
            m["faces"] += s["faces"]
            if s["bbox_min"] is not None:
                lo, hi = np.array(s["bbox_min"]), np.array(s["bbox_max"])
                m["lo"] = lo if m["lo"] is None else np.minimum(m["lo"], lo)
                m["hi"] = hi if m["hi"] is None else np.maximum(m["hi"], hi)
    rows = {}
    for value in sorted(merged):
        m = merged[value]
        if m["voxels"] == 0:
            continue  # only seen in the one-voxel overlap of a block; counted by its owner
        lo, hi = m["lo"], m["hi"]
        lo_p, hi_p = lo * vs, hi * vs
        rows[value] = {
            "label": value,
            "voxel_count": m["voxels"],
            "volume": m["voxels"] * float(np.prod(vs)),
            "mesh_volume": m["volume"],
            "surface_area": m["area"],
            "components": components.get(value, 0),
            "mesh_bodies": None,
            "unit": vol.unit or "",
            "min_x_vox": int(lo[2]),
            "min_y_vox": int(lo[1]),
            "min_z_vox": int(lo[0]),
            "max_x_vox": int(hi[2]),
            "max_y_vox": int(hi[1]),
            "max_z_vox": int(hi[0]),
            "min_x": float(lo_p[2]),
            "min_y": float(lo_p[1]),
            "min_z": float(lo_p[0]),
            "max_x": float(hi_p[2]),
            "max_y": float(hi_p[1]),
            "max_z": float(hi_p[0]),
            "surface": surface,
            "_faces": m["faces"],
        }
    return rows


def _selection(labels_to_mesh: Iterable[int] | None) -> tuple[int, ...] | None:
    if labels_to_mesh is None:
        return None
    sel = tuple(sorted({int(v) for v in labels_to_mesh}))
    if any(v <= 0 for v in sel):
        raise ValueError(f"labels_to_mesh must be positive label values, got {sel}")
    return sel


def _run_pass(
    vol: LabelVolume,
    work_dir: Path,
    *,
    chunk_size: int | Sequence[int],
    selection: tuple[int, ...] | None,
    write_parts: bool,
    executor: Any,
    workers: int | None,
    progress: ProgressCallback | None,
    smooth: Smoothing | None = None,
    shared: bool = False,
) -> tuple[list[Block], list[dict]]:
    if isinstance(chunk_size, int | np.integer) and int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    blocks = block_grid(vol.shape, chunk_size)
    (work_dir / "faces").mkdir(parents=True, exist_ok=True)
    (work_dir / "parts").mkdir(parents=True, exist_ok=True)
    if executor is None and vol.source.kind == "array":
        executor = "serial"  # an in-memory array would be pickled into every task
    fn = functools.partial(
        _process_block,
        source=vol.source,
        shape=vol.shape,
        selection=selection,
        work_dir=str(work_dir),
        write_parts=write_parts,
        voxel_size=vol.voxel_size,
        smooth=smooth,
        shared=shared,
    )
    results = run_blocks(fn, blocks, executor=executor, workers=workers, progress=progress)
    return blocks, results


def label_stats(
    labels: Any,
    voxel_size: Sequence[float] | float | None = None,
    *,
    unit: str | None = None,
    chunk_size: int = 256,
    labels_to_mesh: Iterable[int] | None = None,
    executor: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    smooth: str | Smoothing | None = DEFAULT_SMOOTH,
    shared_boundaries: bool = False,
) -> list[dict]:
    """Per-label statistics of a label volume, computed block by block.

    Parameters
    ----------
    labels : path, OmeImage, zarr array or numpy array
        Label volume ``(z, y, x)``, 0 = background (see :func:`open_labels`).
    voxel_size : float or sequence of 3 floats, optional
        Physical voxel size ``(z, y, x)``; default: the stored one, else 1.0.
    unit : str, optional
        Unit of the voxel size; default: the stored one (empty when unknown).
    chunk_size : int
        Block edge in voxels.
    labels_to_mesh : iterable of int, optional
        Only these label values (default: every non-zero value present).
    executor, workers
        See :func:`ml4paleo.blocks.run_blocks`.
    progress : callable, optional
        ``progress(done, total)`` over blocks.
    smooth : {"none", "light", "strong"}, optional
        Which surface ``surface_area`` and ``mesh_volume`` measure: the marching-cubes
        surface (``"none"``) or the smoothed one :func:`mesh` writes (default
        ``"light"``; see :mod:`ml4paleo.smooth_surfaces`).
    shared_boundaries : bool
        Measure the surfaces smoothed with shared interfaces (as ``mesh(...,
        shared_boundaries=True)``).

    Returns
    -------
    list of dict
        One row per label, keys :data:`STATS_COLUMNS`: ``voxel_count``; ``volume``
        (voxel count x voxel volume) and ``mesh_volume`` (enclosed by the surface) in
        unit³; ``surface_area`` in unit²; ``components`` (face-connected objects);
        ``mesh_bodies`` (None here, filled by :func:`mesh`); the bounding box of the
        voxels, inclusive, in voxel indices (``*_vox``) and at voxel centres in physical
        units; ``surface``: which surface was measured (``"marching-cubes"``,
        ``"smooth-light"``, ``"smooth-strong"``).

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((4, 5, 6), np.uint8)
    >>> vol[1:3, 1:4, 2:5] = 2
    >>> row = label_stats(vol, voxel_size=(2.0, 1.0, 1.0))[0]
    >>> row["label"], row["voxel_count"], row["volume"], row["components"]
    (2, 18, 36.0, 1)
    """
    params = smoothing_params(smooth)
    vol = open_labels(labels, voxel_size, unit)
    selection = _selection(labels_to_mesh)
    work_dir = _work_dir(None)
    try:
        blocks, results = _run_pass(
            vol, work_dir, chunk_size=chunk_size, selection=selection, write_parts=False,
            executor=executor, workers=workers, progress=progress, smooth=params,
            shared=shared_boundaries,
        )
        rows = _merge_stats(results, _count_components(results, blocks, work_dir), vol,
                            surface_name(params))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return [_public(r) for r in rows.values()]


def _public(row: dict) -> dict:
    return {k: row[k] for k in STATS_COLUMNS}


def _work_dir(parent: Path | None) -> Path:
    if parent is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="ml4paleo-mesh-"))
    path = parent / f".mesh-work-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- weld + write


def _weld(
    files: list[Path], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Join block parts into one mesh: shared vertices merged by exact position.

    Returns doubled (z, y, x) integer vertex coordinates sorted by position, faces in
    a canonical order (each face rotated to start at its smallest index, winding kept,
    then sorted), so the result does not depend on the block size, and the smoothed
    ``(z, y, x)`` positions when the parts hold them (else None).

    Raises
    ------
    RuntimeError
        When two blocks computed different smoothed positions for one vertex (a seam).
    """
    verts, points, faces, offset = [], [], [], 0
    for f in files:
        with np.load(f) as part:
            v, fc = part["v"], part["f"].astype(np.int64)
            if "p" in part:
                points.append(part["p"])
        verts.append(v)
        faces.append(fc + offset)
        offset += len(v)
    v_all = np.concatenate(verts)
    f_all = np.concatenate(faces)
    del verts, faces
    dims = np.array([2 * s + 1 for s in shape], np.int64)
    k = v_all.astype(np.int64) + 1  # doubled coordinates start at -1
    keys = (k[:, 0] * dims[1] + k[:, 1]) * dims[2] + k[:, 2]
    del k
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    del keys
    inverse = inverse.reshape(-1)
    vertices = v_all[first]
    smoothed = None
    if points:
        p_all = np.concatenate(points)
        del points
        smoothed = p_all[first]
        step = 1 << 20  # compare a piece at a time: no second copy of every position
        for i in range(0, len(p_all), step):
            if not np.array_equal(smoothed[inverse[i : i + step]], p_all[i : i + step]):
                raise RuntimeError("blocks disagree on smoothed vertex positions: the "
                                   "smoothing halo does not cover its support (a seam)")
        del p_all
    f_all = inverse[f_all]
    return vertices, _canonical_faces(f_all), smoothed


def _canonical_faces(faces: np.ndarray) -> np.ndarray:
    start = np.argmin(faces, axis=1)
    cols = (start[:, None] + np.arange(3)) % 3
    faces = np.take_along_axis(faces, cols, axis=1)
    order = np.lexsort((faces[:, 2], faces[:, 1], faces[:, 0]))
    return faces[order]


def _physical(v2: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Doubled (z, y, x) voxel coordinates -> (x, y, z) physical coordinates."""
    return (v2[:, ::-1].astype(np.float64) * 0.5) * np.asarray(voxel_size, np.float64)[::-1]


def simplify_closed(vertices: np.ndarray, faces: np.ndarray, reduction: float, name: str = "mesh"):
    """Decimate a closed mesh, keeping it closed; fall back to the input if it breaks.

    Parameters
    ----------
    vertices, faces : ndarray
        The closed input mesh.
    reduction : float
        Fraction of the faces to remove, in (0, 1): 0.9 keeps about 10 %.
    name : str
        Used in the warning.

    Returns
    -------
    vertices, faces, simplified : ndarray, ndarray, bool
        The decimated mesh and True, or the input and False when the decimated mesh is
        not watertight, not consistently wound, changed its topology (Euler number) or
        turned inside out.
    """
    import fast_simplification
    import trimesh

    if not 0.0 < reduction < 1.0:
        raise ValueError(f"simplify must be a fraction of faces to remove in (0, 1), got {reduction}")
    before = trimesh.Trimesh(vertices, faces, process=False)
    pts, tri = fast_simplification.simplify(
        np.ascontiguousarray(vertices, np.float64),
        np.ascontiguousarray(faces, np.int64),
        target_reduction=reduction,
    )
    after = trimesh.Trimesh(pts, tri, process=False)
    after.remove_unreferenced_vertices()
    if (
        len(after.faces)
        and after.is_watertight
        and after.is_winding_consistent
        and after.euler_number == before.euler_number
        and after.volume > 0
    ):
        return np.asarray(after.vertices), np.asarray(after.faces), True
    log.warning("%s: simplification did not keep the mesh closed; writing it unsimplified", name)
    return vertices, faces, False


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write a mesh with trimesh, atomically (temp file + rename).

    Parameters
    ----------
    vertices : (N, 3) float array
        Vertex coordinates.
    faces : (M, 3) int array
        Triangles.
    path : path
        Output file.
    fmt : str, optional
        One of :data:`MESH_FORMATS` (binary STL, OBJ, binary PLY, GLB); default: the suffix.

    Returns
    -------
    Path
    """
    import trimesh

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    kwargs: dict = {}
    if fmt == "obj":
        kwargs = {"include_normals": False, "include_color": False, "include_texture": False}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            if fmt == "stl":
                _export_stl_pieces(vertices, faces, fh)
            else:
                trimesh.exchange.export.export_mesh(mesh, fh, file_type=fmt, **kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_stl_pieces(vertices, faces, fh, step: int = 250_000) -> None:
    """Binary STL through trimesh's exporter, a piece of faces at a time.

    The bytes equal one ``export_stl`` call on the whole mesh; memory stays bounded by
    the piece instead of growing to several hundred bytes per face of the whole mesh.
    """
    import trimesh
    from trimesh.exchange.stl import _stl_dtype_header, export_stl

    header = np.zeros(1, dtype=_stl_dtype_header)
    header["face_count"] = len(faces)
    fh.write(header.tobytes())
    for start in range(0, len(faces), step):
        piece = trimesh.Trimesh(vertices, faces[start : start + step], process=False)
        fh.write(memoryview(export_stl(piece))[header.itemsize :])


def body_count(n_vertices: int, faces: np.ndarray) -> int:
    """Connected surface pieces of a mesh whose vertices are all used by ``faces``."""
    if len(faces) == 0:
        return 0
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)),
                              shape=(n_vertices, n_vertices))
    n, _ = csgraph.connected_components(graph, directed=False)
    return int(n)


def write_stats_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write label statistics (:data:`STATS_COLUMNS`) to a CSV file atomically."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STATS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in STATS_COLUMNS})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


def _parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in re.split(r"[,\s]+", formats) if f]
    out = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    bad = [f for f in out if f not in MESH_FORMATS]
    if bad or not out:
        raise ValueError(f"unknown mesh format(s) {bad or formats}: use {', '.join(MESH_FORMATS)}")
    return out


def mesh(
    labels: Any,
    out_dir: str | os.PathLike,
    *,
    chunk_size: int = 256,
    formats: str | Sequence[str] = ("stl",),
    simplify: float | None = None,
    labels_to_mesh: Iterable[int] | None = None,
    executor: Any = None,
    progress: ProgressCallback | None = None,
    voxel_size: Sequence[float] | float | None = None,
    unit: str | None = None,
    workers: int | None = None,
    stats_path: str | os.PathLike | None = None,
    smooth: str | Smoothing | None = DEFAULT_SMOOTH,
    shared_boundaries: bool = False,
) -> dict:
    """Mesh every label of a label volume into closed surfaces, block by block.

    Parameters
    ----------
    labels : path, OmeImage, zarr array or numpy array
        Label volume ``(z, y, x)``, 0 = background (see :func:`open_labels`).
    out_dir : path
        Folder for ``<label>.<ext>`` files and ``stats.csv`` (created).
    chunk_size : int
        Block edge in voxels; the result does not depend on it.
    formats : str or sequence of str
        Any of ``"stl"`` (binary), ``"obj"``, ``"ply"`` (binary), ``"glb"``.
    simplify : float, optional
        Fraction of faces to remove (0.9 keeps ~10 %); a label whose decimated mesh is not
        closed any more is written unsimplified, with a warning.
    labels_to_mesh : iterable of int, optional
        Only these label values (default: every non-zero value present).
    executor : None, "serial", "processes", Dask address or Client
        See :func:`ml4paleo.blocks.run_blocks` (in-memory arrays default to serial).
    progress : callable, optional
        ``progress(done, total)``: one step per block plus a last one for welding and
        writing the meshes (``total = blocks + 1``).
    voxel_size : float or sequence of 3 floats, optional
        Physical voxel size ``(z, y, x)``; default: the stored one, else 1.0.
    unit : str, optional
        Unit of the voxel size; default: the stored one (empty when unknown).
    workers : int, optional
        Local worker processes.
    stats_path : path, optional
        Where to write the statistics CSV (default ``out_dir / "stats.csv"``).
    smooth : {"none", "light", "strong"}, optional
        ``"none"``: the stair-stepped marching-cubes surface.  ``"light"`` (default) and
        ``"strong"``: the same mesh with its vertices moved by constrained Taubin
        smoothing (at most a quarter voxel per axis; see :mod:`ml4paleo.smooth_surfaces`):
        still closed, manifold and seam-free, surface area within ~1.5 % (light) or
        ~1 % (strong) on balls instead of +9 %.  Statistics measure this surface.
    shared_boundaries : bool
        Smooth all labels together so touching labels use identical vertex positions on
        the interface they share (multi-material models).

    Returns
    -------
    dict
        ``out_dir``, ``files`` ({label: [paths]}), ``stats`` (rows as from
        :func:`label_stats`, with ``mesh_bodies``), ``stats_csv``, ``voxel_size``,
        ``unit``, ``blocks``, ``faces`` ({label: faces written}), ``simplified``
        ({label: bool}), ``surface`` (``"marching-cubes"`` or ``"smooth-<level>"``).

    Raises
    ------
    FileNotFoundError, ValueError
        Bad input (missing file, not a 3D integer volume, unknown format...).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> vol = np.zeros((20, 20, 20), np.uint8)
    >>> vol[4:16, 4:16, 4:16] = 1
    >>> out = mesh(vol, tempfile.mkdtemp(), chunk_size=8, formats=("stl", "ply"))
    >>> sorted(p.name for p in out["files"][1]), out["stats"][0]["mesh_bodies"]
    (['1.ply', '1.stl'], 1)
    """
    fmts = _parse_formats(formats)
    params = smoothing_params(smooth)
    if simplify is not None and not 0.0 < float(simplify) < 1.0:
        raise ValueError(f"simplify must be a fraction of faces to remove in (0, 1), got {simplify}")
    vol = open_labels(labels, voxel_size, unit)
    selection = _selection(labels_to_mesh)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = _work_dir(out_dir)
    n_blocks = len(block_grid(vol.shape, chunk_size))

    def block_progress(done: int, total: int) -> None:
        progress(done, total + 1)  # the last step: welding and writing the meshes

    try:
        blocks, results = _run_pass(
            vol, work_dir, chunk_size=chunk_size, selection=selection, write_parts=True,
            executor=executor, workers=workers, progress=block_progress if progress else None,
            smooth=params, shared=shared_boundaries,
        )
        rows = _merge_stats(results, _count_components(results, blocks, work_dir), vol,
                            surface_name(params))
        files: dict[int, list[Path]] = {}
        faces_written: dict[int, int] = {}
        simplified: dict[int, bool] = {}
        for value, row in rows.items():
            parts = sorted((work_dir / "parts" / str(value)).glob("*.npz"))
            if not parts:
                log.warning("label %s has no surface (fills the volume?)", value)
                row["mesh_bodies"] = 0
                continue
            v2, faces, smoothed = _weld(parts, vol.shape)
            if smoothed is None:
                verts = _physical(v2, vol.voxel_size)
            else:
                verts = smoothed[:, ::-1]  # (x, y, z): a view, no copy
            del v2, smoothed
            row["mesh_bodies"] = body_count(len(verts), faces)
            did = False
            if simplify is not None:
                verts, faces, did = simplify_closed(verts, faces, float(simplify), f"label {value}")
            simplified[value] = did
            faces_written[value] = len(faces)
            files[value] = [write_mesh(verts, faces, out_dir / f"{value}.{f}", f) for f in fmts]
            del verts, faces
        stats = [_public(r) for r in rows.values()]
        stats_csv = write_stats_csv(stats, stats_path or out_dir / "stats.csv")
        if progress is not None:
            progress(n_blocks + 1, n_blocks + 1)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if not rows:
        log.warning("no labels to mesh in %s", labels if isinstance(labels, str | os.PathLike) else "array")
    return {
        "out_dir": out_dir,
        "files": files,
        "stats": stats,
        "stats_csv": stats_csv,
        "voxel_size": vol.voxel_size,
        "unit": vol.unit,
        "blocks": n_blocks,
        "faces": faces_written,
        "simplified": simplified,
        "surface": surface_name(params),
    }
