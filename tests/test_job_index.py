"""The job index kept with the store: rows follow the records under the job's lock,
listing / paging / filtering and a runner's poll read no record files (so they cost the
same at 10,000 jobs as at 10), and the index is rebuilt when missing, damaged or stale."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from ml4paleo.config import Settings
from ml4paleo.jobs import JobStore
from ml4paleo.jobs.runner import Runner


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "data")


def _names(store, **q) -> list[str]:
    return [r["name"] for r in store.query(**q)[0]]


def test_rows_follow_every_write(store):
    a = store.create("ammonite", "dicom")["id"]
    b = store.create("Belemnite", "npy")["id"]
    assert store.query()[1] == 2 and _names(store, sort="name") == ["ammonite", "Belemnite"]
    store.rename(a, "Zircon ammonite")
    assert _names(store, q="zirc") == ["Zircon ammonite"]
    store.update(b, lambda r: r.update(status="converted", progress=1.0,
                                       metadata={"voxel_size": [0.5, 0.25, 0.25],
                                                 "source": {"Modality": "CT"}}))
    rows, total = store.query(statuses=["converted"], exact={"modality": "ct"},
                              voxel_size_min=0.2, voxel_size_max=0.3)
    assert total == 1 and rows[0]["id"] == b and rows[0]["progress"] == 1.0
    store.delete(a)
    assert [r["id"] for r in store.query()[0]] == [b]
    # an older version of a record never replaces a newer row
    old = store.get(b)
    store.rename(b, "newer")
    store.index.put(old)
    assert _names(store) == ["newer"]


def test_listing_and_polling_read_no_record_files(store, monkeypatch):
    ids = [store.create(f"scan {i:03d}", "npy")["id"] for i in range(300)]
    store.update(ids[7], lambda r: r.update(status="uploaded"))
    store.query()  # the index is built and checked
    reads = []
    real = JobStore.read_record_file
    monkeypatch.setattr(JobStore, "read_record_file",
                        staticmethod(lambda path: reads.append(path) or real(path)))
    rows, total = store.query(sort="name", offset=40, limit=20)
    assert total == 300 and [r["name"] for r in rows] == [f"scan {i:03d}" for i in range(40, 60)]
    assert store.query(q="scan 29")[1] == 10  # scan 290 .. 299
    assert reads == []
    # a runner's poll reads the records of its own stage's jobs only
    runner = Runner("convert", Settings(data_dir=store.data_dir))
    reads.clear()
    assert [r["id"] for r in runner.candidates()] == [ids[7]]
    assert len(reads) == 1


def test_rebuilt_when_missing_or_damaged(store):
    ids = [store.create(f"j{i}")["id"] for i in range(5)]
    assert store.query()[1] == 5
    shutil.rmtree(store.index.folder)
    fresh = JobStore(store.data_dir)
    assert sorted(r["id"] for r in fresh.query()[0]) == sorted(ids)
    fresh.index._drop_connection()  # noqa: SLF001 - the file is replaced below
    fresh.index.path.write_bytes(b"this is not a database" * 100)
    again = JobStore(store.data_dir)
    assert again.query()[1] == 5


def test_job_folders_changed_without_the_store_are_synced(store, tmp_path):
    keep = store.create("keep")["id"]
    gone = store.create("gone")["id"]
    assert store.query()[1] == 2
    # a job folder copied in from elsewhere, another removed by hand
    other = JobStore(tmp_path / "other")
    copied = other.create("copied in", "zarr")["id"]
    shutil.copytree(other.job_dir(copied), store.jobs_dir / copied)
    shutil.rmtree(store.jobs_dir / gone)
    store.index._checked = 0.0  # noqa: SLF001 - skip the 1 s between checks
    assert sorted(_names(store)) == ["copied in", "keep"]
    assert keep in {r["id"] for r in store.query()[0]}


def test_a_failed_index_write_marks_it_stale_and_the_next_reader_rebuilds(store, monkeypatch):
    job = store.create("before")["id"]
    store.query()

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store.index, "_put", locked)
    store.rename(job, "after")  # the record write succeeds
    assert store.get(job)["name"] == "after" and store.index.stale_marker.exists()
    monkeypatch.undo()
    assert _names(store) == ["after"]
    assert not store.index.stale_marker.exists()


def test_index_rows_are_what_the_catalogue_shows(store):
    job = store.create("x")["id"]
    store.update(job, lambda r: r.update(disk_bytes=12345, metadata={
        "shape": [2, 3, 4], "dtype": "uint16", "unit": "micrometer",
        "source": {"Manufacturer": "ACME", "ManufacturerModelName": "M9",
                   "SeriesInstanceUID": "1.2"}}))
    row = store.query()[0][0]
    assert (row["bytes"], row["shape"], row["manufacturer"], row["manufacturer_model"],
            row["series_uid"]) == (12345, [2, 3, 4], "ACME", "M9", "1.2")
    stored = sqlite3.connect(store.index.path).execute("SELECT row FROM rows").fetchone()[0]
    assert json.loads(stored) == row
