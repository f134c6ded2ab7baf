"""Job HTTP routes: create, resumable chunked upload, upload-complete, status, rename;
renames over HTTP racing a runner process; main.py serving and stopping its runners."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from waitress import create_server

from ml4paleo.config import Settings
from ml4paleo.jobs import JobStore
from ml4paleo.jobs.store import wait_for
from webapp import create_app
from webapp.jobs_api import sanitize_upload_path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env["ML4PALEO_STEPS_PLUGIN"] = "jobs_plugin_steps"
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(data_dir=tmp_path / "data", max_upload_bytes=100_000))


@pytest.fixture
def client(app):
    return app.test_client()


def _new(client, **body) -> str:
    res = client.post("/api/job/new", json=body or {"name": "scan", "source_type": "npy"})
    assert res.status_code == 201, res.get_json()
    return res.get_json()["job_id"]


def _chunk(client, job_id, data: bytes, *, index=0, offset=0, total=None, count=1,
           name="volume.npy", via_header=True, **form):
    fields = {"dzuuid": "u-1", "dzchunkindex": str(index), "dzchunkbyteoffset": str(offset),
              "dztotalchunkcount": str(count),
              "dztotalfilesize": str(len(data) if total is None else total), **form}
    if not via_header:
        fields["job_id"] = job_id
    fields["file"] = (io.BytesIO(data), name)
    headers = {"X-Job-ID": job_id} if via_header else {}
    return client.post("/api/upload", data=fields, headers=headers,
                       content_type="multipart/form-data")


# --------------------------------------------------------------------------- jobs
def test_create_status_rename_and_errors_are_json_4xx(client, app):
    res = client.post("/api/job/new", json={"name": "Skull 42", "source_type": "dcm"})
    assert res.status_code == 201
    job_id = res.get_json()["job_id"]
    assert JobStore.is_valid_id(job_id) and len(job_id) >= 22
    assert res.get_json()["source_type"] == "dicom"
    assert client.post("/api/job/new").get_json()["name"] == "Untitled job"

    for body, code, text in [
        ({"name": "x", "source_type": "movie"}, 400, "unknown source_type"),
        ({"name": "x" * 201}, 400, "at most 200"),
        ({"name": 42}, 400, "string"),
    ]:
        res = client.post("/api/job/new", json=body)
        assert res.status_code == code and text in res.get_json()["error"]
    for raw in [b"[1, 2]", b"{not json", b"\xff\xfe"]:
        res = client.post("/api/job/new", data=raw, content_type="application/json")
        assert res.status_code == 400 and "JSON object" in res.get_json()["error"]

    status = client.get(f"/api/job/{job_id}/status").get_json()
    assert status["status"] == "uploading" and status["name"] == "Skull 42"
    assert status["progress"] == 0.0 and status["error"] is None and status["job_id"] == job_id
    assert client.post("/api/job/status", json={"job_id": job_id}).get_json() == status

    res = client.post(f"/api/job/{job_id}/rename", json={"name": "Skull 43"})
    assert res.get_json() == {"status": "success", "job_id": job_id, "name": "Skull 43"}
    assert client.get(f"/api/job/{job_id}/status").get_json()["name"] == "Skull 43"

    unknown = "A" * 22
    checks = [
        ("get", f"/api/job/{unknown}/status", None, 404),
        ("get", "/api/job/..%2F..%2Fetc/status", None, 404),
        ("get", "/api/job/x/status", None, 404),
        ("post", "/api/job/status", {"job_id": unknown}, 404),
        ("post", "/api/job/status", {"job_id": ["list"]}, 400),
        ("post", "/api/job/status", {}, 400),
        ("post", f"/api/job/{unknown}/rename", {"name": "a"}, 404),
        ("post", f"/api/job/{job_id}/rename", {"name": "   "}, 400),
        ("post", f"/api/job/{job_id}/rename", {"name": "x" * 500}, 400),
        ("post", f"/api/job/{job_id}/rename", {}, 400),
        ("post", "/api/job/status/upload-complete", {"job_id": unknown}, 404),
        ("post", "/api/job/status/upload-complete", {}, 400),
    ]
    for method, url, body, code in checks:
        res = getattr(client, method)(url, json=body) if body is not None else \
            getattr(client, method)(url)
        assert res.status_code == code, (url, body, res.get_json())
        assert "error" in res.get_json()
    res = client.post(f"/api/job/{job_id}/rename", data="[]", content_type="application/json")
    assert res.status_code == 400


# --------------------------------------------------------------------------- upload
def test_chunked_upload_out_of_order_with_retries_and_resume(client, app):
    job_id = _new(client)
    data = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    size = 2_500
    chunks = [data[i:i + size] for i in range(0, len(data), size)]

    def send(i, via_header=True):
        res = _chunk(client, job_id, chunks[i], index=i, offset=i * size, total=len(data),
                     count=4, via_header=via_header)
        assert res.status_code == 200, res.get_json()
        return res.get_json()

    assert send(2)["received_bytes"] == 0  # nothing contiguous from the start yet
    assert send(0)["received_bytes"] == 2_500
    assert send(0, via_header=False)["received_bytes"] == 2_500  # retried chunk: harmless
    assert send(3)["complete"] is False
    status = client.get(f"/api/upload/status?job_id={job_id}&filename=volume.npy").get_json()
    assert status["received_bytes"] == 2_500 and status["total_bytes"] == 10_000
    assert status["ranges"] == [[0, 2500], [5000, 10000]]
    res = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert res.status_code == 400 and "incomplete" in res.get_json()["error"]
    reply = send(1)
    assert reply["complete"] is True and reply["received_bytes"] == 10_000
    store = app.extensions["ml4paleo_store"]
    assert (store.job_dir(job_id) / "upload" / "volume.npy").read_bytes() == data
    assert store.get(job_id)["upload_bytes"] == 10_000  # the retried chunk counted once

    res = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert res.status_code == 200 and res.get_json()["status"] == "uploaded"
    assert res.get_json()["upload_files"] == 1
    late = _chunk(client, job_id, b"more", name="late.bin")
    assert late.status_code == 409 and "only accepted while the job is uploading" in \
        late.get_json()["error"]
    again = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert again.status_code == 409


def test_upload_limits_names_and_bad_requests(client, app):
    store = app.extensions["ml4paleo_store"]
    job_id = _new(client)
    res = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert res.status_code == 400 and res.get_json()["error"] == "nothing was uploaded yet"

    too_big = _chunk(client, job_id, b"x" * 10, total=200_000, count=20)
    assert too_big.status_code == 413 and "limit is 100000 bytes" in too_big.get_json()["error"]
    past = _chunk(client, job_id, b"x" * 10, offset=95, total=100, count=2)
    assert past.status_code == 400 and "runs past" in past.get_json()["error"]
    assert _chunk(client, job_id, b"x", dzchunkindex="abc").status_code == 400
    no_file = client.post("/api/upload", data={"job_id": job_id},
                          content_type="multipart/form-data")
    assert no_file.status_code == 400 and "'file'" in no_file.get_json()["error"]
    assert client.post("/api/upload", data={"file": (io.BytesIO(b"x"), "a")},
                       content_type="multipart/form-data").status_code == 400
    assert _chunk(client, "A" * 22, b"x").status_code == 404
    assert _chunk(client, "../../etc", b"x").status_code == 404

    # folder uploads keep their folders, but nothing escapes upload/
    for field, raw, expected in [
        ("fullPath", "../../evil/../x.tif", "evil/x.tif"),
        ("relpath", "/etc/passwd", "etc/passwd"),
        ("fullPath", "scan\\slices\\s_001.tif", "scan/slices/s_001.tif"),
        ("fullPath", ".hidden/..../.bashrc", "hidden/bashrc"),
    ]:
        res = _chunk(client, job_id, b"abc", **{field: raw})
        assert res.status_code == 200 and res.get_json()["filename"] == expected
        assert (store.job_dir(job_id) / "upload" / expected).read_bytes() == b"abc"
    root = store.job_dir(job_id).parent.parent
    assert not (root / "evil").exists() and not (root.parent / "x.tif").exists()
    for bad in ["", "..", "../..", "/"]:
        with pytest.raises(ValueError):
            sanitize_upload_path(bad)
    res = _chunk(client, job_id, b"abc", fullPath="../..")
    assert res.status_code == 400
    listing = client.get(f"/api/upload/status?job_id={job_id}").get_json()["files"]
    assert {f["filename"] for f in listing} >= {"evil/x.tif", "etc/passwd"}
    assert client.get("/api/upload/status?job_id=" + "A" * 22).status_code == 404


# --------------------------------------------------------------------------- races
def test_http_renames_race_runner_progress_last_rename_wins(tmp_path):
    data = tmp_path / "data"
    app = create_app(Settings(data_dir=data))
    server = create_server(app, host="127.0.0.1", port=0, threads=6)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    runner = None
    try:
        job_id = requests.post(f"{base}/api/job/new", json={"name": "race"}).json()["job_id"]
        buf = io.BytesIO()
        np.save(buf, np.arange(64, dtype=np.uint8))
        up = requests.post(f"{base}/api/upload", headers={"X-Job-ID": job_id},
                           files={"file": ("v.npy", buf.getvalue())})
        assert up.status_code == 200
        assert requests.post(f"{base}/api/job/status/upload-complete",
                             json={"job_id": job_id}).json()["status"] == "uploaded"
        runner = subprocess.Popen(
            [sys.executable, "-m", "ml4paleo.jobs", "convert", "--data", str(data),
             "--poll-interval", "0.05"], cwd=REPO,
            env=_env(ML4PALEO_TEST_TICKS=80, ML4PALEO_TEST_TICK=0.025, ML4PALEO_LEASE_SECONDS=0.6))
        seen_progress = []
        stop = threading.Event()

        def poll():
            with requests.Session() as s:
                while not stop.is_set():
                    rec = s.get(f"{base}/api/job/{job_id}/status").json()
                    seen_progress.append(rec["progress"])

        pollers = [threading.Thread(target=poll) for _ in range(2)]
        for t in pollers:
            t.start()
        sent, status = [], "uploaded"
        with requests.Session() as s:
            while status != "converted":
                name = f"race {len(sent)}"
                res = s.post(f"{base}/api/job/{job_id}/rename", json={"name": name})
                assert res.json() == {"status": "success", "job_id": job_id, "name": name}
                sent.append(name)
                rec = s.get(f"{base}/api/job/{job_id}/status").json()
                assert rec["name"] == name  # no runner write ever undid a rename
                status = rec["status"]
                assert len(sent) < 5000
            last = f"race {len(sent)}"
            s.post(f"{base}/api/job/{job_id}/rename", json={"name": last})
        stop.set()
        for t in pollers:
            t.join()
        rec = requests.get(f"{base}/api/job/{job_id}/status").json()
        assert rec["name"] == last
        assert rec["status"] == "converted" and rec["progress"] == 1.0 and rec["attempts"] == 1
        assert any(0 < p < 1 for p in seen_progress)  # progress was written during the renames
        assert len(sent) > 20
    finally:
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(timeout=30) == 0
        server.close()


# --------------------------------------------------------------------------- main.py
def test_main_py_serves_runs_runners_and_ctrl_c_stops_all(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "main.py", "--port", "0", "--data", str(data)],
                            cwd=REPO, env=_env(ML4PALEO_TEST_TICKS=3, ML4PALEO_POLL_INTERVAL=0.1),
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None
            line = proc.stderr.readline()
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        drain.start()
        children = psutil.Process(proc.pid).children()
        cmdlines = sorted(" ".join(c.cmdline()[2:4]) for c in children)
        assert cmdlines == ["ml4paleo.jobs convert", "ml4paleo.jobs measure",
                            "ml4paleo.jobs mesh", "ml4paleo.jobs segment"]
        job_id = requests.post(f"{url}/api/job/new", json={"name": "m"}).json()["job_id"]
        requests.post(f"{url}/api/upload", data={"job_id": job_id},
                      files={"file": ("a.npy", b"\x93NUMPY-ish")})
        requests.post(f"{url}/api/job/status/upload-complete", json={"job_id": job_id})
        rec = wait_for(JobStore(data), job_id, lambda r: r["status"] == "converted", timeout=60)
        assert rec["result_pid"] in {c.pid for c in children}
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_single_shot_upload_of_a_spooled_file(tmp_path):
    """A whole file in one request (no dz fields): werkzeug spools it to disk, we copy it."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    client = app.test_client()
    job_id = _new(client)
    data = np.random.default_rng(2).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    res = client.post("/api/upload", data={"job_id": job_id, "file": (io.BytesIO(data), "s.raw")},
                      content_type="multipart/form-data")
    assert res.status_code == 200 and res.get_json()["complete"] is True
    store = app.extensions["ml4paleo_store"]
    assert (store.job_dir(job_id) / "upload" / "s.raw").read_bytes() == data
    res = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert res.get_json()["upload_bytes"] == 3_000_000


def test_zarr_v2_folder_upload_keeps_its_metadata_files(client, app, tmp_path):
    """.zarray/.zattrs/.zgroup survive name sanitising (other dot files do not), so an
    uploaded Zarr v2 store opens; it used to arrive as zarray/zattrs and be rejected."""
    import numpy as np
    import zarr

    from ml4paleo.io import open_volume

    src = tmp_path / "scan.zarr"
    arr = zarr.open_array(str(src), mode="w", shape=(4, 8, 8), chunks=(4, 8, 8), dtype="uint8",
                          zarr_format=2)
    arr[:] = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    job_id = _new(client)
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix()  # the folder's contents (open_volume of upload/)
        res = _chunk(client, job_id, p.read_bytes(), fullPath=rel)
        assert res.status_code == 200 and res.get_json()["filename"] == rel
    assert sanitize_upload_path("scan.zarr/.zarray") == "scan.zarr/.zarray"
    assert sanitize_upload_path("a/.zattrs.bak") == "a/zattrs.bak"
    assert sanitize_upload_path(".zarray/../.bashrc") == ".zarray/bashrc"
    upload = app.extensions["ml4paleo_store"].job_dir(job_id) / "upload"
    with open_volume(upload) as vol:
        assert vol.shape == (4, 8, 8)
        assert np.array_equal(vol[1], arr[1])


def test_restarted_file_gives_back_its_counted_bytes(client, app):
    """A chunk announcing a different total restarts the file; the bytes dropped with the
    old copy leave the job's upload_bytes (it used to count them twice)."""
    job_id = _new(client)

    def status():
        return client.get(f"/api/job/{job_id}/status").get_json()["upload_bytes"]

    assert _chunk(client, job_id, b"abcd", offset=0, total=8, count=2).status_code == 200
    assert status() == 4
    assert _chunk(client, job_id, b"abcd", offset=0, total=8, count=2).status_code == 200
    assert status() == 4  # a retried chunk adds nothing
    assert _chunk(client, job_id, b"efgh", offset=0, total=12, count=3).status_code == 200
    assert status() == 4  # restarted: the old 4 bytes were dropped, 4 new ones arrived
    res = _chunk(client, job_id, b"ijkl", offset=4, total=8, count=2)
    assert res.get_json()["received_bytes"] == 0 and status() == 4
    _chunk(client, job_id, b"abcd", offset=0, total=8, count=2)
    assert status() == 8
    done = client.post("/api/job/status/upload-complete", json={"job_id": job_id})
    assert done.status_code == 200 and done.get_json()["upload_bytes"] == 8
