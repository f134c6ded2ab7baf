"""OME-Zarr creation, metadata, pyramid and slice reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml4paleo import omezarr


def test_create_write_reopen_with_ngff_metadata(tmp_path):
    path = tmp_path / "img.ome.zarr"
    img = omezarr.create_image(
        path, (70, 90, 130), "uint16", chunks=32, voxel_size=(2.0, 0.5, 0.5), unit="micrometer"
    )
    data = np.random.default_rng(1).integers(0, 65535, size=(70, 90, 130), dtype=np.uint16)
    img.array[:] = data
    omezarr.build_pyramid(img)

    again = omezarr.open_image(path)
    np.testing.assert_array_equal(again.array[:], data)
    assert again.dtype == np.uint16
    assert again.voxel_size == (2.0, 0.5, 0.5) and again.unit == "micrometer"
    assert [again.level(i).shape for i in range(len(again.levels))] == [
        (70, 90, 130),
        (35, 45, 65),
        (18, 23, 33),
    ]
    assert again.level_scale(1) == (4.0, 1.0, 1.0)
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "zstd"
    # level 1 is the 2x2x2 mean of level 0
    expected = data[:2, :2, :2].astype(np.float64).mean()
    assert abs(int(again.level(1)[0, 0, 0]) - expected) <= 0.5


def test_label_pyramid_keeps_label_values(tmp_path):
    labels = np.zeros((130, 40, 40), dtype=np.uint8)
    labels[10:90, 5:30, 5:30] = 3
    img = omezarr.create_image(tmp_path / "l.ome.zarr", labels.shape, "uint8", chunks=32, label=True)
    img.array[:] = labels
    omezarr.build_pyramid(img)
    small = omezarr.open_image(tmp_path / "l.ome.zarr").level(1)[:]
    assert set(np.unique(small)) == {0, 3}
    assert "image-label" in img.attrs


def test_read_slice_all_axes(tmp_path):
    data = np.arange(8 * 9 * 10, dtype=np.int32).reshape(8, 9, 10)
    img = omezarr.create_image(tmp_path / "s.ome.zarr", data.shape, data.dtype, chunks=4, pyramid=False)
    img.array[:] = data
    np.testing.assert_array_equal(omezarr.read_slice(img, 0, 3), data[3])
    np.testing.assert_array_equal(omezarr.read_slice(img, 1, 4), data[:, 4])
    np.testing.assert_array_equal(omezarr.read_slice(img, 2, 9), data[:, :, 9])
    with pytest.raises(IndexError):
        omezarr.read_slice(img, 0, 8)
    with pytest.raises(ValueError):
        omezarr.read_slice(img, 3, 0)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        omezarr.open_image(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="voxel_size"):
        omezarr.create_image(tmp_path / "bad.zarr", (2, 2, 2), "uint8", voxel_size=(1, 0, 1))


def test_write_json_atomic_leaves_no_temp(tmp_path):
    target = tmp_path / "x.json"
    omezarr.write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
