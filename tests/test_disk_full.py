"""A full data disk (and a job over its quota) is a clear answer: 507 JSON saying how much
is free, nothing half-written, downloads complete or refused before their first byte, the
Python client does not retry it, runners fail the step once with that reason.

Two ways: a real small tmpfs as the data folder (when this process may mount one: root
on Linux), and everywhere by faking the free space (``shutil.disk_usage``) or injecting
``ENOSPC`` at the write points."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import threading
import uuid
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from ml4paleo.client import Client, ClientError
from ml4paleo.config import Settings
from ml4paleo.formats import create_image
from ml4paleo.jobs import JobStore
from ml4paleo.jobs.runner import run_runner
from webapp import create_app

MiB = 1024 * 1024
Usage = namedtuple("Usage", "total used free")


def _leftovers(root: Path) -> list[str]:
    """Temp files / folders anywhere under ``root``."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name]


def _job_folders(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "jobs").iterdir() if not p.name.startswith("."))


def _chunk(client, job_id, data: bytes, name="scan.npy"):
    return client.post("/api/upload", headers={"X-Job-ID": job_id},
                       data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


# ------------------------------------------------------------------ a real small disk
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (skipped where this process cannot mount one)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        remaining = max(0, free - leave)
        block = b"\0" * MiB
        while remaining > 0:
            try:
                fh.write(block[: min(len(block), remaining)])
                fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            remaining -= min(len(block), remaining)
    return filler


def test_full_tmpfs_answers_507_and_leaves_nothing_half_written(small_disk):
    data = small_disk / "data"
    app = create_app(data_dir=data, min_free_mb=0)
    client = app.test_client()
    store = app.extensions["ml4paleo_store"]
    job_id = client.post("/api/job/new", json={"name": "before"}).get_json()["job_id"]
    image = create_image(store.job_dir(job_id) / "image.ome.zarr", (24, 64, 64), np.uint16,
                         chunks=32, pyramid=False)
    image.array[:] = (np.arange(24 * 64 * 64) % 3000).reshape(24, 64, 64)
    store.update(job_id, lambda r: r.update(status="converted"))
    before = store.get(job_id)
    filler = _fill(small_disk, leave=0)

    # job/new: 507, no job folder without a record, no record temp
    r = client.post("/api/job/new", json={"name": "full"})
    assert r.status_code == 507 and r.is_json
    assert r.get_json() == {"error": "the data disk is full (0 MiB free)"}
    assert _job_folders(data) == [job_id] and not _leftovers(data)
    # rename: 507, the record is unchanged (atomic write)
    r = client.post(f"/api/job/{job_id}/rename", json={"name": "renamed"})
    assert r.status_code == 507 and "MiB free" in r.get_json()["error"]
    assert store.get(job_id) == before
    # a download that cannot fit: 507 before the first byte, no half export anywhere
    r = client.get(f"/api/job/{job_id}/image/download/tiff")
    assert r.status_code == 507 and r.is_json and str(small_disk) not in r.get_data(True)
    assert not (store.job_dir(job_id) / "exports" / "image-tiff.tiff.zip").exists()
    assert not _leftovers(data)

    # the disk fills while building (the estimate said it fits): 507, nothing left
    filler.unlink()
    filler = _fill(small_disk, leave=64 * 1024)  # the tiff zip needs ~200 KiB
    app.config["ML4PALEO_SETTINGS"] = app.config["ML4PALEO_SETTINGS"].with_overrides(
        min_free_mb=0)
    import ml4paleo.export as export_mod

    real_estimate = export_mod.estimate_bytes
    export_mod.estimate_bytes = lambda kind, source: 0
    try:
        r = client.get(f"/api/job/{job_id}/image/download/tiff")
    finally:
        export_mod.estimate_bytes = real_estimate
    assert r.status_code == 507, r.status_code
    assert not _leftovers(data)
    assert not (store.job_dir(job_id) / "exports" / "image-tiff.tiff.zip").exists()

    # space freed: the same download is complete, with its length, from the first byte
    filler.unlink()
    r = client.get(f"/api/job/{job_id}/image/download/tiff")
    assert r.status_code == 200
    body = r.get_data()
    assert int(r.headers["Content-Length"]) == len(body) > 100_000
    assert (store.job_dir(job_id) / "exports" / "image-tiff.tiff.zip").read_bytes() == body


def test_upload_to_a_full_tmpfs_is_refused_once_by_the_client(small_disk, tmp_path):
    """Over real HTTP: the client's chunk upload gets 507 and does not send it again."""
    from waitress import create_server

    data = small_disk / "data"
    app = create_app(data_dir=data, min_free_mb=1)
    uploads = []
    app.before_request(lambda: uploads.append(1) if "upload" in __import__(
        "flask").request.path else None)
    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = Client(f"http://127.0.0.1:{server.effective_port}")
        job_id = client.create_job("full", "npy")
        filler = _fill(small_disk, leave=MiB // 2)
        scan = tmp_path / "scan.npy"
        np.save(scan, np.zeros((8, 64, 64), np.uint16))
        with pytest.raises(ClientError) as info:
            client.upload(job_id, scan)
        assert info.value.status_code == 507 and "MiB free" in info.value.message
        assert len(uploads) == 1  # not retried
        rec = JobStore(data).get(job_id)
        assert rec["upload_bytes"] == 0
        assert not list((data / "jobs" / job_id / "upload").iterdir())
        filler.unlink()
        client.upload(job_id, scan)
        assert JobStore(data).get(job_id)["status"] == "uploaded"
    finally:
        _stop_server(server, thread)


def _stop_server(server, thread) -> None:
    """Stop waitress from another thread without closing a socket under its select()."""
    server.task_dispatcher.shutdown()
    channels = list(server._map.values())  # noqa: SLF001 - waitress has no public stop
    server._map.clear()  # noqa: SLF001 - the loop ends at its next timeout
    thread.join(10)
    for channel in channels:
        channel.close()


def test_runner_on_a_full_tmpfs_fails_the_step_once_with_the_reason(small_disk):
    data = small_disk / "data"
    store = JobStore(data)
    job_id = store.create("big", "npy")["id"]
    rng = np.random.default_rng(1)  # incompressible: the image needs ~1 MiB
    np.save(store.job_dir(job_id) / "upload" / "v.npy",
            rng.integers(0, 65535, (32, 128, 128), dtype=np.uint16))
    store.mark_uploaded(job_id)
    _fill(small_disk, leave=300 * 1024)  # the record fits, the image does not
    run_runner("convert", Settings(data_dir=data, poll_interval=0.01, min_free_mb=0,
                                   workers=1), once=True)
    rec = store.get(job_id)
    assert rec["status"] == "convert_error" and rec["attempts"] == 1
    assert rec["error"].startswith("the data disk is full (") and rec["error"].endswith(
        "MiB free)")
    assert not (store.job_dir(job_id) / "image.ome.zarr").exists()
    assert not _leftovers(data)


# ------------------------------------------------------------------ faked free space / ENOSPC
@pytest.fixture
def app(tmp_path):
    app = create_app(data_dir=tmp_path / "data", min_free_mb=100, max_upload_bytes=10 * MiB)
    app.config["TESTING"] = True
    return app


def _free(monkeypatch, free_mib: float):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(real(p).total, real(p).used, int(free_mib * MiB)))


def test_free_space_check_refuses_new_jobs_and_uploads(app, monkeypatch):
    client = app.test_client()
    job_id = client.post("/api/job/new", json={"name": "ok"}).get_json()["job_id"]
    _free(monkeypatch, 99.5)  # below ML4PALEO_MIN_FREE_MB = 100
    r = client.post("/api/job/new", json={"name": "x"})
    assert r.status_code == 507 and r.get_json() == {"error": "the data disk is full (99 MiB free)"}
    r = _chunk(client, job_id, b"\x93NUMPY" + b"\0" * 1000)
    assert r.status_code == 507 and "99 MiB free" in r.get_json()["error"]
    store = app.extensions["ml4paleo_store"]
    assert store.get(job_id)["upload_bytes"] == 0
    assert not list(store.paths(job_id).upload.iterdir())
    # a chunk that fits with the reserve left is accepted
    _free(monkeypatch, 101)
    assert _chunk(client, job_id, b"\x93NUMPY" + b"\0" * 1000).status_code == 200
    r = _chunk(client, job_id, b"z" * (2 * MiB), name="big.npy")  # 101 - 2 < 100
    assert r.status_code == 507


def test_enospc_at_the_record_write_leaves_no_job_folder(app, monkeypatch):
    import ml4paleo.jobs.store as store_mod

    client = app.test_client()
    job_id = client.post("/api/job/new", json={"name": "keep"}).get_json()["job_id"]
    data = app.config["ML4PALEO_SETTINGS"].data_dir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write", full)
    r = client.post("/api/job/new", json={"name": "lost"})
    assert r.status_code == 507 and r.get_json()["error"].startswith("the data disk is full (")
    assert _job_folders(data) == [job_id]
    r = client.post(f"/api/job/{job_id}/rename", json={"name": "renamed"})
    assert r.status_code == 507
    monkeypatch.undo()
    assert app.extensions["ml4paleo_store"].get(job_id)["name"] == "keep"
    assert not _leftovers(data)


def test_job_quota_refuses_uploads_and_steps(tmp_path):
    app = create_app(data_dir=tmp_path / "data", min_free_mb=0, max_job_bytes=4096)
    client = app.test_client()
    job_id = client.post("/api/job/new", json={"name": "q"}).get_json()["job_id"]
    assert _chunk(client, job_id, b"a" * 3000, name="a.npy").status_code == 200
    r = _chunk(client, job_id, b"b" * 3000, name="b.npy")
    assert r.status_code == 507 and r.get_json() == {"error": (
        "the job's quota is full: it holds 2.9 KiB, 2.9 KiB more would pass its limit of "
        "4.0 KiB")}
    # a step of a job over its quota fails at once
    store = JobStore(tmp_path / "data")
    (store.paths(job_id).upload / "extra.bin").write_bytes(b"c" * 5000)
    store.mark_uploaded(job_id)
    run_runner("convert", Settings(data_dir=tmp_path / "data", poll_interval=0.01,
                                   min_free_mb=0, max_job_bytes=4096), once=True)
    rec = store.get(job_id)
    assert rec["status"] == "convert_error" and rec["attempts"] == 1
    assert "quota" in rec["error"]


def test_client_does_not_retry_507(monkeypatch, tmp_path):
    """The client retries a chunk on a lost connection or a 5xx, never on a 507."""
    calls = []

    class Answer:
        def __init__(self, code):
            self.status_code = code
            self.headers = {"Content-Type": "application/json"}
            self.content = b'{"error": "the data disk is full (3 MiB free)"}'
            self.text = self.content.decode()

        def json(self):
            return {"error": "the data disk is full (3 MiB free)"}

        def close(self):
            pass

    codes = iter([503, 507])
    client = Client("http://127.0.0.1:1")
    monkeypatch.setattr(client.session, "request",
                        lambda method, url, **kw: calls.append(url) or Answer(next(codes)))
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.raises(ClientError) as info:
        client._send_chunk("j", {"dzchunkindex": "0"}, "a.npy", b"x")  # noqa: SLF001
    assert info.value.status_code == 507 and len(calls) == 2  # the 503 was retried once


def test_every_state_change_and_the_report_on_a_full_disk_is_507(app, monkeypatch):
    """Record writes of segment / mesh / retry / cancel / rename and a report build that
    hit ENOSPC answer 507 and leave the record as it was."""
    import ml4paleo.jobs.store as store_mod
    import ml4paleo.report as report_mod

    client = app.test_client()
    store = app.extensions["ml4paleo_store"]
    job_id = client.post("/api/job/new", json={"name": "s"}).get_json()["job_id"]
    from ml4paleo.workspace import SegmentationRegistry

    SegmentationRegistry(store.paths(job_id)).create("seg1")
    create_image(store.paths(job_id).labels("seg1"), (4, 8, 8), np.uint8, label=True,
                 pyramid=False)
    store.update(job_id, lambda r: r.update(status="segmented", segmentations=["seg1"],
                                            segmentation_id="seg1", model_id=None,
                                            annotations_updated_at="2026-01-01T00:00:00Z"))
    before = store.get(job_id)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write", full)
    monkeypatch.setattr(report_mod, "build_report", full)
    for method, url, body in [
        ("POST", f"/api/job/{job_id}/segment", {}),
        ("POST", f"/api/job/{job_id}/mesh", {}),
        ("POST", f"/api/job/{job_id}/rename", {"name": "n"}),
        ("POST", f"/api/job/{job_id}/cancel", {}),
        ("GET", f"/api/job/{job_id}/segmentation/seg1/report.html", None),
    ]:
        r = client.open(url, method=method, json=body)
        assert r.status_code in (507, 409), (url, r.status_code, r.data[:200])
        if r.status_code == 507:
            assert r.get_json()["error"].startswith("the data disk is full (")
        else:  # refused by the rules before any write (e.g. nothing to cancel)
            assert "disk" not in r.get_json()["error"]
    assert store.get(job_id) == before
