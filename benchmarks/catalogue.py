"""Benchmark: the job catalogue (``GET /api/jobs``) at 10 / 1,000 / 10,000 jobs.

Creates the jobs with :class:`ml4paleo.jobs.JobStore` in a temporary data folder (not
timed), then times list requests through the web app in this process (Flask's test
client: no network), for the default listing, a name filter, a status filter and a late
page. Prints p50 / p95 per case and job count.

Run by hand (not part of the test suite)::

    .venv/bin/python benchmarks/catalogue.py                   # 10, 1000, 10000 jobs
    .venv/bin/python benchmarks/catalogue.py --jobs 10 1000 --requests 30
    # before/after in one run: the ml4paleo + webapp of another source tree
    git archive main ml4paleo webapp | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/catalogue.py --jobs 10 1000
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

CASES = {
    "list": "/api/jobs",
    "name filter": "/api/jobs?q=scan%207",
    "status filter": "/api/jobs?status=converted",
    "page 3 by name": "/api/jobs?sort=name&page=3&per_page=20",
}


def populate(data_dir: Path, n: int) -> None:
    """``n`` jobs: a tenth converted with metadata, the rest still uploading."""
    from ml4paleo.jobs import JobStore

    store = JobStore(data_dir)
    have = len([p for p in store.jobs_dir.iterdir() if not p.name.startswith(".")])
    for i in range(have, n):
        fields = {}
        if i % 10 == 0:
            fields = {"status": "converted", "metadata": {
                "shape": [64, 256, 256], "dtype": "uint16", "voxel_size": [0.01, 0.01, 0.01],
                "unit": "millimeter", "source": {"modality": "CT", "manufacturer": "Bruker"}}}
        store.create(f"scan {i}", "npy", **fields)


def time_requests(data_dir: Path, requests: int) -> dict[str, dict[str, float]]:
    from webapp import create_app

    app = create_app(data_dir=data_dir)
    client = app.test_client()
    out = {}
    for label, url in CASES.items():
        r = client.get(url)  # warm (imports, caches)
        assert r.status_code == 200, (url, r.status_code, r.data[:200])
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
        times.sort()
        out[label] = {"p50_ms": round(statistics.median(times), 2),
                      "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
                      "total": r.get_json()["total"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder to fill (reused between runs; default: a temp folder)")
    args = parser.parse_args(argv)
    import ml4paleo

    print(f"ml4paleo from {Path(ml4paleo.__file__).parent}; load {os.getloadavg()[0]:.1f}",
          file=sys.stderr)
    base = args.data or Path(tempfile.mkdtemp(prefix="m4p-catalogue-"))
    results = {}
    for n in sorted(args.jobs):
        data_dir = base / f"jobs-{n}"
        t0 = time.perf_counter()
        populate(data_dir, n)
        made = time.perf_counter() - t0
        results[n] = time_requests(data_dir, args.requests)
        print(f"{n:>6} jobs (made in {made:.1f} s): "
              + "; ".join(f"{k} p50 {v['p50_ms']} ms p95 {v['p95_ms']} ms"
                          for k, v in results[n].items()), file=sys.stderr)
    print(json.dumps({"load": os.getloadavg()[0], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
