"""Runners killed with SIGKILL mid-job, as real processes: no worker or helper process
outlives its runner (checked with psutil), a restarted runner sweeps every kind of temp
file the killed one left, and a retried training attempt is recorded as one model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ml4paleo.jobs import JobStore
from ml4paleo.jobs.store import wait_for

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env["ML4PALEO_STEPS_PLUGIN"] = "jobs_plugin_steps"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _runner(data: Path, kind: str, log: Path, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ml4paleo.jobs", kind, "--data", str(data),
           "--poll-interval", "0.05"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=out,
                                stderr=subprocess.STDOUT)


def _ticks(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("tick ")) \
        if log.exists() else 0


def _wait_ticks(log: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _ticks(log) < n:
        assert proc.poll() is None, "the runner exited early"
        assert time.monotonic() < deadline, f"only {_ticks(log)} ticks"
        time.sleep(0.05)


def _kill_and_check_no_orphans(proc: subprocess.Popen, min_children: int,
                               timeout: float = 10.0) -> list[str]:
    """SIGKILL ``proc``; every process it had started must be gone within ``timeout``."""
    runner = psutil.Process(proc.pid)
    children = runner.children(recursive=True)
    assert len(children) >= min_children, [c.cmdline()[:4] for c in children]
    kinds = [" ".join(c.cmdline()[:4]) for c in children]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, [(c.pid, c.cmdline()[:4]) for c in alive]
    return kinds


def _labels_job(store: JobStore, shape=(48, 48, 48)) -> tuple[str, str]:
    from ml4paleo.formats import create_image

    seg_id = "seg1"
    record = store.create("mesh me", "npy", status="segmented", segmentations=[seg_id],
                          segmentation_id=seg_id)
    job_id = record["id"]
    paths = store.paths(job_id)
    img = create_image(paths.labels(seg_id), shape, np.uint8, chunks=16, label=True,
                       pyramid=False)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = ((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2) < 18**2
    img.array[:] = ball.astype(np.uint8)
    store.request_mesh(job_id, formats=["stl"])
    return job_id, seg_id


@pytest.mark.slow
def test_sigkilled_mesh_runner_leaves_no_orphans_and_no_temps(tmp_path):
    """A mesh runner on two spawned worker processes (plus multiprocessing's resource
    tracker) is SIGKILLed mid-job: all of them are gone within seconds; the restarted
    runner sweeps the killed run's ``.meshes.tmp-*`` folder, an export temp, an upload
    state temp, a model temp and a record temp, then meshes the job."""
    data = tmp_path / "data"
    store = JobStore(data)
    job_id, seg_id = _labels_job(store)
    log = tmp_path / "events.log"
    first = _runner(data, "mesh", tmp_path / "r1.log", ML4PALEO_WORKERS=2,
                    ML4PALEO_CHUNK_SIZE=16, ML4PALEO_LEASE_SECONDS=1.0,
                    ML4PALEO_TEST_MODE="slow_real", ML4PALEO_TEST_TICK=0.5,
                    ML4PALEO_TEST_LOG=log)
    _wait_ticks(log, 3, first)
    paths = store.paths(job_id)
    seg_dir = paths.segmentation(seg_id)
    assert [p.name for p in seg_dir.iterdir() if p.name.startswith(".meshes.tmp-")]
    # temps other writers of this (now killed) runner would leave mid-write
    pid = first.pid
    host = __import__("socket").gethostname()
    strays = [paths.exports / f".image-zarr.zarr.zip.tmp-{host}-{pid}-aa",
              paths.upload_state / f".abc.json.tmp-{host}-{pid}-bb",
              paths.models / f".m1.tmp-{host}-{pid}-cc",
              paths.root / f".job.json.tmp-{host}-{pid}-dd"]
    for stray in strays:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"half")
    kinds = _kill_and_check_no_orphans(first, min_children=2)
    assert sum("spawn_main" in k for k in kinds) == 2, kinds
    assert sum("resource_tracker" in k for k in kinds) == 1, kinds
    assert wait_for(store, job_id, lambda r: True)["status"] == "meshing"
    second = _runner(data, "mesh", tmp_path / "r2.log", ML4PALEO_WORKERS=2,
                     ML4PALEO_CHUNK_SIZE=16, ML4PALEO_LEASE_SECONDS=1.0)
    try:
        rec = wait_for(store, job_id, lambda r: r["status"] in ("meshed", "mesh_error"),
                       timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    assert rec["status"] == "meshed", rec.get("error")
    assert rec["attempts"] == 2
    assert (paths.meshes(seg_id) / "1.stl").stat().st_size > 1000
    for stray in strays:
        assert not stray.exists(), stray
    assert not [p.name for p in seg_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_served_runner_killed_takes_its_helpers_along(tmp_path):
    """Under ``main.py`` each runner leads its own process group: when a runner is
    SIGKILLed, a helper it started (here a ``sleep`` that would outlive it) is killed
    with it before the runner is restarted, and the job completes on the new runner."""
    data = tmp_path / "data"
    pid_file = tmp_path / "helper.pid"
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--port", "0", "--data", str(data)], cwd=REPO,
        env=_env(ML4PALEO_TEST_MODE="helper", ML4PALEO_TEST_HELPER_PID=pid_file,
                 ML4PALEO_TEST_TICKS=100, ML4PALEO_TEST_TICK=0.1, ML4PALEO_POLL_INTERVAL=0.1,
                 ML4PALEO_LEASE_SECONDS=1.0),
        stderr=subprocess.DEVNULL)
    try:
        store = JobStore(data)
        job_id = store.create("helped", "npy")["id"]
        np.save(store.job_dir(job_id) / "upload" / "v.npy", np.zeros(4, np.uint8))
        store.mark_uploaded(job_id)
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        helper = psutil.Process(int(pid_file.read_text()))
        runner = helper.parent()
        assert "convert" in runner.cmdline() and os.getpgid(helper.pid) == runner.pid
        pid_file.unlink()
        os.kill(runner.pid, signal.SIGKILL)
        helper.wait(timeout=15)  # killed with its runner's group (not by the test)
        # a new convert runner claims the job once the lease expired and finishes it
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert time.monotonic() < deadline, store.get(job_id)["status"]
            time.sleep(0.05)
        rec = wait_for(store, job_id, lambda r: r["status"] == "converted", timeout=120)
        assert rec["attempts"] == 2 and rec["result_pid"] != runner.pid
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [(p.pid, p.cmdline()[:3]) for p in alive]


@pytest.mark.slow
def test_sigkilled_training_job_keeps_one_model_version(tmp_path):
    """A segment runner killed while segmenting (its model already saved) and restarted:
    the retried attempt reuses the model version the job reserved before training, so the
    job lists exactly one model and models/ holds one version."""
    seg = pytest.importorskip("ml4paleo.segmentation")
    from ml4paleo.config import Settings
    from ml4paleo.jobs.runner import run_runner
    from ml4paleo.workspace import ModelRegistry

    data = tmp_path / "data"
    store = JobStore(data)
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, size=(32, 32, 32)).astype(np.float32)
    volume[6:26, 8:24, 8:24] += 200
    truth = np.zeros(volume.shape, np.uint8)
    truth[6:26, 8:24, 8:24] = 1
    job_id = store.create("train once", "npy")["id"]
    np.save(store.job_dir(job_id) / "upload" / "v.npy", volume.astype(np.uint16))
    store.mark_uploaded(job_id)
    run_runner("convert", Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=16),
               once=True)
    labels = seg.LabelStore.create(store.job_dir(job_id) / "annotations", volume.shape,
                                   classes=["background", "bone"])
    for z in (8, 20):
        labels.write_slice(0, z, truth[z] + 1)
    store.record_annotation(job_id)
    store.request_segmentation(job_id)
    log = tmp_path / "events.log"
    first = _runner(data, "segment", tmp_path / "r1.log", ML4PALEO_WORKERS=1,
                    ML4PALEO_CHUNK_SIZE=16, ML4PALEO_LEASE_SECONDS=1.0,
                    ML4PALEO_TEST_MODE="slow_real", ML4PALEO_TEST_TICK=1.0,
                    ML4PALEO_TEST_LOG=log)
    _wait_ticks(log, 1, first, timeout=240)  # segmenting: the model is saved by now
    reserved = store.get(job_id)["pending_model_id"]
    models = ModelRegistry(store.paths(job_id))
    assert models.ids() == [reserved]
    saved_at = models.meta(reserved)["created_at"]
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _runner(data, "segment", tmp_path / "r2.log", ML4PALEO_WORKERS=1,
                     ML4PALEO_CHUNK_SIZE=16, ML4PALEO_LEASE_SECONDS=1.0)
    try:
        rec = wait_for(store, job_id, lambda r: r["status"] in ("segmented", "segment_error"),
                       timeout=240)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    assert rec["status"] == "segmented", rec.get("error")
    assert rec["attempts"] == 2
    assert rec["models"] == [reserved] and rec["model_id"] == reserved
    assert rec["pending_model_id"] is None
    assert models.ids() == [reserved] and models.meta(reserved)["created_at"] == saved_at
    assert not [p.name for p in store.paths(job_id).models.iterdir() if p.name.startswith(".")]
    # a new request trains a new version (one more, not one per attempt)
    store.record_annotation(job_id)
    store.request_segmentation(job_id, segment=False)
    run_runner("segment", Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=16),
               once=True)
    rec = store.get(job_id)
    assert rec["status"] == "trained" and len(rec["models"]) == 2 and len(models.ids()) == 2
