"""The status rules as user interfaces see them (describe / status_table), the step table,
and the store's annotation recording order."""

from __future__ import annotations

import json

import pytest

from ml4paleo.jobs import (
    BUSY,
    RUNNING,
    STAGES,
    InvalidTransition,
    JobStore,
    Status,
    describe,
    load_record,
    status_table,
)
from ml4paleo.jobs.statuses import PIPELINE_ORDER, cancel_target, retry_target, status_filters


@pytest.mark.parametrize("status", list(Status))
def test_describe_agrees_with_the_transition_rules(status):
    d = describe(status)
    assert d["status"] == status.value and d["label"] == status.value.replace("_", " ")
    assert d["busy"] == (status in BUSY)
    assert d["running"] == (status in RUNNING)
    assert d["queued"] == any(status == st.queued for st in STAGES.values())
    assert d["failed"] == (status.value.endswith("error"))
    assert d["retryable"] == (retry_target(status) is not None)
    assert d["cancellable"] == (cancel_target(status) is not None) == d["busy"]
    assert d["active"] == (d["busy"] or status == Status.UPLOADING)
    assert d["tone"] == ("busy" if d["active"] else "bad" if d["failed"] else
                         "ok" if d["done"] or status == Status.ANNOTATED else "")
    if status in PIPELINE_ORDER:
        assert d["order"] == PIPELINE_ORDER.index(status)
    else:
        assert d["order"] is None and d["failed"]
    kind = next((k for k, st in STAGES.items()
                 if status in (*st.busy, *st.done, st.error)), None)
    assert d["phase"] == (kind or ("upload" if status in (Status.PENDING, Status.UPLOADING)
                                   else None))


def test_describe_examples_and_errors():
    assert describe("JobStatus.TRAINING")["phase"] == "segment"
    assert describe("segmenting")["step"] == "segment" and describe("training")["step"] == "train"
    assert describe("uploaded")["queued"] and describe("uploaded")["busy"]
    assert not describe("converted")["busy"] and describe("converted")["resting"]
    with pytest.raises(ValueError, match="unknown job status"):
        describe("flying")


def test_status_table_is_plain_json_and_complete():
    table = json.loads(json.dumps(status_table()))
    assert set(table["statuses"]) == {s.value for s in Status}
    assert table["order"] == [s.value for s in PIPELINE_ORDER]
    assert set(table["stages"]) == set(STAGES)
    # every status a user can filter by appears in exactly one filter
    seen = [s for f in status_filters() for s in f["statuses"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {s.value for s in Status} - {"pending", "done", "error"}


def test_a_step_per_runner_stage_and_no_runner_import():
    from ml4paleo.jobs import steps

    assert set(steps.STEPS) == set(STAGES)
    assert steps.get_step("mesh") is steps.mesh_step
    with pytest.raises(ValueError, match="no step for job kind"):
        steps.get_step("fly")
    import ast
    from pathlib import Path

    folder = Path(steps.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "runner" not in (node.module or ""), path


def test_annotation_recorded_only_after_the_write(tmp_path):
    store = JobStore(tmp_path)
    job_id = store.create("a", "npy")["id"]
    with pytest.raises(InvalidTransition, match="converted image"), store.annotating(job_id):
        raise AssertionError("the block must not run before the job has an image")
    store.update(job_id, lambda r: r.update(status="converted"))
    with pytest.raises(OSError, match="disk full"), store.annotating(job_id):
        raise OSError("disk full")  # the label write failed
    record = store.get(job_id)
    assert record["status"] == "converted" and not record["annotations_pending"]
    with store.annotating(job_id, chosen_model_id=None):
        pass
    record = store.get(job_id)
    assert record["status"] == "annotated" and record["annotations_pending"]
    assert record["annotations_updated_at"].endswith("Z")
    # queued work keeps its status; only the flag is set
    store.update(job_id, lambda r: r.update(status="meshing_queued"))
    assert store.annotation_refusal(job_id) is None
    with store.annotating(job_id):
        pass
    assert store.get(job_id)["status"] == "meshing_queued"


def test_load_record_reads_a_job_folder(tmp_path):
    store = JobStore(tmp_path)
    job_id = store.create("folder read", "npy")["id"]
    assert load_record(store.job_dir(job_id))["name"] == "folder read"
    assert load_record(tmp_path / "nope") is None
    assert load_record(tmp_path) is None
