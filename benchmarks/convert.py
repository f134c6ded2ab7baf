"""Benchmark: convert a ~2 GB stack of 16-bit TIFF slices to OME-Zarr.

Compares ``ml4paleo.convert`` (streamed, with the 2x pyramid) with a naive baseline that
reads every slice into one numpy array and then writes a zarr array (same chunks and
compressor, no pyramid). Each runs in its own subprocess; reported: wall time, MiB/s of
source data, CPU seconds, and peak RSS (``VmHWM``).

Run by hand (not part of the test suite)::

    .venv/bin/python benchmarks/convert.py                # ~2 GiB, 1024 slices of 1024 x 1024
    .venv/bin/python benchmarks/convert.py --slices 256   # quicker, ~0.5 GiB
    # before/after in one run: also convert with the ml4paleo of another source tree
    git archive main ml4paleo | tar -x -C /tmp/before
    .venv/bin/python benchmarks/convert.py --slices 512 --baseline /tmp/before --repeat 2

The data are generated once per run (not timed): a smooth "fossil" of a few ellipsoids
plus scanner-like noise, so the compressor sees realistic, not trivially compressible, data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20


def generate(folder: Path, slices: int, size: int, seed: int = 0) -> int:
    """Write ``slices`` uint16 TIFF slices of ``size`` x ``size``; returns bytes of data."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blobs = [(rng.uniform(0.2, 0.8, 3), rng.uniform(0.1, 0.3, 3), rng.uniform(8000, 30000))
             for _ in range(6)]
    noise = rng.normal(0.0, 400.0, (8, size, size)).astype(np.float32)  # recycled noise planes
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    for z in range(slices):
        plane = np.full((size, size), 2000.0, np.float32)
        zf = (z + 0.5) / slices
        for (cz, cy, cx), (rz, ry, rx), value in blobs:
            dz = ((zf - cz) / rz) ** 2
            if dz >= 1.0:
                continue
            d = dz + ((coords[:, None] - cy) / ry) ** 2 + ((coords[None, :] - cx) / rx) ** 2
            plane += np.where(d < 1.0, value * (1.0 - 0.3 * d), 0.0).astype(np.float32)
        plane += np.roll(noise[z % 8], z * 7, axis=1)
        tifffile.imwrite(folder / f"slice{z}.tif", np.clip(plane, 0, 65535).astype(np.uint16))
    return slices * size * size * 2


def _child_ml4paleo(source: str, dest: str) -> dict:
    from ml4paleo.convert import convert

    image = convert(source, dest)
    return {"levels": len(image.levels), "shape": list(image.shape)}


def _child_naive(source: str, dest: str) -> dict:
    import tifffile
    import zarr

    from ml4paleo.convert import CONVERT_CLEVEL
    from ml4paleo.formats import default_compressor
    from ml4paleo.io import natural_key

    files = sorted(os.listdir(source), key=natural_key)
    first = tifffile.imread(os.path.join(source, files[0]))
    volume = np.empty((len(files),) + first.shape, first.dtype)
    for z, name in enumerate(files):
        volume[z] = tifffile.imread(os.path.join(source, name))
    arr = zarr.open_array(
        dest, mode="w", shape=volume.shape, chunks=(128, 128, 128), dtype=volume.dtype,
        zarr_format=2, compressor=default_compressor(clevel=CONVERT_CLEVEL),
    )
    arr[:] = volume
    return {"levels": 1, "shape": list(volume.shape)}


def _child(kind: str, source: str, dest: str) -> None:
    t0 = time.perf_counter()
    info = (_child_ml4paleo if kind == "ml4paleo" else _child_naive)(source, dest)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as fh:  # VmHWM: own peak (ru_maxrss may carry the parent's)
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    info.update(wall=time.perf_counter() - t0, cpu=usage.ru_utime + usage.ru_stime, peak_rss=peak)
    print(json.dumps(info))


def run(kind: str, source: Path, dest: Path, tree: Path | None = None) -> dict:
    """Run one conversion in a child process (with ``tree`` first on the import path)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    shutil.rmtree(dest, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(source), str(dest)],
        capture_output=True, text=True, check=False, env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_tree(a: Path, b: Path) -> bool:
    """Same files with the same bytes under both folders."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1024)
    parser.add_argument("--size", type=int, default=1024, help="slice edge in pixels")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data here (reused by the next run) instead of a temp dir")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also convert with the ml4paleo package of this source tree "
                             "(before/after in one run)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each (alternating with the baseline); the best is shown")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ml4paleo-bench-"))
    try:
        t = time.perf_counter()
        slices = work / "slices"
        if slices.is_dir() and len(list(slices.glob("*.tif"))) == args.slices:
            nbytes = args.slices * args.size * args.size * 2  # kept from an earlier --workdir run
        else:
            nbytes = generate(slices, args.slices, args.size)
        print(f"{args.slices} slices of {args.size}x{args.size} uint16 = {nbytes / MiB:.0f} MiB "
              f"ready in {time.perf_counter() - t:.0f} s (not timed)")
        for old in ("out.ome.zarr", "base.ome.zarr", "naive.zarr"):
            shutil.rmtree(work / old, ignore_errors=True)
        print(f"CPUs available: {len(os.sched_getaffinity(0))}, load average before: "
              f"{os.getloadavg()[0]:.1f} (other processes share the CPUs)")
        results: dict[str, dict] = {}

        def best(name: str, r: dict) -> None:
            print(f"  {name}: {r['wall']:.1f} s, peak RSS {r['peak_rss'] / MiB:.0f} MiB")
            if name not in results or r["wall"] < results[name]["wall"]:
                results[name] = r

        for _ in range(max(1, args.repeat)):
            if args.baseline is not None:
                best("baseline ml4paleo.convert", run("ml4paleo", work / "slices",
                                                      work / "base.ome.zarr", args.baseline))
            best("ml4paleo.convert", run("ml4paleo", work / "slices", work / "out.ome.zarr"))
        if args.baseline is not None:
            same = _same_tree(work / "base.ome.zarr", work / "out.ome.zarr")
            print(f"baseline and current outputs byte-identical: {same}")
        if not args.skip_naive:
            results["naive (stack in RAM, zarr write, no pyramid)"] = run(
                "naive", work / "slices", work / "naive.zarr"
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"{'method':48s} {'wall s':>7s} {'MiB/s':>7s} {'CPU s':>7s} {'MiB/CPU-s':>9s} "
              f"{'peak RSS MiB':>12s}")
        for name, r in results.items():
            print(f"{name:48s} {r['wall']:7.1f} {nbytes / MiB / r['wall']:7.0f} {r['cpu']:7.1f} "
                  f"{nbytes / MiB / r['cpu']:9.0f} {r['peak_rss'] / MiB:12.0f}")
        out = work / "out.ome.zarr"
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"ml4paleo output: {size / MiB:.0f} MiB on disk ({nbytes / size:.2f}x), "
              f"{results['ml4paleo.convert']['levels']} pyramid levels")
        if not args.skip_naive:
            import zarr

            a, b = zarr.open_array(str(out / "0"), mode="r"), zarr.open_array(str(work / "naive.zarr"), mode="r")
            z = args.slices // 2
            same = np.array_equal(a[z], b[z]) and np.array_equal(a[:, 100], b[:, 100])
            print(f"outputs identical on sampled planes: {same}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
