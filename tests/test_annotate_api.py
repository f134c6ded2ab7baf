"""Annotate blueprint through the Flask test client: every route, hostile input, old payloads."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ml4paleo.annotate import apply_window, decode_label_mask, encode_rle
from ml4paleo.formats import build_pyramid, create_image
from ml4paleo.phantom import make_phantom
from webapp import create_app

SHAPE = (24, 64, 64)


def _make_job(store, image, name="fossil", status="converted"):
    rec = store.create(name, "image_stack")
    jid = rec["id"]
    img = create_image(store.job_dir(jid) / "image.ome.zarr", image.shape, image.dtype, chunks=32)
    img.array[...] = image
    build_pyramid(img)
    store.update(jid, lambda r: r.update(status=status))
    return jid


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=2)


@pytest.fixture
def env(tmp_path, phantom):
    image, truth = phantom
    app = create_app(data_dir=tmp_path)
    store = app.extensions["ml4paleo_store"]
    jid = _make_job(store, image)
    return SimpleNamespace(app=app, c=app.test_client(), store=store, jid=jid, image=image,
                           truth=truth)


def _strokes(truth2d: np.ndarray) -> np.ndarray:
    """Sparse labels from the truth: every 5th pixel on a few rows (0 = unlabelled)."""
    lab = np.zeros(truth2d.shape, np.uint8)
    rows = np.arange(2, truth2d.shape[0], 6)
    lab[rows, ::3] = np.minimum(truth2d[rows, ::3], 1) + 1  # class 0 = matrix, 1 = bone+dense
    return lab


def _submit(env, index=12, axis="z", labels=None, **extra):
    if labels is None:
        labels = _strokes(env.truth[index])
    body = {"axis": axis, "index": index, "mask": encode_rle(labels), **extra}
    return env.c.post(f"/api/job/{env.jid}/annotate/labels", json=body)


def _png(data_url_or_b64: str) -> np.ndarray:
    text = data_url_or_b64.split(",", 1)[-1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def _data_url(arr, mode=None) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- pages
def test_pages_and_old_urls(env):
    c, jid = env.c, env.jid
    r = c.get(f"/job/{jid}/annotate")
    assert r.status_code == 200 and b"annotate.js" in r.data and b"Keyboard shortcuts" in r.data
    for old in (f"/job/annotate/{jid}", f"/job/annotate-v2/{jid}"):
        r = c.get(old)
        assert r.status_code == 301 and r.headers["Location"].endswith(f"/job/{jid}/annotate")
    assert c.get(f"/job/{jid}/annotations").status_code == 200
    assert b"annotate_pages.js" in c.get(f"/job/{jid}/models").data
    for url in ("/job/nope/annotate", "/job/annotate/nope", "/job/%2E%2E/annotations",
                "/job/nope/models"):
        assert c.get(url).status_code == 404


def test_annotation_file_is_confined_to_the_job(env):
    c, jid = env.c, env.jid
    assert _submit(env, preview=False).status_code == 200
    folder = env.store.job_dir(jid) / "annotations"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    rel = files[0].relative_to(folder).as_posix()
    r = c.get(f"/job/{jid}/annotations/{rel}")
    assert r.status_code == 200 and r.data == files[0].read_bytes()
    for bad in ("../job.json", "..%2Fjob.json", "%2E%2E/job.json", "/etc/passwd", "nope.png"):
        assert c.get(f"/job/{jid}/annotations/{bad}", follow_redirects=True).status_code == 404


# ----------------------------------------------------------------------------- new API
def test_info_and_slices(env):
    c, jid = env.c, env.jid
    info = c.get(f"/api/job/{jid}/annotate/info").get_json()
    assert info["shape"] == list(SHAPE) and info["dtype"] == "uint16"
    assert [k["name"] for k in info["classes"]] == ["background", "structure"]
    assert info["window"]["window_max"] > info["window"]["window_min"]
    r = c.get(f"/api/job/{jid}/annotate/slice?axis=z&index=10&format=raw")
    assert r.headers["X-Shape"] == "64,64" and r.headers["X-Dtype"] == "uint16"
    np.testing.assert_array_equal(np.frombuffer(r.data, "<u2").reshape(64, 64), env.image[10])
    r = c.get(f"/api/job/{jid}/annotate/slice?axis=y&index=5&format=raw")
    np.testing.assert_array_equal(np.frombuffer(r.data, "<u2").reshape(24, 64), env.image[:, 5])
    r = c.get(f"/api/job/{jid}/annotate/slice?axis=x&index=7&wmin=1000&wmax=3000")
    assert r.mimetype == "image/png"
    np.testing.assert_array_equal(_png(base64.b64encode(r.data).decode()),
                                  apply_window(env.image[:, :, 7], 1000, 3000))
    for q in ("axis=w&index=1", "axis=z&index=-1", "axis=z&index=abc",
              "axis=z", "axis=z&index=1&format=gif", "axis=z&index=1&wmin=a"):
        r = c.get(f"/api/job/{jid}/annotate/slice?{q}")
        assert r.status_code == 400, q
        assert "error" in r.get_json()
    # a plane the image does not have does not exist (as for the image's slices)
    for route in ("slice", "labels", "predict", "predict.png", "thumbnail"):
        r = c.get(f"/api/job/{jid}/annotate/{route}?axis=z&index=24")
        assert r.status_code == 404 and "planes are 0..23" in r.get_json()["error"], route
    assert c.get("/api/job/nope/annotate/info").status_code == 404


def test_submit_labels_preview_and_round_trip(env):
    c, jid = env.c, env.jid
    labels = _strokes(env.truth[12])
    r = _submit(env, labels=labels)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["saved"] == {"axis": "z", "index": 12, "labelled": int((labels > 0).sum())}
    assert body["counts"]["0"] == int((labels == 1).sum())
    assert body["counts"]["1"] == int((labels == 2).sum())
    prev = body["preview"]
    assert prev["model_version"] == 1 and prev["overlay"].startswith("data:image/png;base64,")
    overlay = _png(prev["overlay"])
    assert overlay.shape == (64, 64, 4)
    predicted_fg = overlay[..., 3] > 0  # background class is transparent
    assert (predicted_fg == (env.truth[12] > 0)).mean() > 0.85
    assert _png(prev["uncertainty"]).shape == (64, 64, 4)
    assert set(prev["timing"]) == {"retrain_s", "predict_s", "total_s"}
    # stored labels come back exactly
    got = c.get(f"/api/job/{jid}/annotate/labels?axis=z&index=12").get_json()
    np.testing.assert_array_equal(decode_label_mask(got["labels"]), labels)
    assert env.store.get(jid)["status"] == "annotated"
    info = c.get(f"/api/job/{jid}/annotate/info").get_json()
    assert {"axis": "z", "index": 12} in [{k: a[k] for k in ("axis", "index")} for a in info["annotated"]]
    # a slice along x and a PNG class-index mask work too
    lab_x = np.zeros((24, 64), np.uint8)
    lab_x[4:8, 10:20] = 1
    r = c.post(f"/api/job/{jid}/annotate/labels",
               json={"axis": "x", "index": 30, "mask": _data_url(lab_x), "preview": False})
    assert r.status_code == 200 and "preview" not in r.get_json()
    got = c.get(f"/api/job/{jid}/annotate/labels?axis=x&index=30").get_json()
    np.testing.assert_array_equal(decode_label_mask(got["labels"]), lab_x)
    # replacing a slice with an empty mask erases it
    assert _submit(env, labels=np.zeros((64, 64), np.uint8), preview=False).status_code == 200
    got = c.get(f"/api/job/{jid}/annotate/labels?axis=z&index=12").get_json()
    assert not decode_label_mask(got["labels"]).any()


def test_submit_hostile_input(env):
    c, jid = env.c, env.jid
    url = f"/api/job/{jid}/annotate/labels"
    ok = encode_rle(np.zeros((64, 64), np.uint8))
    cases = [
        ({"axis": "z", "index": 1, "mask": encode_rle(np.zeros((32, 64), np.uint8))}, "expected 64 x 64"),
        ({"axis": "z", "index": 1, "mask": encode_rle(np.full((64, 64), 9, np.uint8))}, "classes"),
        ({"axis": "z", "index": 99, "mask": ok}, "outside"),
        ({"axis": "q", "index": 1, "mask": ok}, "axis"),
        ({"axis": "z", "index": "1; drop", "mask": ok}, "index"),
        ({"axis": "z", "index": True, "mask": ok}, "index"),
        ({"axis": "z", "index": 1}, "mask is required"),
        ({"axis": "z", "index": 1, "mask": "data:image/png;base64,!!!"}, "base64"),
        ({"axis": "z", "index": 1, "mask": {"encoding": "rle", "shape": [64, 64], "data": [1]}}, "pairs"),
    ]
    for body, msg in cases:
        r = c.post(url, json=body)
        assert r.status_code == 400, body
        assert msg in r.get_json()["error"], (msg, r.get_json())
    r = c.post(url, data="{not json", content_type="application/json")
    assert r.status_code == 400
    r = c.post(url, json=[1, 2])
    assert r.status_code == 400
    assert c.post("/api/job/nope/annotate/labels", json={}).status_code == 404


def test_not_converted_job_refuses_annotation(env, phantom):
    jid = env.store.create("raw", "image_stack")["id"]
    r = env.c.get(f"/api/job/{jid}/annotate/info")
    assert r.status_code == 409 and "not converted" in r.get_json()["error"]
    r = env.c.post(f"/api/job/{jid}/annotate/labels", json={"axis": "z", "index": 0, "mask": {}})
    assert r.status_code == 409


def test_delete_predict_uncertainty_suggest(env):
    c, jid = env.c, env.jid
    # without labels: no model, suggestion is the middle
    s = c.get(f"/api/job/{jid}/annotate/suggest?axis=y").get_json()
    assert s == {"axis": "y", "index": 32, "reason": "middle of the volume"}
    p = c.get(f"/api/job/{jid}/annotate/predict?axis=z&index=3").get_json()
    assert p["overlay"] is None and "two classes" in p["message"]
    assert c.get(f"/api/job/{jid}/annotate/predict.png?axis=z&index=3").status_code == 409
    assert _submit(env, index=12, preview=False).status_code == 200
    p = c.get(f"/api/job/{jid}/annotate/predict?axis=y&index=20").get_json()
    assert p["overlay"] and _png(p["overlay"]).shape == (24, 64, 4)
    r = c.get(f"/api/job/{jid}/annotate/uncertainty.png?axis=z&index=3")
    assert r.status_code == 200 and np.asarray(Image.open(io.BytesIO(r.data))).shape == (64, 64, 4)
    r = c.get(f"/api/job/{jid}/annotate/predict.png?axis=z&index=3")
    assert r.status_code == 200
    s = c.get(f"/api/job/{jid}/annotate/suggest?axis=z").get_json()
    assert 0 <= s["index"] < SHAPE[0] and s["axis"] == "z"
    assert c.get(f"/api/job/{jid}/annotate/suggest?axis=t").status_code == 400
    # delete the slice (DELETE with query, POST with JSON)
    r = c.delete(f"/api/job/{jid}/annotate/labels?axis=z&index=12")
    assert r.status_code == 200 and r.get_json()["counts"].get("1", 0) == 0
    got = c.get(f"/api/job/{jid}/annotate/labels?axis=z&index=12").get_json()
    assert not decode_label_mask(got["labels"]).any()
    assert _submit(env, index=5, preview=False).status_code == 200
    r = c.post(f"/api/job/{jid}/annotate/labels/delete", json={"axis": "z", "index": 5})
    assert r.status_code == 200
    assert c.get(f"/api/job/{jid}/annotate/annotations").get_json()["annotations"] == []
    assert c.delete(f"/api/job/{jid}/annotate/labels?axis=z&index=500").status_code == 400


def test_classes_crud_and_gallery(env):
    c, jid = env.c, env.jid
    url = f"/api/job/{jid}/annotate/classes"
    classes = c.get(url).get_json()["classes"]
    classes.append({"name": "dense", "color": "#22c55e"})
    classes[1] = {"name": "bone", "color": "#ff0000"}
    r = c.put(url, json={"classes": classes})
    assert r.status_code == 200
    assert [k["name"] for k in r.get_json()["classes"]] == ["background", "bone", "dense"]
    assert c.get(url).get_json()["classes"][1]["color"] == "#ff0000"
    lab = np.zeros((64, 64), np.uint8)
    lab[:10, :10] = 3
    lab[30:40, 30:40] = 1
    assert _submit(env, index=4, labels=lab, preview=False).status_code == 200
    # dropping the class that holds labels is refused; junk is refused
    r = c.put(url, json={"classes": classes[:2]})
    assert r.status_code == 400 and "still holds labels" in r.get_json()["error"]
    for junk in ({"classes": "x"}, {"classes": [{"name": "a"}]}, {},
                 {"classes": [{"name": "a", "color": "javascript:1"}, {"name": "b"}]}):
        assert c.put(url, json=junk).status_code == 400
    g = c.get(f"/api/job/{jid}/annotate/annotations").get_json()
    assert g["annotations"][0]["axis"] == "z" and g["annotations"][0]["index"] == 4
    assert g["annotations"][0]["counts"] == {"background": 100, "dense": 100}
    r = c.get(g["annotations"][0]["thumbnail"])
    thumb = np.asarray(Image.open(io.BytesIO(r.data)))
    assert r.mimetype == "image/png" and thumb.shape[:2] == (64, 64)
    assert thumb[2, 2, 1] > thumb[2, 2, 0]  # the dense class's green shows
    assert c.get(f"/api/job/{jid}/annotate/thumbnail?axis=z&index=4&size=5").status_code == 400


# ----------------------------------------------------------------------------- original API
def test_legacy_filmstrip_submit_predict(env):
    c, jid = env.c, env.jid
    r = c.get(f"/api/annotate/{jid}/images/next?seed=4")
    assert r.status_code == 200 and r.mimetype == "image/png"
    strip = np.asarray(Image.open(io.BytesIO(r.data)))
    assert strip.shape == (11 * 512, 512) and strip.dtype == np.uint8
    head = json.loads(r.headers["zInfo"])
    assert head["zInfo"] == {"min": 0, "max": 10, "current": 5}
    assert set(head["intensityWindow"]) == {"source_min", "source_max", "window_min", "window_max"}
    meta = head["sampleMetadata"]
    for key in ("cutout_origin_xyz", "cutout_shape_xyz", "requested_shape_xyz",
                "padding_before_xyz", "padding_after_xyz", "annotated_local_z_index",
                "annotated_global_z_index"):
        assert key in meta
    assert meta["cutout_shape_xyz"] == [64, 64, 11] and meta["padding_before_xyz"] == [224, 224, 0]
    z = meta["annotated_global_z_index"]
    # raster submit: a red mask painted where the truth is bone, in the cut-out's 512 frame
    mask = np.zeros((512, 512, 4), np.uint8)
    fg = np.zeros((512, 512), bool)
    fg[224:288, 224:288] = env.truth[z] > 0
    mask[fg] = (255, 0, 0, 255)
    slice_png = _data_url(strip[5 * 512 : 6 * 512])
    body = {"image": slice_png, "mask": _data_url(mask), "sample_metadata": meta,
            "annotated_local_z_index": 5, "intensity_window": head["intensityWindow"]}
    r = c.post(f"/api/annotate/{jid}/data/submit", json=body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    pred = _png(out["prediction"])
    assert pred.shape == (512, 512, 4)
    assert out["saved_samples"][0]["global_z_index"] == z
    assert ((pred[224:288, 224:288, 3] > 0) == (env.truth[z] > 0)).mean() > 0.9
    assert pred[:224, :, 3].max() == 0  # padding stays empty
    stored = decode_label_mask(
        c.get(f"/api/job/{jid}/annotate/labels?axis=z&index={z}").get_json()["labels"])
    np.testing.assert_array_equal(stored, np.where(env.truth[z] > 0, 2, 1))
    # an old client sending only image + mask (no metadata) is placed by the served slice
    body2 = {"image": _data_url(strip[2 * 512 : 3 * 512]), "mask": _data_url(mask),
             "annotated_local_z_index": 2}
    r = c.post(f"/api/annotate/{jid}/data/submit", json=body2)
    assert r.status_code == 200 and r.get_json()["saved_samples"][0]["global_z_index"] == z - 3
    # an image that was never served cannot be placed
    body3 = {"image": _data_url(np.full((512, 512), 7, np.uint8)), "mask": _data_url(mask)}
    r = c.post(f"/api/annotate/{jid}/data/submit", json=body3)
    assert r.status_code == 400 and "sample_metadata" in r.get_json()["error"]
    # predict: by metadata, camelCase, and by an unknown image (null)
    r = c.post(f"/api/annotate/{jid}/data/predict",
               json={"sampleMetadata": meta, "annotatedLocalZIndex": 7})
    p = _png(r.get_json()["prediction"])
    assert ((p[224:288, 224:288, 3] > 0) == (env.truth[meta["cutout_origin_xyz"][2] + 7] > 0)).mean() > 0.8
    r = c.post(f"/api/annotate/{jid}/data/predict", json={"image": body3["image"]})
    assert r.status_code == 200 and r.get_json() == {"prediction": None}


def test_legacy_polygons_and_hostile_payloads(env):
    c, jid = env.c, env.jid
    head = json.loads(c.get(f"/api/annotate/{jid}/images/next?seed=1").headers["zInfo"])
    meta = head["sampleMetadata"]
    square = [[224, 224], [256, 224], [256, 256], [224, 256]]
    hole = [[236, 236], [244, 236], [244, 244], [236, 244]]
    body = {"regionsBySlice": {"3": {"positiveRegions": [square], "negativeRegions": [hole]},
                               "8": {"positive_regions": [square]}, "9": {}},
            "sampleMetadata": meta, "canvasSizeXY": [512, 512]}
    r = c.post(f"/api/annotate/{jid}/data/submit", json=body)
    assert r.status_code == 200, r.get_json()
    saved = r.get_json()["saved_samples"]
    assert [s["slice_index"] for s in saved] == [3, 8]
    z3 = saved[0]["global_z_index"]
    stored = decode_label_mask(
        c.get(f"/api/job/{jid}/annotate/labels?axis=z&index={z3}").get_json()["labels"])
    assert stored[0, 0] == 2 and stored[14, 14] == 1 and stored[40, 40] == 1  # hole, outside
    assert (stored == 2).sum() == 32 * 32 - 8 * 8 or abs(int((stored == 2).sum()) - 960) < 80
    # canvas scaled by 2: the same square drawn on a 1024 canvas
    body = {"regions_by_slice": {"5": {"positive_regions": [[[448, 448], [512, 448], [512, 512], [448, 512]]]}},
            "sample_metadata": meta, "canvas_size_xy": [1024, 1024]}
    r = c.post(f"/api/annotate/{jid}/data/submit", json=body)
    z5 = r.get_json()["saved_samples"][0]["global_z_index"]
    stored = decode_label_mask(
        c.get(f"/api/job/{jid}/annotate/labels?axis=z&index={z5}").get_json()["labels"])
    assert stored[:32, :32].min() == 2 and stored[33:, 33:].max() == 1
    url = f"/api/annotate/{jid}/data/submit"
    bad = [
        {},
        {"image": "data:image/png;base64,AAAA"},
        {"regions_by_slice": {"3": {"positive_regions": [square]}}},  # no metadata, no image
        {"regions_by_slice": {"x": {"positive_regions": [square]}}, "sample_metadata": meta},
        {"regions_by_slice": {"3": "junk"}, "sample_metadata": meta},
        {"regions_by_slice": {"3": {}}, "sample_metadata": meta},
        {"regions_by_slice": {"3": {"positive_regions": [square]}},
         "sample_metadata": dict(meta, cutout_origin_xyz=[1e400, 0, 0])},
        {"regions_by_slice": {"3": {"positive_regions": [square]}},
         "sample_metadata": dict(meta, cutout_origin_xyz=[60, 0, 0])},
        {"regions_by_slice": {"3": {"positive_regions": [square]}}, "sample_metadata": "x"},
        {"image": "data:image/png;base64,AAAA", "mask": "data:image/png;base64,AAAA"},
    ]
    for b in bad:
        r = c.post(url, json=b)
        assert r.status_code == 400, b
        assert "error" in r.get_json()
    assert c.post(f"/api/annotate/{jid}/data/predict", json={}).status_code == 400
    assert c.post("/api/annotate/nope/data/submit", json={}).status_code == 404
    assert c.get("/api/annotate/nope/images/next").status_code == 404


def test_job_actions_follow_the_status_rules(env):
    c, jid, store = env.c, env.jid, env.store
    # nothing annotated yet: no training, no meshing, no retrain
    r = c.post(f"/api/job/{jid}/start")
    assert r.status_code == 409 and "annotat" in r.get_json()["error"]
    r = c.post(f"/api/job/{jid}/mesh")
    assert r.status_code == 409 and "segmentation" in r.get_json()["error"]
    assert c.post(f"/api/job/{jid}/retrain").status_code == 409
    assert _submit(env, preview=False).status_code == 200
    r = c.post(f"/api/job/{jid}/retrain")
    assert r.status_code == 200 and r.get_json()["model_version"] == 1
    assert c.post(f"/api/job/{jid}/segment", json={"train": "yes"}).status_code == 400
    assert c.post(f"/api/job/{jid}/segment", data="[1]", content_type="application/json").status_code == 400
    r = c.post(f"/api/job/{jid}/segment", json={})
    assert r.status_code == 200 and r.get_json()["job_status"] == "training_queued"
    assert store.get(jid)["request"]["train"] is True
    # an annotation while work is queued keeps the queued work
    assert _submit(env, index=6, preview=False).status_code == 200
    rec = store.get(jid)
    assert rec["status"] == "training_queued" and rec["annotations_pending"] is True
    r = c.post(f"/api/job/{jid}/start")
    assert r.status_code == 409 and "busy" in r.get_json()["error"]
    assert c.post(f"/api/job/{jid}/mesh", json={"formats": ["exe"]}).status_code == 400
    r = c.post(f"/api/job/{jid}/mesh", json={"smooth": "wobbly"})
    assert r.status_code == 400 and "smooth must be one of none, light, strong" in r.get_json()["error"]
    assert c.post("/api/job/nope/start").status_code == 404


def test_models_save_choose_download_import(env, phantom):
    c, jid, store = env.c, env.jid, env.store
    assert c.post(f"/api/job/{jid}/models/save-preview").status_code == 409
    assert _submit(env, preview=False).status_code == 200
    r = c.post(f"/api/job/{jid}/models/save-preview")
    assert r.status_code == 201
    mid = r.get_json()["model_id"]
    assert mid in store.get(jid)["models"]
    models = c.get(f"/api/job/{jid}/models").get_json()
    assert [m["id"] for m in models["models"]] == [mid] and models["chosen"] is None
    meta = c.get(f"/api/job/{jid}/models/{mid}/download/json").get_json()
    assert meta["source"]["kind"] == "preview" and meta["classes"]
    r = c.get(f"/api/job/{jid}/models/{mid}/download")
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        names = zf.namelist()
    assert f"{mid}/meta.json" in names and not any(n.endswith((".pkl", ".pickle")) for n in names)
    assert c.post(f"/api/job/{jid}/models/{mid}/migrate").get_json()["metadata_file"] == "meta.json"
    r = c.post(f"/api/job/{jid}/models/{mid}/choose")
    assert r.get_json()["chosen"] == mid and store.get(jid)["model_id"] == mid
    # new labels drop the choice (the next segmentation trains on them) ...
    assert _submit(env, index=3, preview=False).status_code == 200
    assert c.get(f"/api/job/{jid}/models").get_json()["chosen"] is None
    assert c.post(f"/api/job/{jid}/models/{mid}/choose").status_code == 200
    # segmenting now uses the chosen model without retraining
    r = c.post(f"/api/job/{jid}/segment", json={})
    assert r.status_code == 200 and r.get_json()["request"] == {
        "kind": "segment", "train": False, "segment": True, "model_id": mid, "min_size": 0,
        "fill_holes": False}
    # reuse in another job
    other = _make_job(store, phantom[0], name="second")
    r = c.post(f"/api/job/{other}/models/import", json={"source_job_id": jid, "model_id": mid})
    assert r.status_code == 201
    new = r.get_json()["model_id"]
    listed = c.get(f"/api/job/{other}/models").get_json()["models"]
    assert listed[0]["id"] == new and listed[0]["source"] == {"kind": "import", "job_id": jid, "model_id": mid}
    # an untrusted "model" (a pickle, garbage) is refused
    evil = store.job_dir(jid) / "models" / "evil"
    evil.mkdir()
    (evil / "model.pkl").write_bytes(b"\x80\x04cos\nsystem\n")
    (evil / "meta.json").write_text("{}")
    r = c.post(f"/api/job/{other}/models/import", json={"source_job_id": jid, "model_id": "evil"})
    assert r.status_code == 400 and "cannot be loaded" in r.get_json()["error"]
    for body in ({"source_job_id": "../x", "model_id": mid}, {"source_job_id": jid, "model_id": "../x"},
                 {"source_job_id": jid}, {}):
        assert c.post(f"/api/job/{other}/models/import", json=body).status_code in (400, 404)
    for url in (f"/api/job/{jid}/models/..%2Fjob.json/download", f"/api/job/{jid}/models/nope/download",
                f"/api/job/{jid}/models/nope/download/json"):
        assert c.get(url).status_code == 404
    assert c.post(f"/api/job/{jid}/models/nope/choose").status_code == 404


def test_opening_a_plane_prefetches_its_features(env):
    c, jid = env.c, env.jid
    assert c.get(f"/api/job/{jid}/annotate/labels?axis=y&index=9").status_code == 200
    ann = env.app.extensions["ml4paleo_annotators"].peek(jid)
    fut = ann._prefetch[(1, 9)]
    fut.result(timeout=60)
    session = ann.session
    level = session.coarse_level(1)  # a 24 x 64 plane: full resolution is coarse enough
    assert level == 0 and session.grid(1, level).shape == (24, 64)
    key = (session.owner, "tile", 1, 9, level, 0, 0)
    feats = session.cache.get(key)
    assert feats is not None and feats.shape[1:] == (24, 64)
    # cached: the submit will not recompute
    assert session.tile_features(1, 9, level, 0, 0) is feats
    assert c.get(f"/api/job/{jid}/annotate/labels?axis=y&index=10&prefetch=0").status_code == 200
    assert (1, 10) not in ann._prefetch


def test_non_integer_numbers_in_queries_and_bodies_are_400(env):
    """JSON Infinity / 1e400 / 1.5 indices, 5000-digit and non-ASCII digit strings."""
    c, jid = env.c, env.jid
    ok = encode_rle(np.zeros((64, 64), np.uint8))
    url = f"/api/job/{jid}/annotate/labels"
    for raw in ("Infinity", "-Infinity", "NaN", "1e400", "1.5"):
        body = f'{{"axis": "z", "index": {raw}, "mask": {json.dumps(ok)}}}'
        for method, target in (("POST", url), ("DELETE", url), ("POST", url + "/delete")):
            r = c.open(target, method=method, data=body, content_type="application/json")
            assert r.status_code == 400, (method, target, raw, r.data[:200])
            assert "index" in r.get_json()["error"]
    assert c.post(url, json={"axis": "z", "index": 2.0, "mask": ok}).status_code == 200
    for size in ("9" * 5000, "\u00b2\u00b2", "99999"):
        r = c.get(f"/api/job/{jid}/annotate/thumbnail", query_string={"index": 2, "size": size})
        assert r.status_code == 400 and "size" in r.get_json()["error"]
    r = c.get(f"/api/annotate/{jid}/images/next", query_string={"seed": "9" * 5000})
    assert r.status_code == 200 and r.mimetype == "image/png"


# ----------------------------------------------------------------------------- one submit()
def test_a_stroke_reads_classes_json_no_more(env, monkeypatch):
    """The stroke path used to read classes.json 12 times per stroke; now it is read once
    and kept while the file is unchanged (renaming a class is seen at once)."""
    import builtins
    import io as io_mod

    assert _submit(env, index=12).status_code == 200  # opens the annotator, reads once
    reads = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith("classes.json"):
            reads.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io_mod, "open", counting_open)
    for z in (12, 13):
        r = _submit(env, index=z)
        assert r.status_code == 200 and r.get_json()["preview"]["overlay"]
    assert reads == []
    url = f"/api/job/{env.jid}/annotate/classes"
    classes = env.c.get(url).get_json()["classes"]
    classes[1]["name"] = "bone"
    assert env.c.put(url, json={"classes": classes}).status_code == 200
    r = _submit(env, index=14)
    assert list(r.get_json()["preview"]["fractions"]) == ["background", "bone"]
    assert reads == []  # written by this process: the cache holds the new list already


def test_info_and_classes_carry_the_palette(env):
    from ml4paleo.classes import PALETTE

    info = env.c.get(f"/api/job/{env.jid}/annotate/info").get_json()
    assert info["palette"] == list(PALETTE) and info["status"] == "converted"
    url = f"/api/job/{env.jid}/annotate/classes"
    got = env.c.get(url).get_json()
    assert got["palette"] == list(PALETTE)
    # a class added without a colour gets the palette colour of its index
    r = env.c.put(url, json={"classes": got["classes"] + [{"name": "dense"}]})
    assert r.get_json()["classes"][2]["color"] == PALETTE[2] and r.get_json()["palette"]


def test_submit_records_the_annotation_only_after_the_write(env, monkeypatch):
    from ml4paleo.annotate import AnnotationConflict, JobAnnotator

    ann = JobAnnotator(env.store.job_dir(env.jid), store=env.store)
    labels = _strokes(env.truth[12])
    before = env.store.get(env.jid)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ann.labels, "write_slice", broken)
    with pytest.raises(OSError, match="disk full"):
        ann.submit(0, 12, encode_rle(labels))
    after = env.store.get(env.jid)
    assert after["status"] == "converted" and after["version"] == before["version"]
    assert "annotations_pending" not in after or not after["annotations_pending"]
    monkeypatch.undo()
    # a job that cannot take annotations now: refused before anything is written
    env.store.update(env.jid, lambda r: r.update(status="converting"))
    with pytest.raises(AnnotationConflict, match="converted image"):
        ann.submit(0, 12, encode_rle(labels))
    assert not ann.read_labels(0, 12).any()
    r = _submit(env, index=12)
    assert r.status_code == 409 and "converted image" in r.get_json()["error"]
    env.store.update(env.jid, lambda r: r.update(status="converted"))
    out = ann.submit(0, 12, encode_rle(labels))
    assert out["saved"]["labelled"] == int((labels > 0).sum()) and out["preview"]["overlay"]
    rec = env.store.get(env.jid)
    assert rec["status"] == "annotated" and rec["annotations_pending"] is True
    np.testing.assert_array_equal(ann.read_labels(0, 12), labels)
