"""Per-block marching cubes: each block triangulates the cells it owns, for every label.

The surface of label ``L`` is the 0.5 iso-surface of the binary mask ``labels == L``,
padded with background outside the volume so every object is closed. A block owns the
marching-cubes cells whose lower corner lies in its write region (the first block along an
axis also owns the padding cell), and reads a one-voxel halo on its upper side so those
cells are complete. Every cell is therefore triangulated exactly once, by exactly one
block, with the same corner values as in a whole-volume run.

With smoothing (:mod:`~ml4paleo.meshing.smooth`) a block reads the smoothing support as
halo on every side, smooths the local mesh and keeps the triangles of the cells it owns,
with their smoothed positions (bit-identical wherever a vertex is computed).

Blocks stream their triangles to ``.npz`` parts in a work folder (welded per label by
:mod:`~ml4paleo.meshing.weld`) and return per-label measures; the component ids on the
six faces of each block let :mod:`~ml4paleo.meshing.stats` join objects across blocks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ml4paleo.blocks import Block, ProgressCallback, Shared, Stage, block_grid, run
from ml4paleo.formats import OmeImage
from ml4paleo.io import Volume, open_any, voxel_size_or_default

from .smooth import Smoothing, Surface, block_window, window_surfaces

__all__ = ["LabelVolume", "PassResult", "mesh_block", "open_labels", "run_pass", "selection_of"]

#: retries of a block after a transient error (I/O, a lost worker)
RETRIES = 2


@dataclass(frozen=True)
class LabelVolume:
    """A label volume opened for meshing: the lazy volume, its voxel size and unit.

    Attributes
    ----------
    volume : Volume
        From :func:`ml4paleo.io.open_any` (pickles as a reference for workers).
    voxel_size : tuple of 3 floats
        ``(z, y, x)``: the one given, else the stored one, else 1.0.
    unit : str or None
    in_memory : bool
        The labels were given as an array (not a path or an image): run in this process.
    """

    volume: Volume
    voxel_size: tuple[float, float, float]
    unit: str | None
    in_memory: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype


def open_labels(
    labels: Any,
    voxel_size: Sequence[float] | float | None = None,
    unit: str | None = None,
) -> LabelVolume:
    """Open a label volume from a path, an OME-Zarr image or an array.

    Parameters
    ----------
    labels : path, OmeImage, Volume, zarr array, numpy array or array-like
        Anything :func:`ml4paleo.io.open_any` opens (an OME-Zarr label image is read at
        full resolution), with axes ``(z, y, x)``.
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
    if isinstance(labels, str | os.PathLike):
        path = Path(labels)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        name = str(path)
    else:
        name = str(getattr(labels, "path", None) or repr(type(labels).__name__))
        shape = getattr(labels, "shape", None)
        if shape is not None and len(shape) != 3:
            raise ValueError(f"{name}: labels must be 3D (z, y, x), got shape {tuple(shape)}")
    volume = open_any(labels)
    if any(s == 0 for s in volume.shape):
        raise ValueError(f"{name}: label volume is empty, shape {volume.shape}")
    if volume.dtype.kind not in "biu":
        raise ValueError(f"{name}: labels must be integers, got dtype {volume.dtype}")
    vs = voxel_size_or_default(voxel_size if voxel_size is not None else volume.voxel_size)
    in_memory = not isinstance(labels, str | os.PathLike | OmeImage)
    return LabelVolume(volume, vs, unit or volume.unit, in_memory)


def selection_of(labels_to_mesh: Iterable[int] | None) -> tuple[int, ...] | None:
    """The label values asked for, sorted and checked positive (None: every label)."""
    if labels_to_mesh is None:
        return None
    sel = tuple(sorted({int(v) for v in labels_to_mesh}))
    if any(v <= 0 for v in sel):
        raise ValueError(f"labels_to_mesh must be positive label values, got {sel}")
    return sel


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


def mesh_block(
    block: Block,
    *,
    source: Shared,
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
    With ``smooth`` the block reads :attr:`Smoothing.halo` more cells on every side and
    its parts also hold the smoothed positions (``p``; see
    :func:`ml4paleo.meshing.smooth.window_surfaces`); ``shared`` smooths all labels as one
    graph (identical positions on shared interfaces).

    Returns
    -------
    dict
        ``index``, ``name``, ``n_comps`` (face-connected components of the block's own
        voxels) and ``labels`` ({value: voxels, bbox, area, volume, faces}).
    """
    from skimage.measure import marching_cubes

    volume = source.get()
    # cells with lower corner in [start, stop) need the points [start, stop + 1); the
    # smoothing needs its support around them
    read, pad, start, owned_cells = block_window(block.write, shape, smooth.halo if smooth else 0)
    data = np.asarray(volume[read])
    if data.dtype == bool:
        data = data.view(np.uint8)
    window = np.pad(data, pad) if any(p != (0, 0) for p in pad) else data
    first = owned_cells[0] - start  # the owned cells' points, padding included
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
                            Path(work_dir) / "parts" if write_parts else None, block.name,
                            marching_cubes)
            per_label[int(value)] = stats
    if smooth is not None:
        _mesh_window(per_label, window, start, owned_cells, vals, shape=shape,
                     voxel_size=voxel_size, smooth=smooth, shared=shared,
                     parts=Path(work_dir) / "parts" if write_parts else None, name=block.name)
    if n_comps:
        _save_planes(Path(work_dir) / "faces" / f"{block.name}.npz", planes_lo, planes_hi,
                     np.concatenate(comp_values))
    return {"index": block.index, "name": block.name, "n_comps": n_comps, "labels": per_label}


def _mesh_label(stats, compact, ebox, ident, value, origin, vs, parts: Path | None, name: str,
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
    if parts is not None and len(faces):
        folder = parts / str(value)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{name}.npz", v=v2.astype(np.int32), f=faces.astype(np.int32))


def _mesh_window(per_label, window, start, owned_cells, vals, *, shape, voxel_size, smooth,
                 shared, parts: Path | None, name: str) -> None:
    """Smoothed surfaces of the owned cells, measured and (optionally) written as parts."""
    keep = [int(v) for v in vals]
    # shared: every label in the window shapes the interfaces (not only the selected ones)
    present = [int(v) for v in _present_values(window)] if shared else keep
    if not keep:
        return
    found = window_surfaces(window, start, owned_cells, present, shape=shape,
                            voxel_size=voxel_size, smooth=smooth, shared=shared, keep=keep)
    for value, surf in found.items():
        stats = per_label[value]
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


# --------------------------------------------------------------------------- all blocks


@dataclass(frozen=True)
class PassResult:
    """The blocks of one meshing pass and what each returned (see :func:`mesh_block`)."""

    blocks: list[Block]
    results: list[dict]


def run_pass(
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
) -> PassResult:
    """Run :func:`mesh_block` on every block of the volume through :func:`ml4paleo.blocks.run`.

    In-memory labels run in this process unless an executor is given (the array would be
    pickled into every task).
    """
    if isinstance(chunk_size, int | np.integer) and int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    blocks = block_grid(vol.shape, chunk_size)
    (work_dir / "faces").mkdir(parents=True, exist_ok=True)
    (work_dir / "parts").mkdir(parents=True, exist_ok=True)
    if executor is None and vol.in_memory:
        executor = "serial"
    fn = functools.partial(
        mesh_block,
        source=Shared(vol.volume),
        shape=vol.shape,
        selection=selection,
        work_dir=str(work_dir),
        write_parts=write_parts,
        voxel_size=vol.voxel_size,
        smooth=smooth,
        shared=shared,
    )
    stage = Stage(fn, blocks, name="mesh", retries=RETRIES)
    results = run([stage], executor=executor, workers=workers, progress=progress)[0]
    return PassResult(blocks, results)
