"""Compare ways to make smooth label surfaces: area and volume errors, closedness, thin rods.

    .venv/bin/python benchmarks/smooth_methods.py          # table of every method x shape
    .venv/bin/python benchmarks/smooth_methods.py --quick  # fewer shapes

Candidates (every one on the same generated shapes with known answers):

* ``mc``: marching cubes of the binary label (today's surface);
* ``gauss σ``: the 0.5 iso-surface of the label blurred with a Gaussian of σ voxels;
* ``laplace``: marching cubes + plain Laplacian smoothing (λ = 0.5, 16 steps) clamped to a
  box of 0.25 voxel (vtkConstrainedSmoothingFilter's scheme);
* ``sinc``: marching cubes + windowed-sinc low-pass (Taubin, Zhang & Golub; VTK's
  vtkWindowedSincPolyDataFilter with a Nuttall window), 20 terms, pass band 0.05, clamped;
* ``nets``: surface nets (one vertex per boundary cell, a quad per boundary voxel face)
  relaxed by Taubin smoothing inside each vertex's cell (Gibson 1998; vtkSurfaceNets3D);
* ``light`` / ``strong``: what ml4paleo ships (:mod:`ml4paleo.meshing.smooth`).

Errors: area against the analytic surface (balls, torus; the tilted plate inside a
24 x 24 window where it is flat), volume against the voxel count.  ``open`` counts
edges not used by exactly two faces (0 = closed 2-manifold).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage, sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_smooth_meshes import ball, clipped_area, rod, tilted_plate, torus  # noqa: E402

from ml4paleo.meshing.smooth import Smoothing, smooth_points, surfaces  # noqa: E402


def _mc(mask: np.ndarray, vs) -> tuple[np.ndarray, np.ndarray]:
    return surfaces(mask.astype(np.uint8), vs, smooth="none")[1]


def gauss(mask, vs, sigma):
    from skimage.measure import marching_cubes

    field = ndimage.gaussian_filter(np.pad(mask.astype(np.float32), 4), sigma)
    if field.max() <= 0.5:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)  # blurred away entirely
    v, f, _, _ = marching_cubes(field, 0.5, method="lewiner", spacing=tuple(vs))
    return (v - 4 * np.asarray(vs))[:, ::-1].copy(), f


def _adjacency(n, f):
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.concatenate([e, e[:, ::-1]]), axis=0)
    a = sparse.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return a, np.asarray(a.sum(axis=1)).ravel()[:, None]


def laplace(mask, vs, steps=16, relax=0.5, box=0.25):
    v0, f = _mc(mask, vs)
    a, deg = _adjacency(len(v0), f)
    lim = box * np.asarray(vs)[::-1]
    p = v0.copy()
    for _ in range(steps):
        p = np.clip(p + relax * ((a @ p) / deg - p), v0 - lim, v0 + lim)
    return p, f


def _sinc_coefficients(n, pass_band):
    theta = math.acos(1 - 0.5 * pass_band)
    i = np.arange(n + 1)
    w = (0.355768 + 0.487396 * np.cos(i * np.pi / (n + 1)) + 0.144232 * np.cos(2 * i * np.pi / (n + 1))
         + 0.012604 * np.cos(3 * i * np.pi / (n + 1)))
    sigma = 0.0
    for _ in range(500):  # VTK's Newton search for the offset that makes f(k_pb) = 1
        c = np.empty(n + 1)
        c[0] = w[0] * (theta + sigma) / np.pi
        c[1:] = 2 * w[1:] * np.sin(i[1:] * (theta + sigma)) / (i[1:] * np.pi)
        cp = np.zeros(n + 1)
        cp[n - 2] = 2 * (n - 1) * c[n - 1]
        for k in range(n - 3, -1, -1):
            cp[k] = cp[k + 2] + 2 * (k + 1) * c[k + 1]
        t = np.cos(i * math.acos(1 - 0.5 * pass_band))
        fk, fp = (c * t).sum(), (cp * t).sum()
        if abs(fk - 1) < 1e-3:
            break
        sigma -= (fk - 1) / fp
    return c


def sinc(mask, vs, n=20, pass_band=0.05, box=0.25):
    v0, f = _mc(mask, vs)
    a, deg = _adjacency(len(v0), f)
    c = _sinc_coefficients(n, pass_band)
    x0 = v0.copy()
    x1 = x0 + 0.5 * ((a @ x0) / deg - x0)
    out = c[0] * x0 + c[1] * x1
    for j in range(2, n + 1):
        x2 = 2 * x1 - x0 + ((a @ x1) / deg - x1)
        out += c[j] * x2
        x0, x1 = x1, x2
    lim = box * np.asarray(vs)[::-1]
    return np.clip(out, v0 - lim, v0 + lim), f


def nets(mask, vs, iterations=10):
    """Binary surface nets: vertices in boundary cells, relaxed inside their cell."""
    m = np.pad(mask, 1)
    shape = np.array(m.shape)
    cell_id = -np.ones(shape - 1, np.int64)
    corners = [m[a : a + shape[0] - 1, b : b + shape[1] - 1, c : c + shape[2] - 1]
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    active = np.any(corners, axis=0) & ~np.all(corners, axis=0)
    cells = np.argwhere(active)
    cell_id[tuple(cells.T)] = np.arange(len(cells))
    quads = []
    for k in range(3):
        i, j = [a for a in range(3) if a != k]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[k], hi[k] = slice(0, -1), slice(1, None)
        cross = np.argwhere(m[tuple(lo)] != m[tuple(hi)])
        inside_low = m[tuple(lo)][tuple(cross.T)]
        # the four cells around the edge p -> p + e_k: lower corners p - {0,1} e_i - {0,1} e_j
        ring = []
        for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
            q = cross.copy()
            q[:, i] -= di
            q[:, j] -= dj
            ring.append(cell_id[tuple(q.T)])
        ring = np.stack(ring, axis=1)
        # orientation: right-handed (i, j, k) frame, normal toward the outside voxel
        flip = inside_low ^ ((i, j, k) in ((1, 0, 2), (0, 2, 1), (2, 1, 0)))
        ring[flip] = ring[flip][:, ::-1]
        quads.append(ring)
    q = np.concatenate(quads)
    f = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    v0 = (cells + 0.5 - 1.0) * np.asarray(vs)  # zyx; padding offset 1
    p = smooth_points(v0, f, Smoothing("nets", iterations, max_shift=0.49), vs)
    xyz = p[:, ::-1].copy()
    mesh = trimesh.Trimesh(xyz, f, process=False)
    if mesh.volume < 0:
        f = f[:, ::-1]
    return xyz, f


def ours(mask, vs, level):
    return surfaces(mask.astype(np.uint8), vs, smooth=level)[1]


METHODS = {
    "mc": lambda m, vs: _mc(m, vs),
    "gauss 0.7": lambda m, vs: gauss(m, vs, 0.7),
    "gauss 1.0": lambda m, vs: gauss(m, vs, 1.0),
    "laplace": laplace,
    "sinc": sinc,
    "nets": nets,
    "light": lambda m, vs: ours(m, vs, "light"),
    "strong": lambda m, vs: ours(m, vs, "strong"),
}


def shapes(quick: bool) -> dict:
    """name -> (mask, voxel size, analytic area or None, area function or None)."""
    out = {}
    radii = (10.0, 20.0) if quick else (10.0, 20.0, 40.0)
    for r in radii:
        out[f"ball r{r:g}"] = (ball(r), (1.0, 1.0, 1.0), 4 * math.pi * r * r, None)
    out["torus 14/5"] = (torus(), (1.0, 1.0, 1.0), 4 * math.pi**2 * 70.0, None)
    plate, c, u, w = tilted_plate()
    planes = [(a, float(a @ c) + 12.0) for a in (u, -u, w, -w)]
    out["tilted plate 5"] = (plate, (1.0, 1.0, 1.0), 2 * 24.0 * 24.0,
                             lambda v, f: clipped_area(v, f, planes))
    vs = (2.0, 1.0, 0.8)
    out["ball r12 vs2/1/.8"] = (ball(12.0, voxel_size=vs), vs, 4 * math.pi * 144.0, None)
    for width in (1, 2, 3):
        out[f"rod {width}"] = (rod(width), (1.0, 1.0, 1.0), None, None)
    return out


def measure(v, f, mask, vs, area, area_fn):
    if len(f) == 0:
        return {"area": None if area is None else -100.0, "volume": -100.0, "open": 0, "bodies": 0}
    m = trimesh.Trimesh(v, f, process=False)
    edges = np.sort(m.edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    a = area_fn(v, f) if area_fn else m.area
    return {
        "area": None if area is None else 100 * (a / area - 1),
        "volume": 100 * (abs(m.volume) / (mask.sum() * np.prod(vs)) - 1),
        "open": int(np.count_nonzero(counts != 2)),
        "bodies": m.body_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    shape_list = shapes(args.quick)
    print("method      | " + " | ".join(f"{s:>24s}" for s in shape_list) + " |  seconds")
    print("            | " + " | ".join(f"{'area% vol% open bodies':>24s}" for _ in shape_list))
    for name in args.methods.split(","):
        fn = METHODS[name]
        cells, t0 = [], time.perf_counter()
        for mask, vs, area, area_fn in shape_list.values():
            v, f = fn(mask, vs)
            r = measure(v, f, mask, vs, area, area_fn)
            a = "   -  " if r["area"] is None else f"{r['area']:+6.2f}"
            cells.append(f"{a} {r['volume']:+7.2f} {r['open']:4d} {r['bodies']:3d}")
        seconds = time.perf_counter() - t0
        print(f"{name:11s} | " + " | ".join(f"{c:>24s}" for c in cells) + f" | {seconds:7.1f}",
              flush=True)


if __name__ == "__main__":
    main()
