"""ml4paleo.world: the voxel -> world transform, checked against nibabel, SimpleITK and numbers
worked out by hand."""

from __future__ import annotations

import json
import pickle

import nibabel as nib
import numpy as np
import pytest

from ml4paleo.world import WorldTransform, normalize_unit, unit_factor


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine() -> np.ndarray:
    """Rotated (not axis aligned), offset origin, anisotropic voxels (x 0.3, y 0.4, z 1.5)."""
    a = np.eye(4)
    a[:3, :3] = rotation(0.2, -0.35, 0.5) @ np.diag([0.3, 0.4, 1.5])
    a[:3, 3] = (-98.0, -134.0, -72.0)
    return a


# -- construction ------------------------------------------------------------------------------
def test_from_voxel_size_maps_zyx_indices_to_xyz_world():
    w = WorldTransform.from_voxel_size((2.0, 0.5, 0.25), origin=(10.0, 20.0, 30.0),
                                       unit="micrometer")
    np.testing.assert_array_equal(w.affine, [[0.25, 0, 0, 10], [0, 0.5, 0, 20], [0, 0, 2.0, 30],
                                             [0, 0, 0, 1]])
    assert w.voxel_size == (2.0, 0.5, 0.25)
    assert w.origin == (10.0, 20.0, 30.0)
    assert w.frame is None and w.orientation is None and w.unit == "micrometer"
    assert w.source == "voxel_size" and w.assumed == frozenset()
    # voxel z=1, y=2, x=4 -> X = 10 + 4 * 0.25, Y = 20 + 2 * 0.5, Z = 30 + 1 * 2
    np.testing.assert_allclose(w.apply((1, 2, 4)), (11.0, 21.0, 32.0))
    np.testing.assert_allclose(w.apply([(0, 0, 0), (1, 2, 4)]), [(10, 20, 30), (11, 21, 32)])
    np.testing.assert_allclose(w.index_of((11.0, 21.0, 32.0)), (1, 2, 4))
    assert w.is_axis_aligned() and w.ngff_is_exact()


def test_unknown_voxel_size_and_origin_are_flagged_as_assumed():
    w = WorldTransform.from_voxel_size(None)
    assert w.voxel_size == (1.0, 1.0, 1.0) and w.unit is None
    assert w.assumed == {"voxel_size", "origin"}


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, -1, 1), (1, 1), (1, float("nan"), 1)])
def test_bad_voxel_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="voxel_size must be three positive numbers"):
        WorldTransform.from_voxel_size(bad)


def test_invalid_transforms_are_refused():
    with pytest.raises(ValueError, match="singular"):
        WorldTransform(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="last row"):
        WorldTransform(np.ones((4, 4)))
    with pytest.raises(ValueError, match="frame"):
        WorldTransform(np.eye(4), frame="RAI")
    with pytest.raises(ValueError, match="unit"):
        WorldTransform(np.eye(4), unit="pixel")


def test_immutable_and_hashable():
    w = WorldTransform.from_voxel_size((1, 2, 3))
    with pytest.raises(AttributeError, match="immutable"):
        w.unit = "meter"
    with pytest.raises(ValueError):
        w.affine[0, 0] = 5.0
    assert hash(w) == hash(WorldTransform.from_voxel_size((1, 2, 3)))
    assert w == WorldTransform.from_voxel_size((1, 2, 3))
    assert w != WorldTransform.from_voxel_size((1, 2, 4))


def test_json_and_pickle_round_trip_exactly():
    src = WorldTransform(oblique_affine(), frame="RAS", unit="millimeter", source="sform",
                         assumed={"unit"}, sform_code=2, qform_code=1,
                         qform=np.diag([0.3, 0.4, 1.5, 1.0]))
    text = json.dumps(src.to_json())
    back = WorldTransform.from_json(json.loads(text))
    assert back == src
    np.testing.assert_array_equal(back.affine, src.affine)
    np.testing.assert_array_equal(back.qform, src.qform)
    assert (back.sform_code, back.qform_code, back.assumed) == (2, 1, {"unit"})
    assert pickle.loads(pickle.dumps(src)) == src
    with pytest.raises(ValueError, match="version"):
        WorldTransform.from_json({**src.to_json(), "version": 99})


# -- orientation -------------------------------------------------------------------------------
def test_orientation_codes_match_nibabel_for_flips_and_rotations():
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = np.eye(4)
        flips = np.diag(rng.choice([-1.0, 1.0], 3))
        perm = np.eye(3)[rng.permutation(3)]
        a[:3, :3] = rotation(*rng.uniform(-0.6, 0.6, 3)) @ perm @ flips @ np.diag(
            rng.uniform(0.1, 3.0, 3))
        a[:3, 3] = rng.uniform(-100, 100, 3)
        w = WorldTransform(a, frame="RAS")
        assert w.orientation == "".join(nib.aff2axcodes(a))
        np.testing.assert_allclose(w.voxel_size[::-1], nib.affines.voxel_sizes(a))


def test_las_and_lps_orientation():
    las = np.diag([-0.5, 0.5, 2.0, 1.0])
    w = WorldTransform(las, frame="RAS")
    assert w.orientation == "LAS" and w.is_axis_aligned() and not w.ngff_is_exact()
    # the same grid in DICOM's LPS frame: rows and columns flip, the anatomy does not
    lps = w.to_lps()
    assert lps.frame == "LPS" and lps.orientation == "LAS"
    np.testing.assert_allclose(lps.affine, np.diag([0.5, -0.5, 2.0, 1.0]))
    assert lps.to_ras() == w


def test_ras_lps_conversion_moves_points_by_flipping_x_and_y():
    w = WorldTransform(oblique_affine(), frame="RAS", unit="millimeter")
    pts = np.array([(0, 0, 0), (3, 4, 5), (10.5, 2.25, 7)])
    ras, lps = w.apply(pts), w.to_lps().apply(pts)
    np.testing.assert_allclose(lps, ras * (-1, -1, 1))
    assert w.to_lps().orientation == w.orientation
    frameless = WorldTransform.from_voxel_size((1, 1, 1))
    assert frameless.to_ras().frame == "RAS" and "frame" in frameless.to_ras().assumed
    np.testing.assert_allclose(frameless.to_lps().affine, np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_affine_zyx_is_the_napari_order():
    w = WorldTransform(oblique_affine(), frame="RAS")
    pts = np.array([[2.0, 3.0, 4.0], [7.0, 1.0, 9.0]])
    homog = np.c_[pts, np.ones(2)]
    np.testing.assert_allclose((homog @ w.affine_zyx.T)[:, :3], w.apply(pts)[:, ::-1])


# -- NIfTI -------------------------------------------------------------------------------------
def _nifti_header(affine, *, sform_code=2, qform_code=0, qform=None, units="mm"):
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    img.header.set_qform(qform if qform is not None else affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_xyzt_units(units)
    return img.header


def test_from_nifti_prefers_sform_by_code_and_keeps_both_codes():
    q = np.diag([0.3, 0.4, 1.5, 1.0])
    q[:3, 3] = (1, 2, 3)
    h = _nifti_header(oblique_affine(), sform_code=2, qform_code=1, qform=q)
    w = WorldTransform.from_nifti(h)
    assert (w.source, w.frame, w.unit, w.sform_code, w.qform_code) == ("sform", "RAS",
                                                                       "millimeter", 2, 1)
    np.testing.assert_allclose(w.affine, h.get_sform(), atol=1e-6)
    np.testing.assert_allclose(w.qform, h.get_qform(), atol=1e-6)
    out = w.to_nifti()
    assert (out["sform_code"], out["qform_code"], out["xyzt_units"]) == (2, 1, "mm")
    np.testing.assert_allclose(out["qform"], h.get_qform(), atol=1e-6)


def test_from_nifti_falls_back_to_qform_then_pixdim():
    h = _nifti_header(oblique_affine(), sform_code=0, qform_code=1)
    w = WorldTransform.from_nifti(h)
    assert w.source == "qform" and (w.sform_code, w.qform_code) == (0, 1)
    np.testing.assert_allclose(w.affine, h.get_qform(), atol=1e-5)
    h = _nifti_header(np.diag([0.3, 0.4, 1.5, 1.0]), sform_code=0, qform_code=0)
    h.set_zooms((0.3, 0.4, 1.5))
    w = WorldTransform.from_nifti(h)
    # NIfTI "method 1", what ITK reads (nibabel itself centres and flips such images)
    assert w.source == "pixdim" and "origin" in w.assumed
    np.testing.assert_allclose(w.affine, np.diag([0.3, 0.4, 1.5, 1.0]), atol=1e-7)
    assert (w.to_nifti()["sform_code"], w.to_nifti()["qform_code"]) == (2, 2)


def test_nifti_unknown_units_are_assumed_millimetre_and_micron_is_micrometre():
    w = WorldTransform.from_nifti(_nifti_header(np.eye(4), units="unknown"))
    assert w.unit == "millimeter" and w.assumed == {"unit"}
    w = WorldTransform.from_nifti(_nifti_header(np.diag([10.0, 10.0, 20.0, 1.0]), units="micron"))
    assert w.unit == "micrometer" and w.voxel_size == pytest.approx((20.0, 10.0, 10.0))
    out = w.to_nifti()  # NIfTI readers assume mm: exported in mm
    np.testing.assert_allclose(out["sform"], np.diag([0.01, 0.01, 0.02, 1.0]))
    assert out["xyzt_units"] == "mm"
    assert w.to_nifti(unit="micrometer")["xyzt_units"] == "micron"


def test_to_nifti_round_trips_through_nibabel(tmp_path):
    for affine in (oblique_affine(), np.diag([-0.5, 0.5, 2.0, 1.0])):
        h = _nifti_header(affine, sform_code=1, qform_code=1)
        w = WorldTransform.from_nifti(h)
        out = w.to_nifti()
        img = nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), None)
        img.header.set_sform(out["sform"], out["sform_code"])
        img.header.set_qform(out["qform"], out["qform_code"])
        img.header.set_xyzt_units(out["xyzt_units"])
        nib.save(img, tmp_path / "x.nii")
        back = nib.load(tmp_path / "x.nii")
        np.testing.assert_allclose(back.affine, affine, atol=1e-4)
        np.testing.assert_allclose(back.header.get_qform(), affine, atol=1e-4)
        assert "".join(nib.aff2axcodes(back.affine)) == w.orientation
        assert WorldTransform.from_nifti(back.header).allclose(w, atol=1e-5)


def test_simpleitk_reads_the_same_geometry_from_a_nifti(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    for affine in (oblique_affine(), np.diag([-0.5, 0.5, 2.0, 1.0])):
        img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, tmp_path / "s.nii.gz")
        w = WorldTransform.from_nifti(nib.load(tmp_path / "s.nii.gz").header)
        ref = sitk.ReadImage(str(tmp_path / "s.nii.gz"))
        got = w.to_sitk()
        np.testing.assert_allclose(got["origin"], ref.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(got["spacing"], ref.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(got["direction"], ref.GetDirection(), atol=1e-5)
        # ITK index (x, y, z) -> LPS point equals ours
        for zyx in [(0, 0, 0), (3, 4, 5), (1.5, 2.5, 0.25)]:
            lps = ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])
            np.testing.assert_allclose(w.to_lps().apply(zyx), lps, atol=1e-4)


def test_to_sitk_builds_an_image_that_simpleitk_writes_as_the_same_nifti(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    w = WorldTransform(oblique_affine(), frame="RAS", unit="millimeter")
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (z, y, x)
    image = sitk.GetImageFromArray(arr)
    d = w.to_sitk()
    image.SetOrigin(d["origin"])
    image.SetSpacing(d["spacing"])
    image.SetDirection(d["direction"])
    sitk.WriteImage(image, str(tmp_path / "itk.nii.gz"))
    back = nib.load(tmp_path / "itk.nii.gz")
    np.testing.assert_allclose(back.affine, w.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), arr)


def test_to_sitk_refuses_a_sheared_grid():
    a = np.eye(4)
    a[:3, 2] = (0.0, 0.3, 1.0)  # gantry tilt: slices step off the normal
    with pytest.raises(ValueError, match="sheared"):
        WorldTransform(a, frame="LPS", unit="millimeter").to_sitk()


# -- DICOM -------------------------------------------------------------------------------------
def test_from_dicom_matches_the_hand_computed_affine():
    # a sagittal series: rows run along -Y (anterior), columns along -Z (down)
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    w = WorldTransform.from_dicom((12.0, -80.5, 95.0), iop, (0.8, 0.6), 1.25)
    # normal = row x col = (0,1,0) x (0,0,-1) = (-1, 0, 0)
    expected = np.array([[0.0, 0.0, -1.25, 12.0],
                         [0.6, 0.0, 0.0, -80.5],
                         [0.0, -0.8, 0.0, 95.0],
                         [0, 0, 0, 1]])
    np.testing.assert_allclose(w.affine, expected)
    assert (w.frame, w.unit, w.source) == ("LPS", "millimeter", "dicom")
    assert w.voxel_size == pytest.approx((1.25, 0.8, 0.6))
    # x -> posterior, y -> inferior, z -> right
    assert w.orientation == "PIR"
    # pixel (row 10, column 20) of slice 3
    np.testing.assert_allclose(w.apply((3, 10, 20)), (12.0 - 3 * 1.25, -80.5 + 20 * 0.6,
                                                      95.0 - 10 * 0.8))
    with pytest.raises(ValueError, match="parallel"):
        WorldTransform.from_dicom((0, 0, 0), (1, 0, 0, 1, 0, 0), (1, 1), 1)


# -- pyramids and NGFF -------------------------------------------------------------------------
def test_ngff_scale_translation_offsets_mean_levels_by_half_the_coarser_voxel():
    w = WorldTransform.from_voxel_size((4.0, 2.0, 1.0), origin=(100.0, 200.0, 300.0),
                                       unit="micrometer")
    assert w.ngff_scale_translation(0) == ([4.0, 2.0, 1.0], [300.0, 200.0, 100.0])
    # level n: (2^n - 1) / 2 full-resolution voxels in
    assert w.ngff_scale_translation(1) == ([8.0, 4.0, 2.0], [302.0, 201.0, 100.5])
    assert w.ngff_scale_translation(3) == ([32.0, 16.0, 8.0], [314.0, 207.0, 103.5])
    assert w.ngff_scale_translation(2, "nearest") == ([16.0, 8.0, 4.0], [300.0, 200.0, 100.0])
    assert w.ngff_transformations(1) == [
        {"type": "scale", "scale": [8.0, 4.0, 2.0]},
        {"type": "translation", "translation": [302.0, 201.0, 100.5]},
    ]
    with pytest.raises(ValueError, match="downsample"):
        w.ngff_scale_translation(1, "median")


@pytest.mark.parametrize("label", [False, True])
def test_level_transform_places_downsampled_voxels_where_their_data_came_from(label):
    """A volume whose value is its voxel's world X: each pyramid level's value at a voxel
    must equal for_level()'s world X of that voxel (mean: block centres; nearest: corners)."""
    from ml4paleo.formats import downsample2

    w = WorldTransform(oblique_affine(), frame="RAS", unit="millimeter")
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (16, 16, 16)),
                             indexing="ij")
    world_x = w.apply(np.stack([zz, yy, xx], -1))[..., 0]
    level = world_x
    for n in (1, 2, 3):
        level = downsample2(level, label)
        lw = w.for_level(n, "nearest" if label else "mean")
        idx = np.stack(np.meshgrid(*(np.arange(s) for s in level.shape), indexing="ij"), -1)
        np.testing.assert_allclose(lw.apply(idx)[..., 0], level, atol=1e-9)
        np.testing.assert_allclose(lw.voxel_size, np.array(w.voxel_size) * 2**n)
    assert w.for_level(2).allclose(w.for_level(1).for_level(1), atol=1e-12)


def test_ngff_translation_matches_for_level_when_axis_aligned():
    w = WorldTransform.from_voxel_size((1.5, 0.5, 0.25), origin=(-5.0, 7.0, 2.0))
    for n in range(4):
        scale, translation = w.ngff_scale_translation(n)
        lw = w.for_level(n)
        assert scale == pytest.approx(lw.voxel_size)
        assert translation == pytest.approx(lw.origin[::-1])


def test_from_ngff_reads_zyx_scale_and_translation():
    w = WorldTransform.from_ngff([3.0, 2.0, 1.0], [30.0, 20.0, 10.0], unit="micrometer")
    assert w.voxel_size == (3.0, 2.0, 1.0) and w.origin == (10.0, 20.0, 30.0)
    assert w.source == "ngff" and w.ngff_scale_translation(0) == ([3.0, 2.0, 1.0],
                                                                  [30.0, 20.0, 10.0])


# -- units and overrides -----------------------------------------------------------------------
def test_units():
    assert unit_factor("millimeter", "micrometer") == pytest.approx(1000.0)
    assert unit_factor("micrometer", "meter") == pytest.approx(1e-6)
    assert normalize_unit("µm") == "micrometer" and normalize_unit("pixel") is None
    with pytest.raises(ValueError, match="unknown length unit"):
        unit_factor("pixel", "meter")
    w = WorldTransform.from_voxel_size((10.0, 5.0, 5.0), origin=(1000.0, 0.0, 0.0),
                                       unit="micrometer")
    m = w.in_unit("millimeter")
    assert m.unit == "millimeter" and m.voxel_size == pytest.approx((0.01, 0.005, 0.005))
    assert m.origin == pytest.approx((1.0, 0.0, 0.0))
    np.testing.assert_allclose(m.apply((3, 2, 1)) * 1000.0, w.apply((3, 2, 1)))
    with pytest.raises(ValueError, match="voxel units"):
        WorldTransform.from_voxel_size(None).in_unit("meter")


def test_with_voxel_size_keeps_direction_and_origin():
    w = WorldTransform(oblique_affine(), frame="RAS", unit="millimeter")
    v = w.with_voxel_size((3.0, 0.8, 0.6), unit="micrometer")
    assert v.voxel_size == pytest.approx((3.0, 0.8, 0.6)) and v.unit == "micrometer"
    np.testing.assert_allclose(v.direction, w.direction)
    assert v.origin == pytest.approx(w.origin) and v.orientation == w.orientation


def test_an_unusable_sform_falls_back_to_the_qform():
    h = _nifti_header(np.diag([0.5, 0.5, 2.0, 1.0]), sform_code=1, qform_code=1)
    h["srow_x"][:] = 0  # a broken file: sform claims a code but is singular
    w = WorldTransform.from_nifti(h)
    assert w.source == "qform" and w.sform_code == 1
    np.testing.assert_allclose(w.affine, np.diag([0.5, 0.5, 2.0, 1.0]), atol=1e-7)
