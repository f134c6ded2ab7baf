"""ml4paleo.formats: OME-Zarr creation, NGFF metadata and its validation, pyramid, slice reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml4paleo import formats
from ml4paleo.formats import (
    Axis,
    ChunkFiles,
    Dataset,
    ImageLabel,
    Multiscale,
    NGFFError,
    validate_attrs,
)


def test_create_write_reopen_with_ngff_metadata(tmp_path):
    path = tmp_path / "img.ome.zarr"
    img = formats.create_image(
        path, (70, 90, 130), "uint16", chunks=32, voxel_size=(2.0, 0.5, 0.5), unit="micrometer"
    )
    data = np.random.default_rng(1).integers(0, 65535, size=(70, 90, 130), dtype=np.uint16)
    img.array[:] = data
    formats.build_pyramid(img)

    again = formats.open_image(path)
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
    validate_attrs(attrs)  # what was written is valid NGFF
    assert Multiscale.from_dict(ms).datasets[2].scale == (8.0, 2.0, 2.0)
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2
    assert zarray["compressor"]["id"] == "blosc" and zarray["compressor"]["cname"] == "zstd"
    # every level is the 2x2x2 mean of the level above (edges repeated)
    for i in (1, 2):
        above = np.asarray(again.level(i - 1)[:])
        np.testing.assert_array_equal(again.level(i)[:], formats.downsample2(above, label=False))


def test_label_pyramid_keeps_label_values(tmp_path):
    labels = np.zeros((130, 40, 40), dtype=np.uint8)
    labels[10:90, 5:30, 5:30] = 3
    img = formats.create_image(tmp_path / "l.ome.zarr", labels.shape, "uint8", chunks=32,
                               label=True)
    img.array[:] = labels
    formats.build_pyramid(img)
    small = formats.open_image(tmp_path / "l.ome.zarr").level(1)[:]
    np.testing.assert_array_equal(small, labels[::2, ::2, ::2])
    assert "image-label" in img.attrs and img.is_label
    # all-zero chunks are not written (as zarr does), and read back as zeros
    level1 = tmp_path / "l.ome.zarr" / "1"
    assert (level1 / "0" / "0" / "0").is_file() and not (level1 / "2" / "0" / "0").exists()


def test_pyramid_is_the_same_on_every_executor_and_for_odd_chunks(tmp_path):
    data = np.random.default_rng(4).integers(0, 4000, size=(45, 70, 66), dtype=np.uint16)
    results = []
    runs = [("serial", 16, None), ("processes", 16, None), ("threads", 15, None),
            ("threads", 16, 5)]  # odd chunks / slabs of 5: read and written through zarr
    for i, (executor, chunks, slab) in enumerate(runs):
        img = formats.create_image(tmp_path / f"{i}.ome.zarr", data.shape, np.uint16,
                                   chunks=chunks)
        img.array[:] = data
        formats.build_pyramid(img, executor=executor, workers=2, slab=slab)
        results.append([np.asarray(img.level(k)[:]) for k in range(len(img.levels))])
    for levels in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], levels, strict=True))
    np.testing.assert_array_equal(results[0][1], formats.downsample2(data, label=False))


def test_read_slice_all_axes(tmp_path):
    data = np.arange(8 * 9 * 10, dtype=np.int32).reshape(8, 9, 10)
    img = formats.create_image(tmp_path / "s.ome.zarr", data.shape, data.dtype, chunks=4,
                               pyramid=False)
    img.array[:] = data
    np.testing.assert_array_equal(formats.read_slice(img, 0, 3), data[3])
    np.testing.assert_array_equal(formats.read_slice(img, 1, 4), data[:, 4])
    np.testing.assert_array_equal(formats.read_slice(img, 2, 9), data[:, :, 9])
    with pytest.raises(IndexError):
        formats.read_slice(img, 0, 8)
    with pytest.raises(ValueError):
        formats.read_slice(img, 3, 0)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        formats.open_image(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="voxel_size"):
        formats.create_image(tmp_path / "bad.zarr", (2, 2, 2), "uint8", voxel_size=(1, 0, 1))
    with pytest.raises(ValueError, match="chunks"):
        formats.create_image(tmp_path / "bad.zarr", (2, 2, 2), "uint8", chunks=(4, 0, 4))
    assert not (tmp_path / "bad.zarr").exists()


def test_chunk_files_write_what_zarr_writes(tmp_path):
    data = np.random.default_rng(2).integers(0, 60000, size=(20, 30, 25), dtype=np.uint16)
    by_zarr = formats.create_image(tmp_path / "a.zarr", data.shape, np.uint16, chunks=8,
                                   pyramid=False)
    by_zarr.array[:] = data
    direct = formats.create_image(tmp_path / "b.zarr", data.shape, np.uint16, chunks=8,
                                  pyramid=False)
    files = ChunkFiles(direct.path / "0")
    files.write_region(data, (0, 0, 0))
    for chunk in (by_zarr.path / "0").rglob("*"):
        if chunk.is_file() and not chunk.name.startswith("."):
            twin = direct.path / "0" / chunk.relative_to(by_zarr.path / "0")
            assert twin.read_bytes() == chunk.read_bytes(), chunk
    np.testing.assert_array_equal(formats.open_image(direct.path).array[:], data)
    np.testing.assert_array_equal(files.read_chunk((2, 3, 3))[:4, :6, :1], data[16:, 24:, 24:])
    with pytest.raises(ValueError, match="not aligned"):
        files.write_region(data[:4], (3, 0, 0))


def test_ngff_classes_refuse_invalid_metadata_with_the_field_named():
    good = Multiscale.pyramid(3, (2.0, 1.0, 1.0), "micrometer", "scan")
    assert good.to_dict() == {
        "version": "0.4", "name": "scan",
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [2.0 * 2**i, 2.0**i, 2.0**i]}]} for i in range(3)],
        "type": "mean",
    }
    space = tuple(Axis(a) for a in "zyx")
    cases = {
        "scale has 2 values for 3 axes": Multiscale(space, (Dataset("0", (1.0, 1.0)),)),
        "positive finite": Multiscale(space, (Dataset("0", (1.0, float("nan"), 1.0)),)),
        "2 or 3 space axes": Multiscale((Axis("c", "channel"), Axis("x")), (Dataset("0", (1, 1)),)),
        "ordered time, channel, space": Multiscale(
            (Axis("z"), Axis("t", "time"), Axis("y"), Axis("x")), (Dataset("0", (1,) * 4),)),
        "unique": Multiscale((Axis("x"), Axis("x"), Axis("y")), (Dataset("0", (1,) * 3),)),
        "at least one dataset": Multiscale(space, ()),
        "dataset paths must be unique": Multiscale(space, (Dataset("0", (1,) * 3),) * 2),
        "version must be '0.4'": Multiscale(space, (Dataset("0", (1,) * 3),), version="0.5"),
    }
    for message, ms in cases.items():
        with pytest.raises(NGFFError, match=message):
            ms.validate()
    with pytest.raises(NGFFError, match=r"multiscales\[0\].datasets\[0\]: coordinateTransformations"):
        validate_attrs({"multiscales": [{"version": "0.4", "axes": ["z", "y", "x"], "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "translation"}]}]}]})
    with pytest.raises(NGFFError, match="rgba"):
        ImageLabel(colors=({"label-value": 1, "rgba": [255, 0, 0]},)).validate()
    with pytest.raises(NGFFError, match="label-value 2 appears twice"):
        ImageLabel(colors=({"label-value": 2, "rgba": [1, 2, 3, 4]},) * 2).validate()


def test_label_colours_are_written_and_bad_ones_write_nothing(tmp_path):
    from ml4paleo.classes import class_list, ngff_colors

    colors = tuple(ngff_colors(class_list(["rock", "bone"])))
    img = formats.create_image(tmp_path / "l.ome.zarr", (4, 4, 4), np.uint8, label=True,
                               label_metadata=ImageLabel(colors=colors))
    assert img.attrs["image-label"]["colors"][1]["label-value"] == 1
    with pytest.raises(NGFFError, match="rgba"):
        formats.create_image(tmp_path / "bad.ome.zarr", (4, 4, 4), np.uint8, label=True,
                             label_metadata=ImageLabel(colors=({"label-value": 1, "rgba": [300, 0, 0, 0]},)))
    assert not (tmp_path / "bad.ome.zarr").exists()
