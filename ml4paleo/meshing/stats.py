"""Per-label statistics in physical units, merged from the blocks, and their CSV.

Voxel counts, bounding boxes, surface areas and enclosed volumes add up over blocks;
objects (face-connected components) are joined across block faces from the component
ids each block saved on its six faces.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ml4paleo._fs import atomic_write
from ml4paleo.blocks import ProgressCallback

from .blockwise import LabelVolume, PassResult, open_labels, run_pass, selection_of
from .smooth import DEFAULT_SMOOTH, Smoothing, smoothing_params, surface_name

__all__ = [
    "STATS_COLUMNS",
    "STATS_CSV",
    "count_components",
    "label_stats",
    "merge_stats",
    "public_row",
    "stats_csv_text",
    "write_stats_csv",
]

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

#: name of the statistics CSV :func:`ml4paleo.meshing.mesh` writes beside the meshes
STATS_CSV = "stats.csv"


def count_components(passed: PassResult, work_dir: Path) -> dict[int, int]:
    """Objects per label: block components joined across block faces (6-connectivity)."""
    results, blocks = passed.results, passed.blocks
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


def merge_stats(results: list[dict], components: dict[int, int], vol: LabelVolume,
                surface: str = "marching-cubes") -> dict[int, dict]:
    """Rows (:data:`STATS_COLUMNS` and ``_faces``) per label from the blocks' measures.

    ``surface`` names the surface the areas and mesh volumes were measured on
    (:func:`ml4paleo.meshing.smooth.surface_name`).
    """
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


def public_row(row: dict) -> dict:
    """A row with exactly the :data:`STATS_COLUMNS` keys."""
    return {k: row[k] for k in STATS_COLUMNS}


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
        Label volume ``(z, y, x)``, 0 = background (see
        :func:`~ml4paleo.meshing.blockwise.open_labels`).
    voxel_size : float or sequence of 3 floats, optional
        Physical voxel size ``(z, y, x)``; default: the stored one, else 1.0.
    unit : str, optional
        Unit of the voxel size; default: the stored one (empty when unknown).
    chunk_size : int
        Block edge in voxels.
    labels_to_mesh : iterable of int, optional
        Only these label values (default: every non-zero value present).
    executor, workers
        See :func:`ml4paleo.blocks.run`.
    progress : callable, optional
        ``progress(done, total)`` over blocks.
    smooth : {"none", "light", "strong"}, optional
        Which surface ``surface_area`` and ``mesh_volume`` measure: the marching-cubes
        surface (``"none"``) or the smoothed one :func:`ml4paleo.meshing.mesh` writes
        (default ``"light"``; see :mod:`ml4paleo.meshing.smooth`).
    shared_boundaries : bool
        Measure the surfaces smoothed with shared interfaces (as ``mesh(...,
        shared_boundaries=True)``).

    Returns
    -------
    list of dict
        One row per label, keys :data:`STATS_COLUMNS`: ``voxel_count``; ``volume``
        (voxel count x voxel volume) and ``mesh_volume`` (enclosed by the surface) in
        unit³; ``surface_area`` in unit²; ``components`` (face-connected objects);
        ``mesh_bodies`` (None here, filled by :func:`ml4paleo.meshing.mesh`); the bounding
        box of the voxels, inclusive, in voxel indices (``*_vox``) and at voxel centres
        in physical units; ``surface``: the surface measured (``"marching-cubes"``,
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
    selection = selection_of(labels_to_mesh)
    work_dir = Path(tempfile.mkdtemp(prefix="ml4paleo-mesh-"))
    try:
        passed = run_pass(vol, work_dir, chunk_size=chunk_size, selection=selection,
                          write_parts=False, executor=executor, workers=workers,
                          progress=progress, smooth=params, shared=shared_boundaries)
        rows = merge_stats(passed.results, count_components(passed, work_dir), vol,
                           surface_name(params))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return [public_row(r) for r in rows.values()]


def stats_csv_text(rows: Sequence[dict]) -> str:
    """Label statistics (:data:`STATS_COLUMNS`) as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STATS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in STATS_COLUMNS})
    return buf.getvalue()


def write_stats_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write label statistics (:data:`STATS_COLUMNS`) to a CSV file atomically."""
    return atomic_write(path, stats_csv_text(rows))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value
