"""The workspace layer: job paths, the model and segmentation registries, upload state."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ml4paleo._fs import parse_iso
from ml4paleo.classes import default_color
from ml4paleo.jobs import JobStore
from ml4paleo.workspace import (
    JobPaths,
    ModelNotFound,
    ModelRegistry,
    SegmentationNotFound,
    SegmentationRegistry,
    choose_model,
    job_outputs,
    record_model,
    record_segmentation,
)
from ml4paleo.workspace.uploads import (
    UploadError,
    all_states,
    contiguous,
    file_state,
    incomplete_files,
    write_chunk,
)


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "data")


@pytest.fixture
def job(store) -> tuple[str, JobPaths]:
    job_id = store.create("scan", "npy")["id"]
    return job_id, store.paths(job_id)


class FakeModel:
    """Anything with ``save(folder)`` is a model to the registry."""

    def __init__(self, classes, fail=False):
        self.classes, self.fail = classes, fail

    def save(self, folder):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "forest.npz").write_bytes(b"\x01" * 10)
        if self.fail:
            raise RuntimeError("disk full")
        (folder / "meta.json").write_text(json.dumps({"classes": self.classes,
                                                      "metrics": {"f1": float("nan")}}))
        return folder


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


# ------------------------------------------------------------------------------ models
def test_model_registry_saves_lists_and_records(store, job):
    job_id, paths = job
    models = ModelRegistry(paths)
    first = models.save(FakeModel(["bg", "bone"]), source={"kind": "train"})
    second = models.save(FakeModel(["bg", "bone", "tooth"]), source={"kind": "preview"})
    assert models.ids() == [first, second]  # oldest first
    meta = models.meta(first)
    assert meta["source"] == {"kind": "train"} and meta["classes"] == ["bg", "bone"]
    assert parse_iso(meta["created_at"]) <= parse_iso(models.meta(second)["created_at"])
    assert meta["created_at"].endswith("Z")
    assert np.isnan(meta["metrics"]["f1"])  # the model's own values are kept as written
    assert (paths.model(first) / "forest.npz").read_bytes() == b"\x01" * 10
    assert _hidden(paths.models) == []

    update = lambda fn: store.update(job_id, fn)  # noqa: E731
    record_model(update, first)
    record = record_model(update, second, current=True)
    record_model(update, second)  # listed once
    assert record["models"] == [first, second] and record["model_id"] == second
    assert store.get(job_id)["models"] == [first, second]
    record = choose_model(update, first)
    assert (record["model_id"], record["chosen_model_id"]) == (first, first)

    listing = models.list(store.get(job_id))
    assert [(m["id"], m["chosen"], m["current"]) for m in listing] == [
        (first, True, True), (second, False, False)]
    assert listing[1]["classes"] == ["bg", "bone", "tooth"]

    buffer = io.BytesIO()
    models.write_zip(first, buffer)
    names = sorted(zipfile.ZipFile(buffer).namelist())
    assert names == [f"{first}/forest.npz", f"{first}/meta.json"]


def test_a_failed_save_leaves_nothing(job):
    _, paths = job
    models = ModelRegistry(paths)
    with pytest.raises(RuntimeError, match="disk full"):
        models.save(FakeModel(["a", "b"], fail=True))
    assert models.ids() == [] and list(paths.models.iterdir()) == []


def test_unknown_or_malformed_model_ids(job):
    _, paths = job
    models = ModelRegistry(paths)
    for bad in ("nope", "../x", "a/b", "", None):
        assert not models.exists(bad)
        with pytest.raises(ModelNotFound):
            models.folder(bad)
    assert models.meta("../../etc") == {}
    # ids of older versions may start with '-' and still open
    (paths.models / "-old").mkdir(parents=True)
    assert models.exists("-old") and "-old" in models.ids()


def test_import_copies_only_a_loadable_model_and_never_a_link(store, tmp_path):
    src_id = store.create("source", "npy")["id"]
    dst_id = store.create("dest", "npy")["id"]
    src, dst = ModelRegistry(store.paths(src_id)), ModelRegistry(store.paths(dst_id))
    model_id = src.save(FakeModel(["a", "b"]))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    os.symlink(secret, src.folder(model_id) / "link.txt")

    def refuse(folder):
        raise ValueError("unknown model format")

    with pytest.raises(ValueError, match="cannot be loaded: unknown model format"):
        dst.import_from(src, model_id, load=refuse)
    assert dst.ids() == []
    loaded = []
    new_id = dst.import_from(src, model_id, load=loaded.append)
    assert loaded == [src.folder(model_id)]
    copied = dst.folder(new_id)
    assert sorted(p.name for p in copied.iterdir()) == ["forest.npz", "meta.json"]
    assert dst.meta(new_id)["source"] == {"kind": "import", "job_id": src_id,
                                          "model_id": model_id}
    with pytest.raises(ModelNotFound):
        dst.import_from(src, "missing", load=loaded.append)


# ------------------------------------------------------------------------------ segmentations
def test_segmentation_registry_meta_meshes_stats(store, job):
    job_id, paths = job
    segs = SegmentationRegistry(paths)
    seg_id = segs.create()
    assert segs.create(seg_id) == seg_id  # a retried attempt keeps its folder
    meta = segs.write_meta(seg_id, model_id="m1")
    assert meta["job_id"] == job_id and segs.meta(seg_id)["model_id"] == "m1"
    assert segs.ids() == [seg_id] and segs.stats_file(seg_id) is None

    workdir = segs.mesh_workdir(seg_id)
    (workdir / "1.stl").write_bytes(b"solid")
    (workdir / "stats.csv").write_text("label,voxel_count\n1,5\n")
    files = segs.install_meshes(seg_id, workdir)
    assert files == ["1.stl", "stats.csv"] and not workdir.exists()
    assert segs.stats_file(seg_id) == paths.stats(seg_id)
    assert paths.stats(seg_id).read_text() == "label,voxel_count\n1,5\n"
    # meshing again replaces the meshes (nothing old survives), stats rows computed here
    workdir = segs.mesh_workdir(seg_id)
    (workdir / "2.glb").write_bytes(b"glTF")
    segs.write_stats(seg_id, [{"label": 2, "voxel_count": 7}, {"label": 3, "extra": 1.5}])
    assert segs.install_meshes(seg_id, workdir) == ["2.glb"]
    rows = list(csv.DictReader(paths.stats(seg_id).open()))
    assert rows == [{"label": "2", "voxel_count": "7", "extra": ""},
                    {"label": "3", "voxel_count": "", "extra": "1.5"}]
    entry = segs.describe(seg_id)
    assert entry["meshes"] == [{"file": "2.glb", "label": "2", "format": "glb", "bytes": 4}]
    assert entry["stats"] is True and entry["labels"] is False
    assert _hidden(paths.segmentation(seg_id)) == []

    record = record_segmentation(lambda fn: store.update(job_id, fn), seg_id)
    assert record["segmentations"] == [seg_id] and record["segmentation_id"] == seg_id
    with pytest.raises(SegmentationNotFound):
        segs.folder("nope")


def test_segmentation_classes_follow_one_rule(job):
    _, paths = job
    segs = SegmentationRegistry(paths)
    seg_id = segs.create()
    assert segs.classes(seg_id) == []
    paths.annotations.mkdir()
    paths.classes.write_text(json.dumps({"classes": [{"name": "matrix"}, {"name": "bone"}]}))
    assert segs.classes(seg_id) == [{"name": "matrix", "color": default_color(0)},
                                    {"name": "bone", "color": default_color(1)}]
    # the model's classes win over the annotations'
    models = ModelRegistry(paths)
    model_id = models.save(FakeModel([{"name": "a", "color": "#FF0000"}, "b"]))
    segs.write_meta(seg_id, model_id=model_id)
    assert segs.classes(seg_id) == [{"name": "a", "color": "#ff0000"},
                                    {"name": "b", "color": default_color(1)}]
    # an old class list breaking today's rules is still shown (colours fixed)
    segs.write_meta(seg_id, model_id=model_id,
                    classes=[{"name": "x", "color": "javascript:1"}, {"name": "X"}])
    assert segs.classes(seg_id) == [{"name": "x", "color": default_color(0)},
                                    {"name": "X", "color": default_color(1)}]


def test_job_outputs(store, job):
    job_id, paths = job
    assert job_outputs(paths) == {
        "upload": {"exists": True, "bytes": 0}, "image": {"exists": False, "bytes": 0},
        "annotations": {"exists": False}, "models": [], "segmentations": [], "exports": []}
    (paths.upload / "a.npy").write_bytes(b"12345")
    paths.image.mkdir()
    (paths.image / ".zattrs").write_text("{}")
    paths.exports.mkdir()
    (paths.exports / "image-zarr.zarr.zip").write_bytes(b"zip")
    (paths.exports / ".image-zarr.zarr.zip.tmp-h-1-x").write_bytes(b"half")
    (paths.models / ".tmp-half-written").mkdir(parents=True)
    out = job_outputs(paths)
    assert out["upload"] == {"exists": True, "bytes": 5}
    assert out["image"] == {"exists": True, "bytes": 2}
    assert out["exports"] == [{"file": "image-zarr.zarr.zip", "bytes": 3}]
    assert out["models"] == []  # a temp folder is not a model


def test_paths_name_exports_and_refuse_escapes(tmp_path):
    paths = JobPaths(tmp_path / "jobs" / "j1")
    assert paths.segmentation_export("s1", "zarr", "zarr.zip").name == \
        "segmentation-s1-zarr.zarr.zip"
    assert paths.report("s1", "pdf").name == "report-s1.pdf"
    assert paths.image_preview.parent == paths.exports
    # a segmentation is a label of the job's image; an older version's stays readable where it is
    assert paths.labels("s1") == paths.image / "labels" / "s1" == paths.image_labels("s1")
    paths.segmentation_files("s1").labels.mkdir(parents=True)
    assert paths.labels("s1") == paths.segmentation_files("s1").labels
    for bad in ("../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            paths.segmentation(bad)
        with pytest.raises(ValueError):
            paths.meshes_export(bad)


# ------------------------------------------------------------------------------ uploads
def test_upload_chunks_out_of_order_resume_and_restart(job):
    _, paths = job
    data = bytes(range(256)) * 40
    state, added = write_chunk(paths, "scan/a.raw", io.BytesIO(data[4000:]), 6240, 4000, 10240)
    assert (contiguous(state), added) == (0, 6240)
    assert incomplete_files(paths) == [("scan/a.raw", 0, 10240)]
    state, added = write_chunk(paths, "scan/a.raw", io.BytesIO(data[:4000]), 4000, 0, 10240)
    assert (contiguous(state), added, state["ranges"]) == (10240, 4000, [[0, 10240]])
    state, added = write_chunk(paths, "scan/a.raw", io.BytesIO(data[:100]), 100, 0, 10240)
    assert added == 0  # a chunk sent twice is harmless
    assert paths.upload_file("scan/a.raw").read_bytes() == data
    assert incomplete_files(paths) == [] and file_state(paths, "scan/a.raw")["total"] == 10240
    # a new total restarts the file and gives the old bytes back
    state, added = write_chunk(paths, "scan/a.raw", io.BytesIO(b"xy"), 2, 0, 4)
    assert added == 2 - 10240 and contiguous(state) == 2
    assert [s["name"] for s in all_states(paths)] == ["scan/a.raw"]
    assert file_state(paths, "other")["total"] is None
    with pytest.raises(UploadError, match="clashes"):
        write_chunk(paths, "scan/a.raw/b", io.BytesIO(b"1"), 1, 0, 1)
    with pytest.raises(UploadError, match="shorter"):
        write_chunk(paths, "c.raw", io.BytesIO(b"1"), 5, 0, 5)
    assert not [n for n in os.listdir(paths.upload_state) if not n.endswith(".json")]
