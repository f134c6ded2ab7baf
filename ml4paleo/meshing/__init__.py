"""Closed, seam-free meshes per label and label statistics, computed block by block.

The surface of label ``L`` is the 0.5 iso-surface of the binary mask ``labels == L``,
padded with background outside the volume so every object is closed. Marching cubes
(classic Lorensen tables, which are watertight and manifold on binary masks) runs on each
block of a regular grid through :mod:`ml4paleo.blocks` (:mod:`~ml4paleo.meshing.blockwise`);
every cell is triangulated exactly once, so the parts weld by exact integer keys
(:mod:`~ml4paleo.meshing.weld`) into a result *identical* to meshing the whole volume at
once (same vertices, same faces, and — after the canonical ordering — the same files).

By default the vertices are then smoothed (:mod:`~ml4paleo.meshing.smooth`: constrained
Taubin smoothing, each vertex within a quarter voxel of its marching-cubes position, the
halo of every block covering the smoothing support): the connectivity is unchanged, so
the meshes stay closed, manifold and seam-free, and blockwise still equals whole-volume,
but the terraces (+9 % surface area on a ball) are gone; ``smooth="none"`` keeps the
stair-stepped surface.

Surfaces are extracted on the voxel grid (the centre of voxel ``(z, y, x)`` at
``(x * sx, y * sy, z * sz)``; the marching-cubes surface passes half a voxel outside the
outermost voxel centres; smoothing happens there too) and written in the scan's **world**
coordinates by default — its affine (NIfTI sform/qform, DICOM position and orientation,
OME-Zarr ``world``), frame and unit — so a mesh overlays its scan in any viewer;
``space="voxel"`` keeps the scaled grid (:mod:`~ml4paleo.meshing.space`, the one place
that moves vertices out of the grid). Every file says which space, unit and frame it
holds. Objects are face-connected (6-connectivity), which is the
connectivity this surface realises, so one closed body per object (plus one per enclosed
cavity).

Memory stays flat: blocks stream their triangles to ``.npz`` parts on disk, and each label
is welded from its own parts at the end. Modules: :mod:`~ml4paleo.meshing.blockwise`,
:mod:`~ml4paleo.meshing.smooth`, :mod:`~ml4paleo.meshing.weld`, :mod:`~ml4paleo.meshing.simplify`,
:mod:`~ml4paleo.meshing.writers` (STL/OBJ/PLY/GLB), :mod:`~ml4paleo.meshing.stats`
(label statistics and their CSV), :mod:`~ml4paleo.meshing.space` (world or voxel
coordinates).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ml4paleo._fs import temp_path
from ml4paleo.blocks import block_grid

from .blockwise import LabelVolume, open_labels, run_pass, selection_of
from .simplify import simplify_closed
from .smooth import DEFAULT_SMOOTH, SMOOTH_LEVELS, Smoothing, smoothing_params, surface_name
from .space import SPACES, MeshSpace, mesh_space, unit_suffix, world_of
from .stats import (
    STATS_COLUMNS,
    STATS_CSV,
    count_components,
    label_stats,
    merge_stats,
    place_rows,
    public_row,
    read_stats_csv,
    stats_csv_text,
    volume_classes,
    write_stats_csv,
)
from .weld import body_count, to_physical, weld
from .writers import MESH_FORMATS, parse_formats, write_glb, write_mesh, write_stl

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SMOOTH",
    "MESH_FORMATS",
    "SMOOTH_LEVELS",
    "SPACES",
    "STATS_COLUMNS",
    "STATS_CSV",
    "LabelVolume",
    "MeshSpace",
    "Smoothing",
    "body_count",
    "label_stats",
    "mesh",
    "mesh_space",
    "open_labels",
    "read_stats_csv",
    "simplify_closed",
    "stats_csv_text",
    "unit_suffix",
    "world_of",
    "write_glb",
    "write_mesh",
    "write_stats_csv",
    "write_stl",
]

ProgressCallback = Callable[[int, int], None]


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
    space: str = "world",
    classes: Sequence[dict] | None = None,
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
    executor : None, "serial", "threads", "processes", Dask address or Client
        See :func:`ml4paleo.blocks.run` (in-memory arrays default to serial).
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
        Where to write the statistics CSV (default ``out_dir / STATS_CSV``).
    space : {"world", "voxel"}
        Coordinates of the vertices and the statistics' bounding boxes (see
        :mod:`ml4paleo.meshing.space`): ``"world"`` (default), the scan's world
        coordinates (its affine, frame and unit: the mesh overlays the NIfTI / DICOM /
        OME-Zarr it came from), or ``"voxel"``, the voxel grid scaled by the voxel size.
        Every file says which, with the unit and frame.
    classes : list of dict, optional
        Class names by label value, for file headers and the statistics (default: those
        the label image holds).
    smooth : {"none", "light", "strong"}, optional
        ``"none"``: the stair-stepped marching-cubes surface.  ``"light"`` (default) and
        ``"strong"``: the same mesh with its vertices moved by constrained Taubin
        smoothing (at most a quarter voxel per axis; :mod:`ml4paleo.meshing.smooth`):
        still closed, manifold and seam-free, surface area within ~1.5 % (light) or
        ~1 % (strong) on balls instead of +9 %.  The statistics measure this surface.
    shared_boundaries : bool
        Smooth all labels together so touching labels use identical vertex positions on
        the interface they share (multi-material models).

    Returns
    -------
    dict
        ``out_dir``, ``files`` ({label: [paths]}), ``stats`` (rows as from
        :func:`label_stats`, with ``mesh_bodies``), ``stats_csv``, ``voxel_size``,
        ``unit``, ``space``, ``frame``, ``world`` (the scan's transform used, as JSON), ``blocks``,
        ``faces`` ({label: faces written}), ``simplified`` ({label: bool}), ``surface``
        (``"marching-cubes"`` or ``"smooth-<level>"``).

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
    fmts = parse_formats(formats)
    params = smoothing_params(smooth)
    if simplify is not None and not 0.0 < float(simplify) < 1.0:
        raise ValueError(f"simplify must be a fraction of faces to remove in (0, 1), got {simplify}")
    vol = open_labels(labels, voxel_size, unit)
    where = mesh_space(world_of(vol.volume, vol.voxel_size, vol.unit), space)
    if classes is None:
        classes = volume_classes(vol)
    selection = selection_of(labels_to_mesh)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a temp name: swept (by ml4paleo._fs.sweep_temps) if this process is killed
    work_dir = temp_path(out_dir / "mesh-work")
    work_dir.mkdir()
    n_blocks = len(block_grid(vol.shape, chunk_size))

    def block_progress(done: int, total: int) -> None:
        progress(done, total + 1)  # the last step: welding and writing the meshes

    try:
        passed = run_pass(
            vol, work_dir, chunk_size=chunk_size, selection=selection, write_parts=True,
            executor=executor, workers=workers, progress=block_progress if progress else None,
            smooth=params, shared=shared_boundaries,
        )
        rows = place_rows(merge_stats(passed.results, count_components(passed, work_dir), vol,
                                      surface_name(params)), where, classes)
        files: dict[int, list[Path]] = {}
        faces_written: dict[int, int] = {}
        simplified: dict[int, bool] = {}
        for value, row in rows.items():
            parts = sorted((work_dir / "parts" / str(value)).glob("*.npz"))
            if not parts:
                log.warning("label %s has no surface (fills the volume?)", value)
                row["mesh_bodies"] = 0
                continue
            v2, faces, smoothed = weld(parts, vol.shape)
            if smoothed is None:
                verts = to_physical(v2, vol.voxel_size)
            else:
                verts = smoothed[:, ::-1]  # (x, y, z)
            del v2, smoothed
            row["mesh_bodies"] = body_count(len(verts), faces)
            did = False
            if simplify is not None:
                verts, faces, did = simplify_closed(verts, faces, float(simplify), f"label {value}")
            simplified[value] = did
            faces_written[value] = len(faces)
            # the one place meshes leave the voxel grid: world (or voxel) coordinates,
            # windings reversed when the transform mirrors
            verts, faces = where.apply(verts, faces)
            meta = {"label": value, "class": row.get("class"), **where.describe()}
            files[value] = [write_mesh(verts, faces, out_dir / f"{value}.{f}", f, meta=meta)
                            for f in fmts]
            del verts, faces
        stats = [public_row(r) for r in rows.values()]
        stats_csv = write_stats_csv(stats, stats_path or out_dir / STATS_CSV, where.unit)
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
        "unit": where.unit,
        "space": where.space,
        "frame": where.frame,
        "world": where.world.to_json(),
        "blocks": n_blocks,
        "faces": faces_written,
        "simplified": simplified,
        "surface": surface_name(params),
    }
