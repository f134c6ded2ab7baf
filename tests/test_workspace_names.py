"""Human names of segmentations and models (issue 16): numbers, classes, dates, renames."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from ml4paleo.workspace import JobPaths, ModelRegistry, SegmentationRegistry
from ml4paleo.workspace.names import assign_numbers, clean_name, default_name, format_when


def test_default_name_and_dates():
    now = datetime(2024, 12, 5, 9, 0).astimezone()
    when = now.replace(day=1, hour=14, minute=3).astimezone().isoformat()
    assert default_name("Segmentation", 2, ["matrix", "bone", "tooth"], when, now) == \
        "Segmentation 2 · matrix/bone/tooth · 1 Dec 14:03"
    assert default_name("Model", 1, [{"name": f"c{i}"} for i in range(6)], None) == \
        "Model 1 · c0/c1/c2/c3/…"
    last_year = now.replace(year=2023, day=1, hour=14, minute=3).isoformat()
    assert format_when(last_year, now) == "1 Dec 2023 14:03"
    assert format_when("not a date") is None
    with pytest.raises(ValueError, match="control"):
        clean_name("a\x00b")
    with pytest.raises(ValueError, match="at most 200"):
        clean_name("x" * 201)


def test_numbers_keep_stored_ones_and_fill_the_rest_by_time():
    got = assign_numbers([("new", {"created_at": "2024-03"}), ("kept", {"number": 1}),
                          ("old", {"created_at": "2024-01"}), ("dup", {"number": 1})])
    assert got == {"kept": 1, "dup": 2, "old": 3, "new": 4}  # undated first


def _classes(paths: JobPaths, names):
    paths.annotations.mkdir(parents=True, exist_ok=True)
    paths.classes.write_text(json.dumps({"classes": [
        {"name": n, "color": c} for n, c in zip(names, ("#ff0000", "#00ff00", "#0000ff"),
                                                strict=False)]}))


def test_segmentations_are_numbered_named_and_renamed(tmp_path):
    paths = JobPaths(tmp_path / "job")
    _classes(paths, ["matrix", "bone", "tooth"])
    segs = SegmentationRegistry(paths)
    a = segs.create()
    segs.write_meta(a, model_id="m1", created_at="2024-12-01T14:03:00.000000Z")
    b = segs.create()
    pending = segs.describe(b)  # being written: numbered after the finished one
    assert pending["number"] == 2
    segs.write_meta(b, model_id="m1")
    assert [s["number"] for s in segs.list()] == [1, 2]
    first = segs.describe(a)
    assert first["name"].startswith("Segmentation 1 · matrix/bone/tooth · 1 Dec ")
    assert first["named"] is False and first["model_id"] == "m1"

    segs.rename(a, "  Cleaned\n skull ")
    assert segs.describe(a)["name"] == "Cleaned skull" and segs.describe(a)["named"]
    assert json.loads(paths.segmentation_meta(a).read_text())["name"] == "Cleaned skull"
    # a retried attempt rewrites segmentation.json: number and name stay
    segs.write_meta(a, model_id="m2")
    assert segs.describe(a)["name"] == "Cleaned skull" and segs.describe(a)["number"] == 1
    segs.rename(a, "")
    assert segs.describe(a)["name"].startswith("Segmentation 1 · ")
    assert segs.names()[b].startswith("Segmentation 2 · matrix/bone/tooth · ")
    with pytest.raises(ValueError):
        segs.rename(a, "x" * 300)
    with pytest.raises(KeyError):
        segs.rename("nope", "x")


def test_models_are_numbered_named_and_renamed(tmp_path):
    reg = ModelRegistry(JobPaths(tmp_path / "job"))

    def fill(folder):
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"classes": [{"name": "matrix"},
                                                                  {"name": "bone"}]}))

    m1, m2 = reg.add(fill, source={"kind": "train"}), reg.add(fill, source={"kind": "train"})
    entries = reg.list()
    assert [e["number"] for e in entries] == [1, 2]
    assert entries[1]["name"].startswith("Model 2 · matrix/bone · ")
    reg.rename(m1, "First try")
    assert reg.entry(m1)["name"] == "First try" and reg.entry(m1)["named"]
    assert reg.meta(m1)["source"] == {"kind": "train"}  # the rest of meta.json is kept
    other = ModelRegistry(JobPaths(tmp_path / "other"))
    copied = other.import_from(reg, m1, load=lambda folder: None)
    assert other.entry(copied)["number"] == 1
    assert other.entry(copied)["name"].startswith("Model 1 · matrix/bone")  # its own name
    assert m2 in reg.ids()
