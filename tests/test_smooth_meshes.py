"""Smooth surfaces: closed, manifold, accurate, thin things kept, seam-free through blocks of 32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from ml4paleo.meshing.smooth import (
    SMOOTHING,
    Smoothing,
    blockwise_surfaces,
    smoothing_params,
    surface_name,
    surfaces,
    vertex_keys,
)

BLOCK = 32


def _grid(shape):
    return np.ogrid[: shape[0], : shape[1], : shape[2]]


def ball(radius, shape=None, centre=None, voxel_size=(1.0, 1.0, 1.0)):
    """Voxels whose centre lies in a ball of ``radius`` physical units."""
    vs = np.asarray(voxel_size)
    if shape is None:
        shape = tuple(int(math.ceil(2 * radius / s)) + 6 for s in vs)
    if centre is None:
        centre = (np.asarray(shape) - 1) / 2 * vs + np.array([0.31, -0.27, 0.18]) * vs
    z, y, x = _grid(shape)
    d2 = ((z * vs[0] - centre[0]) ** 2 + (y * vs[1] - centre[1]) ** 2
          + (x * vs[2] - centre[2]) ** 2)
    return d2 <= radius**2


def torus(big=14.0, small=5.0):
    shape = (int(2 * small) + 8, int(2 * (big + small)) + 8, int(2 * (big + small)) + 8)
    z, y, x = _grid(shape)
    cz, cy, cx = (shape[0] - 1) / 2 + 0.2, (shape[1] - 1) / 2 + 0.3, (shape[2] - 1) / 2 - 0.2
    ring = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - big
    return ring**2 + (z - cz) ** 2 <= small**2


def tilted_plate(thickness=5.0, radius=24.0, size=60):
    """A round plate whose normal is not on a grid axis, and its frame (centre, u, w) in xyz."""
    n = np.array([1.0, 0.45, 0.3])
    n /= np.linalg.norm(n)
    u = np.cross(n, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    w = np.cross(n, u)
    c = np.array([29.6, 30.2, 29.9])
    z, y, x = _grid((size,) * 3)
    rel = [z - c[0], y - c[1], x - c[2]]
    dist = sum(r * k for r, k in zip(rel, n, strict=True))
    du = sum(r * k for r, k in zip(rel, u, strict=True))
    dw = sum(r * k for r, k in zip(rel, w, strict=True))
    mask = (np.abs(dist) <= thickness / 2) & (du**2 + dw**2 <= radius**2)
    return mask, c[::-1], u[::-1], w[::-1]


def rod(width, length=40):
    m = np.zeros((length + 8, width + 8, width + 8), bool)
    m[4 : 4 + length, 4 : 4 + width, 4 : 4 + width] = True
    return m


def _mesh(v, f) -> trimesh.Trimesh:
    return trimesh.Trimesh(v, f, process=False)


def assert_closed_manifold(m: trimesh.Trimesh, euler: int) -> None:
    assert m.is_watertight and m.is_winding_consistent
    edges = np.sort(m.edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # every edge used by exactly two faces
    assert m.euler_number == euler
    assert m.volume > 0  # wound outward


def clipped_area(vertices, faces, planes) -> float:
    """Area of the part of a mesh inside every half-space ``n . x <= d``, planes ``[(n, d)]``."""
    tri = vertices[faces]
    side = np.stack([tri @ n - d for n, d in planes], axis=-1)
    inside = np.all(side <= 0, axis=(1, 2))
    outside = np.any(np.all(side > 0, axis=1), axis=1)

    def area(t):
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)

    total = float(area(tri[inside]).sum())
    for k in np.flatnonzero(~inside & ~outside):
        poly = list(tri[k])
        for n, d in planes:  # Sutherland-Hodgman
            out = []
            for i in range(len(poly)):
                a, b = poly[i], poly[(i + 1) % len(poly)]
                da, db = a @ n - d, b @ n - d
                if da <= 0:
                    out.append(a)
                if (da <= 0) != (db <= 0):
                    out.append(a + (b - a) * (da / (da - db)))
            poly = out
            if len(poly) < 3:
                break
        if len(poly) >= 3:
            p = np.array(poly)
            total += 0.5 * float(np.linalg.norm(np.cross(p[1:-1] - p[0], p[2:] - p[0]).sum(axis=0)))
    return total


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("smooth", ["light", "strong"])
@pytest.mark.parametrize("radius", [10.0, 12.5, 20.0])
def test_balls_closed_with_area_within_2_percent_and_volume_within_1_percent(smooth, radius):
    mask = ball(radius)
    area = 4 * math.pi * radius**2
    v, f = surfaces(mask.astype(np.uint8), smooth=smooth)[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=2)
    assert m.body_count == 1
    assert abs(m.area / area - 1) < 0.02
    assert abs(m.volume / mask.sum() - 1) < 0.01
    # the stair-stepped surface misses by far more: the test can tell the difference
    v0, f0 = surfaces(mask.astype(np.uint8), smooth="none")[1]
    assert _mesh(v0, f0).area / area - 1 > 0.08
    assert len(v0) == len(v) and np.array_equal(f0, f)  # smoothing moved vertices only


@pytest.mark.parametrize("smooth", ["light", "strong"])
def test_torus_genus_one_area_and_volume(smooth):
    mask = torus()
    v, f = surfaces(mask.astype(np.uint8), smooth=smooth)[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=0)
    assert abs(m.area / (4 * math.pi**2 * 14.0 * 5.0) - 1) < 0.02
    assert abs(m.volume / mask.sum() - 1) < 0.01


@pytest.mark.parametrize("smooth", ["light", "strong"])
def test_tilted_plate_faces_are_flat_again(smooth):
    mask, c, u, w = tilted_plate()
    planes = [(a, float(a @ c) + 12.0) for a in (u, -u, w, -w)]  # a 24 x 24 window
    v, f = surfaces(mask.astype(np.uint8), smooth=smooth)[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=2)
    assert abs(m.volume / mask.sum() - 1) < 0.01
    # top and bottom inside the window: 2 x 24 x 24 when flat; terraces add ~13 %
    assert abs(clipped_area(v, f, planes) / (2 * 24 * 24) - 1) < 0.02
    v0, f0 = surfaces(mask.astype(np.uint8), smooth="none")[1]
    assert clipped_area(v0, f0, planes) / (2 * 24 * 24) - 1 > 0.1


def test_axis_aligned_plate_keeps_flat_faces_exactly_and_its_volume():
    mask = np.zeros((12, 44, 40), bool)
    mask[4:8, 4:40, 4:36] = True  # 4 voxels thick
    v, f = surfaces(mask.astype(np.uint8), smooth="strong")[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=2)
    assert abs(m.volume / mask.sum() - 1) < 0.01
    # away from the rounded rim the top and bottom faces stay planes at the voxel boundary
    for plane in (3.5, 7.5):
        face = (np.abs(v[:, 2] - plane) < 0.3) & (v[:, 0] > 12) & (v[:, 0] < 27) & (
            v[:, 1] > 12) & (v[:, 1] < 31)
        assert face.sum() > 200 and np.abs(v[face, 2] - plane).max() < 1e-4


def test_anisotropic_voxels_are_smoothed_in_physical_units():
    vs = (2.0, 1.0, 0.8)  # z voxels 2.5x the x voxels
    mask = ball(12.0, voxel_size=vs)
    voxel_volume = mask.sum() * np.prod(vs)
    area = 4 * math.pi * 144
    v0, f0 = surfaces(mask.astype(np.uint8), vs, smooth="none")[1]
    assert _mesh(v0, f0).area / area - 1 > 0.12  # coarse z steps: +13 % stair-stepped
    errors = {}
    for smooth in ("light", "strong"):
        v, f = surfaces(mask.astype(np.uint8), vs, smooth=smooth)[1]
        m = _mesh(v, f)
        assert_closed_manifold(m, euler=2)
        assert abs(m.volume / voxel_volume - 1) < 0.01, smooth
        errors[smooth] = m.area / area - 1
        # the constraint box is max_shift voxels per axis, in physical units
        shift = np.abs(v - v0)
        assert np.all(shift <= SMOOTHING[smooth].max_shift * np.array(vs[::-1]) + 1e-12)
        assert shift[:, 2].max() > 1.5 * shift[:, 0].max()
    # terraces 2.5x taller than wide need a longer filter: strong gets within 2.5 %
    assert 0 < errors["strong"] < errors["light"] < 0.035
    assert errors["strong"] < 0.025


def test_every_vertex_stays_within_the_constraint_box():
    shape = (24, 24, 34)
    mask = ball(9.0, shape, centre=(11.6, 11.8, 11.3)) | ball(9.0, shape, centre=(11.6, 11.8, 20.3))
    v0, f0 = surfaces(mask.astype(np.uint8), smooth="none")[1]
    for name, params in SMOOTHING.items():
        v, f = surfaces(mask.astype(np.uint8), smooth=name)[1]
        assert np.array_equal(f, f0)
        shift = np.abs(v - v0).max(axis=0)
        assert np.all(shift <= params.max_shift + 1e-12)
        assert shift.max() > 0.1  # and they did move


# --------------------------------------------------------------------------- thin things


@pytest.mark.parametrize("smooth", ["light", "strong"])
def test_rod_three_voxels_across_keeps_its_volume(smooth):
    mask = rod(3)
    v, f = surfaces(mask.astype(np.uint8), smooth=smooth)[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=2)
    assert m.body_count == 1
    # a 3 x 3 square section: marching cubes cuts its corners (8.5 / 9); smoothing rounds
    # it (and the two end caps) a little more
    assert 0.94 < m.volume / mask.sum() < 1.0


@pytest.mark.parametrize("width", [1, 2])
def test_thinner_rods_become_tubes_not_lines(width):
    mask = rod(width)
    v, f = surfaces(mask.astype(np.uint8), smooth="strong")[1]
    m = _mesh(v, f)
    assert_closed_manifold(m, euler=2)
    assert m.body_count == 1
    # halfway along, no vertex comes closer to the axis than the marching-cubes surface
    # (half a voxel out from the outer voxel centres) minus the constraint box
    mid = np.abs(v[:, 2] - 24) < 10
    axis = 4 + (width - 1) / 2
    r = np.sqrt((v[mid, 0] - axis) ** 2 + (v[mid, 1] - axis) ** 2)
    assert r.min() >= (width / 2 - 0.5) + 0.5 - SMOOTHING["strong"].max_shift - 1e-9
    assert m.volume > (0.09 if width == 1 else 0.68) * mask.sum()


# --------------------------------------------------------------------------- blocks


def _scene() -> np.ndarray:
    """Objects crossing the borders and corners of 32-voxel blocks, in a 70 x 68 x 66 volume."""
    shape = (70, 68, 66)
    labels = np.zeros(shape, np.uint8)
    labels[ball(11.0, shape, centre=(31.6, 32.4, 31.8))] = 1  # around a block corner
    z, y, x = _grid(shape)
    ring = np.sqrt((y - 33.5) ** 2 + (x - 40.2) ** 2) - 17.0
    labels[(ring**2 + (z - 55.3) ** 2 <= 4.6**2)] = 2  # torus through four blocks
    labels[8:62, 60:63, 5:8] = 3  # rod 3 across, along z through a border
    labels[62:66, 3:50, 10:60] = 3  # plate 4 thick crossing the z = 64, y and x = 32 borders
    return labels


@pytest.mark.parametrize("smooth", ["none", "light", "strong"])
@pytest.mark.parametrize("shared", [False, True], ids=["own", "shared"])
def test_blockwise_equals_whole_volume_exactly(smooth, shared):
    labels = _scene()
    whole = surfaces(labels, (1.0, 0.7, 1.3), smooth=smooth, shared=shared)
    parts = blockwise_surfaces(labels, BLOCK, (1.0, 0.7, 1.3), smooth=smooth, shared=shared)
    assert sorted(whole) == sorted(parts) == [1, 2, 3]
    for value in whole:
        assert np.array_equal(whole[value][0], parts[value][0])  # bit-identical positions
        assert np.array_equal(whole[value][1], parts[value][1])
        m = _mesh(*parts[value])
        assert_closed_manifold(m, euler={1: 2, 2: 0, 3: 4}[value])  # rod + plate: 2 bodies


def test_a_halo_smaller_than_the_smoothing_support_opens_seams():
    class ShortHalo(Smoothing):
        @property
        def halo(self) -> int:
            return self.rings - 4

    labels = _scene()
    with pytest.raises(RuntimeError, match="seam"):
        blockwise_surfaces(labels, BLOCK, smooth=ShortHalo("short", iterations=5))


def test_touching_labels_share_their_interface_when_asked():
    shape = (48, 48, 48)
    labels = np.zeros(shape, np.uint8)
    inside = ball(18.0, shape)
    labels[inside] = 1
    labels[inside & (np.arange(48)[None, None, :] >= 25)] = 2  # a ball cut in two halves
    labels[ball(6.0, shape, centre=(24.2, 24.1, 24.6)) & inside] = 3  # a core touching both

    def shared_points(result, a, b):
        keys = {}
        for value in (a, b):
            v, _ = result[value]
            v2 = np.rint(v[:, ::-1] * 2).astype(np.int64)  # unit voxels: exact half-integers
            keys[value] = (v2, v)
        return keys

    none = surfaces(labels, smooth="none")
    for shared in (True, False):
        result = blockwise_surfaces(labels, BLOCK, smooth="strong", shared=shared)
        for a, b in ((1, 2), (1, 3), (2, 3)):
            ka = vertex_keys(np.rint(none[a][0][:, ::-1] * 2).astype(np.int64), shape)
            kb = vertex_keys(np.rint(none[b][0][:, ::-1] * 2).astype(np.int64), shape)
            common, ia, ib = np.intersect1d(ka, kb, return_indices=True)
            assert len(common) > 100  # a real interface
            pa, pb = result[a][0][ia], result[b][0][ib]  # vertex order = key order
            if shared:
                assert np.array_equal(pa, pb)  # identical positions on the interface
            else:
                assert np.abs(pa - pb).max() > 0.05  # each label smoothed on its own
        for value in (1, 2, 3):
            assert_closed_manifold(_mesh(*result[value]), euler=2)
    # the interface triangles (all three vertices shared with the other label) enclose the
    # same area from both sides: no gap, no overlap, except at the triple-junction rim
    res = blockwise_surfaces(labels, BLOCK, smooth="strong", shared=True)
    for a, b in ((1, 2), (2, 3)):
        areas = []
        ka = vertex_keys(np.rint(none[a][0][:, ::-1] * 2).astype(np.int64), shape)
        kb = vertex_keys(np.rint(none[b][0][:, ::-1] * 2).astype(np.int64), shape)
        for value, keys, other in ((a, ka, kb), (b, kb, ka)):
            v, f = res[value]
            on = np.isin(keys, other)[f].all(axis=1)
            areas.append(_mesh(v, f[on]).area)
        assert abs(areas[0] / areas[1] - 1) < 0.02


def test_decimation_after_smoothing_stays_closed_and_blockwise_equal():
    from ml4paleo.meshing import simplify_closed

    labels = _scene()
    whole = surfaces(labels, smooth="light")[2]
    parts = blockwise_surfaces(labels, BLOCK, smooth="light")[2]
    a = simplify_closed(*whole, 0.8, "torus")
    b = simplify_closed(*parts, 0.8, "torus")
    assert a[2] and b[2]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    m = _mesh(a[0], a[1])
    assert_closed_manifold(m, euler=0)
    assert len(m.faces) < 0.3 * len(whole[1])
    assert abs(m.volume / _mesh(*whole).volume - 1) < 0.01


# --------------------------------------------------------------------------- options


def test_levels_names_and_bad_values():
    assert smoothing_params("none") is None and smoothing_params(None) is None
    assert smoothing_params("LIGHT") is SMOOTHING["light"]
    assert SMOOTHING["strong"].rings == 20 and SMOOTHING["strong"].halo == 22
    assert surface_name("strong") == "smooth-strong" and surface_name("none") == "marching-cubes"
    with pytest.raises(ValueError, match="smooth must be one of none, light, strong"):
        smoothing_params("wobbly")
    with pytest.raises(ValueError, match="max_shift"):
        Smoothing("x", iterations=3, max_shift=0.6)
    with pytest.raises(ValueError, match="3D integer"):
        surfaces(np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------- through mesh()


@pytest.mark.parametrize("shared", [False, True], ids=["own", "shared"])
def test_mesh_files_do_not_depend_on_blocks_and_stats_measure_the_smooth_surface(tmp_path, shared):
    from ml4paleo.meshing import STATS_COLUMNS, label_stats, mesh

    labels = _scene()
    vs = (1.0, 0.7, 1.3)
    runs = {}
    for chunk in (1000, BLOCK, (20, 40, 28)):
        runs[chunk] = mesh(labels, tmp_path / str(chunk), chunk_size=chunk, formats="ply,stl",
                           voxel_size=vs, smooth="light", shared_boundaries=shared,
                           executor="serial")
    assert runs[1000]["blocks"] == 1 and runs[BLOCK]["blocks"] == 27
    reference = surfaces(labels, vs, smooth="light", shared=shared)
    stats = {r["label"]: r for r in runs[BLOCK]["stats"]}
    for value in (1, 2, 3):
        files = [(tmp_path / str(c) / f"{value}.ply").read_bytes() for c in runs]
        assert files[0] == files[1] == files[2]  # identical files, whatever the blocks
        m = trimesh.load(tmp_path / str(BLOCK) / f"{value}.ply", process=False)
        np.testing.assert_allclose(m.vertices, reference[value][0], rtol=0, atol=1e-4)  # float32
        assert np.array_equal(m.faces, reference[value][1])
        assert m.is_watertight and m.is_winding_consistent
        ref = _mesh(*reference[value])
        assert stats[value]["surface_area"] == pytest.approx(ref.area, rel=1e-9)
        assert stats[value]["mesh_volume"] == pytest.approx(ref.volume, rel=1e-9)
        assert stats[value]["surface"] == "smooth-light"
    assert runs[BLOCK]["surface"] == "smooth-light"
    header = (tmp_path / str(BLOCK) / "stats.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(STATS_COLUMNS) and header[-1] == "surface"
    # label_stats (no files) measures the same smooth surface
    rows = label_stats(labels, vs, chunk_size=BLOCK, smooth="light", shared_boundaries=shared,
                       executor="serial")
    for row in rows:
        assert row["surface_area"] == pytest.approx(stats[row["label"]]["surface_area"], rel=1e-9)
        assert row["surface"] == "smooth-light"
    flat = label_stats(labels, vs, chunk_size=BLOCK, smooth="none", executor="serial")
    assert all(r["surface"] == "marching-cubes" for r in flat)
    flat = {r["label"]: r["surface_area"] for r in flat}
    assert flat[1] > 1.05 * stats[1]["surface_area"] and flat[2] > 1.05 * stats[2]["surface_area"]


def test_mesh_smooth_then_simplify_stays_closed(tmp_path):
    from ml4paleo.meshing import mesh

    vol = ball(16.0).astype(np.uint8)
    out = mesh(vol, tmp_path, chunk_size=BLOCK, formats="ply", smooth="strong", simplify=0.8,
               executor="serial")
    assert out["simplified"][1] is True
    m = trimesh.load(tmp_path / "1.ply", process=False)
    assert_closed_manifold(m, euler=2)
    assert abs(m.volume / vol.sum() - 1) < 0.01
    assert abs(m.area / (4 * math.pi * 256) - 1) < 0.02


def test_cli_mesh_smooth_option(tmp_path):
    from click.testing import CliRunner

    from ml4paleo.cli import main

    np.save(tmp_path / "labels.npy", ball(10.0).astype(np.uint8) * 4)
    result = CliRunner().invoke(main, ["mesh", str(tmp_path / "labels.npy"), "-o",
                                       str(tmp_path / "out"), "--smooth", "strong", "-q",
                                       "--workers", "1", "--formats", "ply"])
    assert result.exit_code == 0, result.output
    assert "(surface: smooth-strong)" in result.output
    lines = (tmp_path / "out" / "stats.csv").read_text().splitlines()
    assert lines[0].endswith(",surface") and lines[1].endswith(",smooth-strong")
    m = trimesh.load(tmp_path / "out" / "4.ply", process=False)
    assert abs(m.area / (4 * math.pi * 100) - 1) < 0.02
    bad = CliRunner().invoke(main, ["mesh", str(tmp_path / "labels.npy"), "-o",
                                    str(tmp_path / "x"), "--smooth", "wobbly"])
    assert bad.exit_code != 0 and "wobbly" in bad.output
