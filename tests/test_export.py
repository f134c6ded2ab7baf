"""Exports: unzip / reload every kind and compare with the source arrays; streaming + cache."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import imagecodecs
import nibabel as nib
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from ml4paleo import export as export_mod
from ml4paleo.export import export, stream_export, to_uint8
from ml4paleo.export import volumes as export_volumes
from ml4paleo.formats import build_pyramid, create_image, open_image
from ml4paleo.meshing import label_stats, mesh

SHAPE = (12, 40, 52)
VOXEL = (2.0, 0.75, 0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-src")
    rng = np.random.default_rng(7)
    image = (rng.gamma(2.0, 400.0, SHAPE)).astype(np.uint16)
    img = create_image(root / "image.ome.zarr", SHAPE, np.uint16, chunks=(4, 16, 16),
                       voxel_size=VOXEL, unit="micrometer")
    img.array[:] = image
    build_pyramid(img)
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:9, 5:30, 4:40] = 1
    labels[4:7, 10:15, 10:15] = 2
    labels[10:12, 30:38, 40:50] = 3
    seg = create_image(root / "seg" / "labels.ome.zarr", SHAPE, np.uint8, chunks=(4, 16, 16),
                       voxel_size=VOXEL, unit="micrometer", label=True)
    seg.array[:] = labels
    build_pyramid(seg)
    mesh(root / "seg" / "labels.ome.zarr", root / "seg" / "meshes", chunk_size=16,
         formats="stl,ply", executor="serial")
    return {"root": root, "image": image, "labels": labels,
            "image_path": root / "image.ome.zarr", "labels_path": root / "seg" / "labels.ome.zarr",
            "seg": root / "seg"}


def _zip(path) -> zipfile.ZipFile:
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    return zf


def test_zarr_zip_unzips_to_the_same_image(data, tmp_path):
    out = export("zarr", data["image_path"], tmp_path / "image.zarr.zip")
    zf = _zip(out)
    names = zf.namelist()
    assert ".zattrs" in names and ".zgroup" in names  # the store sits at the zip's root
    infos = {i.filename: i for i in zf.infolist()}
    assert infos[".zattrs"].compress_type == zipfile.ZIP_DEFLATED
    chunk = next(n for n in names if n.startswith("0/") and n[-1].isdigit())
    assert infos[chunk].compress_type == zipfile.ZIP_STORED  # chunks are already compressed
    zf.extractall(tmp_path / "x")
    back = open_image(tmp_path / "x")
    np.testing.assert_array_equal(back.array[:], data["image"])
    assert back.voxel_size == VOXEL and back.unit == "micrometer"
    assert len(back.levels) == len(open_image(data["image_path"]).levels)
    # and the zip itself is a Zarr store, as it is
    import zarr

    store = zarr.storage.ZipStore(out, mode="r")
    root = zarr.open_group(store, mode="r")
    assert "multiscales" in root.attrs
    np.testing.assert_array_equal(root["0"][:], data["image"])
    store.close()


def test_png_stack_of_an_image_is_windowed_8_bit(data, tmp_path):
    out = export("png", data["image_path"], tmp_path)
    assert out.name == "image.png.zip"
    zf = _zip(out)
    meta = json.loads(zf.read("image/metadata.json"))
    lo, hi = meta["window"]
    # the volume is small enough for the sample to be all of it: exact percentiles
    np.testing.assert_allclose([lo, hi], np.percentile(data["image"], [1, 99.5]))
    slices = sorted(n for n in zf.namelist() if n.endswith(".png"))
    assert slices[0] == "image/z00000.png" and len(slices) == SHAPE[0]
    for z, name in enumerate(slices):
        png = imagecodecs.png_decode(zf.read(name))
        assert png.dtype == np.uint8
        np.testing.assert_array_equal(png, to_uint8(data["image"][z], lo, hi))
    assert meta["voxel_size_zyx"] == list(VOXEL)


def test_png_window_is_sampled_not_read_whole(data, monkeypatch):
    monkeypatch.setattr(export_volumes, "SAMPLE_VOXELS", 5000)
    vol = export_volumes.open_export_volume(data["image_path"], None)
    sample = export_volumes.sample(vol)
    assert 0 < sample.size <= 5000
    lo, hi = export_volumes.window(vol, None)
    full_lo, full_hi = np.percentile(data["image"], [1, 99.5])
    assert abs(lo - full_lo) < 0.5 * (full_hi - full_lo) and hi > lo


def test_png_stack_of_labels_keeps_values(data, tmp_path):
    zf = _zip(export("png", data["labels_path"], tmp_path / "l.zip"))
    slices = sorted(n for n in zf.namelist() if n.endswith(".png"))
    stack = np.stack([imagecodecs.png_decode(zf.read(n)) for n in slices])
    assert stack.dtype == np.uint8
    np.testing.assert_array_equal(stack, data["labels"])


def test_png_of_16_bit_labels(tmp_path):
    labels = np.zeros((3, 9, 11), np.uint16)
    labels[1, 2:5, 3:9] = 1000
    img = create_image(tmp_path / "big.ome.zarr", labels.shape, np.uint16, label=True,
                       pyramid=False)
    img.array[:] = labels
    zf = _zip(export("png", tmp_path / "big.ome.zarr", tmp_path / "b.zip"))
    png = imagecodecs.png_decode(zf.read("big/z00001.png"))
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, labels[1])


def test_tiff_stack_is_16_bit_with_voxel_size(data, tmp_path):
    zf = _zip(export("tiff", data["image_path"], tmp_path / "t.zip"))
    slices = sorted(n for n in zf.namelist() if n.endswith(".tif"))
    assert len(slices) == SHAPE[0]
    for z, name in enumerate(slices):
        with tifffile.TiffFile(io.BytesIO(zf.read(name))) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            assert arr.dtype == np.uint16
            np.testing.assert_array_equal(arr, data["image"][z])
            assert tif.imagej_metadata["spacing"] == pytest.approx(VOXEL[0])
            assert tif.imagej_metadata["unit"] == "micron"
            x_res = page.tags["XResolution"].value
            assert x_res[1] / x_res[0] == pytest.approx(VOXEL[2])


def test_tiff_of_signed_and_float_images_records_the_mapping(tmp_path):
    hu = np.arange(-1000, 1000, 5, dtype=np.int16).reshape(2, 20, 10)
    np.save(tmp_path / "hu.npy", hu)
    zf = _zip(export("tiff", tmp_path / "hu.npy", tmp_path / "hu.zip"))
    meta = json.loads(zf.read("hu/metadata.json"))
    arr = tifffile.imread(io.BytesIO(zf.read("hu/z00001.tif")))
    np.testing.assert_array_equal(arr.astype(np.int32) + meta["offset"], hu[1])
    f = np.linspace(-1.0, 3.0, 2 * 20 * 10, dtype=np.float32).reshape(2, 20, 10)
    np.save(tmp_path / "f.npy", f)
    zf = _zip(export("tiff", tmp_path / "f.npy", tmp_path / "f.zip"))
    meta = json.loads(zf.read("f/metadata.json"))
    arr = tifffile.imread(io.BytesIO(zf.read("f/z00000.tif")))
    np.testing.assert_allclose(meta["offset"] + arr * meta["scale"], f[0], atol=meta["scale"])


def test_tiff_of_labels(data, tmp_path):
    zf = _zip(export("tiff", data["labels_path"], tmp_path / "t.zip"))
    stack = np.stack([tifffile.imread(io.BytesIO(zf.read(n)))
                      for n in sorted(n for n in zf.namelist() if n.endswith(".tif"))])
    np.testing.assert_array_equal(stack, data["labels"])


def test_meshes_zip_holds_every_mesh_and_the_stats(data, tmp_path):
    zf = _zip(export("meshes", data["seg"], tmp_path / "m.zip"))
    meshes = data["seg"] / "meshes"
    expected = sorted(f"meshes/{p.name}" for p in meshes.iterdir())
    assert sorted(zf.namelist()) == expected
    assert "meshes/stats.csv" in expected and "meshes/1.stl" in expected
    for name in expected:
        assert zf.read(name) == (data["root"] / "seg" / name).read_bytes()


def test_nifti_has_the_data_and_voxel_size(data, tmp_path):
    out = export("nifti", data["labels_path"], tmp_path)
    assert out.name == "labels.nii.gz"
    nii = nib.load(out)
    assert nii.shape == SHAPE[::-1]
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), data["labels"])
    assert nii.get_data_dtype() == np.uint8
    assert nii.header.get_zooms() == pytest.approx(VOXEL[::-1])
    assert nii.header.get_xyzt_units()[0] == "micron"
    np.testing.assert_allclose(nii.affine, np.diag([*VOXEL[::-1], 1.0]))
    img = nib.load(export("nifti", data["image_path"], tmp_path / "image.nii.gz"))
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), data["image"])


def test_stats_csv_computed_or_copied(data, tmp_path):
    out = export("stats", data["labels_path"], tmp_path / "s.csv")
    rows = export_mod.read_stats_csv(out)
    ref = label_stats(data["labels_path"], executor="serial")
    assert [int(r["label"]) for r in rows] == [r["label"] for r in ref] == [1, 2, 3]
    for r, e in zip(rows, ref, strict=True):
        assert int(r["voxel_count"]) == e["voxel_count"] == int((data["labels"] == e["label"]).sum())
        assert float(r["volume"]) == pytest.approx(e["volume"])
        assert r["unit"] == "micrometer"
    copied = export("stats", data["seg"], tmp_path / "c.csv")
    assert copied.read_bytes() == (data["seg"] / "meshes" / "stats.csv").read_bytes()


def test_stream_yields_while_writing_then_caches(data, tmp_path):
    cache = tmp_path / "cache" / "image.zarr.zip"
    gen = stream_export("zarr", data["image_path"], cache)
    t0 = time.monotonic()
    first = next(gen)
    assert time.monotonic() - t0 < 1.0
    assert first.startswith(b"PK")
    assert not cache.exists()  # not complete yet: only a temp file exists
    assert len(list(cache.parent.iterdir())) == 1
    pieces = [first, *gen]
    assert cache.is_file() and b"".join(pieces) == cache.read_bytes()
    assert len(pieces) > 10 and max(len(p) for p in pieces) <= 2 * 1024**2
    assert list(cache.parent.iterdir()) == [cache]  # temp renamed, nothing else


def test_stream_serves_the_cache_on_repeat(data, tmp_path, monkeypatch):
    cache = tmp_path / "labels.png.zip"
    first = b"".join(stream_export("png", data["labels_path"], cache))

    def fail(*args, **kwargs):
        raise AssertionError("the export was built again")

    monkeypatch.setitem(export_mod.WRITERS, "png", fail)
    assert b"".join(stream_export("png", data["labels_path"], cache)) == first
    # a source newer than the cache is exported again
    os.utime(cache, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(AssertionError, match="built again"):
        b"".join(stream_export("png", data["labels_path"], cache))


def test_interrupted_stream_leaves_no_cache(data, tmp_path):
    cache = tmp_path / "c" / "image.tiff.zip"
    gen = stream_export("tiff", data["image_path"], cache)
    next(gen)
    next(gen)
    gen.close()  # client went away
    assert not cache.exists()
    assert list(cache.parent.iterdir()) == []


def test_failing_export_leaves_no_cache(tmp_path):
    labels = np.zeros((4, 6, 6), np.uint32)
    labels[2, 1, 1] = 70_000  # cannot be a 16-bit PNG value: fails on slice 2
    img = create_image(tmp_path / "huge.ome.zarr", labels.shape, np.uint32, label=True,
                       pyramid=False)
    img.array[:] = labels
    cache = tmp_path / "c" / "huge.png.zip"
    received = []
    with pytest.raises(ValueError, match="outside 0..65535"):
        for piece in stream_export("png", tmp_path / "huge.ome.zarr", cache):
            received.append(piece)
    assert received  # it had started streaming
    assert not cache.exists() and list(cache.parent.iterdir()) == []
    with pytest.raises(ValueError, match="outside 0..65535"):
        export("png", tmp_path / "huge.ome.zarr", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
    assert not any(p.name.startswith(".out.zip") for p in tmp_path.iterdir())


def test_bad_requests_fail_on_first_next(data, tmp_path):
    with pytest.raises(ValueError, match="unknown export kind"):
        next(stream_export("fbx", data["labels_path"], tmp_path / "x"))
    with pytest.raises(FileNotFoundError):
        next(stream_export("png", tmp_path / "missing.ome.zarr", tmp_path / "y"))
    with pytest.raises(ValueError, match="no mesh files"):
        next(stream_export("meshes", tmp_path, tmp_path / "z.zip"))
    assert not any(tmp_path.iterdir())


def test_cli_export(data, tmp_path):
    from ml4paleo.cli import main

    result = CliRunner().invoke(main, ["export", "nifti", str(data["labels_path"]),
                                       str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "labels.nii.gz").is_file()
    result = CliRunner().invoke(main, ["export", "png", str(data["image_path"]),
                                       str(tmp_path / "w.zip"), "--window", "0,1000", "-q"])
    assert result.exit_code == 0, result.output
    zf = _zip(tmp_path / "w.zip")
    np.testing.assert_array_equal(imagecodecs.png_decode(zf.read("image/z00003.png")),
                                  to_uint8(data["image"][3], 0, 1000))
    result = CliRunner().invoke(main, ["export", "meshes", str(tmp_path), str(tmp_path / "m.zip")])
    assert result.exit_code == 1 and "no mesh files" in result.output


def test_package_verb_works_after_the_module_was_imported(data, tmp_path):
    import ml4paleo

    out = ml4paleo.export("stats", data["seg"], tmp_path / "s.csv")  # module already imported
    assert out.read_bytes() == (data["seg"] / "meshes" / "stats.csv").read_bytes()


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_exports(data, tmp_path):
    from dask.distributed import Client, LocalCluster

    kinds = [("png", data["image_path"]), ("tiff", data["labels_path"]),
             ("nifti", data["image_path"]), ("stats", data["labels_path"])]
    ref = {kind: export(kind, src, tmp_path / "ref" / f"{kind}.out") for kind, src in kinds}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        got = {kind: export(kind, src, tmp_path / "dask" / f"{kind}.out", executor=client)
               for kind, src in kinds}
        streamed = b"".join(stream_export("png", data["labels_path"], tmp_path / "c.zip",
                                          executor=client))
    for kind in ("png", "tiff"):
        assert _members(got[kind]) == _members(ref[kind])
    assert got["nifti"].read_bytes() == ref["nifti"].read_bytes()  # gzip with mtime 0
    assert got["stats"].read_bytes() == ref["stats"].read_bytes()
    assert _members(io.BytesIO(streamed)) == _members(export("png", data["labels_path"],
                                                             tmp_path / "l.zip"))


def test_slabs_on_local_processes_give_the_same_files(data, tmp_path):
    a = export("tiff", data["image_path"], tmp_path / "a.zip")
    b = export("tiff", data["image_path"], tmp_path / "b.zip", executor="processes", workers=2)
    assert _members(a) == _members(b)
