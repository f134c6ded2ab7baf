"""Results land where the scan is (issue 12, writer side), checked with independent readers.

A left-right flipped (LAS) NIfTI, an oblique (rotated) NIfTI with an offset origin and
anisotropic voxels, and a DICOM series with a non-axial orientation (pydicom's real CT
slice with its IOP/IPP rewritten) go through convert -> train + segment (the real
``segment()``) -> export / mesh, and the results are read back with nibabel, SimpleITK,
ome-zarr-py, ome-zarr-models, pymeshlab, trimesh and the Khronos glTF validator (node).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh

from ml4paleo.convert import convert
from ml4paleo.export import export
from ml4paleo.formats import (
    create_image,
    create_labels,
    label_classes,
    label_names,
    open_image,
)
from ml4paleo.io import open_any
from ml4paleo.meshing import mesh, read_stats_csv
from ml4paleo.segmentation import segment, train
from ml4paleo.world import WorldTransform

REPO = Path(__file__).resolve().parents[1]
CLASSES = [{"name": "matrix", "color": "#202020"}, {"name": "shell", "color": "#e11d48"}]


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
            @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def _affine(linear, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


LAS = _affine(np.diag([-0.8, 0.7, 1.1]), (60.0, -80.0, -40.0))
OBLIQUE = _affine(_rotation(0.2, -0.35, 0.5) @ np.diag([0.6, 0.45, 1.3]), (-98.0, -134.0, -72.0))


def _object(shape_zyx) -> np.ndarray:
    """An off-centre ellipsoid (so flips and rotations show), (z, y, x) bool."""
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    c = [s * f for s, f in zip(shape_zyx, (0.45, 0.4, 0.6), strict=True)]
    r = [s * f for s, f in zip(shape_zyx, (0.3, 0.25, 0.22), strict=True)]
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1


def _nifti(path: Path, affine: np.ndarray, shape_zyx=(18, 30, 28)) -> np.ndarray:
    truth = _object(shape_zyx)
    rng = np.random.default_rng(5)
    data = (rng.normal(100, 8, shape_zyx) + 400 * truth).astype(np.int16)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), None)
    img.header.set_sform(affine, code=2)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return truth


def _dicom(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A non-axial series from pydicom's real CT slice (oblique rows and columns)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir()
    c, s, t = np.cos(0.4), np.sin(0.4), 0.3
    iop = (c, s, 0.0, -s * np.cos(t), c * np.cos(t), -np.sin(t))
    normal = np.cross(iop[:3], iop[3:])
    step = 1.75 * normal / np.linalg.norm(normal)
    first = np.array([-120.5, 33.25, 410.0])
    series = generate_uid()
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    base = src.pixel_array.astype(np.int32)
    n = 8
    truth = np.zeros((n, *base.shape), bool)
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in first + k * step]
        ds.InstanceNumber = k + 1
        del ds.SliceLocation
        plane = base.copy()
        plane[:, :] = 200  # a uniform field with a bright block that moves with k
        plane[30 + k:80, 40:90 - k] = 1400
        truth[k] = plane > 800
        ds.PixelData = plane.astype(src.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"s{k:02d}.dcm")
    return truth, np.array(iop)


def _pipeline(source: Path, root: Path, truth: np.ndarray):
    """convert -> train on two slices -> segment into image/labels/seg1 (the real library)."""
    image = convert(source, root / "image.ome.zarr", chunks=16)
    data = np.asarray(image.array[:])
    assert data.shape == truth.shape
    sparse = np.zeros(truth.shape, np.uint8)
    for z in (truth.shape[0] // 3, 2 * truth.shape[0] // 3):
        sparse[z] = truth[z].astype(np.uint8) + 1
    model = train(image, sparse, classes=CLASSES, preview=True)
    labels = segment(image.path, model, image.path / "labels" / "seg1", chunk_size=16,
                     executor="serial")
    seg = np.asarray(labels.array[:])
    assert (seg == truth).mean() > 0.97, (seg == truth).mean()
    return image, labels, seg


def _object_world_bounds(points_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points_xyz.min(axis=0), points_xyz.max(axis=0)


def _check_ngff(image_path: Path, label_name: str) -> None:
    """ome-zarr-models validates everything we wrote; ome-zarr-py finds the labels from
    the image with names and colours."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models import open_ome_zarr

    kinds = {p: type(open_ome_zarr(zarr.open_group(str(image_path / p), mode="r"))).__name__
             for p in ("", "labels", f"labels/{label_name}")}
    assert kinds == {"": "Image", "labels": "Labels", f"labels/{label_name}": "ImageLabel"}
    nodes = list(Reader(parse_url(str(image_path)))())
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert [n.metadata["name"] for n in label_nodes] == [label_name]
    meta = label_nodes[0].metadata
    assert {k: v["class"] for k, v in meta["properties"].items()} == {0: "matrix", 1: "shell"}
    # the UI's class colours, as ome-zarr-py hands them to napari (0..1 RGBA)
    np.testing.assert_allclose(meta["color"][1], [0xE1 / 255, 0x1D / 255, 0x48 / 255, 1.0])
    assert meta["color"][0][3] == 0  # background transparent over the scan


# --------------------------------------------------------------------------- NIfTI round trips
@pytest.mark.parametrize("name,affine", [("las", LAS), ("oblique", OBLIQUE)])
def test_nifti_round_trip_lands_on_the_source(tmp_path, name, affine):
    sitk = pytest.importorskip("SimpleITK")
    src = tmp_path / f"{name}.nii.gz"
    truth = _nifti(src, affine)
    image, labels, seg = _pipeline(src, tmp_path, truth)
    source = nib.load(src)

    # OME-Zarr: the full affine in our key, NGFF scale + translation, both stores valid
    assert image.world.allclose(WorldTransform.from_json(image.attrs["ml4paleo"]["world"]))
    np.testing.assert_allclose(image.world.affine, source.affine, atol=1e-5)
    assert labels.world.allclose(image.world, atol=1e-9)
    ds0 = image.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert ds0[1]["translation"] == pytest.approx(list(source.affine[:3, 3][::-1]), abs=1e-5)
    _check_ngff(image.path, "seg1")
    assert label_names(image.path) == ["seg1"]

    # NIfTI export of the labels: the source's affine, codes, intent LABEL, integers
    out = export("nifti", labels.path, tmp_path / "labels.nii.gz")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    assert back.header.get_intent()[0] == "label"
    assert back.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(source.affine)
    exported = np.asarray(back.dataobj)  # (i, j, k) = (x, y, z): the source's grid
    src_truth = np.asarray(source.dataobj) > 300
    assert exported.shape == src_truth.shape
    assert ((exported == 1) == src_truth).mean() > 0.97  # overlays the object, voxel for voxel
    # SimpleITK reads it where it reads the source (LPS origin, direction, spacing)
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-4)
    # the image's NIfTI export too
    img_back = nib.load(export("nifti", image.path, tmp_path / "image.nii.gz"))
    np.testing.assert_allclose(img_back.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img_back.dataobj), np.asarray(source.dataobj))

    # meshes in world (RAS mm) coordinates: bounds within a voxel of the object's
    summary = mesh(labels.path, tmp_path / "meshes", formats=("stl", "ply", "obj", "glb"),
                   chunk_size=16, executor="serial")
    assert (summary["space"], summary["unit"], summary["frame"]) == ("world", "millimeter", "RAS")
    ijk = np.argwhere(exported == 1)
    lo, hi = _object_world_bounds(nib.affines.apply_affine(source.affine, ijk))
    voxel = float(np.max(np.linalg.norm(source.affine[:3, :3], axis=0)))
    stl = trimesh.load(tmp_path / "meshes" / "1.stl")
    np.testing.assert_allclose(stl.bounds[0], lo, atol=voxel)
    np.testing.assert_allclose(stl.bounds[1], hi, atol=voxel)
    assert stl.is_watertight and stl.is_winding_consistent
    assert stl.volume > 0  # outward normals, also after the flipped (det < 0) LAS affine
    assert stl.volume == pytest.approx(summary["stats"][0]["mesh_volume"], rel=1e-4)
    header = (tmp_path / "meshes" / "1.stl").read_bytes()[:80].rstrip(b"\0").decode()
    assert header == ("ml4paleo label=1 class=shell space=world unit=millimeter frame=RAS "
                      f"orientation={''.join(nib.aff2axcodes(source.affine))}")[:80]
    _check_meshlab(tmp_path / "meshes")
    _check_glb(tmp_path / "meshes" / "1.glb", stl.bounds, 1e-3, "RAS")

    # stats: units in the headers, class names, world bounding box
    rows = read_stats_csv(tmp_path / "meshes" / "stats.csv", typed=True)
    head = (tmp_path / "meshes" / "stats.csv").read_text().splitlines()[0].split(",")
    assert {"volume_mm3", "surface_area_mm2", "mesh_volume_mm3", "min_x_mm", "class"} <= set(head)
    assert rows[0]["class"] == "shell" and rows[0]["unit"] == "millimeter"
    vox_volume = abs(np.linalg.det(source.affine[:3, :3]))
    assert rows[0]["volume"] == pytest.approx(int((seg == 1).sum()) * vox_volume, rel=1e-6)
    # the world box of the index box of the object's voxel centres (a rotated box's bounds)
    corners = np.array([[(ijk.max(0) if (k >> a) & 1 else ijk.min(0))[a] for a in range(3)]
                        for k in range(8)])
    box = nib.affines.apply_affine(source.affine, corners)
    np.testing.assert_allclose([rows[0][f"min_{a}"] for a in "xyz"], box.min(0), atol=1e-6)
    np.testing.assert_allclose([rows[0][f"max_{a}"] for a in "xyz"], box.max(0), atol=1e-6)


def _check_meshlab(folder: Path) -> None:
    pymeshlab = pytest.importorskip("pymeshlab")
    for name in ("1.stl", "1.ply"):
        ms = pymeshlab.MeshSet()
        ms.load_new_mesh(str(folder / name))
        if name.endswith(".stl"):  # STL repeats vertices per facet
            ms.meshing_merge_close_vertices(threshold=pymeshlab.PercentageValue(0.0001))
        topo = ms.get_topological_measures()
        assert topo["boundary_edges"] == 0, name
        assert topo["non_two_manifold_edges"] == 0 and topo["non_two_manifold_vertices"] == 0
        assert topo["is_mesh_two_manifold"], name


def _glb_json(path: Path) -> dict:
    data = path.read_bytes()
    magic, version, _ = struct.unpack("<III", data[:12])
    assert (magic, version) == (0x46546C67, 2)
    length, kind = struct.unpack("<II", data[12:20])
    assert kind == 0x4E4F534A
    return json.loads(data[20:20 + length])


def _check_glb(path: Path, bounds_unit: np.ndarray, to_m: float, frame: str) -> None:
    """Khronos validator: 0 errors; positions in metres; a y-up root node; extras."""
    node = shutil.which("node")
    module = REPO / "webapp" / "node_modules" / "gltf-validator"
    if node is None or not module.is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and webapp/node_modules/gltf-validator are installed by "
                        "scripts/vendor.sh; missing on CI")
        pytest.skip("node / gltf-validator not installed (bash scripts/vendor.sh)")
    run = subprocess.run([node, str(REPO / "tests" / "js" / "validate_gltf.js"), str(path)],
                         env={**os.environ, "NODE_PATH": str(REPO / "webapp" / "node_modules")},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    gltf = _glb_json(path)
    pos = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    np.testing.assert_allclose(pos["min"], bounds_unit[0] * to_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pos["max"], bounds_unit[1] * to_m, rtol=1e-5, atol=1e-7)
    root = gltf["nodes"][gltf["scenes"][0]["nodes"][0]]
    extras = root["extras"]["ml4paleo"]
    assert extras["unit"] == "meter" and extras["frame"] == frame
    assert extras["scale_to_source_unit"] == pytest.approx(1 / to_m)
    # the root rotation puts the world's +Z (superior) on glTF's +Y
    from scipy.spatial.transform import Rotation

    up = Rotation.from_quat(root["rotation"]).apply([0.0, 0.0, 1.0])
    np.testing.assert_allclose(up, [0.0, 1.0, 0.0], atol=1e-12)
    # and the front (anterior) on glTF's +Z: RAS +Y, LPS -Y
    front = Rotation.from_quat(root["rotation"]).apply([0.0, 1.0 if frame == "RAS" else -1.0,
                                                        0.0])
    np.testing.assert_allclose(front, [0.0, 0.0, 1.0], atol=1e-12)


# --------------------------------------------------------------------------- DICOM round trip
def test_dicom_non_axial_round_trip_lands_on_the_series(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    truth, iop = _dicom(tmp_path / "series")
    image, labels, seg = _pipeline(tmp_path / "series", tmp_path, truth)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    ref = reader.Execute()
    w = image.world
    assert (w.frame, w.unit, w.source) == ("LPS", "millimeter", "dicom")
    assert not w.is_axis_aligned()
    _check_ngff(image.path, "seg1")

    out = export("nifti", labels.path, tmp_path / "labels.nii.gz")
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), seg)  # same (z, y, x) grid
    # nibabel reads the same place, in RAS
    nii = nib.load(out)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(nii.affine, lps_to_ras @ w.affine, atol=1e-4)
    assert int(nii.header["sform_code"]) == 1  # scanner coordinates
    # a voxel is where the DICOM series puts it (SimpleITK's physical point, LPS)
    for idx_xyz in [(0, 0, 0), (17, 40, 5), (100, 3, 7)]:
        p = ref.TransformIndexToPhysicalPoint(idx_xyz)
        q = back.TransformIndexToPhysicalPoint(idx_xyz)
        np.testing.assert_allclose(q, p, atol=1e-4)

    # meshes in the series' LPS millimetres
    summary = mesh(labels.path, tmp_path / "meshes", formats=("stl", "ply", "glb"),
                   chunk_size=32, executor="serial")
    assert summary["frame"] == "LPS"
    zyx = np.argwhere(seg == 1)
    pts = np.array([ref.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1]))
                    for p in zyx[:: max(1, len(zyx) // 4000)]]
                   + [ref.TransformIndexToPhysicalPoint(tuple(int(v) for v in p[::-1]))
                      for p in _extremes(zyx)])
    lo, hi = _object_world_bounds(pts)
    voxel = max(ref.GetSpacing())
    stl = trimesh.load(tmp_path / "meshes" / "1.stl")
    np.testing.assert_allclose(stl.bounds[0], lo, atol=voxel)
    np.testing.assert_allclose(stl.bounds[1], hi, atol=voxel)
    assert stl.is_watertight and stl.volume > 0
    _check_meshlab(tmp_path / "meshes")
    _check_glb(tmp_path / "meshes" / "1.glb", stl.bounds, 1e-3, "LPS")
    ply_head = (tmp_path / "meshes" / "1.ply").read_bytes()[:400]
    assert b"comment ml4paleo label=1 class=shell space=world unit=millimeter frame=LPS" in ply_head

    # the zip of the image: a Zarr store as it is, with its segmentation inside
    _check_zip(export("zarr", image.path, tmp_path / "image.zarr.zip"), seg)


def _extremes(zyx: np.ndarray) -> np.ndarray:
    """Voxels of the object extreme along each world-relevant index combination."""
    keys = [zyx @ np.array(s) for s in
            [(1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1), (1, -1, -1), (-1, 1, -1),
             (-1, -1, 1), (-1, -1, -1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (-1, 0, 0),
             (0, -1, 0), (0, 0, -1)]]
    return np.array([zyx[int(np.argmax(k))] for k in keys])


def _check_zip(path: Path, seg: np.ndarray) -> None:
    import zarr
    from ome_zarr_models import open_ome_zarr

    names = zipfile.ZipFile(path).namelist()
    assert ".zattrs" in names and "labels/.zattrs" in names and "labels/seg1/.zattrs" in names
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        root = zarr.open(store, mode="r")
        assert isinstance(root, zarr.Group) and "multiscales" in root.attrs
        np.testing.assert_array_equal(root["labels/seg1/0"][:], seg)
        assert type(open_ome_zarr(zarr.open_group(store, mode="r"))).__name__ == "Image"
        assert type(open_ome_zarr(zarr.open_group(store, mode="r", path="labels/seg1"))
                    ).__name__ == "ImageLabel"
    finally:
        store.close()
    # ome-zarr-py reads the image and its label straight from the zip (through fsspec;
    # its reader opens sub-groups as local paths, so the label is opened at its own path)
    import fsspec
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from ome_zarr.format import FormatV04
    from ome_zarr.io import ZarrLocation
    from ome_zarr.reader import Label, Reader
    from zarr.storage import FsspecStore

    fs = AsyncFileSystemWrapper(fsspec.filesystem("zip", fo=str(path)))
    for sub, kind in (("", "Multiscales"), ("labels/seg1", "Label")):
        with warnings.catch_warnings():  # some zarr releases warn about the wrapper
            warnings.simplefilter("ignore", UserWarning)
            store = FsspecStore(fs, path=sub, read_only=True)
        node = next(iter(Reader(ZarrLocation(store, fmt=FormatV04()))()))
        assert kind in [type(s).__name__ for s in node.specs]
        if kind == "Label":
            assert any(isinstance(s, Label) for s in node.specs)
            assert node.metadata["properties"][1]["class"] == "shell"
            np.testing.assert_array_equal(np.asarray(node.data[0]), seg)


# --------------------------------------------------------------------------- pyramids
def test_image_and_label_levels_carry_their_world(tmp_path):
    """Mean levels sit half a coarser voxel in, nearest levels on the voxel they copy:
    each level voxel is where the full-resolution voxels it stands for are."""
    w = WorldTransform.from_voxel_size((2.0, 0.5, 0.25), origin=(10.0, -5.0, 3.0),
                                       unit="micrometer")
    img = create_image(tmp_path / "i.ome.zarr", (40, 160, 150), np.uint16, chunks=32, world=w)
    lab = create_labels(img.path / "labels" / "l", classes=["a", "b"], chunks=32)
    assert len(img.levels) == len(lab.levels) == 3
    for level in range(3):
        f = 2 ** level
        ims = img.attrs["multiscales"][0]["datasets"][level]["coordinateTransformations"]
        las = lab.attrs["multiscales"][0]["datasets"][level]["coordinateTransformations"]
        # image: the level voxel (0, 0, 0) is the centre of the f^3 voxels it averages
        centre = w.apply([(f - 1) / 2] * 3)[::-1]
        assert ims[0]["scale"] == pytest.approx([2.0 * f, 0.5 * f, 0.25 * f])
        assert ims[1]["translation"] == pytest.approx(list(centre))
        # labels: the level voxel (0, 0, 0) is full-resolution voxel (0, 0, 0)
        assert las[0]["scale"] == ims[0]["scale"]
        assert las[1]["translation"] == pytest.approx(list(w.origin[::-1]))
        # and our readers agree with the NGFF numbers
        with open_any(img.path, level=level) as v:
            np.testing.assert_allclose(v.world.apply((1, 2, 3)),
                                       w.apply(np.array((1, 2, 3)) * f + (f - 1) / 2))
        with open_any(lab.path, level=level) as v:
            np.testing.assert_allclose(v.world.apply((1, 2, 3)), w.apply(np.array((1, 2, 3)) * f))
    # the label image is listed only when asked (segment() lists it once complete)
    assert label_names(img.path) == ["l"]
    assert label_classes(lab) == [{"name": "a", "color": "#3b82f6"},
                                  {"name": "b", "color": "#f97316"}]


def test_convert_overrides_keep_direction_and_origin(tmp_path):
    src = tmp_path / "o.nii.gz"
    _nifti(src, OBLIQUE, shape_zyx=(6, 8, 7))
    img = convert(src, tmp_path / "o.ome.zarr", voxel_size=(2.0, 1.0, 0.5), unit="micrometer")
    w = img.world
    assert w.unit == "micrometer" and w.voxel_size == pytest.approx((2.0, 1.0, 0.5))
    np.testing.assert_allclose(w.origin, OBLIQUE[:3, 3])
    np.testing.assert_allclose(w.direction, OBLIQUE[:3, :3] / np.linalg.norm(OBLIQUE[:3, :3],
                                                                             axis=0), atol=1e-6)
    axes = img.attrs["multiscales"][0]["axes"]
    assert [a["unit"] for a in axes] == ["micrometer"] * 3


# --------------------------------------------------------------------------- standalone labels
def test_cli_segment_writes_a_standalone_ngff_label_image(tmp_path):
    from click.testing import CliRunner

    from ml4paleo.cli import main

    src = tmp_path / "s.nii.gz"
    truth = _nifti(src, LAS, shape_zyx=(12, 20, 18))
    sparse = np.zeros(truth.shape, np.uint8)
    sparse[4] = truth[4] + 1
    sparse[8] = truth[8] + 1
    with open_any(src) as v:
        model = train(v, sparse, classes=CLASSES, preview=True)
    model.save(tmp_path / "model")
    res = CliRunner().invoke(main, ["segment", str(src), "--model", str(tmp_path / "model"),
                                    "-o", str(tmp_path / "labels.ome.zarr"), "--chunk-size",
                                    "16", "--quiet"])
    assert res.exit_code == 0, res.output
    lab = open_image(tmp_path / "labels.ome.zarr")
    assert [c["name"] for c in label_classes(lab)] == ["matrix", "shell"]
    np.testing.assert_allclose(lab.world.affine, nib.load(src).affine, atol=1e-5)
    from ome_zarr_models import open_ome_zarr

    assert type(open_ome_zarr(tmp_path / "labels.ome.zarr")).__name__ == "ImageLabel"
    # the report on the label image names the classes (not "label 1")
    from ml4paleo.report import class_table, collect

    data = collect(tmp_path / "labels.ome.zarr")
    _, rows = class_table(data)
    assert [r[0] for r in rows] == ["shell"]
    # and its stats CSV holds the class column and units
    text = export("stats", tmp_path / "labels.ome.zarr", tmp_path / "s.csv").read_text()
    header, first = text.splitlines()[:2]
    assert header.startswith("label,class,voxel_count,volume_mm3,")
    assert first.startswith("1,shell,")


# --------------------------------------------------------------------------- stacks
def test_png_stack_has_phys_and_8_bit_tiff_stays_8_bit(tmp_path):
    import tifffile

    data = (np.arange(4 * 6 * 5) % 251).astype(np.uint8).reshape(4, 6, 5)
    img = create_image(tmp_path / "u8.ome.zarr", data.shape, np.uint8, pyramid=False,
                       voxel_size=(2.0, 0.5, 0.25), unit="micrometer")
    img.array[:] = data
    zf = zipfile.ZipFile(export("tiff", img.path, tmp_path / "t.zip"))
    tifs = sorted(n for n in zf.namelist() if n.endswith(".tif"))
    stack = np.stack([tifffile.imread(io.BytesIO(zf.read(n))) for n in tifs])
    assert stack.dtype == np.uint8
    np.testing.assert_array_equal(stack, data)
    zf = zipfile.ZipFile(export("png", img.path, tmp_path / "p.zip"))
    (tmp_path / "png").mkdir()
    for n in (n for n in zf.namelist() if n.endswith(".png")):
        (tmp_path / "png" / Path(n).name).write_bytes(zf.read(n))
    first = sorted((tmp_path / "png").iterdir())[0].read_bytes()
    at = first.index(b"pHYs")
    ppx, ppy, spec = struct.unpack(">IIB", first[at + 4:at + 13])
    assert (ppx, ppy, spec) == (4_000_000, 2_000_000, 1)  # 0.25 um, 0.5 um per pixel
    from PIL import Image

    Image.open(io.BytesIO(first)).load()  # a valid PNG (CRC checked)
    with open_any(tmp_path / "png") as v:  # and our own reader reads the pixel size back
        assert v.voxel_size[1:] == pytest.approx((0.5, 0.25))
        assert v.unit == "micrometer"


# --------------------------------------------------------------------------- older labels
def test_attach_labels_upgrades_a_label_image_of_an_older_version(tmp_path):
    """A segmentation written before labels were NGFF labels of their image (beside it, only
    ``image-label.version``, classes in ``model_classes``) gets the image's world, names,
    colours and a source that finds the image."""
    from concurrent.futures import ThreadPoolExecutor

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from ml4paleo.formats import attach_labels, register_label, unregister_label

    w = WorldTransform(_affine(_rotation(0.0, 0.0, 0.3) @ np.diag([0.5, 0.5, 2.0]),
                               (5.0, 6.0, 7.0)), frame="RAS", unit="millimeter", source="sform")
    img = create_image(tmp_path / "job" / "image.ome.zarr", (8, 20, 20), np.uint16, chunks=8,
                       world=w, pyramid=False)
    old = create_image(tmp_path / "job" / "segmentations" / "s1" / "labels.ome.zarr",
                       (8, 20, 20), np.uint8, chunks=8, label=True, pyramid=False,
                       extra_attrs={"model_classes": CLASSES})
    old.group.attrs["ml4paleo"] = {"model_classes": CLASSES}  # as older versions left it
    old.array[2:5, 4:9, 4:9] = 1
    attach_labels(old.path, image=img)
    back = open_image(old.path)
    assert back.world.allclose(w, atol=1e-12)
    assert [c["name"] for c in label_classes(back)] == ["matrix", "shell"]
    assert back.attrs["image-label"]["source"] == {"image": "../../../image.ome.zarr/"}
    assert label_names(img.path) == []  # not inside the image: nothing listed there
    nodes = list(Reader(parse_url(str(old.path)))())
    assert any("multiscales" in n.zarr.root_attrs and "image-label" not in n.zarr.root_attrs
               for n in nodes)  # ome-zarr-py followed the source to the image
    # listing labels is idempotent and safe from several writers at once
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: register_label(img, f"s{i % 5}"), range(40)))
    assert sorted(label_names(img.path)) == [f"s{i}" for i in range(5)]
    assert unregister_label(img, "s3") == [n for n in label_names(img.path)]
    assert "s3" not in label_names(img.path)
