"""Benchmark: ml4paleo.morphometry against porespy and scikit-image on the same volume.

    .venv/bin/python benchmarks/morphometry.py                 # 160^3, blocks of 64
    .venv/bin/python benchmarks/morphometry.py --size 96 --grains 60 --json out.json

One generated volume (isotropic voxels, as porespy assumes): class 1 a trabecular-like
foam (thresholded smoothed noise), class 2 spherical grains of known radii in its pores.
Then, in one run, timed:

- ``ml4paleo.morphometry.measure`` blockwise (``--chunk-size``) and whole-volume;
- porespy ``filters.local_thickness`` (methods ``bf`` and ``dt``), ``metrics.porosity``
  and ``metrics.regionprops_3D`` (grains);
- scikit-image ``measure.regionprops`` (grains).

Plus a known answer both libraries must meet: plates 3..12 voxels thick (mean and max
local thickness vs the true thickness), ours vs porespy ``bf`` / ``dt``; and the spacing
(thickness of the pore space) vs porespy's local thickness of the complement.

Agreement is reported for local thickness (porespy returns integer radii in voxels, so
its diameters are ``2 R``; ours are the exact ``2 r`` of the same construction), porosity
vs ``1 - BV/TV``, and per-grain volume, surface area, sphericity, centroid and axes.
porespy is an optional dependency: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from scipy import ndimage


def make_volume(size: int, grains: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """Foam (1) with grains (2) of known centres and radii in its pores."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size,) * 3), size / 40.0)
    foam = field > 0.25 * field.std()
    vol = foam.astype(np.uint8)
    grid = np.ogrid[:size, :size, :size]
    placed = []
    tries = 0
    while len(placed) < grains and tries < 50 * grains:
        tries += 1
        r = rng.uniform(2.5, 7.0)
        c = rng.uniform(r + 2, size - r - 3, 3)
        if any(np.linalg.norm(c - c2) < r + r2 + 2 for c2, r2 in placed):
            continue
        ball = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) <= r * r
        vol[ball] = 2
        placed.append((c, r))
    return vol, placed


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--grains", type=int, default=80)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--max-thickness", type=float, default=32.0)
    parser.add_argument("--json", default=None, help="Also write the numbers to this file.")
    args = parser.parse_args(argv)

    import porespy as ps
    from skimage.measure import regionprops

    import ml4paleo.morphometry as mm

    ps.settings.tqdm["disable"] = True
    vol, placed = make_volume(args.size, args.grains)
    foam, grains = vol == 1, vol == 2
    out: dict = {"size": args.size, "voxels": int(vol.size), "grains_placed": len(placed),
                 "chunk_size": args.chunk_size, "load_average": os.getloadavg()}

    # ---- ours
    _, t_warm = _timed(mm.measure, vol[:32, :32, :32], max_thickness=8.0)  # LUTs, imports
    blockwise, t_blocks = _timed(mm.measure, vol, max_thickness=args.max_thickness,
                                 chunk_size=args.chunk_size)
    whole, t_whole = _timed(mm.measure, vol, max_thickness=args.max_thickness,
                            chunk_size=args.size)
    ours_lt, t_lt = _timed(mm.local_thickness, foam, 1.0, args.max_thickness)
    _, t_objects = _timed(mm.measure, vol, measures="objects", chunk_size=args.size)
    _, t_fractions = _timed(mm.measure, vol, measures="fractions connectivity anisotropy",
                            chunk_size=args.size)
    same = (blockwise.classes == whole.classes) or all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], float) else True
        for a, b in zip(blockwise.classes, whole.classes, strict=True) for k in a)
    out["ours"] = {"measure_all_blockwise_s": t_blocks, "measure_all_whole_s": t_whole,
                   "local_thickness_foam_s": t_lt, "objects_only_s": t_objects,
                   "fractions_connectivity_anisotropy_s": t_fractions, "warmup_s": t_warm,
                   "blocks": blockwise.blocks, "blockwise_equals_whole": bool(same),
                   "clipped": blockwise.clipped}

    # ---- local thickness vs porespy
    t_ours = ours_lt.thickness[foam]
    lt_report = {"ours_mean": float(t_ours.mean()), "ours_max": float(t_ours.max())}
    for method in ("bf", "dt"):
        ps.filters.local_thickness(foam[:24, :24, :24], method=method)  # numba compile
        lt, t = _timed(ps.filters.local_thickness, foam, method=method)
        d = 2.0 * lt[foam]
        diff = t_ours - d
        lt_report[method] = {
            "seconds": t, "mean_diameter": float(d.mean()), "max_diameter": float(d.max()),
            "mean_difference": float(diff.mean()), "mean_abs_difference": float(np.abs(diff).mean()),
            "within_2_voxels": float(np.mean(np.abs(diff) <= 2.0)),
            "correlation": float(np.corrcoef(t_ours, d)[0, 1]),
        }
    out["local_thickness"] = lt_report

    # ---- spacing: ours (thickness of the complement, from the same run) vs porespy on ~foam
    pores = ~foam
    sp_ours = mm.local_thickness(pores, 1.0, args.max_thickness).thickness[pores]
    sp_ps, t_sp = _timed(ps.filters.local_thickness, pores, method="dt")
    d = 2.0 * sp_ps[pores]
    out["spacing"] = {
        "ours_mean_from_measure": blockwise.by_value(1)["spacing"]["mean"],
        "ours_mean": float(sp_ours.mean()), "porespy_dt_mean": float(d.mean()),
        "porespy_dt_s": t_sp, "mean_abs_difference": float(np.abs(sp_ours - d).mean()),
        "correlation": float(np.corrcoef(sp_ours, d)[0, 1])}

    # ---- known answer: plates of thickness t voxels (both libraries vs the truth)
    plates = []
    for t in (3, 4, 6, 9, 12):
        plate = np.zeros((t + 16, 48, 48), bool)
        plate[8:8 + t, 4:-4, 4:-4] = True
        ours_p = mm.local_thickness(plate, 1.0, args.max_thickness).thickness[plate]
        row = {"true": t, "ours_mean": float(ours_p.mean()), "ours_max": float(ours_p.max())}
        for method in ("bf", "dt"):
            d = 2.0 * ps.filters.local_thickness(plate, method=method)[plate]
            row[f"porespy_{method}_mean"] = float(d.mean())
            row[f"porespy_{method}_max"] = float(d.max())
        plates.append(row)
    out["plates"] = plates

    # ---- porosity (pore space = not foam) vs 1 - BV/TV
    por, t_por = _timed(ps.metrics.porosity, ~foam)
    bvtv = blockwise.by_value(1)["bv_tv"]
    out["porosity"] = {"porespy": float(por), "ours_1_minus_bv_tv": 1.0 - bvtv,
                       "abs_difference": abs(float(por) - (1.0 - bvtv)), "porespy_s": t_por}

    # ---- grains: ours vs skimage regionprops vs porespy regionprops_3D
    labels, n = ndimage.label(grains)

    def skimage_props():  # properties are lazy: compute the ones compared
        props = regionprops(labels)
        _ = [(r.area, r.centroid, r.bbox, r.axis_major_length) for r in props]
        return props

    def porespy_props():
        props = ps.metrics.regionprops_3D(labels)
        _ = [(p.volume, p.surface_area, p.sphericity) for p in props]
        return props

    rp, t_sk = _timed(skimage_props)
    rp3, t_ps = _timed(porespy_props)
    ours = [o for o in blockwise.objects if o["class_value"] == 2]
    grain = {"count_ours": len(ours), "count_skimage": len(rp), "count_placed": len(placed),
             "skimage_s": t_sk, "porespy_regionprops_3D_s": t_ps}
    if len(ours) == len(rp):
        vol_exact = all(o["voxel_count"] == int(r.area) for o, r in zip(ours, rp, strict=True))
        cen = max(np.hypot.reduce([o["centroid_z"] - r.centroid[0], o["centroid_y"] - r.centroid[1],
                                   o["centroid_x"] - r.centroid[2]])
                  for o, r in zip(ours, rp, strict=True))
        bbox_same = all((o["bbox_min_z"], o["bbox_min_y"], o["bbox_min_x"], o["bbox_max_z"] + 1,
                         o["bbox_max_y"] + 1, o["bbox_max_x"] + 1) == tuple(r.bbox)
                        for o, r in zip(ours, rp, strict=True))
        # skimage's major axis uses voxel-centre moments (no voxel extent): 4 sqrt(l1)
        ax = [o["axis1_length"] / r.axis_major_length for o, r in zip(ours, rp, strict=True)
              if r.axis_major_length > 0]
        area = [o["surface_area"] / p.surface_area for o, p in zip(ours, rp3, strict=True)]
        sph_o = [o["sphericity"] for o in ours]
        sph_p = [p.sphericity for p in rp3]
        true_v = []
        for o in ours:
            c = np.array([o["centroid_z"], o["centroid_y"], o["centroid_x"]])
            _, r = min(placed, key=lambda cr, c=c: np.linalg.norm(cr[0] - c))
            true_v.append(o["volume"] / (4 / 3 * math.pi * r ** 3))
        grain.update({
            "voxel_counts_equal_skimage": bool(vol_exact),
            "bbox_equal_skimage": bool(bbox_same),
            "max_centroid_difference_voxels": float(cen),
            "axis1_ours_over_skimage_median": float(np.median(ax)),
            "area_ours_over_porespy_median": float(np.median(area)),
            "area_ours_over_porespy_range": [float(min(area)), float(max(area))],
            "sphericity_ours_median": float(np.median(sph_o)),
            "sphericity_porespy_median": float(np.median(sph_p)),
            "volume_over_true_ball_range": [float(min(true_v)), float(max(true_v))],
            "voxel_counts_equal_porespy": all(o["voxel_count"] == int(p.volume)
                                              for o, p in zip(ours, rp3, strict=True)),
        })
    out["grains"] = grain
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
