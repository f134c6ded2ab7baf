"""Benchmark: mesh a generated multi-label volume; report seconds and peak memory.

    .venv/bin/python benchmarks/mesh.py                 # 512^3, chunk 256, 2 workers
    .venv/bin/python benchmarks/mesh.py --size 256 --chunk-size 128 --workers 1
    # before/after in one run: also mesh with the ml4paleo of another source tree
    .venv/bin/python benchmarks/mesh.py --size 256 --chunk-size 128 --baseline /tmp/before
    # surfaces: each level on the same volume, one after the other (default: light)
    .venv/bin/python benchmarks/mesh.py --smooth none,light,strong

The label volume (spheres, tori, a metaball blob, a thin shell and many small grains)
is written slab by slab to an OME-Zarr label image in a temp folder, then
:func:`ml4paleo.meshing.mesh` runs in a child process while this process samples the
memory of the child and its workers (RSS and PSS summed over the process tree, and the
largest single process).  Every mesh is then checked to be watertight.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _shapes(size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    s = size / 512.0
    return {
        "spheres": [((130 * s, 140 * s, 150 * s), 70 * s), ((380 * s, 360 * s, 120 * s), 55 * s),
                    ((250 * s, 120 * s, 400 * s), 40 * s)],
        "tori": [((260 * s, 380 * s, 380 * s), 80 * s, 22 * s), ((100 * s, 400 * s, 250 * s), 50 * s,
                                                                  12 * s)],
        "blob": [(tuple(rng.uniform(300, 450, 3) * s), rng.uniform(25, 45) * s) for _ in range(12)],
        "shell": ((256 * s, 256 * s, 256 * s), 200 * s, 3.0 * max(s, 0.5)),
        "grains": [(tuple(rng.uniform(20, 492, 3) * s), rng.uniform(2, 5) * max(s, 0.5))
                   for _ in range(300)],
    }


def _box(c, r, z0: int, z1: int, size: int):
    """Slab-local slices and coordinate grids of the box of radius ``r`` around ``c``."""
    lo = [max(int(np.floor(c[0] - r)), z0), max(int(np.floor(c[1] - r)), 0),
          max(int(np.floor(c[2] - r)), 0)]
    hi = [min(int(np.ceil(c[0] + r)) + 1, z1), min(int(np.ceil(c[1] + r)) + 1, size),
          min(int(np.ceil(c[2] + r)) + 1, size)]
    if any(h <= a for a, h in zip(lo, hi, strict=True)):
        return None
    z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    sl = (slice(lo[0] - z0, hi[0] - z0), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return sl, z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)


def _slab(shapes: dict, size: int, z0: int, z1: int) -> np.ndarray:
    out = np.zeros((z1 - z0, size, size), np.uint8)

    def paint(c, r, value, inside):
        box = _box(c, r, z0, z1, size)
        if box is not None:
            sl, z, y, x = box
            out[sl][inside(z - c[0], y - c[1], x - c[2])] = value

    c, r_out, thick = shapes["shell"]
    paint(c, r_out, 4, lambda z, y, x: (np.abs(np.sqrt(z * z + y * y + x * x) - r_out + thick / 2)
                                         <= thick / 2) & (x < 0.3 * r_out))
    for c, r in shapes["spheres"]:
        paint(c, r, 1, lambda z, y, x, r=r: z * z + y * y + x * x <= r * r)
    for c, big, small in shapes["tori"]:
        paint(c, big + small, 2, lambda z, y, x, big=big, small=small:
              (np.sqrt(y * y + x * x) - big) ** 2 + z * z <= small * small)
    centres = np.array([c for c, _ in shapes["blob"]])
    radius = max(r for _, r in shapes["blob"])
    mid = (centres.min(axis=0) + centres.max(axis=0)) / 2
    reach = (centres.max(axis=0) - centres.min(axis=0)).max() / 2 + 2 * radius
    box = _box(mid, reach, z0, z1, size)
    if box is not None:
        sl, z, y, x = box
        field = np.zeros(out[sl].shape, np.float32)
        for c, r in shapes["blob"]:
            field += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (r * r))
        out[sl][field > 0.6] = 3
    for c, r in shapes["grains"]:
        paint(c, r, 5, lambda z, y, x, r=r: z * z + y * y + x * x <= r * r)
    return out


def generate(path: Path, size: int, chunks: int = 128) -> float:
    """Write the benchmark label volume to an OME-Zarr label image; return seconds."""
    from ml4paleo.formats import create_image

    t0 = time.perf_counter()
    shapes = _shapes(size)
    img = create_image(path, (size,) * 3, np.uint8, chunks=chunks, voxel_size=(0.02, 0.01, 0.01),
                       unit="millimeter", label=True, pyramid=False)
    step = min(chunks, size)
    for z0 in range(0, size, step):
        img.array[z0 : z0 + step] = _slab(shapes, size, z0, min(z0 + step, size))
    return time.perf_counter() - t0


def _run_child(args) -> None:
    from ml4paleo.meshing import mesh

    t0 = time.perf_counter()
    smooth = {"smooth": args.smooth} if args.smooth else {}  # a baseline tree may predate it
    out = mesh(args.labels, args.out, chunk_size=args.chunk_size, formats=args.formats,
               workers=args.workers, executor="serial" if args.workers == 1 else None, **smooth)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "faces": {str(k): v for k, v in out["faces"].items()},
                      "stats": out["stats"], "blocks": out["blocks"]}))


def _tree_memory(proc) -> tuple[int, int, int]:
    import psutil

    rss = pss = biggest = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        biggest = max(biggest, info.rss)
    return rss, pss, biggest


def _measure(args, labels: Path, out: Path, tree: Path | None, smooth: str | None) -> dict:
    """Mesh ``labels`` in a child process (``tree`` first on its import path); sample memory."""
    import psutil
    import trimesh

    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, __file__, "--child", "--labels", str(labels), "--out", str(out),
           "--chunk-size", str(args.chunk_size), "--workers", str(args.workers), "--formats",
           args.formats] + (["--smooth", smooth] if smooth else [])
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    proc = psutil.Process(child.pid)
    peak = [0, 0, 0]
    while child.poll() is None:
        try:
            now = _tree_memory(proc)
        except psutil.NoSuchProcess:
            break
        peak = [max(a, b) for a, b in zip(peak, now, strict=True)]
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    output = child.stdout.read()
    if child.returncode:
        raise SystemExit(f"meshing failed (exit {child.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    closed = {}
    for f in sorted(out.glob("*.stl")):
        m = trimesh.load(f, force="mesh")
        closed[f.stem] = bool(m.is_watertight and m.is_winding_consistent)
    mb = 1024**2
    return {
        "size": args.size, "chunk_size": args.chunk_size, "workers": args.workers,
        "smooth": smooth, "blocks": result["blocks"], "mesh_seconds": round(result["seconds"], 1),
        "wall_seconds_with_startup": round(wall, 1),
        "peak_rss_tree_mb": round(peak[0] / mb), "peak_pss_tree_mb": round(peak[1] / mb),
        "peak_rss_largest_process_mb": round(peak[2] / mb),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "faces": result["faces"], "watertight": closed,
        "components": {str(r["label"]): r["components"] for r in result["stats"]},
        "surface_area": {str(r["label"]): round(r["surface_area"], 4) for r in result["stats"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", default="stl")
    parser.add_argument("--smooth", default="light",
                        help="surface levels to run, comma-separated: none, light, strong")
    parser.add_argument("--keep", action="store_true", help="Keep the temp folder.")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also mesh with the ml4paleo package of this source tree "
                             "(before/after in one run; the mesh files are compared)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_child(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="ml4paleo-bench-mesh-"))
    try:
        labels = tmp / "labels.ome.zarr"
        gen_s = generate(labels, args.size)
        print(f"generated {args.size}^3 labels in {gen_s:.1f} s", flush=True)
        reports = {}
        levels = [v for v in args.smooth.split(",") if v]
        runs = [(f"ml4paleo.mesh smooth={v}", None, v) for v in levels]
        if args.baseline is not None:
            runs.insert(0, ("baseline ml4paleo.mesh", args.baseline, None))
        for name, tree, smooth in runs:
            out = tmp / ("meshes-baseline" if tree is not None else f"meshes-{smooth}")
            reports[name] = _measure(args, labels, out, tree, smooth)
            print(json.dumps({name: reports[name]}, indent=2), flush=True)
        if args.baseline is not None and "none" in levels:
            same = all((tmp / "meshes-baseline" / p.name).read_bytes() == p.read_bytes()
                       for p in (tmp / "meshes-none").iterdir())
            print(f"baseline and current (smooth=none) mesh files byte-identical: {same}")
        for name, r in reports.items():
            print(f"{name:32s} {r['mesh_seconds']:7.1f} s  peak RSS (tree) "
                  f"{r['peak_rss_tree_mb']} MiB  peak PSS {r['peak_pss_tree_mb']} MiB  "
                  f"load {r['load_average'][0]}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
