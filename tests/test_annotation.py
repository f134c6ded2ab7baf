"""Library side of the annotation studio (ml4paleo.annotate): masks, polygons, cut-outs,
overlays, session LRU, the per-job annotator."""

from __future__ import annotations

import base64
import io
import json
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from ml4paleo.annotate import (
    AnnotationError,
    SessionPool,
    apply_window,
    class_overlay,
    cutout_region,
    decode_data_url,
    decode_label_mask,
    display_window,
    encode_rle,
    filmstrip,
    filmstrip_slice,
    label_overlay,
    legacy_mask_to_labels,
    parse_axis,
    plane_shape,
    random_cutout,
    rasterize_polygons,
    read_cutout,
    sample_metadata_for_z,
    thumbnail,
    uncertainty_from_probabilities,
    uncertainty_overlay,
    validate_sample_metadata,
    zinfo_header,
)
from ml4paleo.classes import ClassError, validate_classes


def _png_data_url(arr: np.ndarray, mode: str | None = None) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_rle_round_trip_and_shape_check():
    rng = np.random.default_rng(0)
    labels = (rng.random((37, 53)) > 0.7).astype(np.uint8) * rng.integers(1, 4, (37, 53)).astype(np.uint8)
    enc = encode_rle(labels)
    assert enc["shape"] == [37, 53]
    assert sum(enc["data"][1::2]) == labels.size
    np.testing.assert_array_equal(decode_label_mask(enc, (37, 53), n_classes=3), labels)
    # base64 uint32 pairs are accepted as well
    pairs = np.asarray(enc["data"], dtype="<u4").tobytes()
    enc64 = {"encoding": "rle", "shape": [37, 53], "data": base64.b64encode(pairs).decode()}
    np.testing.assert_array_equal(decode_label_mask(enc64), labels)
    with pytest.raises(AnnotationError, match="expected 40 x 53"):
        decode_label_mask(enc, (40, 53))
    with pytest.raises(AnnotationError, match="only 2 classes"):
        decode_label_mask(enc, n_classes=2)


def test_raw_and_zlib_masks():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    raw = {"encoding": "raw", "shape": [3, 4], "data": base64.b64encode(labels.tobytes()).decode()}
    z = {"encoding": "zlib", "shape": [3, 4],
         "data": base64.b64encode(zlib.compress(labels.tobytes())).decode()}
    np.testing.assert_array_equal(decode_label_mask(raw), labels)
    np.testing.assert_array_equal(decode_label_mask(z), labels)
    bomb = {"encoding": "zlib", "shape": [3, 4], "data": base64.b64encode(zlib.compress(b"\0" * 10**6)).decode()}
    with pytest.raises(AnnotationError, match="expected 12"):
        decode_label_mask(bomb)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"encoding": "rle", "shape": [2, 2], "data": [1, 3]}, "cover 3 pixels"),
        ({"encoding": "rle", "shape": [2, 2], "data": [300, 4]}, "0..255"),
        ({"encoding": "rle", "shape": [2, 2], "data": [1, -1, 1, 5]}, "non-negative"),
        ({"encoding": "rle", "shape": [2, 2], "data": [1, 2, 3]}, "pairs"),
        ({"encoding": "rle", "shape": [2, 2], "data": "not base64!"}, "base64"),
        ({"encoding": "rle", "shape": [2, 2], "data": [["x"], 4]}, "integers"),
        ({"encoding": "rle", "shape": [0, 2], "data": []}, "positive"),
        ({"encoding": "rle", "shape": [True, 2], "data": []}, "positive"),
        ({"encoding": "rle", "shape": [100000, 100000], "data": []}, "too large"),
        ({"encoding": "gif", "shape": [2, 2], "data": ""}, "unknown mask encoding"),
        ({"encoding": "raw", "shape": [2, 2], "data": base64.b64encode(b"abc").decode()}, "3 bytes"),
        ({"encoding": "zlib", "shape": [2, 2], "data": base64.b64encode(b"abcd").decode()}, "zlib"),
        (42, "PNG data URL"),
        ("data:image/png;base64,AAAA", "not a readable image"),
        ("data:text/plain,hello", "not a base64 data URL"),
    ],
)
def test_hostile_masks_are_refused(payload, message):
    with pytest.raises(AnnotationError, match=message):
        decode_label_mask(payload)


def test_png_masks_grey_and_coloured():
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_label_mask(_png_data_url(labels)), labels)
    # coloured RGBA mask: nearest class colour where alpha > 0
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 1] = (250, 120, 20, 255)  # orange ~ class 1
    rgba[1, 2] = (60, 130, 240, 255)  # blue ~ class 0
    out = decode_label_mask(_png_data_url(rgba), colors=["#3b82f6", "#f97316"])
    assert out.tolist() == [[0, 2, 0], [0, 0, 1]]
    with pytest.raises(AnnotationError, match="class colours"):
        decode_label_mask(_png_data_url(rgba))


def test_data_url_and_legacy_mask():
    assert decode_data_url("data:image/png;base64,aGVsbG8=") == b"hello"
    assert decode_data_url("aGVsbG8") == b"hello"  # bare base64, padding optional
    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[1:3, 1:3] = (255, 0, 0, 255)
    labels = legacy_mask_to_labels(mask)
    assert labels.sum() == 16 + 4  # background 1 everywhere, painted 2 in 4 pixels
    assert labels[1, 1] == 2 and labels[0, 0] == 1


def test_rasterize_polygons_scales_and_cuts_holes():
    square = [[2, 2], [18, 2], [18, 18], [2, 18]]
    hole = [{"x": 8, "y": 8}, {"x": 12, "y": 8}, {"x": 12, "y": 12}, {"x": 8, "y": 12}]
    m = rasterize_polygons((10, 10), [square], [hole], source_size_xy=(20, 20))
    assert m[5, 2] and m[2, 5] and not m[0, 0]
    assert not m[5, 5]  # the hole
    # junk points are skipped, short polygons ignored
    m2 = rasterize_polygons((10, 10), [[[1, 1], ["a", 2], [float("nan"), 3]], "junk"], [])
    assert not m2.any()
    with pytest.raises(AnnotationError):
        rasterize_polygons((10, 10), [square], [], source_size_xy=(0, 5))
    with pytest.raises(AnnotationError):
        rasterize_polygons((10, 10), "not a list", [])


def test_cutout_metadata_and_filmstrip():
    vol = np.arange(20 * 30 * 40, dtype=np.uint16).reshape(20, 30, 40)
    meta = random_cutout(vol.shape, (11, 512, 512), np.random.default_rng(3))
    assert meta["cutout_shape_xyz"] == [40, 30, 11]
    assert meta["requested_shape_xyz"] == [512, 512, 11]
    assert meta["padding_before_xyz"][:2] == [236, 241]
    assert meta["annotated_local_z_index"] == 5
    block = read_cutout(vol, meta)
    assert block.shape == (11, 512, 512)
    z, vy, vx, my, mx = cutout_region(meta)
    np.testing.assert_array_equal(block[5][my, mx], vol[z][vy, vx])
    strip = filmstrip(apply_window(block, 0, 24000))
    assert strip.shape == (11 * 512, 512)
    np.testing.assert_array_equal(filmstrip_slice(strip, 11, 5), strip[5 * 512 : 6 * 512])
    header = json.loads(zinfo_header(meta, display_window(block)))
    assert header["zInfo"] == {"min": 0, "max": 10, "current": 5}
    assert set(header["intensityWindow"]) == {"source_min", "source_max", "window_min", "window_max"}
    assert header["sampleMetadata"]["annotated_global_z_index"] == z


def test_cutout_padding_in_z_and_validation():
    meta = random_cutout((4, 8, 8), (11, 16, 16))
    assert meta["padding_before_xyz"][2] == 3
    assert sample_metadata_for_z(meta, 0)["annotated_global_z_index"] is None
    assert sample_metadata_for_z(meta, 3)["annotated_global_z_index"] == 0
    assert sample_metadata_for_z(meta, 99)["annotated_local_z_index"] == 10
    with pytest.raises(AnnotationError, match="padding"):
        cutout_region(sample_metadata_for_z(meta, 0))
    clean = validate_sample_metadata(meta, (4, 8, 8))
    assert clean["annotated_local_z_index"] == meta["annotated_local_z_index"]
    bad = dict(meta, cutout_origin_xyz=[5, 0, 0])
    with pytest.raises(AnnotationError, match="outside the volume"):
        validate_sample_metadata(bad, (4, 8, 8))
    for junk in ([1e400, 0, 0], ["a", 0, 0], [0, 0], [True, 0, 0], [-1, 0, 0]):
        with pytest.raises(AnnotationError):
            validate_sample_metadata(dict(meta, cutout_origin_xyz=junk), (4, 8, 8))
    with pytest.raises(AnnotationError):
        validate_sample_metadata("nope", (4, 8, 8))


def test_window_and_overlays():
    values = np.concatenate([np.zeros(1000), np.linspace(100, 200, 1000)])
    w = display_window(values)
    assert w["source_min"] == 0 and w["source_max"] == 200
    assert 100 <= w["window_min"] < 102 and 199 <= w["window_max"] <= 200
    assert apply_window(np.array([50, 150, 250]), 100, 200).tolist() == [0, 128, 255]
    ov = class_overlay(np.array([[0, 1, 2]]), ["#000000", "#ff0000", "#00ff00"], alpha=100)
    assert ov[0, 0, 3] == 0 and ov[0, 1].tolist() == [255, 0, 0, 100] and ov[0, 2, 1] == 255
    lo = label_overlay(np.array([[0, 1, 2]]), ["#0000ff", "#ff0000"])
    assert lo[0, 0, 3] == 0 and lo[0, 1, 2] == 255 and lo[0, 2, 0] == 255
    probs = np.stack([np.array([[0.5, 1.0]]), np.array([[0.5, 0.0]])]).astype(np.float32)
    u = uncertainty_from_probabilities(probs)
    assert u.tolist() == [[1.0, 0.0]]
    uo = uncertainty_overlay(u)
    assert uo[0, 0, 3] > 150 and uo[0, 1, 3] == 0
    th = thumbnail(np.zeros((400, 200), np.uint8), np.ones((400, 200), np.uint8), ["#ff0000"], 100)
    assert th.shape == (100, 50, 3) and th[..., 0].mean() > 100


def test_classes_axes():
    # the annotator's rule is ml4paleo.classes' with at least two classes
    out = validate_classes([{"name": " bg ", "color": "#ABCDEF"}, {"name": "bone"}], min_count=2)
    assert out == [{"name": "bg", "color": "#abcdef"}, {"name": "bone", "color": "#f97316"}]
    for bad in ([{"name": "a"}], [{"name": "a"}, {"name": "A"}], [{"name": ""}, {"name": "b"}],
                [{"name": "a", "color": "red"}, {"name": "b"}], "x", [1, 2]):
        with pytest.raises(ClassError):
            validate_classes(bad, min_count=2)
    assert [parse_axis(a) for a in ("z", "Y", 2, "1")] == [0, 1, 2, 1]
    with pytest.raises(AnnotationError):
        parse_axis("w")
    assert plane_shape((5, 6, 7), 0) == (6, 7) and plane_shape((5, 6, 7), 2) == (5, 6)


def test_session_pool_lru_and_one_build_per_key():
    pool = SessionPool(max_size=2)
    builds = []

    def factory(key):
        def make():
            builds.append(key)
            return object()
        return make

    a = pool.get("a", factory("a"))
    pool.get("b", factory("b"))
    assert pool.get("a", factory("a")) is a
    pool.get("c", factory("c"))  # evicts b (least recently used)
    assert "b" not in pool and "a" in pool and len(pool) == 2
    # concurrent first use builds once
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.get("d", factory("d"))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds.count("d") == 1 and len({id(r) for r in results}) == 1
    pool.drop("d")
    assert "d" not in pool
