"""Morphometry of segmentations: the numbers a paleontologist publishes, in physical units.

Per class (inside a region of interest: the whole volume, a box, and/or a label mask):
volume fraction BV/TV, surface density BS/TV, local thickness (mean, SD, max,
histogram) of the class and of its complement (spacing), Euler characteristic and
connectivity density, degree of anisotropy (MIL), compactness profiles along an axis.
Per object (face-connected components, joined across blocks): volume, surface area,
equivalent diameter, sphericity, bounding box, centroid, principal axes. Plus a local
thickness map as an OME-Zarr image. Definitions follow BoneJ (Doube et al. 2010) and
are stated in each module:

- :mod:`~ml4paleo.morphometry.thickness` — largest inscribed ball, exact, anisotropic;
- :mod:`~ml4paleo.morphometry.fractions` — BV/TV, BS/TV (marching-cubes surface);
- :mod:`~ml4paleo.morphometry.connectivity` — chi, delta-chi, Conn.D;
- :mod:`~ml4paleo.morphometry.anisotropy` — MIL tensor, DA;
- :mod:`~ml4paleo.morphometry.profiles` — compactness per slice;
- :mod:`~ml4paleo.morphometry.objects` — the per-object table;
- :mod:`~ml4paleo.morphometry.blockwise` — the out-of-core passes.

Everything runs block by block (:func:`ml4paleo.blocks.run_blocks`: serial, local
processes or a Dask cluster) and gives the same numbers as a whole-volume run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.morphometry.anisotropy import anisotropy
from ml4paleo.morphometry.connectivity import connectivity
from ml4paleo.morphometry.fractions import volume_fractions
from ml4paleo.morphometry.objects import OBJECT_COLUMNS, write_objects_csv
from ml4paleo.morphometry.profiles import compactness_profile
from ml4paleo.morphometry.result import Morphometry
from ml4paleo.morphometry.table import TABLE_COLUMNS, class_table, column_units, write_table_csv
from ml4paleo.morphometry.thickness import local_thickness

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_THICKNESS_VOXELS",
    "MEASURES",
    "OBJECT_COLUMNS",
    "TABLE_COLUMNS",
    "Morphometry",
    "anisotropy",
    "class_table",
    "column_units",
    "compactness_profile",
    "connectivity",
    "local_thickness",
    "measure",
    "parse_measures",
    "volume_fractions",
    "write_objects_csv",
    "write_table_csv",
]

#: what :func:`measure` can compute (``fractions``, ``connectivity`` and ``anisotropy``
#: share one histogram and are cheap; ``thickness``/``spacing`` cost the most)
MEASURES = ("fractions", "connectivity", "anisotropy", "thickness", "spacing", "objects",
            "profiles")

#: default ``max_thickness``: this many of the smallest voxel edge
DEFAULT_MAX_THICKNESS_VOXELS = 32

ProgressCallback = Callable[[int, int], None]


def parse_measures(measures: str | Iterable[str] | None) -> frozenset[str]:
    """The set of :data:`MEASURES` named by ``measures`` (comma/space separated or a list).

    Raises
    ------
    ValueError
        When a name is not one of :data:`MEASURES`.

    Examples
    --------
    >>> sorted(parse_measures("thickness, objects"))
    ['objects', 'thickness']
    """
    if measures is None:
        return frozenset(MEASURES)
    if isinstance(measures, str):
        measures = [m for m in measures.replace(",", " ").split() if m]
    chosen = frozenset(m.strip().lower() for m in measures)
    bad = sorted(chosen - set(MEASURES))
    if bad:
        raise ValueError(f"unknown measure(s) {', '.join(bad)}: use {', '.join(MEASURES)}")
    return chosen


def _parse_box(box: Any, shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    if box is None:
        return tuple((0, int(n)) for n in shape)
    items = list(box)
    if len(items) != 3:
        raise ValueError(f"roi_box needs 3 ranges (z, y, x), got {len(items)}")
    out = []
    for axis, (item, n) in enumerate(zip(items, shape, strict=True)):
        if isinstance(item, slice):
            if item.step not in (None, 1):
                raise ValueError(f"roi_box axis {'zyx'[axis]}: steps are not supported")
            a, b, _ = item.indices(int(n))
        else:
            a, b = (int(v) for v in item)
        if not 0 <= a < b <= n:
            raise ValueError(f"roi_box axis {'zyx'[axis]}: range {a}..{b} is empty or outside 0..{n}")
        out.append((a, b))
    return tuple(out)


def _parse_axis(axis: int | str) -> int:
    if isinstance(axis, str):
        if axis.lower() not in ("z", "y", "x"):
            raise ValueError(f"profile_axis must be z, y or x (or 0, 1, 2), got {axis!r}")
        return "zyx".index(axis.lower())
    if int(axis) not in (0, 1, 2):
        raise ValueError(f"profile_axis must be 0 (z), 1 (y) or 2 (x), got {axis}")
    return int(axis)


def _class_names(vol: Any, classes: Sequence | None, values: Sequence[int]) -> dict[int, str]:
    from ml4paleo.classes import class_list

    if classes is not None:
        listed = class_list(classes, max(values, default=0) + 1)
        return {v: listed[v]["name"] for v in values}
    names: dict[int, str] = {}
    meta = getattr(vol, "metadata", {}) or {}
    stored = (meta.get("ml4paleo") or {}).get("model_classes") or (meta.get("ml4paleo") or {}).get("classes")
    if isinstance(stored, list):
        for v, c in enumerate(stored):
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                names[v] = c["name"]
    image = getattr(vol, "image", None)
    props = ((getattr(image, "attrs", None) or {}).get("image-label") or {}).get("properties") or []
    for p in props:
        if isinstance(p, dict) and "label-value" in p and isinstance(p.get("class"), str):
            names.setdefault(int(p["label-value"]), p["class"])
    return {v: names.get(v, "background" if v == 0 else f"class {v}") for v in values}


class _Stages:
    """One ``progress(done, total)`` over several passes whose sizes are known upfront."""

    def __init__(self, progress: ProgressCallback | None, sizes: Sequence[int]) -> None:
        self.progress, self.total, self.base = progress, int(sum(sizes)), 0
        self.sizes = list(sizes)

    def stage(self, i: int) -> ProgressCallback | None:
        if self.progress is None:
            return None
        base = sum(self.sizes[:i])

        def report(done: int, _total: int) -> None:
            self.progress(base + done, self.total)

        return report

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


def measure(
    labels: Any,
    *,
    values: Iterable[int] | None = None,
    classes: Sequence[dict | str] | None = None,
    voxel_size: Sequence[float] | float | None = None,
    unit: str | None = None,
    roi_box: Sequence[Any] | None = None,
    roi_mask: Any = None,
    roi_value: int | None = None,
    measures: str | Iterable[str] | None = None,
    max_thickness: float | None = None,
    thickness_bins: int = 64,
    profile_axis: int | str = 0,
    objects_csv: str | os.PathLike | None = None,
    thickness_map: str | os.PathLike | None = None,
    index_to_world: Callable[[np.ndarray], np.ndarray] | None = None,
    work_dir: str | os.PathLike | None = None,
    chunk_size: int = 128,
    executor: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Morphometry:
    """Measure the classes of a segmentation, block by block.

    Parameters
    ----------
    labels : volume-like
        Label volume ``(z, y, x)`` (OME-Zarr label image, ``.npy``, zarr or numpy
        array, anything :func:`ml4paleo.io.open_any` reads); value ``k`` = class ``k``.
    values : iterable of int, optional
        Class values to measure (default: every non-zero value present in the ROI).
    classes : sequence of dict or str, optional
        Class list (index = value) for the names (default: the image's metadata).
    voxel_size : float or 3 floats, optional
        ``(z, y, x)``; overrides the stored one (1.0 when none).
    unit : str, optional
        Unit of the voxel size; overrides the stored one.
    roi_box : 3 slices or 3 (start, stop), optional
        Analysed box ``(z, y, x)`` in voxel indices (default: the whole volume). The box
        is the "sample": connectivity and surface density are edge-corrected at its
        faces; thickness still sees the structure around it.
    roi_mask : volume-like, optional
        Same shape as ``labels``; voxels with ``roi_value`` (or nonzero when
        ``roi_value`` is None) are inside the ROI. Every measure is restricted to it
        (thickness is measured on the whole structure, averaged inside the ROI).
    roi_value : int, optional
        Label of the ROI in ``roi_mask``.
    measures : str or iterable of str, optional
        Subset of :data:`MEASURES` (default: all).
    max_thickness : float, optional
        Largest thickness resolved, physical units (default
        :data:`DEFAULT_MAX_THICKNESS_VOXELS` x the smallest voxel edge). Blocks read a
        halo of about this size; thicker structures are reported as ``max_thickness``
        and the result's ``clipped`` is True (a warning is logged).
    thickness_bins : int
        Bins of the thickness histograms over ``[0, max_thickness]``.
    profile_axis : int or {"z", "y", "x"}
        Axis of the compactness profiles (slices perpendicular to it).
    objects_csv : path, optional
        Write the per-object table there (atomically).
    thickness_map : path, optional
        Write the local thickness of every voxel (of its own class; float32, physical
        units, 0 elsewhere) as an OME-Zarr image covering the box, placed in the
        labels' world (NGFF scale + translation, the full affine in ``ml4paleo.world``).
    index_to_world : callable, optional
        Maps ``(n, 3)`` voxel indices ``(z, y, x)`` to world ``(x, y, z)`` for the
        object centroids (default: the volume's world transform, ``labels.world``: index
        x voxel size, plus the scan's origin and orientation when it has them).
    work_dir : path, optional
        Where blocks leave their object face planes until the merge (a temp folder
        inside it, removed at the end). Default: the system's temp folder; on a Dask
        cluster give a folder every worker can write.
    chunk_size : int
        Block edge in voxels (the result does not depend on it).
    executor, workers
        See :func:`ml4paleo.blocks.run_blocks` (in-memory arrays default to serial).
    progress : callable, optional
        ``progress(done, total)`` over all passes.

    Returns
    -------
    Morphometry

    Raises
    ------
    ValueError
        Bad parameters (unknown measure, empty box, ROI of another shape, ...).
    ml4paleo.io.InputError
        When ``labels`` cannot be read.

    Examples
    --------
    >>> vol = np.zeros((24, 24, 24), np.uint8)
    >>> vol[4:10, 4:20, 4:20] = 1                      # a plate 6 voxels thick
    >>> m = measure(vol, voxel_size=0.5, measures="fractions thickness objects")
    >>> c = m.by_value(1)
    >>> c["bv"], c["thickness"]["max"], len(m.objects), m.objects[0]["voxel_count"]
    (192.0, 3.0, 1, 1536)
    """
    from ml4paleo.io import open_any, voxel_size_or_default
    from ml4paleo.morphometry.blockwise import (
        MeasurePlan,
        measure_blocks,
        present_values,
        profile_blocks,
    )
    from ml4paleo.morphometry.objects import merge_pieces, object_rows
    from ml4paleo.morphometry.profiles import profile_from_counts
    from ml4paleo.morphometry.result import class_measures

    chosen = parse_measures(measures)
    axis = _parse_axis(profile_axis)
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if int(thickness_bins) <= 0:
        raise ValueError(f"thickness_bins must be positive, got {thickness_bins}")
    vol = open_any(labels, voxel_size=voxel_size, unit=unit)
    if np.dtype(vol.dtype).kind not in "biu":
        raise ValueError(f"{vol.path}: labels must be integers, got dtype {vol.dtype}")
    vs = voxel_size_or_default(vol.voxel_size)
    roi = None
    if roi_value is not None and roi_mask is None:
        raise ValueError("roi_value needs a roi_mask")
    if roi_mask is not None:
        roi = open_any(roi_mask)
        if tuple(roi.shape) != tuple(vol.shape):
            raise ValueError(f"roi_mask shape {tuple(roi.shape)} differs from labels {tuple(vol.shape)}")
    box = _parse_box(roi_box, vol.shape)
    do_thick = bool({"thickness", "spacing"} & chosen)
    if max_thickness is None:
        max_t = DEFAULT_MAX_THICKNESS_VOXELS * min(vs)
    else:
        max_t = float(max_thickness)
        if not (math.isfinite(max_t) and max_t > 0):
            raise ValueError(f"max_thickness must be a positive number, got {max_thickness}")
    if thickness_map is not None and "thickness" not in chosen:
        raise ValueError("thickness_map needs the 'thickness' measure")
    if executor is None and getattr(vol, "source_type", "") == "array" and (
            roi is None or getattr(roi, "source_type", "") == "array"):
        executor = "serial"  # an in-memory array would be pickled into every task

    plan = MeasurePlan(vol, roi, roi_value, box, (), vs, thickness="thickness" in chosen,
                       spacing="spacing" in chosen, objects="objects" in chosen,
                       max_thickness=max_t, bins=int(thickness_bins))
    grid = _grid_size(plan.box_shape, chunk_size)
    n_slabs = _slab_count(plan.box_shape, axis, chunk_size) if "profiles" in chosen else 0
    stages = _Stages(progress, [grid if values is None else 0, grid, n_slabs,
                                1 if thickness_map is not None else 0])
    if values is None:
        vals = [v for v in present_values(plan, chunk_size=chunk_size, executor=executor,
                                          workers=workers, progress=stages.stage(0)) if v != 0]
    else:
        vals = sorted({int(v) for v in values})
    if not vals:
        log.warning("no classes to measure in %s", vol.path)
    names = _class_names(vol, classes, vals)
    world = vol.world
    if index_to_world is None:
        index_to_world = world.apply

    map_image = map_tmp = None
    if thickness_map is not None:
        map_image, map_tmp = _create_map(Path(thickness_map), plan, chunk_size, vol.unit, names, vals,
                                        world.cropped([b[0] for b in box]))
    planes_dir = _planes_dir(work_dir) if plan.objects else None
    plan = MeasurePlan(vol, roi, roi_value, box, tuple(vals), vs, thickness=plan.thickness,
                       spacing=plan.spacing, objects=plan.objects, max_thickness=max_t,
                       bins=plan.bins,
                       map_path=str(map_tmp / "0") if map_tmp is not None else None,
                       work_dir=str(planes_dir) if planes_dir is not None else None)
    try:
        blocks, results = measure_blocks(plan, chunk_size=chunk_size, executor=executor,
                                         workers=workers, progress=stages.stage(1))
        profiles = {}
        if "profiles" in chosen and vals:
            counts = profile_blocks(plan, axis, slab_voxels=int(chunk_size) ** 3, executor=executor,
                                    workers=workers, progress=stages.stage(2))
            profiles = {v: profile_from_counts(c, vs, axis, box[axis][0]) for v, c in counts.items()}
        clipped = any(r["clipped"] for r in results)
        roi_voxels = sum(r["roi_voxels"] for r in results)
        rows: list[dict] = []
        if plan.objects:
            objs = merge_pieces([r["pieces"] for r in results], [b.index for b in blocks])
            rows = object_rows(objs, vs, unit=vol.unit, class_names=names,
                               index_to_world=index_to_world, with_thickness=plan.thickness)
        if map_image is not None:
            _finish_map(map_image, map_tmp, Path(thickness_map), clipped)
    except BaseException:
        if map_tmp is not None:
            shutil.rmtree(map_tmp, ignore_errors=True)
        raise
    finally:
        if planes_dir is not None:
            shutil.rmtree(planes_dir, ignore_errors=True)
    per_class = [
        class_measures(v, names[v], [r["classes"][v] for r in results], roi_voxels, vs,
                       max_thickness=max_t if do_thick else None, bins=plan.bins)
        for v in vals
    ]
    if not {"fractions", "connectivity", "anisotropy"} <= chosen:
        _drop_unrequested(per_class, chosen)
    csv_path = None
    if plan.objects:
        counts_by_class: dict[int, int] = {}
        for row in rows:
            counts_by_class[row["class_value"]] = counts_by_class.get(row["class_value"], 0) + 1
        for c in per_class:
            c["objects"] = counts_by_class.get(c["value"], 0)
        if objects_csv is not None:
            csv_path = write_objects_csv(rows, objects_csv)
    if clipped:
        which = [f"{c['name']} {key}" for c in per_class for key in ("thickness", "spacing")
                 if (c.get(key) or {}).get("clipped")]
        log.warning("local thickness reached max_thickness=%g%s (%s): thicker structures are "
                    "reported as that (raise max_thickness)", max_t,
                    f" {vol.unit}" if vol.unit else "", ", ".join(which))
    stages.finish()
    return Morphometry(
        classes=per_class, objects=rows, profiles=profiles, voxel_size=vs, unit=vol.unit,
        box=box, max_thickness=max_t if do_thick else None, clipped=clipped,
        objects_csv=csv_path, thickness_map=Path(thickness_map) if thickness_map else None,
        blocks=len(blocks),
    )


_GROUPS = {
    "fractions": ("class_voxels", "roi_voxels", "bv", "tv", "bv_tv", "bs", "bs_tv", "bs_bv",
                  "closed_surface_area"),
    "connectivity": ("euler", "delta_euler", "connectivity", "connectivity_density"),
    "anisotropy": ("degree_of_anisotropy", "mil_eigenvalues", "mil_principal", "mil_axes",
                   "fabric_tensor"),
}


def _drop_unrequested(per_class: list[dict], chosen: frozenset[str]) -> None:
    for group, keys in _GROUPS.items():
        if group not in chosen:
            for c in per_class:
                for k in keys:
                    c.pop(k, None)


def _planes_dir(work_dir: str | os.PathLike | None) -> Path:
    import tempfile

    from ml4paleo._fs import temp_path

    if work_dir is None:
        return Path(tempfile.mkdtemp(prefix="ml4paleo-measure-"))
    path = temp_path(Path(work_dir) / "measure-planes")
    path.mkdir(parents=True)
    return path


def _grid_size(shape: Sequence[int], chunk: int) -> int:
    return math.prod(math.ceil(s / int(chunk)) for s in shape)


def _slab_count(shape: Sequence[int], axis: int, chunk: int) -> int:
    area = math.prod(s for i, s in enumerate(shape) if i != axis)
    step = max(1, min(shape[axis], int(chunk) ** 3 // max(area, 1)))
    return math.ceil(shape[axis] / step)


def _create_map(dest: Path, plan: Any, chunk: int, unit: str | None, names: dict, vals: list,
                world: Any = None):
    from ml4paleo._fs import temp_path
    from ml4paleo.formats import create_image

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    extra = {"kind": "local_thickness", "unit": unit, "max_thickness": plan.max_thickness,
             "box": [list(b) for b in plan.box],
             "classes": [{"value": v, "name": names[v]} for v in vals],
             "definition": "diameter of the largest inscribed ball containing the voxel"}
    image = create_image(tmp, plan.box_shape, np.float32, chunks=int(chunk),
                         voxel_size=plan.voxel_size, unit=unit, name="local thickness",
                         extra_attrs=extra, world=world)
    return image, tmp


def _finish_map(image: Any, tmp: Path, dest: Path, clipped: bool) -> None:
    from ml4paleo._fs import replace_dir
    from ml4paleo.formats import build_pyramid

    build_pyramid(image)
    attrs = dict(image.group.attrs.get("ml4paleo") or {})
    attrs["clipped"] = bool(clipped)
    image.group.attrs["ml4paleo"] = attrs
    replace_dir(tmp, dest)
