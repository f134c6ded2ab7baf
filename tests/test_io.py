"""Readers: every format round-trips (values, dtype, axis order, voxel size), lazily."""

from __future__ import annotations

import gzip
import logging
import zipfile

import numpy as np
import pytest
import tifffile
from scan_samples import dicom_bytes, ramp_volume, write_dicom_series, write_slices

from ml4paleo.io import InputError, detect_source_type, natural_key, open_volume


def _check(vol, expected, source_type, voxel_size=None, unit=None):
    assert vol.source_type == source_type
    assert vol.shape == expected.shape
    assert vol.dtype == expected.dtype
    got = vol.read_slab(0, vol.shape[0])
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if voxel_size is not None:
        np.testing.assert_allclose(vol.voxel_size, voxel_size, rtol=1e-6)
    if unit is not None:
        assert vol.unit == unit


# -- slice folders ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ext,dtype", [("png", np.uint8), ("png", np.uint16), ("tif", np.uint8), ("tif", np.uint16)]
)
def test_slice_folder_roundtrip_natural_sort(tmp_path, ext, dtype):
    vol = ramp_volume((12, 17, 23), dtype)
    write_slices(tmp_path / "stack", vol, ext)  # img1 .. img12: lexical order would be wrong
    assert detect_source_type(tmp_path / "stack") == "image_stack"
    with open_volume(tmp_path / "stack") as v:
        _check(v, vol, "image_stack")
        assert v.metadata["files"] == 12 and v.metadata["first_file"] == "img1." + ext
        assert v.metadata["last_file"] == "img12." + ext


def test_jpeg_stack_is_read_in_order(tmp_path):
    vol = np.repeat(np.arange(10, 230, 20, dtype=np.uint8)[:, None, None], 16, 1).repeat(16, 2)
    write_slices(tmp_path / "j", vol, "jpg")
    with open_volume(tmp_path / "j") as v:
        assert v.shape == vol.shape and v.dtype == np.uint8
        np.testing.assert_allclose(v[:].mean(axis=(1, 2)), vol.mean(axis=(1, 2)), atol=2)


def test_natural_key_orders_numbers():
    names = ["s10.tif", "s2.tif", "s1.tif", "S3.tif"]
    assert sorted(names, key=natural_key) == ["s1.tif", "s2.tif", "S3.tif", "s10.tif"]


def test_rgb_slices_become_one_channel_with_warning(tmp_path, caplog):
    from PIL import Image

    gray = ramp_volume((3, 8, 9), np.uint8)
    (tmp_path / "g").mkdir()
    (tmp_path / "c").mkdir()
    for z, plane in enumerate(gray):
        Image.fromarray(np.stack([plane] * 3, -1)).save(tmp_path / "g" / f"{z}.png")
        rgb = np.stack([plane, np.zeros_like(plane), np.full_like(plane, 255)], -1)
        Image.fromarray(rgb).save(tmp_path / "c" / f"{z}.png")
    with open_volume(tmp_path / "g") as v:  # grey saved as RGB: lossless
        _check(v, gray, "image_stack")
    with caplog.at_level(logging.WARNING, logger="ml4paleo.io"), open_volume(tmp_path / "c") as v:
        data = v[:]
        expected = np.rint(0.299 * gray.astype(np.float32) + 0.114 * 255).astype(np.uint8)
        np.testing.assert_array_equal(data, expected)
        assert v.metadata["rgb_reduced_to_gray"] is True
    assert "one channel" in caplog.text


def test_lazy_indexing_matches_numpy(tmp_path):
    vol = ramp_volume((9, 11, 13), np.uint16)
    write_slices(tmp_path / "s", vol, "tif")
    with open_volume(tmp_path / "s") as v:
        for key in [
            (3,), (slice(2, 7), slice(1, 9, 2), slice(None, None, -1)), (-1, 4, 5),
            (slice(None, None, 3),), ([0, 8, 2],), (Ellipsis, 2), (slice(5, 2),),
        ]:
            np.testing.assert_array_equal(v[key], vol[key])
        np.testing.assert_array_equal(np.asarray(v), vol)
        with pytest.raises(IndexError):
            v[9]


def test_zip_of_slices_with_subfolder_and_junk(tmp_path):
    vol = ramp_volume((11, 10, 12), np.uint16)
    paths = write_slices(tmp_path / "src", vol, "png")
    with zipfile.ZipFile(tmp_path / "scan.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in reversed(paths):
            zf.write(p, f"scan/slices/{p.name}")
        zf.writestr("__MACOSX/scan/._img1.png", b"junk")
        zf.writestr("scan/notes.txt", "scanner log")
    assert detect_source_type(tmp_path / "scan.zip") == "image_stack"
    with open_volume(tmp_path / "scan.zip") as v:
        _check(v, vol, "image_stack")
        assert v.metadata["container"] == "zip" and v.metadata["ignored_count"] == 1


# -- multi-page TIFF ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "bigtiff", "zlib", "lzw-tiled"])
def test_multipage_tiff(tmp_path, kind):
    vol = ramp_volume((7, 40, 36), np.uint16)
    path = tmp_path / "scan.tif"
    opts = {
        "plain": {},
        "bigtiff": {"bigtiff": True},
        "zlib": {"compression": "zlib"},
        "lzw-tiled": {"compression": "lzw", "tile": (16, 16)},
    }[kind]
    with tifffile.TiffWriter(path, bigtiff=opts.pop("bigtiff", False)) as tw:
        for plane in vol:
            tw.write(plane, contiguous=False, **opts)
    with open_volume(path) as v:
        _check(v, vol, "tiff")
        assert v.metadata["pages"] == 7
        assert v.metadata["bigtiff"] is (kind == "bigtiff")
        np.testing.assert_array_equal(v[2:5, 3:9, 4], vol[2:5, 3:9, 4])


def test_imagej_tiff_voxel_size_and_upload_folder(tmp_path):
    vol = ramp_volume((5, 16, 18), np.uint8)
    upload = tmp_path / "upload"
    upload.mkdir()
    tifffile.imwrite(upload / "scan.tif", vol, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    assert detect_source_type(upload) == "tiff"
    with open_volume(upload) as v:
        _check(v, vol, "tiff", voxel_size=(2.0, 0.5, 0.25), unit="micrometer")


# -- DICOM -------------------------------------------------------------------------------------
def test_dicom_series_sorted_by_position_with_hu(tmp_path):
    raw = ramp_volume((9, 12, 10), np.uint16)
    write_dicom_series(tmp_path / "ct", raw, spacing_z=1.25, spacing=(0.5, 0.4), slope=1, intercept=-1024)
    assert detect_source_type(tmp_path / "ct") == "dicom"
    with open_volume(tmp_path / "ct") as v:
        expected = raw.astype(np.int32) - 1024
        _check(v, expected.astype(np.int16), "dicom", voxel_size=(1.25, 0.5, 0.4), unit="millimeter")
        md = v.metadata
        assert md["modality"] == "CT" and md["manufacturer"] == "ACME"
        assert md["manufacturer_model"] == "Scan 3000" and md["station"] == "CT01"
        assert md["series_description"] == "test series" and md["sorted_by"] == "position"
        assert md["non_uniform_spacing"] is False and md["series_count"] == 1
        assert "Anon" not in str(md)


def test_dicom_oblique_reversed_non_uniform_float_rescale(tmp_path):
    raw = ramp_volume((6, 8, 9), np.uint16, seed=3)
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # oblique, normal points the "wrong" way
    gaps = [2.0, 2.0, 3.0, 2.0, 2.0]
    write_dicom_series(tmp_path / "d", raw, spacing_z=gaps, orientation=orientation,
                       slope=0.5, intercept=-10.25)
    with open_volume(tmp_path / "d") as v:
        expected = (raw.astype(np.float64) * 0.5 - 10.25).astype(np.float32)
        _check(v, expected, "dicom", voxel_size=(2.0, 0.5, 0.4))
        assert v.metadata["non_uniform_spacing"] is True
        assert v.metadata["slice_spacing_max"] == pytest.approx(3.0)


def test_dicom_two_series_takes_largest_and_says_so(tmp_path, caplog):
    big, small = ramp_volume((7, 8, 8), np.uint16), ramp_volume((3, 8, 8), np.uint16, seed=9)
    write_dicom_series(tmp_path / "up" / "a", big, series_uid="1.2.3.1", names="A{:03d}.dcm")
    write_dicom_series(tmp_path / "up" / "b", small, series_uid="1.2.3.2", names="B{:03d}.dcm",
                       description="scout")
    with caplog.at_level(logging.WARNING, logger="ml4paleo.io"), open_volume(tmp_path / "up") as v:
        _check(v, big, "dicom")
        assert v.metadata["series_count"] == 2 and v.metadata["series_uid"] == "1.2.3.1"
        assert v.metadata["other_series"][0]["series_description"] == "scout"
        assert "2 series found" in v.metadata["note"]
    assert "largest" in caplog.text


def test_dicom_multiframe_with_per_frame_positions(tmp_path):
    raw = ramp_volume((5, 6, 7), np.uint16)
    order = [3, 0, 4, 1, 2]  # frames stored out of position order
    positions = [(0.0, 0.0, 2.5 * z) for z in order]
    data = dicom_bytes(raw[order], frames_positions=positions, slope=1, intercept=-1000)
    (tmp_path / "mf.dcm").write_bytes(data)
    with open_volume(tmp_path / "mf.dcm") as v:
        _check(v, (raw.astype(np.int32) - 1000).astype(np.int16), "dicom",
               voxel_size=(2.5, 0.5, 0.4))


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_dicom_compressed_transfer_syntaxes(tmp_path, syntax):
    import pydicom.uid
    from pydicom.pixels import get_encoder

    uid = getattr(pydicom.uid, syntax)
    if not get_encoder(uid).is_available:
        pytest.skip(f"no {syntax} encoder installed")
    raw = ramp_volume((3, 64, 48), np.uint16)  # OpenJPEG needs >= 32 px for its resolutions
    write_dicom_series(tmp_path / "c", raw, transfer_syntax=uid)
    with open_volume(tmp_path / "c") as v:
        _check(v, raw, "dicom")
        assert v.metadata["transfer_syntax"] == uid


def test_dicom_zip(tmp_path):
    raw = ramp_volume((5, 8, 8), np.uint16)
    write_dicom_series(tmp_path / "d", raw)
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in (tmp_path / "d").iterdir():
            zf.write(p, f"DICOM/{p.name}")
    assert detect_source_type(tmp_path / "d.zip") == "dicom"
    with open_volume(tmp_path / "d.zip") as v:
        _check(v, raw, "dicom")


def test_dicom_without_pixels_is_input_error(tmp_path):
    (tmp_path / "d").mkdir()
    for k in range(3):
        data = dicom_bytes(np.zeros((4, 4), np.uint16), instance=k, with_pixels=False)
        (tmp_path / "d" / f"{k}.dcm").write_bytes(data)
    with pytest.raises(InputError, match="no DICOM image with pixel data"):
        open_volume(tmp_path / "d")


# -- NIfTI, npy, zarr --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_transposed_with_voxel_size(tmp_path, suffix):
    import nibabel as nib

    xyz = np.random.default_rng(0).integers(-500, 1500, size=(13, 11, 7)).astype(np.int16)
    img = nib.Nifti1Image(xyz, np.diag([0.3, 0.4, 1.5, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / f"scan{suffix}")
    with open_volume(tmp_path / f"scan{suffix}") as v:
        _check(v, xyz.transpose(2, 1, 0), "nifti", voxel_size=(1.5, 0.4, 0.3), unit="millimeter")
        np.testing.assert_array_equal(v[2:5, 1:4, 3:9], xyz.transpose(2, 1, 0)[2:5, 1:4, 3:9])


def test_nifti_integral_scaling_stays_integer(tmp_path):
    import nibabel as nib

    xyz = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.Nifti1Image(xyz, np.eye(4)), tmp_path / "s.nii")
    raw = bytearray((tmp_path / "s.nii").read_bytes())
    raw[112:120] = np.array([2.0, -100.0], "<f4").tobytes()  # scl_slope, scl_inter
    (tmp_path / "s.nii").write_bytes(bytes(raw))
    with open_volume(tmp_path / "s.nii") as v:
        assert v.metadata["scl_slope"] == 2.0
        _check(v, (xyz.astype(np.int32) * 2 - 100).transpose(2, 1, 0), "nifti")


def test_npy_c_fortran_2d_and_big_endian(tmp_path):
    vol = ramp_volume((4, 5, 6), np.uint16)
    np.save(tmp_path / "c.npy", vol)
    np.save(tmp_path / "f.npy", np.asfortranarray(vol))
    np.save(tmp_path / "b.npy", vol.astype(">u2"))
    np.save(tmp_path / "p.npy", vol[0])
    for name in ("c", "f", "b"):
        with open_volume(tmp_path / f"{name}.npy") as v:
            _check(v, vol, "npy")
    with open_volume(tmp_path / "p.npy") as v:
        _check(v, vol[:1], "npy")


def test_zarr_and_ome_zarr(tmp_path):
    import zarr

    from ml4paleo.formats import create_image

    vol = ramp_volume((6, 7, 8), np.uint16)
    img = create_image(tmp_path / "i.ome.zarr", vol.shape, vol.dtype, chunks=4,
                       voxel_size=(3, 2, 1), unit="micrometer")
    img.array[:] = vol
    with open_volume(tmp_path / "i.ome.zarr") as v:
        _check(v, vol, "zarr", voxel_size=(3, 2, 1), unit="micrometer")
    arr = zarr.create_array(str(tmp_path / "plain.zarr"), shape=vol.shape, dtype=vol.dtype, chunks=(2, 7, 8))
    arr[:] = vol
    with open_volume(tmp_path / "plain.zarr") as v:
        _check(v, vol, "zarr")
        assert v.voxel_size is None


def test_upload_folder_with_single_gz_or_zip(tmp_path):
    vol = ramp_volume((3, 4, 5), np.uint8)
    (tmp_path / "u1").mkdir()
    np.save(tmp_path / "u1" / "scan.npy", vol)
    assert detect_source_type(tmp_path / "u1") == "npy"
    write_slices(tmp_path / "s", vol, "png")
    (tmp_path / "u2").mkdir()
    with zipfile.ZipFile(tmp_path / "u2" / "x.zip", "w") as zf:
        for p in (tmp_path / "s").iterdir():
            zf.write(p, p.name)
    with open_volume(tmp_path / "u2") as v:
        _check(v, vol, "image_stack")


# -- bad input (library level; the CLI is covered in test_convert) -----------------------------
def test_bad_inputs_raise_one_line_input_error(tmp_path):
    vol = ramp_volume((4, 8, 8), np.uint8)
    write_slices(tmp_path / "mismatch", vol, "png")
    from PIL import Image

    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "mismatch" / "img3.png")
    with pytest.raises(InputError, match=r"img3\.png: slice is 8x9 pixels, expected 8x8"):
        open_volume(tmp_path / "mismatch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        open_volume(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        open_volume(tmp_path / "missing")
    write_slices(tmp_path / "garbage", vol, "tif")
    (tmp_path / "garbage" / "img2.tif").write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputError, match=r"img2\.tif: not a readable TIFF image") as info:
        open_volume(tmp_path / "garbage")
    assert "\n" not in str(info.value)
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"nonsense"))
    with pytest.raises(InputError, match="bad.nii.gz"):
        open_volume(tmp_path / "bad.nii.gz")


def test_truncated_slice_detected_while_streaming(tmp_path):
    vol = ramp_volume((5, 30, 30), np.uint16)
    paths = write_slices(tmp_path / "t", vol, "png")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    with open_volume(tmp_path / "t") as v:  # header is intact: found when decoding
        np.testing.assert_array_equal(v[0:3], vol[0:3])
        with pytest.raises(InputError, match=r"img4\.png: corrupt or truncated image"):
            v.read_slab(0, 5)


def test_zip_safety(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../escape.png", b"x")
    with pytest.raises(InputError, match="unsafe zip entry"):
        open_volume(tmp_path / "evil.zip")
    with zipfile.ZipFile(tmp_path / "abs.zip", "w") as zf:
        zf.writestr("/etc/passwd.png", b"x")
    with pytest.raises(InputError, match="unsafe zip entry"):
        open_volume(tmp_path / "abs.zip")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slice1.tif", bytes(64 << 20))
    with pytest.raises(InputError, match="zip bomb"):
        open_volume(tmp_path / "bomb.zip")


def test_zip_bomb_entry_hidden_among_normal_entries(tmp_path):
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as zf:
        zf.writestr("noise.bin", rng.bytes(5 << 20))  # stored: keeps the overall ratio low
        zf.writestr("slice1.tif", bytes(130 << 20), compress_type=zipfile.ZIP_DEFLATED,
                    compresslevel=1)
    with pytest.raises(InputError, match=r"slice1\.tif.*zip bomb"):
        open_volume(tmp_path / "mixed.zip")


def test_dicom_without_usable_positions_falls_back_to_instance_number(tmp_path):
    raw = ramp_volume((5, 6, 6), np.uint16)
    (tmp_path / "d").mkdir()
    for k, z in enumerate([2, 4, 0, 3, 1]):  # file names shuffled against InstanceNumber
        data = dicom_bytes(raw[z], position=(0.0, 0.0, 0.0), instance=z + 1)
        (tmp_path / "d" / f"f{k}.dcm").write_bytes(data)
    with open_volume(tmp_path / "d") as v:
        _check(v, raw, "dicom")
        assert v.metadata["sorted_by"] == "instance_number"


def test_dicom_jpeg_baseline_and_missing_decoder(tmp_path):
    import io

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, JPEGLossless

    raw = (np.arange(3 * 32 * 32).reshape(3, 32, 32) % 200).astype(np.uint8)
    (tmp_path / "d").mkdir()
    for z in range(3):
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(raw[z], position=(0, 0, 2.0 * z), instance=z + 1)))
        jpeg = io.BytesIO()
        Image.fromarray(raw[z]).save(jpeg, "JPEG", quality=95)
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(tmp_path / "d" / f"{z}.dcm")
    with open_volume(tmp_path / "d") as v:  # decoded by Pillow (lossy: close, not equal)
        assert v.dtype == np.uint8
        assert np.abs(v[:].astype(int) - raw).max() <= 3
    for f in (tmp_path / "d").iterdir():  # claim a syntax no installed decoder handles
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGLossless
        ds.save_as(f)
    with open_volume(tmp_path / "d") as v, pytest.raises(InputError, match="no decoder installed|cannot decode"):
        v.read_slab(0, 3)


def test_multipage_tiff_inside_zip(tmp_path):
    vol = ramp_volume((9, 40, 30), np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", vol, compression="zlib")
    with zipfile.ZipFile(tmp_path / "mp.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "vol.tif", "scan/vol.tif")
        zf.writestr("scan/readme.txt", "notes")
    assert detect_source_type(tmp_path / "mp.zip") == "tiff"
    with open_volume(tmp_path / "mp.zip") as v:
        _check(v, vol, "tiff")


def test_folder_holding_one_uploaded_zarr_or_slice_folder(tmp_path):
    """A browser folder upload lands one level down: upload/scan.zarr/ or upload/slices/."""
    from ml4paleo import formats as omezarr
    from ml4paleo.io import open_volume

    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    img = omezarr.create_image(tmp_path / "upload" / "scan.ome.zarr", data.shape, data.dtype,
                               chunks=2, voxel_size=(3, 2, 1), pyramid=False)
    img.array[:] = data
    with open_volume(tmp_path / "upload") as vol:
        assert vol.source_type == "zarr" and vol.voxel_size == (3.0, 2.0, 1.0)
        np.testing.assert_array_equal(vol[:], data)
