"""Blockwise meshing: closed, seam-free, physical units, equal to whole-volume meshing."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from scipy import ndimage
from skimage.measure import marching_cubes

from ml4paleo.formats import create_image
from ml4paleo.meshing import MESH_FORMATS, STATS_COLUMNS, label_stats, mesh
from ml4paleo.meshing.stats import csv_header, row_key

VOXEL = (1.5, 0.5, 1.0)  # z, y, x: anisotropic on purpose


def _grid(shape):
    return np.ogrid[: shape[0], : shape[1], : shape[2]]


def sphere(shape=(30, 31, 29), centre=(14.3, 15.6, 13.2), radius=9.5):
    z, y, x = _grid(shape)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2)


def torus(shape=(14, 36, 36), big=11.0, small=4.2):
    z, y, x = _grid(shape)
    cz, cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2 + 0.3, (shape[2] - 1) / 2 - 0.2
    ring = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - big
    return ring**2 + (z - cz) ** 2 <= small**2


def slab(shape=(20, 34, 34)):
    m = np.zeros(shape, bool)
    m[7:10, 2:32, 3:31] = True  # 3 voxels thick, crossing the z = 8 block border
    return m


def _load(path, **kw) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh", process=False, **kw)


def _canonical(mesh_: trimesh.Trimesh):
    """Vertex set and face set (faces as coordinate triples, rotation-invariant, winding kept)."""
    v = np.round(np.asarray(mesh_.vertices, np.float64), 6)
    tri = v[np.asarray(mesh_.faces)]
    keys = [tuple(map(tuple, t)) for t in tri]
    faces = set()
    for a, b, c in keys:
        rot = min((a, b, c), (b, c, a), (c, a, b))
        faces.add(rot)
    return {tuple(p) for p in v}, faces


def _reference(mask: np.ndarray, voxel_size) -> trimesh.Trimesh:
    """Whole-volume marching cubes straight from scikit-image, in (x, y, z) physical units."""
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, method="lorensen")
    xyz = (verts[:, ::-1] - 1.0) * np.asarray(voxel_size)[::-1]
    return trimesh.Trimesh(xyz, faces, process=False)


@pytest.mark.parametrize(
    ("shape_fn", "euler"), [(sphere, 2), (torus, 0), (slab, 2)], ids=["sphere", "torus", "slab"]
)
def test_shapes_are_closed_with_right_topology_volume_and_bounds(tmp_path, shape_fn, euler):
    mask = shape_fn()
    vol = mask.astype(np.uint8) * 3
    out = mesh(vol, tmp_path, chunk_size=8, formats=("ply", "stl"), voxel_size=VOXEL,
               executor="serial", smooth="none")
    assert [p.name for p in out["files"][3]] == ["3.ply", "3.stl"]
    m = _load(tmp_path / "3.ply")
    assert m.is_watertight and m.is_winding_consistent
    assert m.euler_number == euler
    assert m.body_count == 1
    # welded exactly: no duplicate vertices or faces left at block borders
    assert len(np.unique(m.vertices, axis=0)) == len(m.vertices)
    assert len(np.unique(np.sort(m.faces, axis=1), axis=0)) == len(m.faces)
    voxel_volume = mask.sum() * np.prod(VOXEL)
    assert m.volume > 0  # outward winding
    assert abs(m.volume - voxel_volume) / voxel_volume < 0.02
    # the surface passes half a voxel outside the outermost voxel centres
    idx = np.argwhere(mask)
    lo = (idx.min(axis=0) - 0.5) * VOXEL
    hi = (idx.max(axis=0) + 0.5) * VOXEL
    np.testing.assert_allclose(m.bounds, [lo[::-1], hi[::-1]], atol=1e-9)
    row = out["stats"][0]
    assert row["label"] == 3 and row["voxel_count"] == mask.sum()
    assert row["components"] == 1 and row["mesh_bodies"] == 1
    assert row["volume"] == pytest.approx(voxel_volume)
    assert row["mesh_volume"] == pytest.approx(m.volume, rel=1e-9)
    assert row["surface_area"] == pytest.approx(m.area, rel=1e-9)
    assert (row["min_x_vox"], row["min_y_vox"], row["min_z_vox"]) == tuple(idx.min(axis=0)[::-1])
    assert (row["max_x"], row["max_y"], row["max_z"]) == pytest.approx(
        tuple((idx.max(axis=0) * VOXEL)[::-1]))
    stl = trimesh.load(tmp_path / "3.stl")  # STL has no shared vertices: merged on load
    assert stl.is_watertight and len(stl.faces) == len(m.faces)
    assert stl.volume == pytest.approx(m.volume, rel=1e-5)


def _blobs(shape=(23, 29, 31), seed=3):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    labels = np.zeros(shape, np.uint8)
    labels[field > 0.05] = 1
    labels[field < -0.07] = 2
    labels[(field > 0.12) & (np.arange(shape[2]) > 15)] = 7
    return labels


@pytest.mark.parametrize("chunk", [5, (4, 9, 6)])
def test_blockwise_equals_whole_volume(tmp_path, chunk):
    labels = _blobs()
    whole = mesh(labels, tmp_path / "whole", chunk_size=1000, formats="ply", voxel_size=VOXEL,
                 executor="serial", smooth="none")
    parts = mesh(labels, tmp_path / "parts", chunk_size=chunk, formats="ply", voxel_size=VOXEL,
                 executor="serial", smooth="none")
    assert whole["blocks"] == 1 and parts["blocks"] > 20
    assert sorted(parts["files"]) == [1, 2, 7]
    for value in (1, 2, 7):
        a = (tmp_path / "whole" / f"{value}.ply").read_bytes()
        b = (tmp_path / "parts" / f"{value}.ply").read_bytes()
        assert a == b  # identical files, not just similar meshes
        m = _load(tmp_path / "parts" / f"{value}.ply")
        assert m.is_watertight and m.is_winding_consistent and m.volume > 0
        ref = _reference(labels == value, VOXEL)
        assert _canonical(m) == _canonical(ref)
    _assert_rows_equal(whole["stats"], parts["stats"])


def _assert_rows_equal(rows_a, rows_b):
    """Same rows; float sums may differ in the last bits (block-dependent order)."""
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in STATS_COLUMNS:
            if isinstance(ra[key], float):
                assert rb[key] == pytest.approx(ra[key], rel=1e-9), key
            else:
                assert rb[key] == ra[key], key


def test_multiple_labels_objects_and_cavities(tmp_path):
    vol = np.zeros((24, 26, 28), np.uint16)
    vol[sphere((24, 26, 28), (6, 6, 6), 4)] = 1
    vol[sphere((24, 26, 28), (17, 18, 20), 4.5)] = 1  # second object of label 1
    vol[2:14, 14:25, 2:14] = 2
    vol[6:10, 18:21, 6:10] = 0  # cavity: one object, two surfaces
    vol[20, 3, 25] = 300  # a single voxel
    vol[21, 4, 25] = 0
    out = mesh(vol, tmp_path, chunk_size=7, formats="stl,obj", executor="serial", smooth="none")
    rows = {r["label"]: r for r in out["stats"]}
    assert sorted(rows) == [1, 2, 300]
    assert (rows[1]["components"], rows[1]["mesh_bodies"]) == (2, 2)
    assert (rows[2]["components"], rows[2]["mesh_bodies"]) == (1, 2)
    assert rows[2]["voxel_count"] == 12 * 11 * 12 - 4 * 3 * 4
    assert (rows[300]["voxel_count"], rows[300]["components"]) == (1, 1)
    hollow = _load(tmp_path / "2.obj")
    assert hollow.is_watertight and hollow.euler_number == 4
    assert hollow.volume == pytest.approx(rows[2]["mesh_volume"])
    single = _load(tmp_path / "300.obj")  # an octahedron around the voxel centre
    assert len(single.faces) == 8 and single.volume == pytest.approx(1 / 6)
    np.testing.assert_allclose(single.bounds, [[24.5, 2.5, 19.5], [25.5, 3.5, 20.5]])
    # only some labels
    sub = mesh(vol, tmp_path / "sub", chunk_size=7, labels_to_mesh=[2, 300], executor="serial")
    assert sorted(sub["files"]) == [2, 300]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["2.stl", "300.stl", "stats.csv"]


def test_components_join_across_blocks_with_face_connectivity():
    vol = np.zeros((12, 12, 12), np.uint8)
    vol[1:3, 1:11, 1:3] = 1  # U shape: two arms joined only far away from each other
    vol[1:3, 1:3, 1:11] = 1
    vol[1:3, 9:11, 1:11] = 1
    vol[6, 6, 6] = 2
    vol[7, 7, 6] = 2  # touches the other voxel along an edge only: separate objects
    rows = {r["label"]: r for r in label_stats(vol, chunk_size=3, executor="serial")}
    assert rows[1]["components"] == 1
    assert rows[2]["components"] == 2
    whole = label_stats(vol, chunk_size=100, executor="serial")
    _assert_rows_equal(whole, list(rows.values()))


def test_formats_load_back_with_trimesh(tmp_path):
    vol = torus().astype(np.uint8)
    out = mesh(vol, tmp_path, chunk_size=9, formats=MESH_FORMATS, voxel_size=VOXEL,
               executor="serial")
    faces = out["faces"][1]
    stl = (tmp_path / "1.stl").read_bytes()
    assert len(stl) == 84 + 50 * faces  # binary STL
    ref = _load(tmp_path / "1.ply")
    for fmt in MESH_FORMATS:
        m = trimesh.load(tmp_path / f"1.{fmt}", force="mesh")
        if fmt == "glb":  # the mesh node itself, without the y-up root node's rotation
            m = next(iter(trimesh.load(tmp_path / "1.glb").geometry.values()))
        assert len(m.faces) == faces, fmt
        assert m.is_watertight, fmt
        assert m.volume == pytest.approx(ref.volume, rel=1e-5), fmt
        np.testing.assert_allclose(m.bounds, ref.bounds, atol=1e-5)


def test_stl_written_in_pieces_equals_one_trimesh_export():
    import io

    from ml4paleo.meshing import write_stl

    m = _reference(torus(), VOXEL)
    buf = io.BytesIO()
    write_stl(m.vertices, m.faces, buf, step=1000)
    assert len(m.faces) > 3000
    assert buf.getvalue() == trimesh.exchange.stl.export_stl(m)


def test_simplify_keeps_meshes_closed(tmp_path):
    vol = sphere((34, 34, 34), (16.5, 16.5, 16.5), 13).astype(np.uint8)
    full = mesh(vol, tmp_path / "full", chunk_size=16, formats="ply", executor="serial")
    out = mesh(vol, tmp_path / "s", chunk_size=16, formats="ply", simplify=0.8, executor="serial")
    assert out["simplified"][1] is True
    m = _load(tmp_path / "s" / "1.ply")
    assert len(m.faces) < 0.3 * full["faces"][1]
    assert m.is_watertight and m.is_winding_consistent and m.euler_number == 2
    assert m.volume == pytest.approx(vol.sum(), rel=0.03)


def test_simplify_falls_back_when_the_result_is_not_closed(tmp_path, monkeypatch, caplog):
    import fast_simplification

    def broken(points, triangles, **kw):
        return points, triangles[:-1]  # a hole

    monkeypatch.setattr(fast_simplification, "simplify", broken)
    vol = sphere((16, 16, 16), (7.5, 7.5, 7.5), 5).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="ml4paleo.meshing"):
        out = mesh(vol, tmp_path, formats="ply", simplify=0.5, executor="serial")
    assert out["simplified"][1] is False
    assert "did not keep the mesh closed" in caplog.text
    m = _load(tmp_path / "1.ply")
    assert m.is_watertight and len(m.faces) == out["faces"][1]


def test_ome_zarr_input_with_local_processes(tmp_path):
    labels = _blobs((20, 22, 24), seed=5)
    img = create_image(tmp_path / "labels.ome.zarr", labels.shape, np.uint8, chunks=8,
                       voxel_size=(2.0, 1.0, 0.5), unit="micrometer", label=True, pyramid=False)
    img.array[:] = labels
    out = mesh(tmp_path / "labels.ome.zarr", tmp_path / "m", chunk_size=8, formats="ply",
               executor="processes", workers=2)
    assert out["unit"] == "micrometer" and out["voxel_size"] == (2.0, 1.0, 0.5)
    ref = mesh(labels, tmp_path / "r", chunk_size=100, formats="ply", voxel_size=(2.0, 1.0, 0.5),
               unit="micrometer", executor="serial")
    for value in ref["files"]:
        assert (tmp_path / "m" / f"{value}.ply").read_bytes() == (
            tmp_path / "r" / f"{value}.ply").read_bytes()
    csv_text = (tmp_path / "m" / "stats.csv").read_text().splitlines()
    assert csv_text[0].split(",") == csv_header("micrometer")
    assert [row_key(h) for h in csv_header("micrometer")] == list(STATS_COLUMNS)
    assert "volume_um3" in csv_text[0] and "surface_area_um2" in csv_text[0]
    assert len(csv_text) == 1 + len(ref["files"]) and ",micrometer," in csv_text[1]
    # nothing of the work folder left behind
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [f"{v}.ply" for v in ref["files"]] + ["stats.csv"])


#: sha256 of the files mesh() wrote for _blobs() before meshing became a package (trimesh
#: 4.x writers): the refactoring must not change a byte. Regenerate only when a writer
#: library changes its output on purpose.
BEFORE = {
    "plain/1.glb": "d7fff45fd62bde51ac2bd31bd0cc05598dedfe797062b21d62096074ca4773f3",
    "plain/1.obj": "f1a2ed187d55b65846fef84c85e7aec79eee6c35b0dd33655753646a53bfd962",
    "plain/1.ply": "b9ffd630b19ff13374945b79b080f5c12f234b120ff6f7cc7028ef8587d20e1e",
    "plain/1.stl": "8303da1985465bf0fa55df1b8c63ba1bf6896314ccc749f0a4e2feef66239ae9",
    "plain/2.glb": "33fc05e914d4e87e4e53b753c9ed4ae51269d9d5c3f0625b3fc8fb94f84fe6db",
    "plain/2.obj": "6696d9085ba516081dffb7d08a134b16aaaf2f6fa4a067ab98232e0122414d22",
    "plain/2.ply": "0e918f4935cc9b595d28fca48160000a17e105eb4f4ce6d7bd77833f78666e6d",
    "plain/2.stl": "10a6040b25a9f451b3bc2153793c8031aa87510a1986b6c31ffe06bd6164f63e",
    "plain/7.glb": "bc00f1dc6dcb94ccc7c99ed5b9a5ea101c20e74fe74ba6983d85e8e9777a4133",
    "plain/7.obj": "e5532d60bc881440b443692128d81fd09b7193d17948d7d8ede62a3380389df9",
    "plain/7.ply": "7585a743bf3bf1ddd19db7dc0e4ac484acb6e5a4450339c4d0411b8689d1e353",
    "plain/7.stl": "50014dd962c57d82f7d843d0d9720b71a42b42a4dfa87d014f108e80ddb0d099",
    "plain/stats.csv": "090581dbaee63aed3da0b12872fd80a9c04d3c63fd02e7ac070199e3d6692328",
    "simpl/1.glb": "d7fff45fd62bde51ac2bd31bd0cc05598dedfe797062b21d62096074ca4773f3",
    "simpl/1.obj": "f1a2ed187d55b65846fef84c85e7aec79eee6c35b0dd33655753646a53bfd962",
    "simpl/1.ply": "b9ffd630b19ff13374945b79b080f5c12f234b120ff6f7cc7028ef8587d20e1e",
    "simpl/1.stl": "8303da1985465bf0fa55df1b8c63ba1bf6896314ccc749f0a4e2feef66239ae9",
    "simpl/2.glb": "3954cfdbe73202a04e5041e646a4c7c31e9877f2e46ce5fcdccd71f9423d143b",
    "simpl/2.obj": "1069766cfa49d3dedef4902b63d09b19e73636a02e21811f4a5f9f8f3e9a593e",
    "simpl/2.ply": "e655a13283554845e037069cac89fb5f29dbb38b499f9cbbc6fbaa9d0491e64b",
    "simpl/2.stl": "47d494ec118f5d0f1191ac5a1d68f2cc76f75c04370d4d9846158ea0ddbd7dae",
    "simpl/7.glb": "e0f94ff974afffa87196176981bd5cf8119daf204461b328b1d7b3ac2ca68b68",
    "simpl/7.obj": "9f9f5425e25c7988403e457937c72c58a97e9efb5ae1f23949b2a04ea6c2193a",
    "simpl/7.ply": "c10c8099560e48b1c6d5b1e3378164ec25cb2f1e5c7b6d1971f6595f0cc4cafc",
    "simpl/7.stl": "e31f0fcd49af45067fcc9b32dc8fe220dc16df56e6d7da40778d202a6829fa9c",
    "simpl/stats.csv": "090581dbaee63aed3da0b12872fd80a9c04d3c63fd02e7ac070199e3d6692328",
}


def _without_headers(path) -> bytes:
    """A mesh file as ml4paleo wrote it before headers described the coordinates."""
    data = path.read_bytes()
    if path.suffix == ".stl":  # the 80-byte header was all zeros
        return b"\0" * 80 + data[80:]
    if path.suffix == ".ply":
        return re.sub(rb"comment ml4paleo[^\n]*\n", b"", data, count=1)
    if path.suffix == ".obj":
        return re.sub(rb"\A(# (ml4paleo|coordinates)[^\n]*\n)+", b"", data)
    return data


def test_meshes_are_byte_identical_to_those_made_before(tmp_path):
    """Geometry did not change: in voxel space (and the world of a bare array, which is the
    same), STL facets, PLY and OBJ bodies equal what was written before the headers that
    describe the coordinates (GLB is ml4paleo's own writer now; the CSV has new columns)."""
    import hashlib

    labels = _blobs()
    for name, kw in [("plain", {"chunk_size": 7}), ("simpl", {"chunk_size": 9, "simplify": 0.5})]:
        for space in ("voxel", "world"):
            mesh(labels, tmp_path / space / name, formats=("stl", "ply", "obj"),
                 voxel_size=VOXEL, unit="micrometer", executor="serial", space=space,
                 smooth="none", **kw)
    for space in ("voxel", "world"):
        got = {f"{d.name}/{p.name}": hashlib.sha256(_without_headers(p)).hexdigest()
               for d in sorted((tmp_path / space).iterdir()) for p in sorted(d.iterdir())
               if p.suffix != ".csv"}
        assert got == {k: v for k, v in BEFORE.items() if k.endswith((".stl", ".ply", ".obj"))}
    head = (tmp_path / "world" / "plain" / "1.stl").read_bytes()[:80].rstrip(b"\0").decode()
    assert head == "ml4paleo label=1 space=world unit=micrometer"


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_meshes_and_stats(tmp_path):
    from dask.distributed import Client, LocalCluster

    labels = _blobs((20, 22, 24), seed=6)
    img = create_image(tmp_path / "labels.ome.zarr", labels.shape, np.uint8, chunks=8,
                       voxel_size=(2.0, 1.0, 0.5), unit="micrometer", label=True, pyramid=False)
    img.array[:] = labels
    ref = mesh(img, tmp_path / "ref", chunk_size=8, formats="stl,ply", executor="serial")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        got = mesh(tmp_path / "labels.ome.zarr", tmp_path / "dask", chunk_size=8,
                   formats="stl,ply", executor=client)
        rows = label_stats(tmp_path / "labels.ome.zarr", chunk_size=8, executor=client)
    assert got["blocks"] == ref["blocks"] == 27 and sorted(got["files"]) == sorted(ref["files"])
    for p in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "dask" / p.name).read_bytes() == p.read_bytes(), p.name
    assert rows == [{**r, "mesh_bodies": None} for r in ref["stats"]]


def test_label_stats_values_in_physical_units():
    vol = np.zeros((6, 7, 8), np.int32)
    vol[1:4, 2:4, 3:7] = 5
    rows = label_stats(vol, voxel_size=(2.0, 3.0, 0.5), unit="mm", chunk_size=4,
                       executor="serial", smooth="none")
    assert len(rows) == 1
    r = rows[0]
    assert (r["label"], r["voxel_count"], r["components"], r["unit"]) == (5, 24, 1,
                                                                           "millimeter")
    assert r["volume"] == pytest.approx(24 * 3.0)
    assert (r["min_x_vox"], r["min_y_vox"], r["min_z_vox"]) == (3, 2, 1)
    assert (r["max_x_vox"], r["max_y_vox"], r["max_z_vox"]) == (6, 3, 3)
    assert (r["min_x"], r["min_y"], r["min_z"]) == (1.5, 6.0, 2.0)
    assert (r["max_x"], r["max_y"], r["max_z"]) == (3.0, 9.0, 6.0)
    ref = _reference(vol == 5, (2.0, 3.0, 0.5))
    assert r["surface_area"] == pytest.approx(ref.area)
    assert r["mesh_volume"] == pytest.approx(ref.volume)


def test_bad_input_is_reported(tmp_path):
    with pytest.raises(ValueError, match="must be integers"):
        mesh(np.zeros((4, 4, 4), np.float32), tmp_path)
    with pytest.raises(ValueError, match="must be 3D"):
        mesh(np.zeros((4, 4), np.uint8), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        mesh(tmp_path / "nope.npy", tmp_path)
    with pytest.raises(ValueError, match="unknown mesh format"):
        mesh(np.zeros((4, 4, 4), np.uint8), tmp_path, formats="stl,fbx")
    with pytest.raises(ValueError, match="simplify"):
        mesh(np.zeros((4, 4, 4), np.uint8), tmp_path, simplify=1.5)
    with pytest.raises(ValueError, match="voxel_size"):
        mesh(np.zeros((4, 4, 4), np.uint8), tmp_path, voxel_size=(1, 0, 1))
    empty = mesh(np.zeros((4, 4, 4), np.uint8), tmp_path / "e")
    assert empty["files"] == {} and (tmp_path / "e" / "stats.csv").read_text().startswith("label,")


def test_cli_mesh(tmp_path):
    from ml4paleo.cli import main

    vol = slab().astype(np.uint8) * 2
    np.save(tmp_path / "labels.npy", vol)
    result = CliRunner().invoke(main, [
        "mesh", str(tmp_path / "labels.npy"), "-o", str(tmp_path / "out"), "--chunk-size", "8",
        "--formats", "stl,glb", "--voxel-size", "1.5,0.5,1", "--unit", "micrometer", "-q",
        "--workers", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "label 2: 2520 voxels" in result.output and "2.stl, 2.glb" in result.output
    m = trimesh.load(tmp_path / "out" / "2.glb", force="mesh")
    assert m.is_watertight
    bad = CliRunner().invoke(main, ["mesh", str(tmp_path / "labels.npy"), "-o",
                                    str(tmp_path / "x"), "--formats", "fbx"])
    assert bad.exit_code == 1 and "unknown mesh format" in bad.output
