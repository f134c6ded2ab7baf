"""Latency of the annotate loop: submit a slice's labels -> retrained preview of that slice.

Builds a job with a ``size``^3 uint16 image (C's fossil phantom, mirror-tiled so a 512^3
volume is made from a 128^3 phantom without seams and without holding the volume in
RAM), then drives the web app through the Flask test client exactly as the browser
does: ``POST /api/job/<id>/annotate/labels`` with RLE strokes and ``preview: true``.

Reports the first submission on a slice (opened ``--paint-seconds`` before, as the page
does, which starts the feature prefetch), repeated submissions with a few more strokes
each (features cached: the case the issue's "p50 <= 1 s" is about), the first
submission on another slice, and one on a slice opened without prefetch (cold).

``warm_cpu_p50_s`` is the CPU time the server process spent per warm submission (all
threads): on a shared, loaded machine it estimates the latency of an idle one.

Usage::

    .venv/bin/python benchmarks/annotate_loop.py [--size 512] [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml4paleo.annotate import encode_rle  # noqa: E402
from ml4paleo.omezarr import build_pyramid, create_image  # noqa: E402
from ml4paleo.phantom import make_phantom  # noqa: E402
from webapp import create_app  # noqa: E402

TILE = 128


def _tiled(arr: np.ndarray, z0: int, z1: int, ny: int, nx: int) -> np.ndarray:
    """Rows z0:z1 of a mirror tiling of ``arr`` to (.., ny, nx)."""
    t = arr.shape[0]
    idx_z = np.arange(z0, z1)
    period = 2 * t
    mz = idx_z % period
    mz = np.where(mz < t, mz, period - 1 - mz)

    def mirror(n, size):
        i = np.arange(n) % (2 * size)
        return np.where(i < size, i, 2 * size - 1 - i)

    return arr[np.ix_(mz, mirror(ny, arr.shape[1]), mirror(nx, arr.shape[2]))]


def build_job(data_dir: Path, size: int):
    app = create_app(data_dir=data_dir)
    store = app.extensions["ml4paleo_store"]
    jid = store.create("benchmark", "image_stack")["id"]
    image, truth = make_phantom((TILE, TILE, TILE), seed=0)
    t0 = time.perf_counter()
    img = create_image(store.job_dir(jid) / "image.ome.zarr", (size,) * 3, np.uint16, chunks=128)
    for z0 in range(0, size, 64):
        img.array[z0 : z0 + 64] = _tiled(image, z0, min(size, z0 + 64), size, size)
    build_pyramid(img)
    store.update(jid, lambda r: r.update(status="converted"))
    return app, jid, (image, truth), time.perf_counter() - t0


def strokes(truth2d: np.ndarray, rng: np.random.Generator, n: int = 6, length: int = 40) -> np.ndarray:
    """``n`` short random-walk brush strokes (5 px wide) per class, each inside its class."""
    lab = np.zeros(truth2d.shape, np.uint8)
    fg = truth2d > 0
    for cls_mask, value in ((~fg, 1), (fg, 2)):
        ys, xs = np.nonzero(cls_mask)
        if ys.size == 0:
            continue
        for _ in range(n):
            k = rng.integers(ys.size)
            y, x = ys[k], xs[k]
            for _ in range(length):
                if not cls_mask[y, x]:
                    break
                win = (slice(max(0, y - 2), y + 3), slice(max(0, x - 2), x + 3))
                lab[win][cls_mask[win]] = value  # a brush that stays inside the class
                y = int(np.clip(y + rng.integers(-2, 3), 0, truth2d.shape[0] - 1))
                x = int(np.clip(x + rng.integers(-2, 3), 0, truth2d.shape[1] - 1))
    return lab


def submit(client, jid, index, labels):
    t0, c0 = time.perf_counter(), time.process_time()
    r = client.post(f"/api/job/{jid}/annotate/labels",
                    json={"axis": "z", "index": int(index), "mask": encode_rle(labels)})
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    body = r.get_json()
    if r.status_code != 200 or not body["preview"].get("overlay"):
        raise RuntimeError(f"submit failed: {r.status_code} {body}")
    return dt, dict(body["preview"]["timing"], cpu_s=round(cpu, 4))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--paint-seconds", type=float, default=2.0,
                    help="time between opening a slice and the first submission")
    ap.add_argument("--data", type=Path, default=None, help="data dir (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:
        app, jid, (_, truth_tile), build_s = build_job(Path(tmp), args.size)
        client = app.test_client()
        rng = np.random.default_rng(0)
        z = args.size // 2 + TILE // 2  # the middle of a phantom tile: bone present

        def truth_plane(index):
            return _tiled(truth_tile, index, index + 1, args.size, args.size)[0]

        t0 = time.perf_counter()
        client.get(f"/api/job/{jid}/annotate/info")
        open_s = time.perf_counter() - t0

        def open_plane(index, prefetch=True):
            # what the page does when a slice is shown (starts the feature prefetch)
            client.get(f"/api/job/{jid}/annotate/labels?axis=z&index={index}"
                       f"&prefetch={int(prefetch)}")
            if prefetch:
                time.sleep(args.paint_seconds)  # the user paints a few strokes meanwhile

        open_plane(z)
        labels = strokes(truth_plane(z), rng)
        first, first_t = submit(client, jid, z, labels)
        warm, parts = [], []
        for _ in range(args.rounds):
            labels = np.maximum(labels, strokes(truth_plane(z), rng, n=1))
            dt, t = submit(client, jid, z, labels)
            warm.append(dt)
            parts.append(t)
        z2 = z - TILE + 5
        open_plane(z2)
        new_slice, new_t = submit(client, jid, z2, strokes(truth_plane(z2), rng))
        z3 = z - TILE - 9
        open_plane(z3, prefetch=False)
        cold, cold_t = submit(client, jid, z3, strokes(truth_plane(z3), rng))
    q = statistics.quantiles(warm, n=20) if len(warm) >= 2 else [warm[0]] * 19
    result = {
        "volume": [args.size] * 3,
        "build_volume_s": round(build_s, 2),
        "open_annotator_s": round(open_s, 3),
        "paint_seconds": args.paint_seconds,
        "first_submit_s": round(first, 3),
        "first_submit_parts": first_t,
        "warm_p50_s": round(statistics.median(warm), 3),
        "warm_p95_s": round(q[18], 3),
        "warm_cpu_p50_s": round(statistics.median(p["cpu_s"] for p in parts), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "warm_retrain_p50_s": round(statistics.median(p["retrain_s"] for p in parts), 3),
        "warm_predict_p50_s": round(statistics.median(p["predict_s"] for p in parts), 3),
        "new_slice_submit_s": round(new_slice, 3),
        "new_slice_parts": new_t,
        "new_slice_no_prefetch_submit_s": round(cold, 3),
        "new_slice_no_prefetch_parts": cold_t,
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
