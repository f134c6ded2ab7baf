"""Runners as real processes: SIGKILL mid-job and restart, a frozen runner losing its
lease, two copies on one queue, retries up to max_attempts, SIGTERM hand-back,
cancellation, notifications, and the real convert / segment / mesh steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ml4paleo.config import Settings
from ml4paleo.jobs import JobStore, Status
from ml4paleo.jobs.runner import run_runner
from ml4paleo.jobs.store import wait_for

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PLUGIN = "jobs_plugin_steps"


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _start_runner(data: Path, log: Path, kind="convert", plugin=True, once=False,
                  **env) -> subprocess.Popen:
    if plugin:
        env.setdefault("ML4PALEO_STEPS_PLUGIN", PLUGIN)
    cmd = [sys.executable, "-m", "ml4paleo.jobs", kind, "--data", str(data),
           "--poll-interval", "0.05"]
    if once:
        cmd.append("--once")
    out = open(log, "ab")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def _queued_job(store: JobStore, name="scan", array=None) -> str:
    job_id = store.create(name, "npy")["id"]
    data = array if array is not None else np.arange(8, dtype=np.uint8)
    np.save(store.job_dir(job_id) / "upload" / "volume.npy", data)
    store.mark_uploaded(job_id)
    return job_id


def _events(log: Path) -> list[tuple[str, str, int, float]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        event, job, pid, t = line.split()
        out.append((event, job, int(pid), float(t)))
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


# --------------------------------------------------------------------------- crashes
def test_sigkilled_runner_job_completes_after_restart(data, tmp_path):
    store = JobStore(data)
    job_id = _queued_job(store)
    ticks = 30
    first = _start_runner(data, tmp_path / "r1.log", ML4PALEO_LEASE_SECONDS=1.5,
                          ML4PALEO_TEST_TICKS=ticks, ML4PALEO_TEST_TICK=0.1)
    rec = wait_for(store, job_id, lambda r: r["status"] == "converting" and r["progress"] > 0.1,
                   timeout=30)
    assert rec["lease"]["owner"].split(":")[1] == str(first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait()
    rec = store.get(job_id)
    assert rec["status"] == "converting" and 0 < rec["progress"] < 1  # stuck... for now
    assert not (store.job_dir(job_id) / "result.txt").exists()
    second = _start_runner(data, tmp_path / "r2.log", ML4PALEO_LEASE_SECONDS=1.5,
                           ML4PALEO_TEST_TICKS=ticks, ML4PALEO_TEST_TICK=0.005)
    try:
        rec = wait_for(store, job_id, lambda r: r["status"] == "converted", timeout=30)
    finally:
        assert _stop(second) == 0
    assert rec["attempts"] == 2 and rec["lease"] is None
    assert rec["progress"] == 1.0 and rec["error"] is None
    assert rec["result_pid"] == second.pid
    result = (store.job_dir(job_id) / "result.txt").read_text().split()
    assert result == [str(i) for i in range(ticks)]
    messages = [h["message"] for h in rec["history"]]
    assert any("attempt 2 started" in m and f":{first.pid}:" in m and "stopped responding" in m
               for m in messages)
    assert [h["status"] for h in rec["history"]][-3:] == ["converting", "converting", "converted"]


def test_frozen_runner_loses_its_lease_and_never_writes_again(data, tmp_path):
    store = JobStore(data)
    job_id = _queued_job(store)
    log = tmp_path / "events.log"
    frozen = _start_runner(data, tmp_path / "a.log", ML4PALEO_LEASE_SECONDS=1.0,
                           ML4PALEO_TEST_TICKS=40, ML4PALEO_TEST_TICK=0.05, ML4PALEO_TEST_LOG=log)
    wait_for(store, job_id, lambda r: r["status"] == "converting" and r["progress"] > 0,
             timeout=30)
    frozen.send_signal(signal.SIGSTOP)
    other = _start_runner(data, tmp_path / "b.log", ML4PALEO_LEASE_SECONDS=1.0,
                          ML4PALEO_TEST_TICKS=40, ML4PALEO_TEST_TICK=0.002, ML4PALEO_TEST_LOG=log)
    try:
        rec = wait_for(store, job_id, lambda r: r["status"] == "converted", timeout=30)
        version = rec["version"]
        frozen.send_signal(signal.SIGCONT)  # wakes up believing it still owns the job
        time.sleep(1.5)
        assert frozen.poll() is None  # it dropped the job and keeps polling
    finally:
        frozen.send_signal(signal.SIGCONT)
        assert _stop(frozen) == 0
        assert _stop(other) == 0
    after = store.get(job_id)
    assert after["version"] == version and after["status"] == "converted"
    assert after["result_pid"] == other.pid and after["attempts"] == 2
    events = _events(log)
    assert [(e, p) for e, j, p, _ in events] == [
        ("start", frozen.pid), ("start", other.pid), ("end", other.pid)]
    assert "lease" in (tmp_path / "a.log").read_text()  # it says why it stopped


def test_two_runners_never_process_one_job_at_once(data, tmp_path):
    store = JobStore(data)
    jobs = [_queued_job(store, f"j{i}") for i in range(8)]
    log = tmp_path / "events.log"
    procs = [_start_runner(data, tmp_path / f"r{k}.log", ML4PALEO_TEST_TICKS=4,
                           ML4PALEO_TEST_TICK=0.05, ML4PALEO_TEST_LOG=log) for k in range(2)]
    try:
        for job_id in jobs:
            wait_for(store, job_id, lambda r: r["status"] == "converted", timeout=60)
    finally:
        for p in procs:
            assert _stop(p) == 0
    events = _events(log)
    for job_id in jobs:
        mine = [(e, p) for e, j, p, _ in events if j == job_id]
        assert len(mine) == 2 and mine[0][0] == "start" and mine[1] == ("end", mine[0][1])
        rec = store.get(job_id)
        assert rec["attempts"] == 1 and rec["result_pid"] == mine[0][1]
    # per runner, jobs never overlap either (one job at a time)
    for p in procs:
        times = [(e, t) for e, _, pid, t in events if pid == p.pid]
        assert [e for e, _ in times] == ["start", "end"] * (len(times) // 2)


# --------------------------------------------------------------------------- failures
def test_failing_step_goes_to_error_after_max_attempts(data, tmp_path, monkeypatch):
    monkeypatch.setenv("ML4PALEO_STEPS_PLUGIN", PLUGIN)
    monkeypatch.setenv("ML4PALEO_TEST_MODE", "fail")
    monkeypatch.setenv("ML4PALEO_TEST_LOG", str(tmp_path / "events.log"))
    store = JobStore(data)
    job_id = _queued_job(store)
    settings = Settings(data_dir=data, poll_interval=0.05, max_attempts=3)
    t0 = time.monotonic()
    assert run_runner("convert", settings, once=True) == 3
    assert time.monotonic() - t0 < 20
    rec = store.get(job_id)
    assert rec["status"] == "convert_error" and rec["attempts"] == 3
    assert rec["error"] == "failed 3 time(s); last error: RuntimeError: the test step always fails"
    assert len(_events(tmp_path / "events.log")) == 3
    # retry: attempts start again
    assert store.retry(job_id)["status"] == "uploaded"
    monkeypatch.setenv("ML4PALEO_TEST_MODE", "count")
    monkeypatch.setenv("ML4PALEO_TEST_TICKS", "2")
    run_runner("convert", settings, once=True)
    rec = store.get(job_id)
    assert rec["status"] == "converted" and rec["attempts"] == 1


def test_missing_library_fails_the_job_at_once(data, monkeypatch):
    monkeypatch.setenv("ML4PALEO_STEPS_PLUGIN", PLUGIN)
    monkeypatch.setenv("ML4PALEO_TEST_MODE", "missing")
    store = JobStore(data)
    job_id = _queued_job(store)
    run_runner("convert", Settings(data_dir=data, poll_interval=0.05), once=True)
    rec = store.get(job_id)
    assert rec["status"] == "convert_error" and rec["attempts"] == 1
    assert rec["error"].startswith("conversion is not available in this installation")
    assert "ml4paleo.no_such_module" in rec["error"]


def test_sigterm_hands_the_job_back(data, tmp_path):
    store = JobStore(data)
    job_id = _queued_job(store)
    proc = _start_runner(data, tmp_path / "r.log", ML4PALEO_TEST_TICKS=100,
                         ML4PALEO_TEST_TICK=0.05)
    wait_for(store, job_id, lambda r: r["status"] == "converting" and r["progress"] > 0,
             timeout=30)
    t0 = time.monotonic()
    assert _stop(proc) == 0
    assert time.monotonic() - t0 < 5
    rec = store.get(job_id)
    assert rec["status"] == "uploaded"
    assert rec["lease"] == {"owner": None, "expires_at": None, "attempts": 0}
    done = _start_runner(data, tmp_path / "r2.log", once=True, ML4PALEO_TEST_TICKS=3)
    assert done.wait(timeout=30) == 0
    rec = store.get(job_id)
    assert rec["status"] == "converted" and rec["attempts"] == 1


def test_cancel_while_running_makes_the_runner_drop_the_job(data, monkeypatch):
    monkeypatch.setenv("ML4PALEO_STEPS_PLUGIN", PLUGIN)
    monkeypatch.setenv("ML4PALEO_TEST_TICKS", "200")
    monkeypatch.setenv("ML4PALEO_TEST_TICK", "0.02")
    store = JobStore(data)
    job_id = _queued_job(store)
    stop = threading.Event()
    settings = Settings(data_dir=data, poll_interval=0.05)
    thread = threading.Thread(target=run_runner, args=("convert", settings),
                              kwargs={"stop_event": stop})
    thread.start()
    try:
        wait_for(store, job_id, lambda r: r["status"] == "converting" and r["progress"] > 0)
        rec = store.cancel(job_id)
        assert rec["status"] == "convert_error" and rec["lease"] is None
        time.sleep(1.0)  # the runner notices at its next write / progress tick
        after = store.get(job_id)
        assert after["status"] == "convert_error" and after["error"] == "cancelled by user"
        assert not (store.job_dir(job_id) / "result.txt").exists()
        assert after["version"] == rec["version"]  # the runner wrote nothing more
    finally:
        stop.set()
        thread.join(timeout=30)


def test_final_status_sends_notification(data, monkeypatch):
    monkeypatch.setenv("ML4PALEO_STEPS_PLUGIN", PLUGIN)
    monkeypatch.setenv("ML4PALEO_TEST_TICKS", "2")
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = JobStore(data)
        job_id = _queued_job(store, "notify me")
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        run_runner("convert", Settings(data_dir=data, poll_interval=0.05, webhook_url=url),
                   once=True)
    finally:
        server.shutdown()
    assert [(r["job_id"], r["event"], r["status"]) for r in received] == [
        (job_id, "converted", "converted")]


# --------------------------------------------------------------------------- real steps
def test_real_convert_killed_mid_job_then_completes(data, tmp_path):
    pytest.importorskip("ml4paleo.convert")
    store = JobStore(data)
    volume = (np.arange(20 * 24 * 28, dtype=np.uint16) * 7 % 4000).reshape(20, 24, 28)
    job_id = _queued_job(store, "real", volume)
    log = tmp_path / "events.log"
    first = _start_runner(data, tmp_path / "r1.log", ML4PALEO_LEASE_SECONDS=1.0,
                          ML4PALEO_TEST_MODE="slow_real", ML4PALEO_TEST_TICK=3,
                          ML4PALEO_TEST_LOG=log, ML4PALEO_WORKERS=1)
    deadline = time.monotonic() + 30
    while not _events(log):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # inside convert: the first progress tick sleeps 3 s
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert store.get(job_id)["status"] == "converting"
    assert not (store.job_dir(job_id) / "image.ome.zarr").exists()
    second = _start_runner(data, tmp_path / "r2.log", plugin=False,
                           ML4PALEO_LEASE_SECONDS=1.0, ML4PALEO_WORKERS=1)
    try:
        rec = wait_for(store, job_id, lambda r: r["status"] in ("converted", "convert_error"),
                       timeout=60)
    finally:
        assert _stop(second) == 0
    assert rec["status"] == "converted", rec.get("error")
    assert rec["attempts"] == 2
    assert rec["metadata"]["shape"] == [20, 24, 28]
    assert rec["metadata"]["dtype"] == "uint16"
    from ml4paleo.formats import open_image

    image = open_image(store.job_dir(job_id) / "image.ome.zarr")
    np.testing.assert_array_equal(np.asarray(image.array[:]), volume)


def test_real_pipeline_steps_segment_and_mesh(data):
    """convert -> annotate -> train + segment -> mesh with the real library, in-process."""
    seg = pytest.importorskip("ml4paleo.segmentation")
    pytest.importorskip("ml4paleo.meshing")
    pytest.importorskip("ml4paleo.convert")
    store = JobStore(data)
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, size=(24, 32, 32)).astype(np.float32)
    volume[6:18, 8:24, 8:24] += 200  # a bright box: class 1
    truth = np.zeros(volume.shape, np.uint8)
    truth[6:18, 8:24, 8:24] = 1
    job_id = _queued_job(store, "pipeline", volume.astype(np.uint16))
    settings = Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=32)
    run_runner("convert", settings, once=True)
    assert store.get(job_id)["status"] == "converted", store.get(job_id)["error"]
    labels = seg.LabelStore.create(store.job_dir(job_id) / "annotations", volume.shape,
                                   classes=["background", "bone"])
    for z in (8, 15):
        labels.write_slice(0, z, truth[z] + 1)
    store.record_annotation(job_id)
    store.request_segmentation(job_id)
    run_runner("segment", settings, once=True)
    rec = store.get(job_id)
    assert rec["status"] == "segmented", rec.get("error")
    assert len(rec["models"]) == 1 and rec["model_id"] == rec["models"][0]
    seg_id = rec["segmentation_id"]
    assert rec["segmentations"] == [seg_id] and rec["annotations_pending"] is False
    from ml4paleo.formats import open_image

    paths = store.paths(job_id)
    # the segmentation is an NGFF label of the job's image, named and coloured
    assert paths.labels(seg_id) == paths.image / "labels" / seg_id
    from ml4paleo.formats import label_classes, label_names

    assert label_names(paths.image) == [seg_id]
    out_image = open_image(paths.labels(seg_id))
    assert [c["name"] for c in label_classes(out_image)] == ["background", "bone"]
    assert out_image.attrs["image-label"]["source"] == {"image": "../../"}
    assert out_image.world == open_image(paths.image).world
    out = np.asarray(out_image.array[:])
    assert (out == truth).mean() > 0.95
    store.request_mesh(job_id, formats=["stl"], smooth="strong")
    assert store.get(job_id)["request"]["smooth"] == "strong"
    run_runner("mesh", settings, once=True)
    rec = store.get(job_id)
    assert rec["status"] == Status.MESHED.value, rec.get("error")
    seg_dir = store.job_dir(job_id) / "segmentations" / seg_id
    assert (seg_dir / "meshes" / "1.stl").stat().st_size > 1000
    assert "1.stl" in rec["meshes"][seg_id]["files"]
    stats = (seg_dir / "stats.csv").read_text().splitlines()
    assert len(stats) >= 2
    assert stats[0].endswith(",surface") and stats[1].endswith(",smooth-strong")
    # what the runners wrote went through the workspace registries
    from ml4paleo.workspace import ModelRegistry, SegmentationRegistry

    model_meta = ModelRegistry(paths).meta(rec["model_id"])
    assert model_meta["source"] == {"kind": "train"} and model_meta["created_at"].endswith("Z")
    seg_meta = SegmentationRegistry(paths).meta(seg_id)
    assert (seg_meta["id"], seg_meta["model_id"], seg_meta["job_id"]) == (
        seg_id, rec["model_id"], job_id)
    for folder in (paths.models, seg_dir):
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")
                    or ".tmp-" in p.name or ".old-" in p.name]


def test_runner_scripts_and_module_share_the_click_options(data):
    store = JobStore(data)
    job_id = _queued_job(store, "script", np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
    run = subprocess.run(
        [sys.executable, str(REPO / "conversionrunner.py"), "--data", str(data), "--once",
         "--poll-interval", "0.05"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "convert runner: 1 job(s) processed" in run.stdout
    assert "convert runner" in run.stderr and "INFO" in run.stderr  # logs at INFO alone
    assert store.get(job_id)["status"] == "converted"
    helps = subprocess.run([sys.executable, str(REPO / "meshrunner.py"), "-h"], cwd=REPO,
                           env=_env(), capture_output=True, text=True, timeout=60)
    assert helps.returncode == 0 and "KIND" not in helps.stdout.upper().split("OPTIONS")[0]
    for option in ("--data", "--poll-interval", "--once", "--verbose"):
        assert option in helps.stdout
    bad = subprocess.run([sys.executable, "-m", "ml4paleo.jobs", "fly"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "fly" in bad.stderr
