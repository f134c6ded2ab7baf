"""The annotator parts of issue 16: planes oriented like 3D Slicer, the voxel size and its
status in the annotator's info, the clean-up preview on the current slice, segmentation
requests carrying the clean-up options (through to the segment step)."""

from __future__ import annotations

import numpy as np
import pytest

from ml4paleo.annotate import encode_rle
from ml4paleo.formats import build_pyramid, create_image
from ml4paleo.phantom import make_phantom
from ml4paleo.segmentation import plane_island_size, postprocess_labels, preview_plane
from ml4paleo.world import ZARR_WORLD_KEY, WorldTransform, plane_orientation
from webapp import create_app

SHAPE = (24, 64, 64)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=2)


def _job(store, image, extra=None, unit="micrometer"):
    jid = store.create("brain", "nifti")["id"]
    img = create_image(store.job_dir(jid) / "image.ome.zarr", image.shape, image.dtype,
                       chunks=32, voxel_size=(2.0, 1.0, 1.0), unit=unit, extra_attrs=extra)
    img.array[...] = image
    build_pyramid(img)
    store.update(jid, lambda r: r.update(status="converted"))
    return jid


@pytest.fixture
def env(tmp_path):
    app = create_app(data_dir=tmp_path)
    return app, app.test_client(), app.extensions["ml4paleo_store"]


def test_planes_follow_the_orientation_like_slicer():
    ras = plane_orientation("RAS")
    # coronal / sagittal: superior up (z grows towards S: rows flipped)
    assert ras["y"]["view"] == "coronal" and ras["y"]["flip_rows"] and ras["y"]["top"] == "S"
    assert ras["x"]["view"] == "sagittal" and ras["x"]["top"] == "S"
    assert ras["x"]["left"] == "A" and ras["x"]["right"] == "P"
    # axial: anterior up, the patient's right on the screen's left
    assert ras["z"]["view"] == "axial" and ras["z"]["top"] == "A" and ras["z"]["left"] == "R"
    lps = plane_orientation("LPS")  # DICOM: row 0 is anterior already, column 0 right
    assert not lps["z"]["flip_rows"] and not lps["z"]["flip_cols"]
    assert lps["y"]["flip_rows"] and lps["y"]["top"] == "S"
    assert plane_orientation(None) is None and plane_orientation("XYZ") is None


def test_annotator_info_has_planes_voxel_size_and_its_status(env, phantom):
    app, c, store = env
    image, _ = phantom
    w = WorldTransform(np.diag([1.0, 1.0, 2.0, 1.0]), frame="RAS", unit="millimeter",
                       source="sform")
    jid = _job(store, image, extra={ZARR_WORLD_KEY: w.to_json()}, unit="millimeter")
    info = c.get(f"/api/job/{jid}/annotate/info").get_json()
    assert info["orientation"] == "RAS"
    assert info["planes"]["y"]["flip_rows"] is True and info["planes"]["y"]["top"] == "S"
    assert info["voxel_size_status"]["state"] in ("known", "assumed")
    img = c.get(f"/api/job/{jid}/image").get_json()
    assert img["orientation"] == "RAS" and img["planes"] == info["planes"]
    plain = _job(store, image)
    info = c.get(f"/api/job/{plain}/annotate/info").get_json()
    assert info["orientation"] is None and info["planes"] is None


def test_cleanup_preview_on_the_current_slice(env, phantom):
    app, c, store = env
    image, truth = phantom
    jid = _job(store, image)
    z = 12
    lab = np.zeros(truth[z].shape, np.uint8)
    rows = np.arange(2, truth[z].shape[0], 6)
    lab[rows, ::3] = np.minimum(truth[z][rows, ::3], 1) + 1
    r = c.post(f"/api/job/{jid}/annotate/labels", json={"axis": "z", "index": z,
                                                         "mask": encode_rle(lab)})
    assert r.status_code == 200, r.data
    plain = c.get(f"/api/job/{jid}/annotate/cleanup?axis=z&index={z}&min_size=0").get_json()
    assert plain["overlay"].startswith("data:image/png") and plain["changed_pixels"] == 0
    big = c.get(f"/api/job/{jid}/annotate/cleanup?axis=z&index={z}&min_size=100000"
                "&fill_holes=1").get_json()
    assert big["island_pixels"] == plane_island_size(100000)
    assert big["changed_pixels"] >= plain["changed_pixels"]
    for bad in ("min_size=-1", "min_size=x", "axis=q"):
        assert c.get(f"/api/job/{jid}/annotate/cleanup?index={z}&{bad}").status_code == 400


def test_preview_plane_removes_specks_as_the_volume_cleanup_would():
    plane = np.zeros((40, 40), np.uint8)
    plane[5:30, 5:30] = 1           # a big object ...
    plane[10:12, 10:12] = 0         # ... with a hole
    plane[35, 35] = 1               # and a one-pixel speck
    cleaned, changed = preview_plane(plane, min_size=27, fill_holes=True)  # 27 voxels: 9 px
    assert cleaned[35, 35] == 0 and cleaned[10, 10] == 1 and changed == 1 + 4
    vol = np.repeat(plane[None], 5, axis=0)
    vol[:, 35, 35] = 0
    vol[2, 35, 35] = 1              # the speck is a 1-voxel island in 3D too
    assert postprocess_labels(vol, min_size=27)[2, 35, 35] == 0


def test_segment_request_carries_the_cleanup_to_the_step(env, phantom):
    from ml4paleo.config import Settings
    from ml4paleo.jobs.runner import run_runner
    from ml4paleo.workspace import JobPaths, SegmentationRegistry

    app, c, store = env
    image, truth = phantom
    jid = _job(store, image)
    for z in (6, 12, 18):
        lab = np.zeros(truth[z].shape, np.uint8)
        rows = np.arange(2, truth[z].shape[0], 4)
        lab[rows, ::2] = np.minimum(truth[z][rows, ::2], 1) + 1
        assert c.post(f"/api/job/{jid}/annotate/labels",
                      json={"axis": "z", "index": z, "mask": encode_rle(lab)}).status_code == 200
    for bad in ({"min_size": -3}, {"min_size": "9"}, {"fill_holes": "yes"}):
        assert c.post(f"/api/job/{jid}/start", json=bad).status_code == 400, bad
    r = c.post(f"/api/job/{jid}/start", json={"min_size": 40, "fill_holes": True})
    assert r.status_code == 200, r.data
    assert r.get_json()["request"]["min_size"] == 40
    run_runner("segment", Settings(data_dir=store.data_dir, poll_interval=0.05, chunk_size=32,
                                   workers=1), once=True)
    record = store.get(jid)
    assert record["status"] == "segmented", record.get("error")
    segs = SegmentationRegistry(JobPaths(store.job_dir(jid)))
    seg = record["segmentation_id"]
    assert segs.meta(seg)["cleanup"] == {"min_size": 40, "fill_holes": True}
    described = segs.describe(seg)
    assert described["cleanup"] == {"min_size": 40, "fill_holes": True}
    assert described["name"].startswith("Segmentation 1 · ")
    from ml4paleo.formats import open_image

    labels = np.asarray(open_image(segs.paths.labels(seg)).array[:])
    from scipy import ndimage

    for k in np.unique(labels):
        if k == 0:
            continue
        cc, n = ndimage.label(labels == k)
        sizes = np.bincount(cc.ravel())[1:]
        border = np.zeros(labels.shape, bool)
        border[[0, -1]] = True
        border[:, [0, -1]] = True
        border[:, :, [0, -1]] = True
        touching = set(np.unique(cc[border & (cc > 0)]))
        small = [i + 1 for i, s in enumerate(sizes) if s < 40 and i + 1 not in touching]
        assert not small, (k, small)  # no island below 40 voxels survived (away from edges)
