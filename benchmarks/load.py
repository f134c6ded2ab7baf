"""Load benchmark: 20 concurrent clients against the real server (loopback only).

Fills a temporary data folder with 1,000 jobs through :class:`ml4paleo.jobs.JobStore`
(a few of them converted: a small OME-Zarr image with a pyramid, so slice tiles work),
starts the web app the way ``ml4paleo serve --no-runners`` does (``main.py``: waitress,
8 threads, on 127.0.0.1 and a free port, in its own process), then runs 20 client
threads (one keep-alive connection each) for a fixed time in alternating phases without
and with an access key. Each client picks, per request:

- ``status``: ``GET /api/job/<id>/status`` of a random job,
- ``tile``:   ``GET /api/job/<id>/slice?index=..&level=..&tile=r,c&tile_size=128`` of a
  random converted job,
- ``list``:   ``GET /api/jobs?page=..`` (50 per page, sometimes sorted by name),
- ``upload``: ``POST /api/job/new`` then one 16 KiB ``POST /api/upload`` to the new job
  (timed as ``new`` and ``upload``),

then waits ``--think`` seconds. "Keyed" phases add a key (``ml4paleo.keys.add_key``) and
send it in ``X-API-Key``; "unkeyed" phases revoke it (the server sees the key file change
on the next request). Prints p50 / p95 / p99 (ms) and error counts per request kind,
keyed vs unkeyed, and whether the goals hold (p99 <= 250 ms, keyed p50 and p95 within
10 % of unkeyed, 0 errors). On a shared machine the loopback phases see the machine's
load change from phase to phase, so the key's cost is also measured on its own
(``--service``): the same requests in this process, alternating one by one between a
keyed and an unkeyed copy of the data. Nothing leaves the machine; the data folders are
removed.

Run by hand (not part of the test suite)::

    .venv/bin/python benchmarks/load.py                      # 2 rounds x 2 phases x 15 s
    .venv/bin/python benchmarks/load.py --seconds 30 --think 0   # closed loop, no pauses
    .venv/bin/python benchmarks/load.py --json                # numbers as JSON on stdout
    # before/after: the server from another source tree (the clients and data stay)
    git archive main | tar -x -C /tmp/before
    .venv/bin/python benchmarks/load.py --tree /tmp/before
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("status", "tile", "list", "new", "upload")
#: request mix (relative weights); "upload" makes a job and sends one chunk
MIX = {"status": 45, "tile": 25, "list": 15, "upload": 15}
SHAPE = (64, 256, 256)
GOAL_P99_MS = 250.0
GOAL_KEYED_RATIO = 1.10


# --------------------------------------------------------------------------- data
def populate(data_dir: Path, n_jobs: int, n_images: int) -> tuple[list[str], list[str]]:
    """``n_jobs`` job records, ``n_images`` of them converted (a uint16 image with a
    pyramid); returns (all job ids, converted job ids)."""
    import numpy as np

    from ml4paleo.formats import build_pyramid, create_image
    from ml4paleo.jobs import JobStore
    from ml4paleo.workspace import JobPaths

    store = JobStore(data_dir)
    ids, converted = [], []
    every = max(1, n_jobs // max(1, n_images))
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    volume = ((x * 7 + y * 3 + z * 11) % 4000).astype(np.uint16)
    for i in range(n_jobs):
        rec = store.create(f"scan {i}", "npy")
        ids.append(rec["id"])
        if i % every == 0 and len(converted) < n_images:
            img = create_image(JobPaths(store.job_dir(rec["id"])).image, SHAPE, np.uint16,
                               chunks=64, voxel_size=(0.01, 0.01, 0.01), unit="millimeter")
            img.array[:] = volume
            build_pyramid(img)
            store.update(rec["id"], lambda r: r.update(
                status="converted", progress=1.0, message="converted",
                metadata={"shape": list(SHAPE), "dtype": "uint16",
                          "voxel_size": [0.01, 0.01, 0.01], "unit": "millimeter"}))
            converted.append(rec["id"])
    return ids, converted


# --------------------------------------------------------------------------- server
def start_server(data_dir: Path, threads: int, tree: Path = ROOT
                 ) -> tuple[subprocess.Popen, str]:
    """``main.py --no-runners`` of source tree ``tree`` on 127.0.0.1 and a free port;
    (process, base URL)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.Popen(
        [sys.executable, str(tree / "main.py"), "--host", "127.0.0.1", "--port", "0",
         "--data", str(data_dir), "--no-runners", "--threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tree)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        m = re.search(r"ml4paleo on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


# --------------------------------------------------------------------------- clients
def _multipart(job_id: str, name: str, payload: bytes) -> tuple[bytes, str]:
    boundary = "----m4pload" + os.urandom(8).hex()
    parts = []
    for field, value in (("job_id", job_id), ("dzchunkindex", "0"),
                         ("dztotalchunkcount", "1"), ("dztotalfilesize", str(len(payload)))):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"'
                     f"\r\n\r\n{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + payload + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client(threading.Thread):
    """One keep-alive connection making requests until ``stop`` is set."""

    def __init__(self, port: int, ids: list[str], converted: list[str], key: str | None,
                 think: float, stop: threading.Event, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ids, self.converted, self.key = port, ids, converted, key
        self.think, self.stop_event = think, stop
        self.rng = random.Random(seed)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.conn: http.client.HTTPConnection | None = None
        self.payload = os.urandom(16 * 1024)

    def _request(self, kind: str, method: str, url: str, body: bytes | None = None,
                 ctype: str | None = None, expect: int = 200) -> dict | None:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["X-API-Key"] = self.key
        if ctype:
            headers["Content-Type"] = ctype
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, url, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            ms = (time.perf_counter() - t0) * 1000
        except (OSError, http.client.HTTPException) as exc:
            self.errors[kind].append(f"{method} {url}: {type(exc).__name__}: {exc}")
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None
        self.times[kind].append(ms)
        if resp.status != expect:
            self.errors[kind].append(f"{method} {url}: {resp.status} {data[:120]!r}")
            return None
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data)
        return {}

    def one(self) -> None:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        rng = self.rng
        if kind == "status":
            self._request("status", "GET", f"/api/job/{rng.choice(self.ids)}/status")
        elif kind == "tile":
            level = rng.choice((0, 0, 1))
            n = max(1, (SHAPE[1] >> level) // 128)
            self._request("tile", "GET",
                          f"/api/job/{rng.choice(self.converted)}/slice?axis=z"
                          f"&index={rng.randrange(SHAPE[0])}&level={level}"
                          f"&tile={rng.randrange(n)},{rng.randrange(n)}&tile_size=128")
        elif kind == "list":
            sort = rng.choice(("", "", "&sort=name"))
            self._request("list", "GET", f"/api/jobs?page={rng.randint(1, 20)}&per_page=50"
                                         f"{sort}")
        else:
            out = self._request("new", "POST", "/api/job/new",
                                json.dumps({"name": "load upload", "source_type": "npy"}).encode(),
                                "application/json", expect=201)
            if out:
                body, ctype = _multipart(out["job_id"], "scan.npy", self.payload)
                self._request("upload", "POST", "/api/upload", body, ctype)

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.one()
            if self.think:
                self.stop_event.wait(self.rng.uniform(0.5, 1.5) * self.think)
        if self.conn is not None:
            self.conn.close()


def run_phase(port: int, ids, converted, key: str | None, clients: int, seconds: float,
              think: float, seed: int) -> tuple[dict, dict]:
    stop = threading.Event()
    threads = [Client(port, ids, converted, key, think, stop, seed * 1000 + i)
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    times, errors = defaultdict(list), defaultdict(list)
    for t in threads:
        for k, v in t.times.items():
            times[k].extend(v)
        for k, v in t.errors.items():
            errors[k].extend(v)
    return times, errors


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_times(ids: list[str], converted: list[str], data: Path, n: int) -> dict:
    """Server-side cost without the network and without the other clients: the same
    requests through Flask's test client, alternating one by one between a copy of the
    data folder with a key (sent) and one without, so a change of the machine's load
    falls on both. Median microseconds per kind and mode."""
    import statistics

    from ml4paleo import keys
    from webapp import create_app

    keyed_dir = data.parent / (data.name + "-keyed")
    shutil.copytree(data, keyed_dir, ignore=shutil.ignore_patterns("keys.*", ".keys.lock"))
    try:
        _, key = keys.add_key(keyed_dir, "service")
        clients = {False: (create_app(data_dir=data).test_client(), {}),
                   True: (create_app(data_dir=keyed_dir).test_client(), {"X-API-Key": key})}
        urls = {"status": lambda i: f"/api/job/{ids[i % len(ids)]}/status",
                "tile": lambda i: f"/api/job/{converted[i % len(converted)]}/slice?axis=z"
                                  f"&index={i % SHAPE[0]}&tile=0,0&tile_size=128",
                "list": lambda i: f"/api/jobs?page={1 + i % 20}&per_page=50"}
        out: dict = {}
        for kind, url in urls.items():
            times: dict = {False: [], True: []}
            for i in range(n + 5):
                for keyed in ((False, True) if i % 2 else (True, False)):
                    client, headers = clients[keyed]
                    t0 = time.perf_counter()
                    r = client.get(url(i), headers=headers)
                    if i >= 5:  # the first few warm caches
                        times[keyed].append((time.perf_counter() - t0) * 1e6)
                    if r.status_code != 200:
                        raise RuntimeError(f"{url(i)}: {r.status_code}")
            u, k = statistics.median(times[False]), statistics.median(times[True])
            out[kind] = {"unkeyed_us": round(u), "keyed_us": round(k),
                         "keyed_over_unkeyed": round(k / u, 3)}
        return out
    finally:
        shutil.rmtree(keyed_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report
def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(round(q * (len(sorted_ms) - 1))))]


def summarize(times: dict, errors: dict, seconds: float) -> dict:
    out = {}
    for kind in (*KINDS, "all"):
        ms = sorted(sum(times.values(), []) if kind == "all" else times.get(kind, []))
        errs = sum(len(v) for v in errors.values()) if kind == "all" else len(errors.get(kind, []))
        out[kind] = {"n": len(ms), "rps": round(len(ms) / seconds, 1),
                     "p50": round(_pct(ms, 0.50), 1), "p95": round(_pct(ms, 0.95), 1),
                     "p99": round(_pct(ms, 0.99), 1), "errors": errs}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--images", type=int, default=5, help="converted jobs (tiles)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=2,
                        help="unkeyed + keyed phases, alternating")
    parser.add_argument("--think", type=float, default=0.1,
                        help="mean pause of a client between requests, s (0: closed loop)")
    parser.add_argument("--threads", type=int, default=8, help="server threads")
    parser.add_argument("--service", type=int, default=300,
                        help="in-process requests per kind and mode for the service-time "
                             "comparison (0: skip)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="source tree whose main.py serves (before/after comparisons)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.seconds * 2 * args.rounds > 1800:
        parser.error("at most 30 minutes of load")

    from ml4paleo import keys

    data = Path(tempfile.mkdtemp(prefix="m4p-load-"))
    proc = None
    try:
        t0 = time.perf_counter()
        ids, converted = populate(data, args.jobs, args.images)
        print(f"{len(ids)} jobs ({len(converted)} converted) made in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        proc, url = start_server(data, args.threads, args.tree.resolve())
        port = int(url.rsplit(":", 1)[1])
        print(f"server ({args.tree}) {url} up in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        # warm-up (imports, caches), not counted
        run_phase(port, ids, converted, None, args.clients, 2.0, args.think, 0)
        merged = {False: (defaultdict(list), defaultdict(list)),
                  True: (defaultdict(list), defaultdict(list))}
        cpu = {False: 0.0, True: 0.0}
        for r in range(args.rounds):
            # the mode that goes first alternates, so a load trend of the machine
            # falls on both
            for keyed in ((False, True) if r % 2 == 0 else (True, False)):
                key = None
                if keyed:
                    _, key = keys.add_key(data, "load")
                c0 = _cpu_seconds(proc.pid)
                t, e = run_phase(port, ids, converted, key, args.clients, args.seconds,
                                 args.think, 1 + 2 * r + keyed)
                cpu[keyed] += _cpu_seconds(proc.pid) - c0
                if keyed:
                    keys.revoke_key(data, "load")
                for k, v in t.items():
                    merged[keyed][0][k].extend(v)
                for k, v in e.items():
                    merged[keyed][1][k].extend(v)
                print(f"round {r + 1} {'keyed' if keyed else 'unkeyed'}: "
                      f"{sum(map(len, t.values()))} requests, "
                      f"{sum(map(len, e.values()))} errors; server CPU "
                      f"{(_cpu_seconds(proc.pid) - c0) / args.seconds:.2f} s/s", file=sys.stderr)
        load_after = os.getloadavg()[0]
        service = service_times(ids, converted, data, args.service) if args.service else {}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(data, ignore_errors=True)

    span = args.seconds * args.rounds
    result = {"unkeyed": summarize(*merged[False], span), "keyed": summarize(*merged[True], span)}
    server_cpu = {"unkeyed": round(cpu[False] / span, 2), "keyed": round(cpu[True] / span, 2)}
    worst = max(v["p99"] for s in result.values() for k, v in s.items() if v["n"])
    errors = sum(s["all"]["errors"] for s in result.values())
    u, k = result["unkeyed"]["all"], result["keyed"]["all"]
    ratio = {q: round(k[q] / u[q], 3) for q in ("p50", "p95", "p99")}
    goals = {"p99 <= 250 ms": worst <= GOAL_P99_MS,
             "keyed within 10 %": ratio["p50"] <= GOAL_KEYED_RATIO
             and ratio["p95"] <= GOAL_KEYED_RATIO,
             "0 errors": errors == 0}
    if service:
        goals["keyed within 10 % (service time)"] = all(
            v["keyed_over_unkeyed"] <= GOAL_KEYED_RATIO for v in service.values())
    if args.json:
        print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                          "load_after": load_after, "server_cpu_s_per_s": server_cpu,
                          "service_us": service,
                          "results": result,
                          "keyed_over_unkeyed": ratio, "goals": goals}, indent=1))
    else:
        print(f"server {args.tree}: {args.clients} clients, {args.jobs} jobs, think {args.think} s, "
              f"{args.rounds} x {args.seconds:g} s per mode; load average after "
              f"{load_after:.1f} on {os.cpu_count()} CPUs; server CPU s/s unkeyed "
              f"{server_cpu['unkeyed']}, keyed {server_cpu['keyed']}")
        print(f"{'kind':<8}{'mode':<9}{'n':>7}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
              f"{'errors':>8}")
        for kind in (*KINDS, "all"):
            for mode in ("unkeyed", "keyed"):
                v = result[mode][kind]
                print(f"{kind:<8}{mode:<9}{v['n']:>7}{v['rps']:>8}{v['p50']:>8}{v['p95']:>8}"
                      f"{v['p99']:>8}{v['errors']:>8}")
        print(f"keyed / unkeyed (all): p50 {ratio['p50']}, p95 {ratio['p95']}, "
              f"p99 {ratio['p99']}")
        for kind, v in service.items():
            print(f"service time {kind:<7} (in-process, alternating, median): unkeyed "
                  f"{v['unkeyed_us']} us, keyed {v['keyed_us']} us, "
                  f"ratio {v['keyed_over_unkeyed']}")
        print("goals: " + ", ".join(f"{g} {'OK' if ok else 'FAILED'}" for g, ok in goals.items()))
    for mode, flag in (("unkeyed", False), ("keyed", True)):
        for kind, msgs in merged[flag][1].items():
            for m in msgs[:3]:
                print(f"error ({mode} {kind}): {m}", file=sys.stderr)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
