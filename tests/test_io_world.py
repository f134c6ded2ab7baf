"""Readers set Volume.world: NIfTI (sform/qform by codes), DICOM (LPS, oblique, tilted,
multi-frame), slice stacks (TIFF resolution, PNG pHYs), .npy, OME-Zarr — checked against
nibabel, SimpleITK and positions worked out by hand."""

from __future__ import annotations

import io
import json
import pickle

import nibabel as nib
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scan_samples import dicom_bytes, ramp_volume, write_dicom_series

from ml4paleo.io import open_any, open_volume
from ml4paleo.world import ZARR_WORLD_KEY, WorldTransform


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
            @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def _affine(linear: np.ndarray, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


MRI = _affine(np.diag([1.0, 1.0, 1.2]), (-98.0, -134.0, -72.0))  # a typical T1: RAS, offset
LAS = _affine(np.diag([-0.8, 0.8, 1.0]), (60.0, -80.0, -40.0))  # left-right flipped
OBLIQUE = _affine(_rotation(0.2, -0.35, 0.5) @ np.diag([0.3, 0.4, 1.5]), (12.5, -40.0, 7.25))


def _marker_nifti(path, affine, *, sform_code=2, qform_code=1, units="mm"):
    """A NIfTI with one bright voxel at (i, j, k) = (5, 3, 2); returns that index."""
    xyz = np.zeros((9, 7, 6), np.int16)
    xyz[5, 3, 2] = 1000
    img = nib.Nifti1Image(xyz, None)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_xyzt_units(units)
    nib.save(img, path)
    return (5, 3, 2)


# -- NIfTI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,affine,codes", [("mri", MRI, "RAS"), ("las", LAS, "LAS"),
                                               ("oblique", OBLIQUE, None)])
def test_nifti_world_is_the_files_affine(tmp_path, name, affine, codes):
    path = tmp_path / f"{name}.nii.gz"
    ijk = _marker_nifti(path, affine)
    ref = nib.load(path)
    with open_volume(path) as v:
        w = v.world
        np.testing.assert_allclose(w.affine, ref.affine, atol=1e-6)
        assert (w.frame, w.unit, w.source) == ("RAS", "millimeter", "sform")
        assert (w.sform_code, w.qform_code) == (2, 1)
        assert w.orientation == "".join(nib.aff2axcodes(ref.affine))
        if codes:
            assert w.orientation == codes
        assert v.voxel_size == pytest.approx(w.voxel_size)
        # the marker: found in our (z, y, x) array, placed where nibabel says it is
        zyx = np.unravel_index(np.argmax(v[:]), v.shape)
        assert zyx == ijk[::-1]
        np.testing.assert_allclose(w.apply(zyx), nib.affines.apply_affine(ref.affine, ijk),
                                   atol=1e-5)
        assert v.metadata["sform_code"] == 2 and v.metadata["unit_assumed"] is False
        assert v.info()["world"]["orientation"] == w.orientation


@pytest.mark.parametrize("affine", [LAS, OBLIQUE])
def test_nifti_world_agrees_with_simpleitk(tmp_path, affine):
    sitk = pytest.importorskip("SimpleITK")
    path = tmp_path / "s.nii"
    _marker_nifti(path, affine)
    ref = sitk.ReadImage(str(path))
    with open_volume(path) as v:
        d = v.world.to_sitk()
        np.testing.assert_allclose(d["origin"], ref.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(d["spacing"], ref.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(d["direction"], ref.GetDirection(), atol=1e-5)
        arr = sitk.GetArrayFromImage(ref)  # (z, y, x), like ours
        np.testing.assert_array_equal(arr, v[:])
        zyx = np.unravel_index(np.argmax(arr), arr.shape)
        lps = ref.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]])
        np.testing.assert_allclose(v.world.to_lps().apply(zyx), lps, atol=1e-4)


def test_nifti_qform_only_and_unknown_units(tmp_path):
    path = tmp_path / "q.nii"
    _marker_nifti(path, OBLIQUE, sform_code=0, qform_code=1, units="unknown")
    with open_volume(path) as v:
        assert v.world.source == "qform" and (v.world.sform_code, v.world.qform_code) == (0, 1)
        np.testing.assert_allclose(v.world.affine, OBLIQUE, atol=1e-5)
        # unknown -> millimetre, as ITK and nibabel users read it, and said so
        assert v.unit == "millimeter" and v.world.assumed == {"unit"}
        assert v.metadata["unit_assumed"] is True


def test_nifti_in_microns(tmp_path):
    path = tmp_path / "um.nii"
    _marker_nifti(path, _affine(np.diag([5.0, 5.0, 10.0]), (0, 0, 0)), units="micron")
    with open_volume(path) as v:
        assert v.unit == "micrometer" and v.voxel_size == pytest.approx((10.0, 5.0, 5.0))


def test_voxel_size_override_rescales_the_world_and_pickles(tmp_path):
    path = tmp_path / "o.nii"
    _marker_nifti(path, OBLIQUE)
    vol = open_any(path, voxel_size=(3.0, 0.8, 0.6))
    w = vol.world
    assert w.voxel_size == pytest.approx((3.0, 0.8, 0.6))
    np.testing.assert_allclose(w.direction, WorldTransform(OBLIQUE).direction, atol=1e-6)
    np.testing.assert_allclose(w.origin, OBLIQUE[:3, 3], atol=1e-5)
    back = pickle.loads(pickle.dumps(vol))
    assert back.world.allclose(w, atol=1e-9)
    vol.close()
    back.close()


# -- DICOM -------------------------------------------------------------------------------------
def _hand_affine(first_ipp, iop, dy, dx, step):
    a = np.eye(4)
    a[:3, 0] = np.asarray(iop[:3]) * dx
    a[:3, 1] = np.asarray(iop[3:]) * dy
    a[:3, 2] = step
    a[:3, 3] = first_ipp
    return a


def test_dicom_axial_series_world(tmp_path):
    raw = ramp_volume((5, 8, 9), np.uint16)
    write_dicom_series(tmp_path / "d", raw, spacing_z=1.25, origin=(10.0, -20.0, 5.0))
    with open_volume(tmp_path / "d") as v:
        w = v.world
        expected = _hand_affine((10.0, -20.0, 5.0), (1, 0, 0, 0, 1, 0), 0.5, 0.4, (0, 0, 1.25))
        np.testing.assert_allclose(w.affine, expected, atol=1e-9)
        assert (w.frame, w.unit, w.source, w.orientation) == ("LPS", "millimeter", "dicom", "LPS")
        assert w.assumed == frozenset()
        np.testing.assert_allclose(w.to_ras().affine[:2], -expected[:2], atol=1e-9)


def _series_from_real_file(folder, iop, first, step, n=6):
    """A non-axial series made from pydicom's real CT slice: its IOP/IPP rewritten."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir()
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    series = generate_uid()
    base = src.pixel_array
    positions = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [float(v) for v in iop]
        pos = np.asarray(first, float) + k * np.asarray(step, float)
        positions.append(pos)
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.InstanceNumber = n - k  # instance order runs against position order
        ds.SliceLocation = None
        del ds.SliceLocation
        ds.PixelData = (base + 10 * k).astype(base.dtype).tobytes()
        ds.save_as(folder / f"x{(k * 7) % n}.dcm")
    return [float(v) for v in src.PixelSpacing], positions


@pytest.mark.parametrize("kind", ["oblique", "sagittal", "tilted"])
def test_dicom_non_axial_series_from_a_real_file(tmp_path, kind):
    c, s = np.cos(0.4), np.sin(0.4)
    if kind == "sagittal":
        iop, step = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (-2.5, 0.0, 0.0)
    else:
        t = 0.3  # rows and columns both oblique (and orthogonal, as DICOM requires)
        iop = (c, s, 0.0, -s * np.cos(t), c * np.cos(t), -np.sin(t))
        normal = np.cross(iop[:3], iop[3:])
        step = 1.75 * normal / np.linalg.norm(normal)
        if kind == "tilted":  # gantry tilt: consecutive slices also shift along the columns
            step = step + 0.6 * np.asarray(iop[3:])
    first = (-120.5, 33.25, 410.0)
    (dy, dx), positions = _series_from_real_file(tmp_path / "s", iop, first, step)
    with open_volume(tmp_path / "s") as v:
        w = v.world
        np.testing.assert_allclose(w.affine, _hand_affine(first, iop, dy, dx, step), atol=1e-4)
        assert v.metadata["sorted_by"] == "position"
        # every slice's own ImagePositionPatient is where the world puts its voxel (k, 0, 0)
        for k, pos in enumerate(positions):
            np.testing.assert_allclose(w.apply((k, 0, 0)), pos, atol=1e-4)
        # pixel (row 7, column 11) of slice 3, by the DICOM formula
        p = positions[3] + 11 * dx * np.asarray(iop[:3]) + 7 * dy * np.asarray(iop[3:])
        np.testing.assert_allclose(w.apply((3, 7, 11)), p, atol=1e-4)
        if kind == "tilted":
            assert v.voxel_size[0] == pytest.approx(1.75)  # slice distance along the normal
            with pytest.raises(ValueError, match="sheared"):
                w.to_sitk()
        else:
            assert w.voxel_size == pytest.approx(v.voxel_size)
        data = v[:]
    if kind != "tilted":
        _check_against_simpleitk(tmp_path / "s", w, data)


def _check_against_simpleitk(folder, world, data):
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    d = world.to_sitk()
    np.testing.assert_allclose(d["origin"], ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(d["spacing"], ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(d["direction"], ref.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), data)


def test_dicom_reversed_normal_sorted_series(tmp_path):
    """Rows along +X, columns along -Z: the normal is +Y (posterior), slices sorted along it."""
    raw = ramp_volume((4, 6, 5), np.uint16, seed=2)
    orientation = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    dists = write_dicom_series(tmp_path / "c", raw, spacing_z=2.0, orientation=orientation,
                               origin=(1.0, 2.0, 3.0))
    with open_volume(tmp_path / "c") as v:
        np.testing.assert_array_equal(v[:], raw)
        normal = np.cross(orientation[:3], orientation[3:])
        for k, dist in enumerate(dists):
            np.testing.assert_allclose(v.world.apply((k, 0, 0)), np.array([1.0, 2.0, 3.0])
                                       + dist * normal, atol=1e-9)
        assert v.world.orientation == "LIP"  # x -> left (LPS +X), y -> inferior, z -> posterior


def test_dicom_multiframe_world(tmp_path):
    raw = ramp_volume((4, 6, 7), np.uint16)
    c, s = np.cos(0.25), np.sin(0.25)
    orientation = (c, 0.0, s, 0.0, 1.0, 0.0)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [tuple(np.array([5.0, 6.0, 7.0]) + 3.0 * k * normal) for k in range(4)]
    (tmp_path / "mf.dcm").write_bytes(dicom_bytes(raw, frames_positions=positions,
                                                  orientation=orientation))
    with open_volume(tmp_path / "mf.dcm") as v:
        for k in range(4):
            np.testing.assert_allclose(v.world.apply((k, 0, 0)), positions[k], atol=1e-9)
        assert v.world.voxel_size == pytest.approx((3.0, 0.5, 0.4))


def test_dicom_without_geometry_has_a_frameless_world(tmp_path):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 5), np.uint16))))
    del ds.ImageOrientationPatient
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "one.dcm")
    with open_volume(tmp_path / "one.dcm") as v:
        assert v.world.frame is None and v.world.unit == "millimeter"
        assert v.world.voxel_size == pytest.approx((0.5, 0.5, 0.4))
        assert {"origin", "z_spacing"} <= v.world.assumed


# -- stacks and arrays -------------------------------------------------------------------------
def test_tiff_slices_with_resolution_tags(tmp_path):
    vol = ramp_volume((3, 6, 8), np.uint16)
    (tmp_path / "t").mkdir()
    for z in range(3):  # 2000 px / cm = 5 um pixels
        tifffile.imwrite(tmp_path / "t" / f"s{z}.tif", vol[z], resolution=(2000, 2000),
                         resolutionunit="CENTIMETER")
    with open_volume(tmp_path / "t") as v:
        assert v.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and v.unit == "micrometer"
        assert v.world.assumed == {"origin", "z_spacing"} and v.world.frame is None
    (tmp_path / "dpi").mkdir()
    for z in range(3):  # 72 dpi: what image tools write by default, not a physical size
        tifffile.imwrite(tmp_path / "dpi" / f"s{z}.tif", vol[z], resolution=(72, 72),
                         resolutionunit="INCH")
    with open_volume(tmp_path / "dpi") as v:
        assert v.voxel_size is None and v.world.unit is None
        assert "voxel_size" in v.world.assumed


def test_multipage_tiff_world_from_imagej_spacing(tmp_path):
    vol = ramp_volume((4, 6, 8), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um"})
    with open_volume(tmp_path / "ij.tif") as v:
        assert v.world.voxel_size == pytest.approx((2.0, 0.5, 0.5))
        assert v.world.unit == "micrometer" and v.world.assumed == {"origin"}
        np.testing.assert_allclose(v.world.apply((1, 2, 3)), (1.5, 1.0, 2.0))


def test_png_slices_with_phys(tmp_path):
    from PIL import Image

    vol = ramp_volume((3, 6, 8), np.uint8)
    (tmp_path / "p").mkdir()
    for z in range(3):  # 5080 dpi = 200000 px / m = 5 um
        Image.fromarray(vol[z]).save(tmp_path / "p" / f"s{z}.png", dpi=(5080, 5080))
    with open_volume(tmp_path / "p") as v:
        assert v.voxel_size == pytest.approx((5.0, 5.0, 5.0), rel=1e-4)
        assert v.unit == "micrometer" and "z_spacing" in v.world.assumed
        np.testing.assert_array_equal(v[:], vol)


def test_npy_is_in_voxel_units(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.uint8))
    with open_volume(tmp_path / "a.npy") as v:
        w = v.world
        assert w.unit is None and w.frame is None and w.assumed == {"voxel_size", "origin"}
        np.testing.assert_array_equal(w.affine, np.eye(4))
        assert json.loads(json.dumps(v.info()))["world"]["unit"] is None


def test_array_volume_keeps_its_world_through_pickle():
    w = WorldTransform(OBLIQUE, frame="RAS", unit="millimeter")
    vol = open_any(np.zeros((3, 4, 5), np.uint8))
    vol.world = w
    assert vol.voxel_size == pytest.approx(w.voxel_size) and vol.unit == "millimeter"
    assert pickle.loads(pickle.dumps(vol)).world == w


# -- OME-Zarr ----------------------------------------------------------------------------------
def test_omezarr_reads_back_the_stored_world_per_level(tmp_path):
    from ml4paleo import formats as omezarr

    w = WorldTransform(OBLIQUE, frame="RAS", unit="millimeter", source="sform",
                       sform_code=2, qform_code=1)
    data = ramp_volume((80, 20, 20), np.uint16)
    img = omezarr.create_image(tmp_path / "i.ome.zarr", data.shape, data.dtype, chunks=16,
                               voxel_size=w.voxel_size, unit="millimeter",
                               extra_attrs={ZARR_WORLD_KEY: w.to_json()})
    img.array[:] = data
    with open_any(tmp_path / "i.ome.zarr") as v:
        assert v.world == w
        assert v.voxel_size == pytest.approx(w.voxel_size)
    with open_any(tmp_path / "i.ome.zarr", level=1) as v:
        assert v.world.allclose(w.for_level(1, "mean"), atol=1e-12)
    omezarr.create_image(tmp_path / "l.ome.zarr", data.shape, np.uint8, chunks=16,
                         voxel_size=w.voxel_size, unit="millimeter", label=True,
                         extra_attrs={ZARR_WORLD_KEY: w.to_json()})
    with open_any(tmp_path / "l.ome.zarr", level=1) as v:
        assert v.world.allclose(w.for_level(1, "nearest"), atol=1e-12)


def test_omezarr_without_our_world_uses_ngff_scale_and_translation(tmp_path):
    from ml4paleo import formats as omezarr

    img = omezarr.create_image(tmp_path / "n.ome.zarr", (8, 8, 8), np.uint8, chunks=8,
                               voxel_size=(3.0, 2.0, 1.0), unit="micrometer", pyramid=False)
    # as another writer leaves it: NGFF transformations only, no ml4paleo world
    ms = dict(img.attrs)["multiscales"]
    ms[0]["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [3.0, 2.0, 1.0]},
        {"type": "translation", "translation": [30.0, 20.0, 10.0]}]
    img.group.attrs["multiscales"] = ms
    del img.group.attrs["ml4paleo"]
    with open_any(tmp_path / "n.ome.zarr") as v:
        assert v.world.source == "ngff" and v.world.unit == "micrometer"
        assert v.world.origin == (10.0, 20.0, 30.0) and v.voxel_size == (3.0, 2.0, 1.0)


# -- the CLI -----------------------------------------------------------------------------------
def test_info_command_prints_the_world(tmp_path):
    from ml4paleo.cli import main

    path = tmp_path / "las.nii"
    _marker_nifti(path, LAS)
    res = CliRunner().invoke(main, ["info", str(path)])
    assert res.exit_code == 0, res.output
    world = json.loads(res.output)["world"]
    assert world["orientation"] == "LAS" and world["frame"] == "RAS"
    assert world["source"] == "sform" and world["sform_code"] == 2
    np.testing.assert_allclose(world["affine"], LAS, atol=1e-6)
