"""Job store: records, the transition table, locking under real concurrent processes,
SIGKILLed writers, deletion, retention purge."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from ml4paleo.cli import main as cli
from ml4paleo.cli.jobs_commands import parse_age
from ml4paleo.config import Settings
from ml4paleo.jobs import (
    TRANSITIONS,
    InvalidTransition,
    JobNotFound,
    JobStore,
    Status,
    check_transition,
)
from ml4paleo.jobs.runner import Runner
from ml4paleo.jobs.store import isoformat, utcnow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "data")


def _uploaded(store: JobStore, name="scan") -> str:
    job = store.create(name, "npy")
    (store.job_dir(job["id"]) / "upload" / "v.npy").write_bytes(b"\x93NUMPY fake")
    store.mark_uploaded(job["id"])
    return job["id"]


def _force(store: JobStore, job_id: str, status: Status, **fields) -> dict:
    """Put a job in a state as a runner would have (test setup only)."""
    def apply(r):
        r["status"] = status.value
        r.update(fields)

    return store.update(job_id, apply)


# ------------------------------------------------------------------------------ records
def test_create_record_ids_and_paths(store, tmp_path):
    job = store.create("  Skull\n 42 ", "dcm")
    assert job["name"] == "Skull 42"
    assert job["source_type"] == "dicom"
    assert job["status"] == "uploading"
    assert len(job["id"]) >= 22 and JobStore.is_valid_id(job["id"])
    assert store.get(job["id"]) == job
    assert (tmp_path / "data" / "jobs" / job["id"] / "job.json").is_file()
    assert (store.job_dir(job["id"]) / "upload").is_dir()
    ids = {store.create(f"j{i}", "tiff")["id"] for i in range(20)}
    assert len(ids) == 20
    assert [r["name"] for r in store.list()][-1] == "Skull 42"
    for bad in ["../../etc", "..", "a/b", "", "x" * 10, "abc$" * 8, None, 42]:
        assert not JobStore.is_valid_id(bad)
        with pytest.raises(JobNotFound):
            store.get(bad)
    with pytest.raises(JobNotFound):
        store.get("A" * 22)
    with pytest.raises(ValueError, match="source_type"):
        store.create("x", "movie")
    with pytest.raises(ValueError, match="at most 200"):
        store.create("x" * 201, "npy")
    with pytest.raises(ValueError, match="empty"):
        store.rename(job["id"], "   ")


def test_stray_temp_files_swept_at_start(store):
    job = store.create("a", "npy")
    folder = store.job_dir(job["id"])
    stray = folder / ".job.json.tmp-99999-1"
    stray.write_text('{"half": ')
    debris = store.jobs_dir / ("D" * 22)  # re-created by a step after its job was deleted
    (debris / "image.ome.zarr").mkdir(parents=True)
    fresh = store.jobs_dir / ("F" * 22)  # being created right now: too young to touch
    fresh.mkdir()
    os.utime(debris, (time.time() - 7200, time.time() - 7200))
    JobStore(store.data_dir)
    assert not stray.exists() and not debris.exists() and fresh.exists()
    assert store.get(job["id"])["name"] == "a"


# ------------------------------------------------------------------------------ transitions
def test_out_of_order_transitions_refused_with_reasons(store):
    job_id = store.create("a", "npy")["id"]
    with pytest.raises(InvalidTransition, match="nothing was uploaded"):
        store.mark_uploaded(job_id)
    with pytest.raises(InvalidTransition, match="need a converted image"):
        store.transition(job_id, Status.TRAINING_QUEUED)
    with pytest.raises(InvalidTransition, match="annotations need a converted image"):
        store.record_annotation(job_id)
    with pytest.raises(InvalidTransition, match="needs a finished segmentation"):
        store.transition(job_id, Status.MESHING_QUEUED)
    with pytest.raises(InvalidTransition, match="only a failed job can be retried"):
        store.retry(job_id)
    job_id = _uploaded(store)
    with pytest.raises(InvalidTransition, match="only a runner"):
        store.transition(job_id, Status.CONVERTING)
    with pytest.raises(InvalidTransition, match="busy"):
        store.transition(job_id, Status.ANNOTATED)
    with pytest.raises(InvalidTransition, match="only .* uploading"):
        store.mark_uploaded(job_id)
    _force(store, job_id, Status.CONVERTED)
    with pytest.raises(InvalidTransition, match="annotations"):
        store.request_segmentation(job_id)  # training needs annotations
    with pytest.raises(InvalidTransition, match="has none yet"):
        store.request_mesh(job_id)
    # the table itself: every runner-only move is refused to users
    for old, targets in TRANSITIONS.items():
        for new, (who, _need) in targets.items():
            if who == "runner":
                assert "only a runner" in check_transition({"status": old.value}, new, "user")
    assert store.get(job_id)["status"] == "converted"


def test_full_flow_and_annotation_keeps_queued_work(store):
    job_id = _uploaded(store)
    _force(store, job_id, Status.CONVERTED)
    rec = store.record_annotation(job_id)
    assert rec["status"] == "annotated" and rec["annotations_pending"]
    rec = store.request_segmentation(job_id)
    assert rec["status"] == "training_queued"
    assert rec["request"] == {"kind": "segment", "train": True, "segment": True, "model_id": None,
                              "min_size": 0, "fill_holes": False}
    # annotation while queued / segmenting: status and request kept, only the flag changes
    rec = store.record_annotation(job_id)
    assert rec["status"] == "training_queued" and rec["request"]["train"]
    _force(store, job_id, Status.SEGMENTING, annotations_pending=False)
    rec = store.record_annotation(job_id)
    assert rec["status"] == "segmenting" and rec["annotations_pending"] is True
    _force(store, job_id, Status.SEGMENTED, segmentations=["S" * 22], segmentation_id="S" * 22,
           models=["M" * 22], model_id="M" * 22)
    rec = store.request_mesh(job_id, formats=["stl", "glb"])
    assert rec["status"] == "meshing_queued"
    assert rec["request"]["segmentation_id"] == "S" * 22
    rec = store.record_annotation(job_id)  # keeps the queued meshing
    assert rec["status"] == "meshing_queued"
    rec = store.cancel(job_id)
    assert rec["status"] == "mesh_error" and rec["error"] == "cancelled by user"
    assert store.retry(job_id)["status"] == "meshing_queued"
    _force(store, job_id, Status.MESHED)
    # after results exist, a new annotation rests in "annotated" and meshing stays possible
    assert store.record_annotation(job_id)["status"] == "annotated"
    assert store.request_mesh(job_id)["status"] == "meshing_queued"
    _force(store, job_id, Status.MESHED)
    rec = store.request_segmentation(job_id, model_id="M" * 22)
    assert rec["request"]["train"] is False and rec["request"]["model_id"] == "M" * 22
    with pytest.raises(InvalidTransition, match="busy"):
        store.transition(job_id, Status.MESHING_QUEUED)
    history = [h["status"] for h in store.get(job_id)["history"]]
    assert history[:3] == ["uploading", "uploaded", "annotated"]


# ------------------------------------------------------------------------------ concurrency
_COUNTER = textwrap.dedent("""
    import sys
    from ml4paleo.jobs import JobStore
    store = JobStore(sys.argv[1])
    job_id, me, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    def bump(r):
        r["counter"] = r.get("counter", 0) + 1
        r.setdefault("per_writer", {})[me] = r.get("per_writer", {}).get(me, 0) + 1
    for i in range(n):
        if i % 3 == 0:
            store.rename(job_id, f"{me}-{i}")  # interleave other kinds of update
            store.update(job_id, lambda r: r.__setitem__("renames", r.get("renames", 0) + 1))
        else:
            store.update(job_id, bump)
""")


def test_8_processes_x_200_updates_none_lost(store):
    job_id = store.create("counter", "npy")["id"]
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", _COUNTER, str(store.data_dir), job_id,
                               f"w{k}", str(n)], cwd=REPO) for k in range(8)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    rec = store.get(job_id)
    bumps = sum(1 for i in range(n) if i % 3)
    renames = n - bumps
    assert rec["counter"] == 8 * bumps
    assert rec["per_writer"] == {f"w{k}": bumps for k in range(8)}
    assert rec["renames"] == 8 * renames
    # every update (bump, rename, rename counter) bumped the version exactly once
    assert rec["version"] == 1 + 8 * (bumps + 2 * renames)
    assert not list(store.job_dir(job_id).glob(".job.json.tmp-*"))


_WRITER = textwrap.dedent("""
    import sys
    from ml4paleo.jobs import JobStore
    store = JobStore(sys.argv[1])
    job_id = sys.argv[2]
    print("ready", flush=True)
    def big(r):
        seq = r.get("seq", 0) + 1
        r["seq"] = seq
        r["payload"] = [seq] * 20000
        r["blob"] = str(seq) * 100000   # MBs per write: most kills land mid-write
    while True:
        store.update(job_id, big)
""")


def test_writer_killed_mid_write_50_times_store_always_parses(store):
    job_id = store.create("victim", "npy")["id"]
    path = store.record_path(job_id)
    rng = random.Random(0)
    last_seq, strays_seen = 0, 0
    for i in range(50):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(store.data_dir), job_id],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if i % 2:  # anywhere, once this writer finished a write (slow disks: no starving)
            deadline = time.monotonic() + 30
            while json.loads(path.read_text()).get("seq", 0) <= last_seq:
                assert time.monotonic() < deadline, "no write finished in 30 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        else:  # the moment a temp file exists: inside a write
            deadline = time.monotonic() + 5
            while not any(n.startswith(".job.json.tmp-") for n in os.listdir(path.parent)):
                assert time.monotonic() < deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        rec = json.loads(path.read_text())  # never half a file
        seq = rec.get("seq", 0)
        assert seq >= last_seq
        assert rec.get("payload", [seq] * 20000) == [seq] * 20000
        assert rec["name"] == "victim"
        assert rec.get("blob", str(seq) * 100000) == str(seq) * 100000
        last_seq = seq
        strays_seen += len(list(path.parent.glob(".job.json.tmp-*")))
        store.update(job_id, lambda r: None)  # the lock was released by the kill
    assert last_seq > 0
    assert strays_seen >= 15  # the kills did land inside writes
    JobStore(store.data_dir)  # sweep at start
    assert not list(path.parent.glob(".job.json.tmp-*"))
    assert store.get(job_id)["seq"] == last_seq


def test_delete_while_another_process_waits_for_the_lock(store):
    job_id = store.create("doomed", "npy")["id"]
    code = textwrap.dedent("""
        import sys
        from ml4paleo.jobs import JobStore, JobNotFound
        store = JobStore(sys.argv[1])
        print("waiting", flush=True)
        try:
            store.update(sys.argv[2], lambda r: r.__setitem__("x", 1))
            print("updated")
        except JobNotFound:
            print("notfound")
    """)
    with store.lock(job_id):
        proc = subprocess.Popen([sys.executable, "-c", code, str(store.data_dir), job_id],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.3)  # the child now blocks on the lock
        trash = store.jobs_dir / f".trash-{job_id}-test"
        os.rename(store.job_dir(job_id), trash)  # what delete() does under the lock
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "notfound"
    assert not store.exists(job_id)
    JobStore(store.data_dir)  # half-deleted folders are swept
    assert not trash.exists()
    with pytest.raises(JobNotFound):
        store.delete(job_id)


# ------------------------------------------------------------------------------ retention
def _age(store: JobStore, job_id: str, days: float) -> None:
    """Rewrite the record as if last updated ``days`` ago (bypasses update's timestamp)."""
    path = store.record_path(job_id)
    rec = json.loads(path.read_text())
    rec["updated_at"] = isoformat(utcnow() - timedelta(days=days))
    path.write_text(json.dumps(rec))


def test_retention_purge_store_runner_and_cli(tmp_path):
    data = tmp_path / "data"
    store = JobStore(data)
    old = store.create("old", "npy")["id"]
    (store.job_dir(old) / "upload" / "big.bin").write_bytes(b"x" * 1000)
    recent = store.create("recent", "npy")["id"]
    busy = _uploaded(store, "busy")  # queued for conversion: never purged
    for job_id, days in [(old, 40), (recent, 5), (busy, 40)]:
        _age(store, job_id, days)
    assert store.purge(timedelta(days=30), dry_run=True) == [old]
    assert store.exists(old)
    # a runner with retention_days purges at start
    runner = Runner("mesh", Settings(data_dir=data, retention_days=30))
    assert runner.purge_if_due() == [old]
    assert not store.job_dir(old).exists()
    assert runner.purge_if_due() == []  # at most hourly
    assert {r["id"] for r in store.list()} == {recent, busy}
    # the CLI
    _age(store, recent, 5)
    result = CliRunner().invoke(cli, ["jobs", "purge", "--older-than", "3d", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert f"{recent}: deleted" in result.output and "1 job(s) purged" in result.output
    assert [r["id"] for r in store.list()] == [busy]
    bad = CliRunner().invoke(cli, ["jobs", "purge", "--older-than", "soon", "--data", str(data)])
    assert bad.exit_code == 1 and "30d" in bad.output
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("2") == timedelta(days=2)


def test_jobs_cli_list_show_retry_cancel_delete(tmp_path):
    data = tmp_path / "data"
    store = JobStore(data)
    job_id = _uploaded(store, "cli job")
    run = CliRunner().invoke
    out = run(cli, ["jobs", "list", "--data", str(data)])
    assert out.exit_code == 0 and job_id in out.output and "uploaded" in out.output
    shown = run(cli, ["jobs", "show", job_id, "--data", str(data)])
    assert json.loads(shown.output)["name"] == "cli job"
    missing = run(cli, ["jobs", "show", "A" * 22, "--data", str(data)])
    assert missing.exit_code == 1 and "no job" in missing.output
    bad_retry = run(cli, ["jobs", "retry", job_id, "--data", str(data)])
    assert bad_retry.exit_code == 1 and "only a failed job" in bad_retry.output
    cancelled = run(cli, ["jobs", "cancel", job_id, "--data", str(data)])
    assert cancelled.exit_code == 0 and "convert_error" in cancelled.output
    retried = run(cli, ["jobs", "retry", job_id, "--data", str(data)])
    assert retried.exit_code == 0 and "uploaded" in retried.output
    deleted = run(cli, ["jobs", "delete", job_id, "--yes", "--data", str(data)])
    assert deleted.exit_code == 0 and not store.exists(job_id)


def test_new_ids_are_long_random_and_never_look_like_options():
    from ml4paleo.jobs.store import new_id

    ids = {new_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert all(not i.startswith("-") and JobStore.is_valid_id(i) and len(i) >= 23 for i in ids)
