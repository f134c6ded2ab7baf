"""Latency and memory of the annotate loop: strokes on a slice -> retrained overlay.

Builds a job whose image is a :class:`~ml4paleo.phantom.TiledPhantom` (C's fossil phantom
mirror-tiled: a 32 x 2048 x 2048 or 16 x 4096 x 4096 scan is written chunk by chunk, never
held in memory), then drives the web app through the Flask test client exactly as the
browser does: ``GET annotate/labels`` when a slice is shown (starts the feature prefetch),
``POST annotate/labels`` with RLE strokes (its answer carries the first overlay), and -- when
the server offers tiles -- ``GET annotate/tile`` for the tiles of a 1024 x 768 viewport at
full resolution (zoom in) and after a pan.

Reported:

- ``first_overlay_s``: the first submission on a slice opened ``--paint-seconds`` before;
- ``warm_p50_s`` / ``warm_p95_s``: repeated submissions with one more stroke each;
- ``new_slice_s``: the first submission on another slice (opened, painted, submitted) and
  ``new_slice_no_prefetch_s`` on one opened without prefetch (the whole cost of a slice);
- ``zoom_refine_s`` / ``pan_refine_s``: the full-resolution tiles of the viewport;
- ``server_peak_rss_mb``: the peak resident memory of this process (the server; the volume
  is built by an earlier run with ``--build-only`` or before the baseline is taken).

``--data DIR`` keeps the built job in ``DIR`` and reuses it, so the same scan can be measured
with two code trees (``PYTHONPATH=<tree> python benchmarks/annotate_loop.py --data DIR``);
``--build-only`` builds and stops. On a shared, loaded machine ``*_cpu_s`` (CPU time of
the process, all threads) estimates an idle machine's latency; the load is reported.

Usage::

    python benchmarks/annotate_loop.py --size 2048 --depth 32 --data /tmp/bench2048 --build-only
    python benchmarks/annotate_loop.py --size 2048 --depth 32 --data /tmp/bench2048 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml4paleo.annotate import encode_rle  # noqa: E402
from webapp import create_app  # noqa: E402

TILE = 128  # the phantom tile that is mirrored
VIEW = (768, 1024)  # the viewport (rows, columns) at full resolution


def _meta_path(data: Path, depth: int, size: int) -> Path:
    return data / f"bench_{depth}x{size}.json"


def build_job(data: Path, depth: int, size: int, planes: list[int]) -> tuple[str, float]:
    """Create (or reuse) the benchmark job in ``data``: its id and the build time."""
    meta = _meta_path(data, depth, size)
    if meta.exists():
        return json.loads(meta.read_text())["job"], 0.0
    from ml4paleo.phantom import TiledPhantom  # the tree that builds has it

    app = create_app(data_dir=data)
    store = app.extensions["ml4paleo_store"]
    jid = store.create(f"benchmark {depth}x{size}^2", "npy")["id"]
    t0 = time.perf_counter()
    phantom = TiledPhantom((depth, size, size), tile=(min(depth, TILE), TILE, TILE), seed=0)
    phantom.write_image(store.job_dir(jid) / "image.ome.zarr", chunks=(min(depth, 64), 128, 128))
    for z in planes:
        np.save(data / f"truth_{depth}x{size}_{z}.npy", phantom.plane_truth(0, z).astype(np.uint8))
    store.update(jid, lambda r: r.update(status="converted"))
    build_s = time.perf_counter() - t0
    meta.write_text(json.dumps({"job": jid, "build_s": build_s}))
    return jid, build_s


def strokes(truth2d: np.ndarray, rng: np.random.Generator, n: int = 6, length: int = 40,
            near: tuple[int, int] | None = None) -> np.ndarray:
    """``n`` short random-walk brush strokes (5 px wide) per class, each inside its class
    (within 400 px of ``near`` when given: where the user looks)."""
    lab = np.zeros(truth2d.shape, np.uint8)
    fg = truth2d > 0
    box = np.zeros_like(fg)
    if near is None:
        box[:] = True
    else:
        box[max(0, near[0] - 400): near[0] + 400, max(0, near[1] - 400): near[1] + 400] = True
    for cls_mask, value in ((~fg & box, 1), (fg & box, 2)):
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
        raise RuntimeError(f"submit failed: {r.status_code} {str(body)[:300]}")
    return dt, dict(body["preview"].get("timing", {}), cpu_s=round(cpu, 3)), body["preview"]


def view_tiles(client, jid, index, preview, centre) -> tuple[float, float, int] | None:
    """Fetch the level-0 tiles of a :data:`VIEW` viewport around ``centre``: (seconds, CPU
    seconds, tiles); ``None`` when the server has no tiles (the whole plane came at once)."""
    tile = preview.get("tile")
    if not tile:
        return None
    h, w = preview["levels"][0]
    r0, c0 = max(0, centre[0] - VIEW[0] // 2), max(0, centre[1] - VIEW[1] // 2)
    rows = range(r0 // tile, min(h, r0 + VIEW[0] - 1) // tile + 1)
    cols = range(c0 // tile, min(w, c0 + VIEW[1] - 1) // tile + 1)
    t0, p0 = time.perf_counter(), time.process_time()
    n = 0
    for ty in rows:
        for tx in cols:
            r = client.get(f"/api/job/{jid}/annotate/tile?axis=z&index={index}&level=0"
                           f"&ty={ty}&tx={tx}&v={preview['version']}")
            if r.status_code != 200:
                raise RuntimeError(f"tile failed: {r.status_code} {r.data[:200]!r}")
            n += 1
    return time.perf_counter() - t0, time.process_time() - p0, n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="slice edge (pixels)")
    ap.add_argument("--depth", type=int, default=None, help="slices (default: --size, at most 64)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--paint-seconds", type=float, default=2.0,
                    help="time between opening a slice and the first submission")
    ap.add_argument("--data", type=Path, default=None,
                    help="keep (and reuse) the job here (default: a temp dir)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    size, depth = args.size, args.depth or min(args.size, 64)
    z = depth // 2 + (depth % 2)
    z2 = max(0, z - depth // 4)
    z3 = min(depth - 1, z + depth // 4)
    planes = [z, z2, z3]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        jid, build_s = build_job(data, depth, size, planes)
        if args.build_only:
            print(json.dumps({"job": jid, "build_volume_s": round(build_s, 1)}))
            return {}
        result = run(data, jid, depth, size, planes, args)
        result["build_volume_s"] = round(build_s, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def run(data: Path, jid: str, depth: int, size: int, planes: list[int], args) -> dict:
    app = create_app(data_dir=data)
    client = app.test_client()
    rng = np.random.default_rng(0)
    z, z2, z3 = planes
    centre = (size // 2, size // 2)

    def truth(index):
        return np.load(data / f"truth_{depth}x{size}_{index}.npy")

    # a fresh start: earlier runs' labels and models go
    for index in planes:
        client.delete(f"/api/job/{jid}/annotate/labels?axis=z&index={index}")

    t0 = time.perf_counter()
    client.get(f"/api/job/{jid}/annotate/info")
    open_s = time.perf_counter() - t0

    def open_plane(index, prefetch=True):
        # what the page does when a slice is shown (starts the feature prefetch)
        client.get(f"/api/job/{jid}/annotate/labels?axis=z&index={index}&prefetch={int(prefetch)}")
        if prefetch:
            time.sleep(args.paint_seconds)  # the user paints a few strokes meanwhile

    open_plane(z)
    labels = strokes(truth(z), rng, near=centre)
    first, first_t, prev = submit(client, jid, z, labels)
    zoom = view_tiles(client, jid, z, prev, centre)
    warm, parts = [], []
    for _ in range(args.rounds):
        labels = np.maximum(labels, strokes(truth(z), rng, n=1, near=centre))
        dt, t, prev = submit(client, jid, z, labels)
        warm.append(dt)
        parts.append(t)
    zoom_warm = view_tiles(client, jid, z, prev, centre)
    pan = view_tiles(client, jid, z, prev, (centre[0], centre[1] + VIEW[1] // 2))
    open_plane(z2)
    new_slice, new_t, _ = submit(client, jid, z2, strokes(truth(z2), rng, near=centre))
    t0 = time.perf_counter()
    open_plane(z3, prefetch=False)
    cold, cold_t, _ = submit(client, jid, z3, strokes(truth(z3), rng, near=centre))
    cold_total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q = statistics.quantiles(warm, n=20) if len(warm) >= 2 else [warm[0]] * 19

    def tiles(v):
        return None if v is None else {"s": round(v[0], 3), "cpu_s": round(v[1], 3), "tiles": v[2]}

    return {
        "volume": [depth, size, size],
        "open_annotator_s": round(open_s, 3),
        "paint_seconds": args.paint_seconds,
        "first_overlay_s": round(first, 3),
        "first_overlay_parts": first_t,
        "first_overlay_level": prev.get("level", 0),
        "zoom_refine": tiles(zoom),
        "warm_p50_s": round(statistics.median(warm), 3),
        "warm_p95_s": round(q[18], 3),
        "warm_cpu_p50_s": round(statistics.median(p["cpu_s"] for p in parts), 3),
        "warm_zoom_refine": tiles(zoom_warm),
        "pan_refine": tiles(pan),
        "new_slice_s": round(new_slice, 3),
        "new_slice_parts": new_t,
        "new_slice_no_prefetch_s": round(cold_total, 3),
        "new_slice_no_prefetch_parts": cold_t,
        "server_peak_rss_mb": round(peak_mb),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
    }


if __name__ == "__main__":
    main()
