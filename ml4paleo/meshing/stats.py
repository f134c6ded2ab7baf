"""Per-label statistics in physical units, merged from the blocks, and their CSV.

Rows are measured on the voxel grid and then placed in the output space
(:func:`place_rows`, :mod:`~ml4paleo.meshing.space`: the scan's world by default) with the
class names the label image holds. The CSV's headers carry the unit (``volume_mm3``,
``surface_area_mm2``, ``min_x_mm``; ``vox`` in voxel units); :func:`read_stats_csv` reads
any version's back into the row keys.

Voxel counts, bounding boxes, surface areas and enclosed volumes add up over blocks;
objects (face-connected components) are joined across block faces from the component
ids each block saved on its six faces.
"""

from __future__ import annotations

import csv
import io
import os
import re
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
from .space import MeshSpace, mesh_space, unit_suffix, world_of

__all__ = [
    "STATS_COLUMNS",
    "STATS_CSV",
    "count_components",
    "csv_header",
    "label_stats",
    "merge_stats",
    "place_rows",
    "public_row",
    "read_stats_csv",
    "row_key",
    "stats_csv_text",
    "volume_classes",
    "write_stats_csv",
]

#: keys of a statistics row, in the CSV's order (the CSV's headers of lengths, areas and
#: volumes carry their unit: :func:`csv_header`)
STATS_COLUMNS = (
    "label",
    "class",
    "voxel_count",
    "volume",
    "mesh_volume",
    "surface_area",
    "components",
    "mesh_bodies",
    "unit",
    "space",
    "frame",
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


def place_rows(rows: dict[int, dict], space: MeshSpace,
               classes: Sequence[dict] | None = None) -> dict[int, dict]:
    """Rows of :func:`merge_stats` (grid coordinates) in ``space``, with class names.

    The bounding box (voxel centres) becomes the box of its corners in the output space,
    voxel volumes scale with the transform (only a sheared grid changes them), and each
    row gains ``class`` (None when the label image names no classes), ``space`` and
    ``frame``; ``unit`` is the space's (empty in voxel units).
    """
    for value, row in rows.items():
        lo = (row["min_z_vox"], row["min_y_vox"], row["min_x_vox"])
        hi = (row["max_z_vox"], row["max_y_vox"], row["max_x_vox"])
        box_lo, box_hi = space.box(lo, hi)
        for i, axis in enumerate("xyz"):
            row[f"min_{axis}"] = float(box_lo[i])
            row[f"max_{axis}"] = float(box_hi[i])
        row["volume"] = float(row["volume"]) * space.volume_factor
        name = None
        if classes is not None and 0 <= int(value) < len(classes):
            name = classes[int(value)].get("name")
        row["class"] = name
        row["unit"] = space.unit or ""
        row["space"] = space.space
        row["frame"] = space.frame or ""
    return rows


def public_row(row: dict) -> dict:
    """A row with exactly the :data:`STATS_COLUMNS` keys (missing ones None)."""
    return {k: row.get(k) for k in STATS_COLUMNS}


def csv_header(unit: str | None) -> list[str]:
    """The CSV's column names: :data:`STATS_COLUMNS` with units on lengths, areas, volumes.

    Examples
    --------
    >>> [h for h in csv_header("millimeter") if h.startswith(("volume", "surface", "min_x"))]
    ['volume_mm3', 'surface_area_mm2', 'min_x_vox', 'min_x_mm']
    """
    u = unit_suffix(unit or None)
    return [_UNIT_COLUMNS.get(k, "{k}").format(k=k, u=u) for k in STATS_COLUMNS]


_UNIT_COLUMNS = {"volume": "volume_{u}3", "mesh_volume": "mesh_volume_{u}3",
                 "surface_area": "surface_area_{u}2",
                 **{f"{m}_{a}": f"{m}_{a}_{{u}}" for m in ("min", "max") for a in "xyz"}}
_UNIT_COLUMN_RE = re.compile(r"^(volume|mesh_volume|surface_area)_[A-Za-z]+[23]$"
                             r"|^((?:min|max)_[xyz])_(?!vox$)[A-Za-z]+$")


def row_key(header: str) -> str:
    """The row key of a CSV column name (``volume_mm3`` -> ``volume``; others unchanged)."""
    m = _UNIT_COLUMN_RE.match(header)
    if not m:
        return header
    return m.group(1) or m.group(2)


def read_stats_csv(path: str | os.PathLike, typed: bool = False) -> list[dict]:
    """Rows of a statistics CSV keyed like :data:`STATS_COLUMNS` (any version's headers).

    Parameters
    ----------
    typed : bool
        Numbers as int / float and empty cells as None (default: the CSV's strings).
    """
    with open(path, newline="") as fh:
        rows = [{row_key(k): v for k, v in r.items()} for r in csv.DictReader(fh)]
    return [_typed(r) for r in rows] if typed else rows


def _typed(row: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            out[key] = None
            continue
        if key in ("class", "unit", "space", "frame"):
            out[key] = value
            continue
        try:
            number = float(value)
        except ValueError:
            out[key] = value
            continue
        out[key] = int(number) if number.is_integer() and "." not in value and "e" not in value \
            else number
    return out


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
    space: str = "world",
    classes: Sequence[dict] | None = None,
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
    space : {"world", "voxel"}
        Coordinates of the bounding box (see :mod:`ml4paleo.meshing.space`): the scan's
        world (default) or the voxel grid scaled by the voxel size.
    classes : list of dict, optional
        Class names by label value (default: those the label image holds).
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
        One row per label, keys :data:`STATS_COLUMNS`: ``class`` (its name, or None);
        ``voxel_count``; ``volume`` (voxel count x voxel volume) and ``mesh_volume``
        (enclosed by the surface) in unit³; ``surface_area`` in unit²; ``components``
        (face-connected objects); ``mesh_bodies`` (None here, filled by
        :func:`ml4paleo.meshing.mesh`); ``unit``, ``space``, ``frame``; the bounding box
        of the voxels, inclusive, in voxel indices (``*_vox``) and of the voxel centres
        in ``space``; ``surface``: the surface measured (``"marching-cubes"``,
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
    where = mesh_space(world_of(vol.volume, vol.voxel_size, vol.unit), space)
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
    rows = place_rows(rows, where, classes if classes is not None else volume_classes(vol))
    return [public_row(r) for r in rows.values()]


def volume_classes(vol: LabelVolume) -> list[dict] | None:
    """The class names of a label volume opened from a label image (None otherwise)."""
    from ml4paleo.formats import label_classes

    image = getattr(vol.volume, "image", None)
    if image is None:
        return None
    try:
        return label_classes(image.attrs)
    except ValueError:
        return None


def stats_csv_text(rows: Sequence[dict], unit: str | None = None) -> str:
    """Label statistics (:data:`STATS_COLUMNS`) as CSV text, headers with units.

    ``unit``: of the lengths (default: the rows'; voxel units when empty).
    """
    if unit is None:
        unit = next((r.get("unit") for r in rows if r.get("unit")), None)
    header = csv_header(unit)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) for k in STATS_COLUMNS])
    return buf.getvalue()


def write_stats_csv(rows: Sequence[dict], path: str | os.PathLike,
                    unit: str | None = None) -> Path:
    """Write label statistics (:data:`STATS_COLUMNS`) to a CSV file atomically."""
    return atomic_write(path, stats_csv_text(rows, unit))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value
