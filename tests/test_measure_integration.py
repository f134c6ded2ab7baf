"""Morphometry wired into the product: ``ml4paleo measure``, the notebook verb, the job step
(through the runner), the HTTP routes and the report."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ml4paleo
from ml4paleo.cli import main as cli_main

THICK = 6  # plate thickness, voxels


def _plate(shape=(32, 40, 40), z0=10, thick=THICK) -> np.ndarray:
    vol = np.zeros(shape, np.uint8)
    vol[z0:z0 + thick, 4:-4, 4:-4] = 1
    return vol


def test_ml4paleo_measure_is_a_command_with_a_progress_bar(tmp_path):
    np.save(tmp_path / "plate.npy", _plate())
    out = tmp_path / "out"
    res = CliRunner().invoke(cli_main, [
        "measure", str(tmp_path / "plate.npy"), "-o", str(out), "--voxel-size", "0.5",
        "--unit", "millimeter", "--measures", "fractions,thickness,objects",
        "--chunk-size", "16", "--workers", "1"])
    assert res.exit_code == 0, res.output
    # the tqdm bar on stderr reached the end
    assert "measuring" in res.stderr and "100%" in res.stderr
    summary = json.loads((out / "morphometry.json").read_text())
    plate = summary["classes"][0]
    # thickness 6 voxels x 0.5 mm = 3 mm (mean within one voxel: edges are thinner)
    assert plate["thickness"]["max"] == pytest.approx(3.0)
    assert abs(plate["thickness"]["mean"] - 3.0) <= 0.5
    assert summary["unit"] == "millimeter"
    assert plate["bv"] == pytest.approx(THICK * 32 * 32 * 0.125)
    rows = list(csv.DictReader((out / "objects.csv").open()))
    assert len(rows) == 1 and rows[0]["class_name"] == "class 1"
    table = list(csv.DictReader((out / "morphometry.csv").open()))
    assert table[0]["name"] == "class 1" and float(table[0]["thickness_max"]) == pytest.approx(3.0)
    assert int(rows[0]["voxel_count"]) == THICK * 32 * 32
    assert "measure" in cli_main.list_commands(None)


def test_measure_is_a_notebook_verb():
    assert "measure" in ml4paleo.__all__
    m = ml4paleo.measure(_plate(), voxel_size=1.0, measures="thickness")
    assert m.by_value(1)["thickness"]["max"] == pytest.approx(THICK)


# ------------------------------------------------------------------ a job with a segmentation
VS = (0.5, 0.5, 0.5)
ORIGIN_XYZ = (10.0, 20.0, 30.0)
SPHERES = [((20, 12, 12), 4), ((20, 28, 14), 4), ((22, 20, 30), 5)]  # (z, y, x), radius voxels


def _two_class() -> np.ndarray:
    """Class 1 'bone': a plate THICK voxels thick; class 2 'grain': three balls."""
    vol = _plate(z0=2)
    z, y, x = np.mgrid[0:vol.shape[0], 0:vol.shape[1], 0:vol.shape[2]]
    for (cz, cy, cx), r in SPHERES:
        vol[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 2
    return vol


def _segmented_job(store, labels: np.ndarray) -> tuple[str, str]:
    """A converted job (image in a world with an origin) and one finished segmentation."""
    from ml4paleo.formats import add_labels, build_pyramid, create_image
    from ml4paleo.workspace import SegmentationRegistry
    from ml4paleo.workspace.segmentations import record_segmentation
    from ml4paleo.world import WorldTransform

    job_id = store.create("plates & grains", "npy")["id"]
    paths = store.paths(job_id)
    affine = np.diag([*VS[::-1], 1.0])
    affine[:3, 3] = ORIGIN_XYZ
    world = WorldTransform(affine, unit="millimeter")
    image = create_image(paths.image, labels.shape, np.uint16, chunks=16, world=world)
    image.array[:] = labels.astype(np.uint16) * 1000
    build_pyramid(image)
    seg_id = SegmentationRegistry(paths).create()
    lab = add_labels(paths.image, seg_id, classes=["background", "bone", "grain"], chunks=16)
    lab.array[:] = labels
    build_pyramid(lab)
    record_segmentation(lambda fn: store.update(job_id, fn), seg_id)
    store.update(job_id, lambda r: r.update(status="segmented"))  # as the segment runner leaves it
    return job_id, seg_id


def _check_outputs(paths, seg_id, rec):
    """What a measure run of _two_class must have written."""
    from ml4paleo.formats import open_image

    files = paths.segmentation_files(seg_id)
    summary = json.loads(files.morphometry_summary.read_text())
    bone, grain = summary["classes"]
    assert (bone["name"], grain["name"]) == ("bone", "grain")
    assert summary["unit"] == "millimeter"
    assert bone["thickness"]["max"] == pytest.approx(THICK * 0.5)
    assert abs(bone["thickness"]["mean"] - THICK * 0.5) <= 0.5
    assert grain["thickness"]["max"] == pytest.approx(2 * 5 * 0.5, abs=0.5)
    table = list(csv.DictReader(files.morphometry_table.open()))
    assert [r["name"] for r in table] == ["bone", "grain"] and table[0]["unit"] == "millimeter"
    assert float(table[0]["bv"]) == pytest.approx(THICK * 32 * 32 * 0.125)
    objects = list(csv.DictReader(files.morphometry_objects.open()))
    assert [r["class_name"] for r in objects].count("grain") == len(SPHERES)
    assert [r["class_name"] for r in objects].count("bone") == 1
    # centroids in the scan's world: index * 0.5 + origin
    bone_row = next(r for r in objects if r["class_name"] == "bone")
    assert float(bone_row["centroid_z"]) == pytest.approx(ORIGIN_XYZ[2] + (2 + 2.5) * 0.5)
    tmap = open_image(files.thickness_map)
    assert tmap.world.allclose(open_image(paths.labels(seg_id)).world)
    assert tmap.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1][
        "translation"] == [ORIGIN_XYZ[2], ORIGIN_XYZ[1], ORIGIN_XYZ[0]]
    values = np.asarray(tmap.array[:])
    labels = np.asarray(open_image(paths.labels(seg_id)).array[:])
    assert values[labels == 0].max() == 0 and values[labels == 1].max() == pytest.approx(3.0)
    assert rec["morphometry"][seg_id]["table"][0]["name"] == "bone"
    assert rec["morphometry"][seg_id]["objects"] == len(SPHERES) + 1
    assert not [p for p in paths.segmentation(seg_id).iterdir() if p.name.startswith(".")]


def test_measure_step_runs_in_the_measure_runner_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from ml4paleo.jobs import JobStore

    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    store = JobStore(data)
    job_id, seg_id = _segmented_job(store, _two_class())
    with pytest.raises(ValueError, match="measures: unknown measure"):
        store.request_measure(job_id, measures=["volume"])
    rec = store.request_measure(job_id, max_thickness=8.0)
    assert rec["status"] == "measuring_queued" and rec["request"]["kind"] == "measure"
    run = subprocess.run(
        [sys.executable, str(repo / "measurerunner.py"), "--data", str(data), "--once",
         "--poll-interval", "0.05"], cwd=repo, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(repo), "ML4PALEO_WORKERS": "1",
             "ML4PALEO_CHUNK_SIZE": "16"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "measure runner: 1 job(s) processed" in run.stdout
    rec = store.get(job_id)
    assert rec["status"] == "measured", rec.get("error")
    assert rec["progress"] == 1.0
    _check_outputs(store.paths(job_id), seg_id, rec)
    # a measured job can still be meshed, and measured again
    assert store.request_mesh(job_id)["status"] == "meshing_queued"


def test_measure_step_progress_and_bad_box_fail_cleanly(tmp_path):
    from ml4paleo.config import Settings
    from ml4paleo.jobs import JobStore
    from ml4paleo.jobs.runner import run_runner

    data = tmp_path / "data"
    store = JobStore(data)
    job_id, seg_id = _segmented_job(store, _two_class())
    settings = Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=16,
                        lease_seconds=0.3)
    store.request_measure(job_id, roi_box=[[0, 99], [0, 8], [0, 8]])
    run_runner("measure", settings, once=True)
    rec = store.get(job_id)
    assert rec["status"] == "measure_error" and "roi_box" in rec["error"]
    assert not store.paths(job_id).morphometry(seg_id).exists()
    # live percentage: the record's progress moves while the step runs
    from ml4paleo.jobs.steps import measure as measure_step

    progress: list[float] = []

    class Ctx:
        def __init__(self):
            self.record = store.get(job_id)
            self.record["request"] = {"kind": "measure", "segmentation_id": seg_id,
                                      "measures": ["fractions", "thickness"]}
            self.job_id, self.paths, self.settings = job_id, store.paths(job_id), settings

        def progress(self, done, total):
            progress.append(done / total)

        def message(self, text): ...
        def set_range(self, lo, hi): ...
        def check(self): ...

        def owned_update(self, fn):
            return store.update(job_id, fn)

    out = measure_step.run(Ctx())
    assert out["status"] == "measured"
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(set(progress)) > 3
    summary = json.loads(store.paths(job_id).segmentation_files(seg_id)
                         .morphometry_summary.read_text())
    assert summary["measures"] == ["fractions", "thickness"] and summary["objects_csv"] is None


# ------------------------------------------------------------------ HTTP routes
@pytest.fixture
def app(tmp_path):
    from webapp import create_app

    app = create_app(data_dir=tmp_path / "data")
    app.config["TESTING"] = True
    return app


def test_measure_routes_queue_report_download_and_overlay(app, tmp_path):
    import io

    from PIL import Image

    from ml4paleo.config import Settings
    from ml4paleo.jobs.runner import run_runner

    client = app.test_client()
    store = app.extensions["ml4paleo_store"]
    job_id, seg_id = _segmented_job(store, _two_class())
    base = f"/api/job/{job_id}/measure"
    # not measured yet
    r = client.get(base)
    assert r.status_code == 404 and "not measured" in r.get_json()["error"]
    # bad requests are JSON 4xx naming the field, nothing queued
    for body, code, words in [
        ({"measures": ["volume"]}, 400, "measures"),
        ({"max_thickness": -2}, 400, "max_thickness"),
        ({"roi_box": [[0, 4]]}, 400, "roi_box"),
        ({"colour": "red"}, 400, "colour"),
        ({"segmentation_id": "nope"}, 409, "nope"),
        ([1, 2], 400, "JSON object"),
    ]:
        r = client.post(base, json=body)
        assert r.status_code == code and words in r.get_json()["error"], (body, r.get_json())
    assert store.get(job_id)["status"] == "segmented"
    r = client.post(base, json={"max_thickness": 8, "measures": ["fractions", "thickness",
                                                                  "objects", "connectivity"]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["job_status"] == "measuring_queued"
    assert r.get_json()["state"]["phase"] == "measure"
    assert client.post(base, json={}).status_code == 409  # busy: already queued
    run_runner("measure", Settings(data_dir=tmp_path / "data", poll_interval=0.05, workers=1,
                                   chunk_size=16), once=True)
    assert store.get(job_id)["status"] == "measured", store.get(job_id).get("error")
    res = client.get(base).get_json()
    assert [row["name"] for row in res["table"]] == ["bone", "grain"]
    assert res["table"][0]["thickness_max"] == pytest.approx(3.0)
    assert res["column_units"]["bv"] == "millimeter^3" and res["unit"] == "millimeter"
    assert res["objects"] == len(SPHERES) + 1 and len(res["object_volumes"]["2"]) == len(SPHERES)
    assert sum(res["histograms"]["1"]["thickness"]["counts"]) == THICK * 32 * 32
    assert res["legend"]["max"] == 8.0 and res["legend"]["colors"][0].startswith("#")
    assert set(res["files"]) == {"morphometry.json", "morphometry.csv", "objects.csv"}
    # downloads
    table = client.get(res["files"]["morphometry.csv"])
    assert table.status_code == 200 and table.mimetype == "text/csv"
    assert table.data.decode().splitlines()[1].startswith("1,bone,")
    objects = client.get(res["files"]["objects.csv"]).data.decode()
    assert objects.count("grain") == len(SPHERES)
    assert client.get(f"{base}/{seg_id}/job.json").status_code == 404
    assert client.get(f"{base}/nope/objects.csv").status_code == 404
    # the overlay: transparent outside the classes, the scale's colour inside
    r = client.get(res["thickness_slice"] + "?axis=z&index=4&level=0")
    assert r.status_code == 200 and r.mimetype == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(r.data)))
    labels = _two_class()[4]
    assert rgba.shape == (*labels.shape, 4)
    assert (rgba[..., 3][labels == 0] == 0).all() and (rgba[..., 3][labels == 1] == 255).all()
    from ml4paleo.morphometry.colours import colorize

    # the middle of the 3 mm plate shows the colour of 3 mm on the 0..8 scale
    assert rgba[20, 20].tolist() == colorize(np.array([3.0]), 8.0)[0].tolist()
    tile = client.get(res["thickness_slice"] + "?axis=y&index=20&level=0&tile=1,2&tile_size=16")
    assert tile.status_code == 200
    tile_rgba = np.asarray(Image.open(io.BytesIO(tile.data)))
    assert tile_rgba.shape == (16, 8, 4)  # the last tile of a 32 x 40 plane
    np.testing.assert_array_equal(tile_rgba[..., 3] > 0, _two_class()[16:32, 20, 32:40] > 0)
    bad = client.get(res["thickness_slice"] + "?axis=q")
    assert bad.status_code == 400 and "axis" in bad.get_json()["error"]
    # the OpenAPI document lists the new routes
    spec = client.get("/api/openapi.json").get_json()
    assert "post" in spec["paths"]["/api/job/{job_id}/measure"]
    assert "get" in spec["paths"]["/api/job/{job_id}/measure"]
    assert "/api/job/{job_id}/segmentation/{seg_id}/thickness/slice" in spec["paths"]


# ------------------------------------------------------------------ report
def test_report_has_a_morphometry_section(tmp_path):
    import re

    from ml4paleo.config import Settings
    from ml4paleo.jobs import JobStore
    from ml4paleo.jobs.runner import run_runner
    from ml4paleo.report import build_report, collect
    from ml4paleo.report_morphometry import render_histograms, table_cells

    data = tmp_path / "data"
    store = JobStore(data)
    job_id, seg_id = _segmented_job(store, _two_class())
    before = collect(store.job_dir(job_id))
    assert before.morphometry is None
    store.request_measure(job_id, max_thickness=8.0)
    run_runner("measure", Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=16),
               once=True)
    assert store.get(job_id)["status"] == "measured"
    report = collect(store.job_dir(job_id))
    header, rows = table_cells(report.morphometry, report.unit_symbol)
    assert header[:3] == ["class", "BV/TV", "BS/TV (mm⁻¹)"] and header[3] == "Th mean (mm)"
    assert [r[0] for r in rows] == ["bone", "grain"]
    assert rows[0][5] == "3"  # Th max of the 6-voxel (3 mm) plate
    assert rows[1][-1] == str(len(SPHERES))
    hist = render_histograms(report.morphometry, "mm", {1: "#ff0000", 2: "#00ff00"})
    assert hist[:8] == b"\x89PNG\r\n\x1a\n"
    out = build_report(store.job_dir(job_id), tmp_path / "rep", formats=("html", "pdf"))
    page = out["html"].read_text()
    section = page[page.index('<h2 id="morphometry">'):page.index("<h2>Model</h2>")]
    assert "bone" in section and "grain" in section and "Th max (mm)" in section
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', section)
    assert images == ["thickness and object size histograms", "thickness-coloured planes"]
    assert out["pdf"].read_bytes()[:5] == b"%PDF-" and out["pdf"].stat().st_size > 20_000
    if os.environ.get("ML4PALEO_TEST_ARTIFACTS"):
        import base64

        folder = Path(os.environ["ML4PALEO_TEST_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        for i, b64 in enumerate(re.findall(r'base64,([A-Za-z0-9+/=]+)"', section)):
            (folder / f"morphometry-{i}.png").write_bytes(base64.b64decode(b64))


# ------------------------------------------------------------------ meshes coloured by thickness
def test_meshes_are_coloured_by_thickness(tmp_path):
    import struct

    import trimesh

    from ml4paleo.config import Settings
    from ml4paleo.jobs import JobStore
    from ml4paleo.jobs.runner import run_runner
    from ml4paleo.morphometry.colours import colorize

    data = tmp_path / "data"
    store = JobStore(data)
    job_id, seg_id = _segmented_job(store, _two_class())
    settings = Settings(data_dir=data, poll_interval=0.05, workers=1, chunk_size=16)
    store.request_mesh(job_id, formats=["ply", "stl"])
    run_runner("mesh", settings, once=True)
    assert store.get(job_id)["status"] == "meshed", store.get(job_id).get("error")
    store.request_measure(job_id, max_thickness=8.0)
    run_runner("measure", settings, once=True)
    rec = store.get(job_id)
    assert rec["status"] == "measured", rec.get("error")
    folder = store.paths(job_id).segmentation_files(seg_id).thickness_meshes
    assert sorted(p.name for p in folder.iterdir()) == ["1.glb", "1.ply", "2.glb", "2.ply"]
    assert "meshes" in rec["morphometry"][seg_id]["files"]
    plate = trimesh.load(folder / "1.ply", process=False)
    source = trimesh.load(store.paths(job_id).meshes(seg_id) / "1.ply", process=False)
    np.testing.assert_allclose(plate.vertices.min(axis=0), source.vertices.min(axis=0))
    colours = np.asarray(plate.visual.vertex_colors)[:, :3]
    expect = colorize(np.array([3.0]), 8.0)[0, :3]  # the 3 mm plate on the 0..8 mm scale
    assert np.mean(np.all(colours == expect, axis=1)) > 0.9
    grains = trimesh.load(folder / "2.ply", process=False)
    g = np.asarray(grains.visual.vertex_colors)[:, :3]
    assert np.mean(np.all(g == expect, axis=1)) < 0.1  # the grains are thicker: other colours
    # GLB: COLOR_0 on the primitive, as many colours as positions
    raw = (folder / "1.glb").read_bytes()
    length = struct.unpack("<I", raw[12:16])[0]
    gltf = json.loads(raw[20:20 + length])
    prim = gltf["meshes"][0]["primitives"][0]
    assert gltf["accessors"][prim["attributes"]["COLOR_0"]]["count"] == \
        gltf["accessors"][prim["attributes"]["POSITION"]]["count"] == len(plate.vertices)
    glb = trimesh.load(folder / "1.glb", force="mesh", process=False)
    np.testing.assert_array_equal(np.asarray(glb.visual.vertex_colors)[:, :3], colours)
    # served to the 3D view
    from webapp import create_app

    app = create_app(data_dir=data)
    client = app.test_client()
    res = client.get(f"/api/job/{job_id}/measure").get_json()
    assert [m["file"] for m in res["meshes"]] == ["1.glb", "1.ply", "2.glb", "2.ply"]
    r = client.get(res["meshes"][1]["url"])
    assert r.status_code == 200 and r.data == (folder / "1.ply").read_bytes()
    assert client.get(f"/api/job/{job_id}/measure/{seg_id}/meshes/3.ply").status_code == 404
    assert client.get(f"/api/job/{job_id}/measure/{seg_id}/meshes/..%2F1.ply").status_code == 404
