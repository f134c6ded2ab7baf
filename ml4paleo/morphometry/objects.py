"""Per-object measurements: face-connected components of a class, joined across blocks.

Each block labels the objects of its own voxels (6-connectivity, the connectivity the
marching-cubes surface realises, as in :mod:`ml4paleo.meshing`) and reduces each
*piece* to exact sums: voxel count, first voxel, coordinate sums, central second
moments, bounding box, surface area and thickness sum. The ids on the block's six faces
go back with them; pieces that touch across a face between two blocks, with the same
class, are joined by a union-find (scipy's connected components on the pair graph), so
objects span any number of blocks and the table does not depend on the block size.

Measures (physical units, ``voxel_size`` ``(z, y, x)``):

- ``volume`` = voxels x voxel volume; ``equivalent_diameter = (6 V / pi)^(1/3)``;
- ``surface_area``: the object's closed marching-cubes surface (Lorensen, level 0.5),
  summed cell by cell; a cell's face-connected corner groups are attributed to the
  object of their highest corner, so touching objects never share area;
- ``sphericity = pi^(1/3) (6 V)^(2/3) / A`` (1 for a ball; digital balls give ~0.9);
- centroid: mean voxel centre, mapped by ``index_to_world`` (default: index x voxel
  size, in ``(x, y, z)``);
- principal axes from the second moments of the voxel boxes (voxel centres'
  covariance plus ``s^2 / 12`` per axis): lengths ``2 sqrt(5 lambda)`` of the solid
  ellipsoid with the same moments, longest first; directions as ``(x, y, z)`` unit
  vectors in the scan's frame;
- bounding box in voxel indices (inclusive) and its physical size;
- ``touches_border``: the object reaches the edge of the analysed box (it may be cut).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from ml4paleo._fs import atomic_writer
from ml4paleo.morphometry.configurations import CORNERS, area_lut, cell_components, configurations

__all__ = [
    "OBJECT_COLUMNS",
    "block_pieces",
    "empty_pieces",
    "load_planes",
    "merge_pieces",
    "object_rows",
    "save_planes",
    "write_objects_csv",
]

#: columns of the per-object CSV, in order
OBJECT_COLUMNS = (
    "object_id", "class_value", "class_name", "voxel_count", "volume", "surface_area",
    "equivalent_diameter", "sphericity", "mean_thickness",
    "centroid_x", "centroid_y", "centroid_z",
    "bbox_min_x", "bbox_min_y", "bbox_min_z", "bbox_max_x", "bbox_max_y", "bbox_max_z",
    "size_x", "size_y", "size_z",
    "axis1_length", "axis2_length", "axis3_length",
    "axis1_x", "axis1_y", "axis1_z", "axis2_x", "axis2_y", "axis2_z",
    "axis3_x", "axis3_y", "axis3_z",
    "touches_border", "unit",
)

_FACE_STRUCT = ndimage.generate_binary_structure(3, 1)
_PIECE_FIELDS = ("value", "count", "first", "sum", "central", "lo", "hi", "area", "thickness_sum",
                 "touches")


def empty_pieces() -> dict:
    """A block result with no pieces."""
    return {
        "value": np.zeros(0, np.int64), "count": np.zeros(0, np.int64),
        "first": np.zeros(0, np.int64), "sum": np.zeros((0, 3), np.int64),
        "central": np.zeros((0, 6)), "lo": np.zeros((0, 3), np.int64),
        "hi": np.zeros((0, 3), np.int64), "area": np.zeros(0), "thickness_sum": np.zeros(0),
        "touches": np.zeros(0, bool), "planes": {},
    }


def block_pieces(
    ext: np.ndarray,
    value: int,
    start: Sequence[int],
    volume_shape: Sequence[int],
    box: Sequence[tuple[int, int]],
    voxel_size: Sequence[float],
    thickness: np.ndarray | None = None,
) -> dict:
    """Pieces of one class in one block, reduced to sums that merge exactly.

    Parameters
    ----------
    ext : numpy.ndarray of bool
        The class (inside the ROI) on the block's voxels grown by one voxel on every
        side, background outside the analysed box: shape ``block + 2``.
    value : int
        Class value.
    start : 3 ints
        Volume index of the block's first voxel.
    volume_shape : 3 ints
        Shape of the whole volume (for flat voxel indices).
    box : 3 pairs of int
        ``(start, stop)`` of the analysed box per axis, volume indices.
    voxel_size : 3 floats
        ``(z, y, x)``.
    thickness : numpy.ndarray, optional
        Local thickness on the block's voxels (summed per piece).

    Returns
    -------
    dict
        Arrays per piece (``value``, ``count``, ``first``, ``sum``, ``central``, ``lo``,
        ``hi``, ``area``, ``thickness_sum``, ``touches``) and ``planes``: for each face
        ``"lo0"``.. ``"hi2"``, the flat positions and piece ids (1-based) on it.
    """
    owned = ext[1:-1, 1:-1, 1:-1]
    lab, n = ndimage.label(owned, structure=_FACE_STRUCT)
    if n == 0:
        return empty_pieces()
    start = np.asarray(start, np.int64)
    nz = np.nonzero(lab)
    ids = lab[nz]
    count = np.bincount(ids, minlength=n + 1)[1:].astype(np.int64)
    # nonzero() walks C order, and a translation keeps C order: the first hit of an id is
    # the piece's first voxel in the whole volume
    _, first_at = np.unique(ids, return_index=True)
    first_local = np.stack([c[first_at] for c in nz], axis=1).astype(np.int64) + start
    shape = np.asarray(volume_shape, np.int64)
    first = (first_local[:, 0] * shape[1] + first_local[:, 1]) * shape[2] + first_local[:, 2]
    sums = np.stack([np.bincount(ids, weights=c, minlength=n + 1)[1:] for c in nz], axis=1)
    mean = sums / count[:, None]
    centred = [c - mean[ids - 1, i] for i, c in enumerate(nz)]
    central = np.stack([np.bincount(ids, weights=centred[a] * centred[b], minlength=n + 1)[1:]
                        for a, b in _MOMENT_PAIRS], axis=1)
    boxes = ndimage.find_objects(lab)
    lo = np.array([[s.start for s in b] for b in boxes], np.int64) + start
    hi = np.array([[s.stop - 1 for s in b] for b in boxes], np.int64) + start
    box_lo = np.array([b[0] for b in box], np.int64)
    box_hi = np.array([b[1] - 1 for b in box], np.int64)
    touches = np.any((lo == box_lo) | (hi == box_hi), axis=1)
    tsum = (np.bincount(ids, weights=thickness[nz], minlength=n + 1)[1:]
            if thickness is not None else np.zeros(n))
    planes = {}
    for k in range(3):
        for side, index in (("lo", 0), ("hi", -1)):
            plane = np.take(lab, index, axis=k).ravel()
            pos = np.flatnonzero(plane)
            planes[f"{side}{k}"] = (pos.astype(np.int32), plane[pos].astype(np.int32))
    return {
        "value": np.full(n, int(value), np.int64),
        "count": count,
        "first": first,
        "sum": np.rint(sums).astype(np.int64) + count[:, None] * start,
        "central": central,
        "lo": lo,
        "hi": hi,
        "area": _piece_areas(ext, lab, n, voxel_size),
        "thickness_sum": tsum,
        "touches": touches,
        "planes": planes,
    }


# (z, z), (y, y), (x, x), (z, y), (z, x), (y, x)
_MOMENT_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def _piece_areas(ext: np.ndarray, lab: np.ndarray, n: int, voxel_size: Sequence[float]) -> np.ndarray:
    """Closed surface area of each piece, from the cells whose groups it anchors."""
    codes = configurations(ext)  # vertices start .. stop of the block, inclusive
    surface = (codes != 0) & (codes != 255)
    pos = np.nonzero(surface)
    code = codes[pos]
    sub_lut, anchor_lut = cell_components()
    area = area_lut(voxel_size)
    corner = np.asarray(CORNERS, np.int64)
    out = np.zeros(n + 1)
    b = np.asarray(lab.shape, np.int64)
    for j in range(4):
        anchor = anchor_lut[code, j].astype(np.int64)
        has = anchor >= 0
        if not has.any():
            continue
        c = corner[np.where(has, anchor, 0)]
        # the anchor voxel in block coordinates (ext index - 1)
        v = [pos[i] + c[:, i] - 1 for i in range(3)]
        owned = has & np.all([(v[i] >= 0) & (v[i] < b[i]) for i in range(3)], axis=0)
        if not owned.any():
            continue
        piece = lab[v[0][owned], v[1][owned], v[2][owned]]
        out += np.bincount(piece, weights=area[sub_lut[code[owned], j]], minlength=n + 1)
    return out[1:]


_FACES = tuple(f"{side}{k}" for k in range(3) for side in ("lo", "hi"))


def save_planes(path: str | os.PathLike, planes: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Store a block's face planes (so the main process does not hold them all)."""
    arrays = {}
    for face in _FACES:
        pos, ids = planes.get(face, (np.zeros(0, np.int32), np.zeros(0, np.int32)))
        arrays[f"pos_{face}"], arrays[f"id_{face}"] = pos, ids
    with atomic_writer(path, "wb", fsync=False) as fh:
        np.savez(fh, **arrays)
    return str(path)


def load_planes(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Face planes written by :func:`save_planes`."""
    with np.load(path) as data:
        return {face: (data[f"pos_{face}"], data[f"id_{face}"]) for face in _FACES}


def merge_pieces(results: Sequence[dict], grid_index: Sequence[tuple[int, int, int]]) -> dict:
    """Join block pieces into objects.

    Parameters
    ----------
    results : sequence of dict
        :func:`block_pieces` results (one dict per block, classes concatenated; ids in
        ``planes`` are 1-based positions in the block's arrays). ``planes`` may be the
        path :func:`save_planes` wrote them to.
    grid_index : sequence of 3-tuples
        Grid position of each block (blocks adjacent along an axis share a face).

    Returns
    -------
    dict
        One entry per object, the same fields as a piece, objects ordered by class
        value then first voxel (so the order does not depend on the blocks).
    """
    counts = [len(r["count"]) for r in results]
    bases = np.cumsum([0] + counts)
    total = int(bases[-1])
    if total == 0:
        return {k: v for k, v in empty_pieces().items() if k != "planes"}
    cat = {k: np.concatenate([r[k] for r in results]) for k in _PIECE_FIELDS}
    by_index = {tuple(g): i for i, g in enumerate(grid_index)}
    cache: dict[int, dict] = {}

    def planes_of(i: int) -> dict:
        p = results[i]["planes"]
        if not isinstance(p, str | os.PathLike):
            return p
        if i not in cache:
            if len(cache) > 8:
                cache.pop(next(iter(cache)))
            cache[i] = load_planes(p)
        return cache[i]

    rows, cols = [], []
    for i, g in enumerate(grid_index):
        if not counts[i]:
            continue
        for k in range(3):
            nb = list(g)
            nb[k] += 1
            j = by_index.get(tuple(nb))
            if j is None or not counts[j]:
                continue
            pa, ia = planes_of(i)[f"hi{k}"]
            pc, ic = planes_of(j)[f"lo{k}"]
            _, wa, wc = np.intersect1d(pa, pc, assume_unique=True, return_indices=True)
            if not len(wa):
                continue
            ga = ia[wa].astype(np.int64) - 1 + bases[i]
            gc = ic[wc].astype(np.int64) - 1 + bases[j]
            same = cat["value"][ga] == cat["value"][gc]
            rows.append(ga[same])
            cols.append(gc[same])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = sparse.coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
    n_obj, root = csgraph.connected_components(graph, directed=False)
    count = np.bincount(root, weights=cat["count"], minlength=n_obj).astype(np.int64)
    first = np.full(n_obj, np.iinfo(np.int64).max)
    np.minimum.at(first, root, cat["first"])
    value = np.zeros(n_obj, np.int64)
    value[root] = cat["value"]
    sums = np.stack([np.bincount(root, weights=cat["sum"][:, i], minlength=n_obj)
                     for i in range(3)], axis=1)
    mean_p = cat["sum"] / cat["count"][:, None]
    d = mean_p - (sums / count[:, None])[root]
    central = np.stack([
        np.bincount(root, weights=cat["central"][:, m] + cat["count"] * d[:, a] * d[:, b],
                    minlength=n_obj)
        for m, (a, b) in enumerate(_MOMENT_PAIRS)], axis=1)
    lo = np.full((n_obj, 3), np.iinfo(np.int64).max)
    hi = np.full((n_obj, 3), -1, np.int64)
    np.minimum.at(lo, root, cat["lo"])
    np.maximum.at(hi, root, cat["hi"])
    touches = np.zeros(n_obj, bool)
    np.logical_or.at(touches, root, cat["touches"])
    merged = {
        "value": value, "count": count, "first": first,
        "sum": np.rint(sums).astype(np.int64), "central": central, "lo": lo, "hi": hi,
        "area": np.bincount(root, weights=cat["area"], minlength=n_obj),
        "thickness_sum": np.bincount(root, weights=cat["thickness_sum"], minlength=n_obj),
        "touches": touches,
    }
    order = np.lexsort((first, value))
    return {k: v[order] for k, v in merged.items()}


def _default_world(voxel_size: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    vs = np.asarray(voxel_size, np.float64)

    def index_to_world(zyx: np.ndarray) -> np.ndarray:
        return (np.asarray(zyx, np.float64) * vs)[:, ::-1]

    return index_to_world


def object_rows(
    objects: Mapping[str, np.ndarray],
    voxel_size: Sequence[float],
    *,
    unit: str | None = None,
    class_names: Mapping[int, str] | None = None,
    index_to_world: Callable[[np.ndarray], np.ndarray] | None = None,
    with_thickness: bool = False,
) -> list[dict]:
    """Table rows (keys :data:`OBJECT_COLUMNS`) from :func:`merge_pieces`' objects.

    Parameters
    ----------
    objects : dict of arrays
        From :func:`merge_pieces`.
    voxel_size : 3 floats
        ``(z, y, x)``.
    unit : str, optional
        Unit of the voxel size (written in every row).
    class_names : dict, optional
        Class value -> name.
    index_to_world : callable, optional
        ``f(points)`` with ``points`` an ``(n, 3)`` float array of voxel indices
        ``(z, y, x)`` (fractional for centroids), returning ``(n, 3)`` world
        coordinates ``(x, y, z)``. Default: index x voxel size.
    with_thickness : bool
        Fill ``mean_thickness`` (when the thickness was measured).
    """
    vs = np.asarray(voxel_size, np.float64)
    n = len(objects["count"])
    if n == 0:
        return []
    to_world = index_to_world or _default_world(vs)
    count = objects["count"].astype(np.float64)
    centroid_index = objects["sum"] / count[:, None]
    world = np.asarray(to_world(centroid_index), np.float64)
    if world.shape != (n, 3):
        raise ValueError(f"index_to_world must map (n, 3) points to (n, 3), got {world.shape}")
    vox = float(np.prod(vs))
    names = class_names or {}
    rows = []
    for i in range(n):
        volume = float(count[i]) * vox
        area = float(objects["area"][i])
        cov = np.zeros((3, 3))
        for m, (a, b) in enumerate(_MOMENT_PAIRS):
            cov[a, b] = cov[b, a] = objects["central"][i, m] / count[i] * vs[a] * vs[b]
        cov += np.diag(vs * vs / 12.0)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        lengths = 2.0 * np.sqrt(5.0 * np.clip(evals[order], 0.0, None))
        axes = []
        for j in order:
            v = evecs[::-1, j]  # (x, y, z)
            if v[np.argmax(np.abs(v))] < 0:
                v = -v
            axes.append(v)
        lo, hi = objects["lo"][i], objects["hi"][i]
        value = int(objects["value"][i])
        row: dict[str, Any] = {
            "object_id": i + 1,
            "class_value": value,
            "class_name": names.get(value, f"class {value}"),
            "voxel_count": int(count[i]),
            "volume": volume,
            "surface_area": area,
            "equivalent_diameter": (6.0 * volume / math.pi) ** (1.0 / 3.0),
            "sphericity": (math.pi ** (1 / 3) * (6.0 * volume) ** (2 / 3) / area) if area > 0 else None,
            "mean_thickness": (float(objects["thickness_sum"][i]) / count[i]) if with_thickness else None,
            "centroid_x": float(world[i, 0]),
            "centroid_y": float(world[i, 1]),
            "centroid_z": float(world[i, 2]),
            "bbox_min_x": int(lo[2]), "bbox_min_y": int(lo[1]), "bbox_min_z": int(lo[0]),
            "bbox_max_x": int(hi[2]), "bbox_max_y": int(hi[1]), "bbox_max_z": int(hi[0]),
            "size_x": float((hi[2] - lo[2] + 1) * vs[2]),
            "size_y": float((hi[1] - lo[1] + 1) * vs[1]),
            "size_z": float((hi[0] - lo[0] + 1) * vs[0]),
            "touches_border": bool(objects["touches"][i]),
            "unit": unit or "",
        }
        for j in range(3):
            row[f"axis{j + 1}_length"] = float(lengths[j])
            for k, name in enumerate("xyz"):
                row[f"axis{j + 1}_{name}"] = float(axes[j][k])
        rows.append(row)
    return rows


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


def write_objects_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write object rows (:data:`OBJECT_COLUMNS`) to a CSV file atomically."""
    path = Path(path)
    with atomic_writer(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=OBJECT_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in OBJECT_COLUMNS})
    return path
