"""DICOM transfer syntaxes on real files shipped with pydicom and pydicom-data, each decoded
through ml4paleo's imagecodecs plugin and compared with a reference: the uncompressed twin
file where one exists, else GDCM's decode (python-gdcm, an independent implementation)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLossless,
    JPEGLSNearLossless,
)

from ml4paleo.io import InputError, open_volume
from ml4paleo.io.dicom_codecs import PLUGIN, SYNTAXES, register


def shipped(name: str) -> str:
    """A file shipped with pydicom or pydicom-data (the ``test`` extra); never downloaded."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom-data is in the test extra)"
    return str(path)


def ours(name_or_path: str, **kw) -> np.ndarray:
    """pydicom's pixel array decoded by our plugin alone."""
    register()
    path = name_or_path if "/" in name_or_path else shipped(name_or_path)
    return pixel_array(path, decoding_plugin=PLUGIN, **kw)


def gdcm_decode(path: str) -> np.ndarray:
    """GDCM's own reader (not through pydicom), as stored values of the first frame."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), f"GDCM cannot read {path}"
    image = reader.GetImage()
    pf = image.GetPixelFormat()
    cols, rows = image.GetDimensions()[:2]
    dtype = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16,
             (16, 1): np.int16}[(pf.GetBitsAllocated(), pf.GetPixelRepresentation())]
    buf = image.GetBuffer().encode("utf-8", "surrogateescape")
    samples = pf.GetSamplesPerPixel()
    arr = np.frombuffer(buf, dtype)
    frames = arr.size // (rows * cols * samples)
    shape = (frames, rows, cols) + ((samples,) if samples > 1 else ())
    arr = arr.reshape(shape)
    return arr[0] if frames == 1 else arr


def test_plugin_is_registered_for_every_syntax():
    from pydicom.pixels import get_decoder

    register()
    register()  # idempotent
    assert {str(u) for u in SYNTAXES} == {
        "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
    for uid in SYNTAXES:
        assert PLUGIN in get_decoder(uid).available_plugins


# -- JPEG Lossless (.57, .70) ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
                                  "bad_sequence.dcm"])
def test_jpeg_lossless_sv1_equals_gdcm(name):
    path = shipped(name)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == \
        "1.2.840.10008.1.2.4.70"
    got = ours(path)
    ref = gdcm_decode(path)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref.view(got.dtype))
    with open_volume(path) as v:  # and through the reader (with rescaling, if any)
        assert v.shape == (1,) + got.shape
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        slope, inter = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        np.testing.assert_array_equal(v[0], got * slope + inter)


def test_jpeg_lossless_rgb_equals_its_uncompressed_twin():
    got = ours("SC_rgb_jpeg_gdcm.dcm")
    ref = pixel_array(shipped("SC_rgb.dcm"))
    assert got.shape == (100, 100, 3)
    np.testing.assert_array_equal(got, ref)


def _recode(name: str, uid, frames: list[bytes], out) -> None:
    ds = pydicom.dcmread(shipped(name))
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(out)


@pytest.mark.parametrize("predictor", [1, 2, 3, 4, 5, 6, 7])
def test_jpeg_lossless_process14_every_predictor_is_exact(tmp_path, predictor):
    """No shipped file uses .57 with predictors 2-7: re-encode a real CT slice with each."""
    import imagecodecs

    src = pydicom.dcmread(shipped("CT_small.dcm"))
    raw = src.pixel_array  # int16, 16 bits stored
    stream = imagecodecs.jpeg8_encode(raw.view(np.uint16), lossless=True, predictor=predictor,
                                      bitspersample=16)
    _recode("CT_small.dcm", JPEGLossless, [stream], tmp_path / "ll.dcm")
    np.testing.assert_array_equal(ours(str(tmp_path / "ll.dcm")), raw)
    np.testing.assert_array_equal(gdcm_decode(tmp_path / "ll.dcm"), raw)  # a valid file
    with open_volume(tmp_path / "ll.dcm") as v:
        expected = raw.astype(np.int32) * int(src.RescaleSlope) + int(src.RescaleIntercept)
        np.testing.assert_array_equal(v[0], expected)


# -- JPEG-LS (.80, .81) ------------------------------------------------------------------------
@pytest.mark.parametrize("compressed,twin", [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # 10 frames, 12-bit
])
def test_jpegls_lossless_equals_its_uncompressed_twin(compressed, twin):
    ref = pixel_array(shipped(twin))
    np.testing.assert_array_equal(ours(compressed), ref)
    with open_volume(shipped(compressed)) as v, open_volume(shipped(twin)) as t:
        assert v.shape == t.shape and v.dtype == t.dtype
        np.testing.assert_array_equal(v[:], t[:])


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
                                  "SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_sample.dcm"])
def test_jpegls_near_lossless_equals_gdcm(name):
    path = shipped(name)
    got = ours(path, as_rgb=False)
    ref = gdcm_decode(path)
    np.testing.assert_array_equal(got, ref.view(got.dtype).reshape(got.shape))


def test_jpegls_near_lossless_stays_within_near_of_a_real_ct(tmp_path):
    import imagecodecs

    raw = pydicom.dcmread(shipped("CT_small.dcm")).pixel_array
    unsigned = (raw.astype(np.int32) - raw.min()).astype(np.uint16)  # CharLS codes unsigned
    stream = imagecodecs.jpegls_encode(unsigned, level=3)
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSNearLossless
    ds.save_as(tmp_path / "nl.dcm")
    got = ours(str(tmp_path / "nl.dcm"))
    assert 0 < np.abs(got.astype(int) - unsigned).max() <= 3
    np.testing.assert_array_equal(got, gdcm_decode(tmp_path / "nl.dcm"))


# -- JPEG Extended 12-bit (.51) ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm"])
def test_jpeg_extended_12bit_equals_gdcm(name):
    path = shipped(name)
    got = ours(path)
    assert got.dtype == np.uint16 and got.max() > 255  # really 12-bit
    np.testing.assert_array_equal(got, gdcm_decode(path))
    # the lossy version of JPEG-LL.dcm's image: close to it
    lossless = ours("JPEG-LL.dcm").astype(int)
    assert np.abs(got.astype(int) - lossless).mean() < 5
    with open_volume(path) as v:
        np.testing.assert_array_equal(v[0], got)


# -- Deflated Explicit VR Little Endian (.1.99) ------------------------------------------------
def test_deflated_file_equals_pydicoms_full_read():
    path = shipped("image_dfl.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    with open_volume(path) as v:
        np.testing.assert_array_equal(v[0], ds.pixel_array)
        np.testing.assert_array_equal(v[0], gdcm_decode(path))


def test_deflated_series_from_a_real_ct_is_exact(tmp_path):
    import zipfile

    src = pydicom.dcmread(shipped("CT_small.dcm"))
    (tmp_path / "d").mkdir()
    for k in range(3):
        ds = pydicom.dcmread(shipped("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.InstanceNumber = k + 1
        ds.PixelData = (src.pixel_array + k).astype(np.int16).tobytes()
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(tmp_path / "d" / f"{k}.dcm")
    expected = np.stack([src.pixel_array + k for k in range(3)]).astype(np.int32) \
        * int(src.RescaleSlope) + int(src.RescaleIntercept)
    with open_volume(tmp_path / "d") as v:
        np.testing.assert_array_equal(v[:], expected)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:  # from inside a zip too
        for k in range(3):
            zf.write(tmp_path / "d" / f"{k}.dcm", f"{k}.dcm")
    with open_volume(tmp_path / "d.zip") as v:
        np.testing.assert_array_equal(v[:], expected)


# -- wrong labels ------------------------------------------------------------------------------
def test_lossy_data_labelled_lossless_is_refused_with_a_clear_message(tmp_path):
    from PIL import Image

    raw = pydicom.dcmread(shipped("CT_small.dcm")).pixel_array
    img8 = (raw - raw.min()).astype(np.float64)
    img8 = (255 * img8 / img8.max()).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(img8).save(jpeg, "JPEG", quality=90)
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(tmp_path / "bad.dcm")
    with open_volume(tmp_path / "bad.dcm") as v, pytest.raises(
            InputError, match=r"bad\.dcm: cannot decode DICOM pixel data .*baseline DCT JPEG"):
        v.read_slab(0, 1)


def test_uncompressed_files_still_decode_without_the_plugin():
    with open_volume(shipped("CT_small.dcm")) as v:
        ds = pydicom.dcmread(shipped("CT_small.dcm"))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        np.testing.assert_array_equal(v[0], ds.pixel_array.astype(np.int32)
                                      * int(ds.RescaleSlope) + int(ds.RescaleIntercept))
