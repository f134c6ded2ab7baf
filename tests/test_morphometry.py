"""Morphometry on generated shapes with known answers, in physical units, blockwise == whole."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage

import ml4paleo.morphometry as mm
from ml4paleo.morphometry.configurations import (
    area_lut,
    cell_components,
    configurations,
    euler_lut,
    mirror_histogram,
    zero_histogram,
)
from ml4paleo.morphometry.thickness import inscribed_radius, local_thickness, radius_squared

ANISO = (1.5, 0.75, 0.6)


def _grid(shape):
    return np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")


def _ball(shape, centre, radius, vs):
    """Voxels whose centre lies within ``radius`` of ``centre`` (physical units)."""
    g = _grid(shape)
    return sum(((gi * si) - ci) ** 2 for gi, ci, si in zip(g, centre, vs, strict=True)) <= radius ** 2


def _foam(shape=(48, 48, 48), sigma=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > 0


def _pore_foam(vs, size=48.0, pores=60, seed=0):
    """Solid with random spherical pores of radius 3..6 (physical units)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(size / s) for s in vs)
    solid = np.ones(shape, bool)
    for _ in range(pores):
        c, r = rng.random(3) * size, rng.uniform(3, 6)
        lo = [max(int((ci - r) / s), 0) for ci, s in zip(c, vs, strict=True)]
        hi = [min(int((ci + r) / s) + 2, n) for ci, s, n in zip(c, vs, shape, strict=True)]
        sub = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        g = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, vs, strict=True)],
                        indexing="ij")
        solid[sub] &= sum((gi - ci) ** 2 for gi, ci in zip(g, c, strict=True)) > r * r
    return solid


def _three_class(seed=3):
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((70, 66, 61)), 3)
    lab = np.zeros(f.shape, np.uint8)
    lab[f > 0.02] = 1
    lab[f < -0.08] = 2
    return lab


# --------------------------------------------------------------------------- thickness


@pytest.mark.parametrize("n", [3, 4, 5, 8, 9])
@pytest.mark.parametrize("axis", [0, 2])
def test_plates_of_known_thickness_anisotropic(n, axis):
    vs = ANISO
    shape = [40, 40, 40]
    vol = np.zeros(shape, np.uint8)
    period = n + 6
    for start in range(2, 40 - n, period):  # parallel plates n voxels thick, normal = axis
        sl = [slice(None)] * 3
        sl[axis] = slice(start, start + n)
        vol[tuple(sl)] = 1
    m = mm.measure(vol, voxel_size=vs, measures="thickness", max_thickness=40)
    t = m.by_value(1)["thickness"]
    true = n * vs[axis]
    assert abs(t["mean"] - true) <= vs[axis] + 1e-6  # within one voxel (float32 map)
    # BoneJ's convention measures between voxel centres: n + 1 voxels (n odd), n (n even)
    expect = (n + 1) * vs[axis] if n % 2 else true
    assert t["mean"] == pytest.approx(expect, abs=1e-5)
    assert t["sd"] == pytest.approx(0.0, abs=1e-5)
    assert t["max"] == pytest.approx(expect, abs=1e-5)
    assert not t["clipped"]


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), ANISO])
@pytest.mark.parametrize("radius", [4.5, 7.25])
def test_sphere_max_thickness_is_its_diameter(vs, radius):
    shape = tuple(2 * int(math.ceil(radius / s)) + 7 for s in vs)
    centre = tuple((n // 2) * s for n, s in zip(shape, vs, strict=True))  # on a voxel centre
    ball = _ball(shape, centre, radius, vs)
    res = local_thickness(ball, vs)
    assert abs(float(res.thickness.max()) - 2 * radius) <= max(vs)
    assert float(res.thickness[~ball].max()) == 0.0
    # the largest ball is the one at the centre, so nearly every voxel is in it
    assert np.mean(res.thickness[ball] >= res.thickness.max() - 1e-4) > 0.9


def test_local_thickness_equals_brute_force_ball_painting():
    vs = (1.25, 1.0, 0.75)  # dyadic: every squared distance is exact, so ties are exact too
    mask = _foam((22, 24, 26), sigma=1.5, seed=1)
    cap = 7.0
    res = local_thickness(mask, vs, cap)
    r2 = radius_squared(mask, vs, cap / 2)
    # radius: distance from each centre to the nearest voxel centre outside the mask
    edt = ndimage.distance_transform_edt(mask, sampling=vs)
    np.testing.assert_allclose(inscribed_radius(mask, vs, cap / 2), np.minimum(edt, cap / 2),
                               rtol=1e-12)
    # thickness: paint every ball (every centre, no ridge), keep the largest diameter
    g = _grid(mask.shape)
    expect = np.zeros(mask.shape, np.float32)
    for c in np.argwhere(mask):
        rc2 = r2[tuple(c)]
        inside = sum(((gi - ci) * si) ** 2 for gi, ci, si in zip(g, c, vs, strict=True)) <= rc2
        expect[inside] = np.maximum(expect[inside], np.float32(2 * np.sqrt(rc2)))
    expect[~mask] = 0
    np.testing.assert_array_equal(res.thickness, expect)


def test_thickness_beyond_max_is_clipped_and_flagged():
    vol = np.zeros((30, 20, 20), np.uint8)
    vol[5:25] = 1  # 20 voxels thick
    m = mm.measure(vol, measures="thickness", max_thickness=8)
    t = m.by_value(1)["thickness"]
    assert m.clipped and t["clipped"]
    assert t["max"] == pytest.approx(8.0)
    ok = mm.measure(vol, measures="thickness", max_thickness=24)
    assert not ok.clipped and ok.by_value(1)["thickness"]["max"] == pytest.approx(20.0)


def test_spacing_is_the_thickness_of_the_complement():
    vol = np.zeros((40, 12, 12), np.uint8)
    for z in range(3, 40, 10):
        vol[z:z + 4] = 1  # plates 4 thick, gaps 6 voxels (3 at the borders: a ball there
        # reaches past the volume, which is not background, so it measures 6 as well)
    m = mm.measure(vol, voxel_size=(0.5, 1, 1), measures="thickness spacing", max_thickness=10)
    c = m.by_value(1)
    assert c["thickness"]["mean"] == pytest.approx(2.0)
    assert c["spacing"]["mean"] == pytest.approx(3.0)


# --------------------------------------------------------------------------- connectivity


def _rod_lattice(n_cells, period, width):
    """Rods along z, y and x through the middle of every cell (the cell is mirror symmetric)."""
    size = n_cells * period
    vol = np.zeros((size,) * 3, bool)
    lo = (period - width) // 2
    band = np.zeros(size, bool)
    for c in range(n_cells):
        band[c * period + lo: c * period + lo + width] = True
    vol |= band[None, :, None] & band[None, None, :]   # rods along z
    vol |= band[:, None, None] & band[None, None, :]   # rods along y
    vol |= band[:, None, None] & band[None, :, None]   # rods along x
    return vol


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), ANISO])
def test_rod_lattice_connectivity_density(vs):
    n, period = 4, 10
    vol = _rod_lattice(n, period, 3).astype(np.uint8)
    m = mm.measure(vol, voxel_size=vs, measures="connectivity", chunk_size=32)
    c = m.by_value(1)
    # each cell of an infinite cubic frame has one node and three rods: chi = -2
    assert c["delta_euler"] == pytest.approx(-2 * n ** 3)
    tv = (n * period) ** 3 * np.prod(vs)
    assert c["connectivity_density"] == pytest.approx((1 + 2 * n ** 3) / tv)
    # floating in space the sample is one piece with 3 n^2 (n-1) + ... holes: chi from skimage
    from skimage.measure import euler_number

    assert c["euler"] == euler_number(vol.astype(bool), connectivity=3)


def _torus_euler_of_mirror(mask):
    """Euler characteristic of the closed-cube complex of the 8-fold mirrored volume on a torus."""
    m = mask
    for axis in range(3):
        m = np.concatenate([m, np.flip(m, axis)], axis=axis)
    chi = int(m.sum())  # cubes enter with sign -1 below; count every cell type by rolling
    cubes = m
    faces = sum(int((m | np.roll(m, 1, axis=a)).sum()) for a in range(3))
    edges = 0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        e = m | np.roll(m, 1, a)
        e = e | np.roll(e, 1, b)
        edges += int(e.sum())
    v = m.copy()
    for a in range(3):
        v = v | np.roll(v, 1, a)
    chi = int(v.sum()) - edges + faces - int(cubes.sum())
    return chi


def test_delta_euler_equals_the_mirror_torus_count():
    rng = np.random.default_rng(5)
    for _ in range(4):
        mask = rng.random((9, 10, 11)) < 0.35
        h8 = mirror_histogram(mask)
        assert float(np.dot(h8, euler_lut())) / 64 == pytest.approx(_torus_euler_of_mirror(mask) / 8)


def test_euler_lut_matches_skimage():
    from skimage.measure import euler_number

    rng = np.random.default_rng(2)
    for p in (0.2, 0.5, 0.8):
        mask = rng.random((15, 14, 13)) < p
        ours = int(np.dot(zero_histogram(mask), euler_lut())) // 8
        assert ours == euler_number(mask, connectivity=3)


# --------------------------------------------------------------------------- objects


def _spheres():
    vs = (1.0, 0.6, 0.6)
    shape = (60, 100, 100)
    spheres = [((12.3, 12.1, 12.4), 5.0), ((14.2, 40.3, 14.7), 7.0),
               ((36.1, 14.4, 40.2), 8.0), ((40.4, 40.2, 12.3), 4.0),
               ((44.0, 45.0, 45.0), 6.0)]
    vol = np.zeros(shape, np.uint8)
    for i, (c, r) in enumerate(spheres):
        vol[_ball(shape, c, r, vs)] = 1 + i % 2  # two classes
    return vol, vs, spheres


def test_sphere_set_object_table(tmp_path):
    vol, vs, spheres = _spheres()
    out = tmp_path / "objects.csv"
    m = mm.measure(vol, voxel_size=vs, unit="micrometer", classes=["matrix", "grain", "pore"],
                   measures="objects thickness", objects_csv=out, chunk_size=32,
                   max_thickness=20)
    assert len(m.objects) == len(spheres)
    for c, r in spheres:
        row = min(m.objects, key=lambda o: np.hypot.reduce(
            [o["centroid_x"] - c[2], o["centroid_y"] - c[1], o["centroid_z"] - c[0]]))
        true_v = 4 / 3 * math.pi * r ** 3
        assert row["volume"] == pytest.approx(true_v, rel=0.03)
        assert row["equivalent_diameter"] == pytest.approx(2 * r, rel=0.01)
        assert np.hypot.reduce([row["centroid_x"] - c[2], row["centroid_y"] - c[1],
                                row["centroid_z"] - c[0]]) < 0.1
        assert row["surface_area"] == pytest.approx(4 * math.pi * r * r, rel=0.12)
        assert 0.85 < row["sphericity"] < 1.0
        for k in (1, 2, 3):
            assert row[f"axis{k}_length"] == pytest.approx(2 * r, rel=0.05)
        assert row["mean_thickness"] > r  # most of a ball lies in its largest inscribed ball
        assert row["class_name"] in ("grain", "pore")
        assert row["unit"] == "micrometer" and not row["touches_border"]
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(spheres)
    assert tuple(table[0]) == mm.OBJECT_COLUMNS
    assert sorted({t["class_name"] for t in table}) == ["grain", "pore"]
    assert [c["objects"] for c in m.classes] == [3, 2]


def test_objects_span_blocks_and_match_meshing_components():
    from ml4paleo.meshing import label_stats

    lab = _three_class()
    m = mm.measure(lab, voxel_size=ANISO, measures="objects fractions", chunk_size=32)
    # morphometry measures the marching-cubes surface: compare with meshing's unsmoothed one
    stats = {r["label"]: r for r in label_stats(lab, ANISO, smooth="none")}
    for c in m.classes:
        rows = [o for o in m.objects if o["class_value"] == c["value"]]
        assert len(rows) == stats[c["value"]]["components"]
        assert sum(o["voxel_count"] for o in rows) == stats[c["value"]]["voxel_count"]
        # the closed surface is meshing's, and the objects share it out exactly
        assert c["closed_surface_area"] == pytest.approx(stats[c["value"]]["surface_area"], rel=1e-9)
        assert sum(o["surface_area"] for o in rows) == pytest.approx(c["closed_surface_area"], rel=1e-9)


def test_elongated_object_principal_axes_and_world_transform():
    vol = np.zeros((20, 30, 60), np.uint8)
    vol[8:12, 12:18, 5:55] = 1  # a bar along x: 50 x 6 x 4 voxels
    vs = (0.5, 1.0, 1.0)
    m = mm.measure(vol, voxel_size=vs, measures="objects",
                   index_to_world=lambda zyx: zyx[:, ::-1] * np.array([1.0, 1.0, 0.5]) + 100.0)
    (row,) = m.objects
    # the moments of a box: length^2 / 12 = a^2 / 5 of the equivalent ellipsoid
    assert row["axis1_length"] == pytest.approx(2 * math.sqrt(5 * 50 ** 2 / 12))
    assert row["axis2_length"] == pytest.approx(2 * math.sqrt(5 * 6 ** 2 / 12))
    assert row["axis3_length"] == pytest.approx(2 * math.sqrt(5 * 2 ** 2 / 12))
    assert (row["axis1_x"], row["axis1_y"], row["axis1_z"]) == pytest.approx((1, 0, 0))
    assert (row["centroid_x"], row["centroid_y"], row["centroid_z"]) == pytest.approx(
        (129.5, 114.5, 104.75))
    assert (row["size_x"], row["size_y"], row["size_z"]) == (50.0, 6.0, 2.0)
    assert row["sphericity"] < 0.7


# --------------------------------------------------------------------------- anisotropy / fractions


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), ANISO])
def test_plate_stack_is_anisotropic_and_foam_is_not(vs):
    plates = np.zeros((48, 40, 40), np.uint8)
    for z in range(0, 48, 6):
        plates[z:z + 2] = 1
    a = mm.measure(plates, voxel_size=vs, measures="anisotropy").by_value(1)
    assert a["degree_of_anisotropy"] > 0.9
    assert [abs(v) for v in a["mil_axes"][0]] == pytest.approx([0, 0, 1], abs=1e-6)  # normal z
    # an isotropic foam in physical space (random spherical pores), on the same grid
    foam = _pore_foam(vs).astype(np.uint8)
    f = mm.measure(foam, voxel_size=vs, measures="anisotropy").by_value(1)
    assert f["degree_of_anisotropy"] < 0.15


def test_volume_and_surface_fractions_in_box_and_mask():
    vol = np.zeros((20, 20, 20), np.uint8)
    vol[:, :, :8] = 1          # a slab filling x < 8
    vs = (2.0, 1.0, 0.5)
    m = mm.measure(vol, voxel_size=vs, measures="fractions").by_value(1)
    assert m["bv_tv"] == pytest.approx(0.4)
    assert m["bs"] == pytest.approx(20 * 2.0 * 20 * 1.0)    # the one cut plane x = 7.5
    assert m["bs_tv"] == pytest.approx(800.0 / (20 * 20 * 20 * 1.0))
    box = mm.measure(vol, voxel_size=vs, measures="fractions",
                     roi_box=((0, 10), slice(0, 20), (4, 12))).by_value(1)
    assert box["bv_tv"] == pytest.approx(0.5)
    assert box["tv"] == pytest.approx(10 * 20 * 8 * 1.0)
    roi = np.zeros(vol.shape, np.uint8)
    roi[:, :, 6:10] = 3
    masked = mm.measure(vol, voxel_size=vs, roi_mask=roi, roi_value=3, measures="fractions")
    assert masked.by_value(1)["bv_tv"] == pytest.approx(0.5)


def test_compactness_profile_of_a_tube():
    vol = np.zeros((12, 30, 30), np.uint8)
    yy, xx = np.mgrid[:30, :30]
    r = np.hypot(yy - 14.5, xx - 14.5)
    for z in range(12):
        inner = 4 + z * 0.5  # the cavity widens along z
        vol[z][(r <= 12) & (r > inner)] = 1
    vs = (2.0, 0.5, 0.5)
    m = mm.measure(vol, voxel_size=vs, measures="profiles", profile_axis="z")
    p = m.profiles[1]
    disc = (r <= 12).sum()
    for z in range(12):
        ring = vol[z].sum()
        assert p["area"][z] == pytest.approx(ring * 0.25)
        assert p["section_area"][z] == pytest.approx(disc * 0.25)
        assert p["compactness"][z] == pytest.approx(ring / disc)
        assert p["area_fraction"][z] == pytest.approx(ring / 900)
    assert p["position"] == pytest.approx([2.0 * z for z in range(12)])
    assert all(a > b for a, b in zip(p["compactness"][:-1], p["compactness"][1:], strict=True))
    assert p["volume_compactness"] == pytest.approx(vol.sum() / (12 * disc))


# --------------------------------------------------------------------------- blockwise == whole


def _assert_same(a, b, path="result"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


@pytest.mark.parametrize("roi", ["whole", "box", "mask"])
def test_blockwise_equals_whole_volume_for_every_measure(tmp_path, roi):
    lab = _three_class()
    kwargs = {"voxel_size": ANISO, "max_thickness": 6.0, "profile_axis": 1}
    if roi == "box":
        kwargs["roi_box"] = ((5, 61), (3, 66), (0, 50))
    if roi == "mask":
        mask = np.zeros(lab.shape, np.uint8)
        mask[:, 10:60, 8:55] = 1
        kwargs["roi_mask"] = mask
    whole = mm.measure(lab, chunk_size=512, thickness_map=tmp_path / "w.ome.zarr", **kwargs)
    blocks = mm.measure(lab, chunk_size=32, thickness_map=tmp_path / "b.ome.zarr", **kwargs)
    assert whole.blocks == 1 and blocks.blocks >= 8
    _assert_same(whole.classes, blocks.classes)
    _assert_same(whole.objects, blocks.objects)
    _assert_same(whole.profiles, blocks.profiles)
    assert whole.clipped == blocks.clipped
    from ml4paleo.formats import open_image

    a = np.asarray(open_image(tmp_path / "w.ome.zarr").array)
    b = np.asarray(open_image(tmp_path / "b.ome.zarr").array)
    np.testing.assert_array_equal(a, b)
    assert a.any()


def test_thickness_map_is_the_local_thickness_of_each_class(tmp_path):
    lab = _three_class()
    vs = ANISO
    m = mm.measure(lab, voxel_size=vs, measures="thickness", max_thickness=12.0, chunk_size=32,
                   thickness_map=tmp_path / "t.ome.zarr")
    from ml4paleo.formats import open_image

    image = open_image(tmp_path / "t.ome.zarr")
    got = np.asarray(image.array)
    assert got.dtype == np.float32 and image.voxel_size == vs
    assert image.attrs["ml4paleo"]["kind"] == "local_thickness"
    assert image.attrs["ml4paleo"]["clipped"] == m.clipped
    assert len(image.levels) > 1
    for v in (1, 2):
        ref = local_thickness(lab == v, vs, 12.0).thickness
        np.testing.assert_array_equal(got[lab == v], ref[lab == v])
        assert m.by_value(v)["thickness"]["mean"] == pytest.approx(float(ref[lab == v].mean()), rel=1e-6)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_results_scale_with_the_voxel_size():
    lab = _three_class()
    base = (1.0, 0.75, 0.625)  # dyadic sizes and factor: distances scale without rounding,
    k = 4.0                    # so ties between a ball and a voxel are decided the same way
    a = mm.measure(lab, voxel_size=base, max_thickness=6.0)
    b = mm.measure(lab, voxel_size=tuple(k * s for s in base), max_thickness=6.0 * k)
    for ca, cb in zip(a.classes, b.classes, strict=True):
        assert cb["bv"] == pytest.approx(ca["bv"] * k ** 3)
        assert cb["bv_tv"] == pytest.approx(ca["bv_tv"])
        assert cb["bs"] == pytest.approx(ca["bs"] * k ** 2)
        assert cb["bs_tv"] == pytest.approx(ca["bs_tv"] / k)
        assert cb["connectivity_density"] == pytest.approx(ca["connectivity_density"] / k ** 3)
        assert cb["euler"] == ca["euler"]
        assert cb["degree_of_anisotropy"] == pytest.approx(ca["degree_of_anisotropy"])
        for key in ("thickness", "spacing"):
            assert cb[key]["mean"] == pytest.approx(ca[key]["mean"] * k, rel=1e-9)
            assert cb[key]["max"] == pytest.approx(ca[key]["max"] * k, rel=1e-9)
            assert cb[key]["histogram"]["counts"] == ca[key]["histogram"]["counts"]
    for oa, ob in zip(a.objects, b.objects, strict=True):
        assert ob["volume"] == pytest.approx(oa["volume"] * k ** 3)
        assert ob["surface_area"] == pytest.approx(oa["surface_area"] * k ** 2)
        assert ob["sphericity"] == pytest.approx(oa["sphericity"])
        assert ob["centroid_x"] == pytest.approx(oa["centroid_x"] * k)
    for v in a.profiles:
        assert b.profiles[v]["section_area"] == pytest.approx(
            [s * k ** 2 for s in a.profiles[v]["section_area"]])


def test_worker_processes_give_the_serial_result(tmp_path):
    lab = _three_class()[:40]
    np.save(tmp_path / "labels.npy", lab)
    kwargs = {"voxel_size": ANISO, "max_thickness": 4.0, "chunk_size": 32}
    serial = mm.measure(tmp_path / "labels.npy", executor="serial", **kwargs)
    pooled = mm.measure(tmp_path / "labels.npy", executor="processes", workers=2, **kwargs)
    _assert_same(serial.classes, pooled.classes)
    _assert_same(serial.objects, pooled.objects)


# --------------------------------------------------------------------------- API details


def test_cell_groups_split_the_marching_cubes_area():
    sub, anchor = cell_components()
    lut = area_lut((1.0, 0.7, 1.3))
    for code in range(1, 255):
        groups = [int(s) for s in sub[code] if s]
        assert sum(groups) == code  # the groups partition the corners
        assert lut[code] == pytest.approx(sum(lut[g] for g in groups), abs=1e-12)
        for s, a in zip(sub[code], anchor[code], strict=True):
            if s:
                assert int(s).bit_length() - 1 == a
    v = np.zeros((2, 2, 3), bool)
    v[1, 1, 1] = True
    assert configurations(v).ravel().tolist() == [128, 64]


def test_progress_covers_every_pass(tmp_path):
    lab = _three_class()[:40, :40, :40]
    seen = []
    mm.measure(lab, max_thickness=4.0, chunk_size=16, thickness_map=tmp_path / "t.ome.zarr",
               progress=lambda d, t: seen.append((d, t)))
    totals = {t for _, t in seen}
    assert len(totals) == 1
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == totals.pop()


def test_values_and_class_names_from_the_segmentation_metadata(tmp_path):
    from ml4paleo.formats import create_image

    lab = _three_class()[:32, :32, :32]
    image = create_image(tmp_path / "seg.ome.zarr", lab.shape, np.uint8, chunks=16, label=True,
                         voxel_size=(2.0, 2.0, 2.0), unit="micrometer",
                         extra_attrs={"model_classes": [{"name": "matrix"}, {"name": "bone"},
                                                        {"name": "vessel"}]})
    image.array[...] = lab
    m = mm.measure(tmp_path / "seg.ome.zarr", measures="fractions", values=[1])
    assert [(c["value"], c["name"]) for c in m.classes] == [(1, "bone")]
    assert m.unit == "micrometer" and m.voxel_size == (2.0, 2.0, 2.0)
    every = mm.measure(tmp_path / "seg.ome.zarr", measures="fractions")
    assert [c["name"] for c in every.classes] == ["bone", "vessel"]
    import json

    json.dumps(every.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"measures": "thickness volume"}, "unknown measure"),
        ({"roi_box": ((0, 5), (0, 5))}, "3 ranges"),
        ({"roi_box": ((0, 5), (3, 3), (0, 5))}, "empty or outside"),
        ({"roi_mask": np.zeros((3, 3, 3), np.uint8)}, "differs from labels"),
        ({"max_thickness": -1}, "max_thickness"),
        ({"profile_axis": "w"}, "profile_axis"),
        ({"measures": "fractions", "thickness_map": "x.ome.zarr"}, "needs the 'thickness'"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mm.measure(np.zeros((8, 8, 8), np.uint8), **kwargs)


def test_float_labels_are_refused():
    with pytest.raises(ValueError, match="integers"):
        mm.measure(np.zeros((4, 4, 4), np.float32))


def test_large_balls_paint_row_by_row_exactly():
    from ml4paleo.morphometry.thickness import paint_balls

    vs = (1.25, 1.0, 0.75)
    shape = (30, 34, 40)
    rng = np.random.default_rng(4)
    centres = np.stack([rng.integers(0, n, 25) for n in shape], axis=1)
    r2 = rng.uniform(4.0, 81.0, 25)  # radii up to 9: 12 voxels along x
    got = paint_balls(shape, centres, r2, vs)
    g = _grid(shape)
    expect = np.zeros(shape, np.float32)
    for c, rc2 in zip(centres, r2, strict=True):
        inside = (((g[2] - c[2]) * vs[2]) ** 2 + ((g[1] - c[1]) * vs[1]) ** 2) + \
            ((g[0] - c[0]) * vs[0]) ** 2 <= rc2
        expect[inside] = np.maximum(expect[inside], np.float32(2 * np.sqrt(rc2)))
    np.testing.assert_array_equal(got, expect)


def test_measure_command_writes_summary_table_and_map(tmp_path):
    import json

    from click.testing import CliRunner

    from ml4paleo.cli.measure_commands import measure_command

    vs = (1.0, 0.5, 0.5)
    shape = (24, 48, 48)
    spheres = [((8.0, 8.0, 8.0), 4.0), ((14.0, 15.0, 14.5), 5.0)]
    vol = np.zeros(shape, np.uint8)
    for c, r in spheres:
        vol[_ball(shape, c, r, vs)] = 1
    np.save(tmp_path / "labels.npy", vol)
    out = tmp_path / "out"
    res = CliRunner().invoke(measure_command, [
        str(tmp_path / "labels.npy"), "-o", str(out), "--voxel-size", "1,0.5,0.5", "--unit",
        "micrometer", "--measures", "fractions,thickness,objects", "--max-thickness", "12",
        "--chunk-size", "24", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert "class 1 (class 1): BV/TV" in res.output and "2 object(s)" in res.output
    summary = json.loads((out / "morphometry.json").read_text())
    assert summary["unit"] == "micrometer" and len(summary["objects"]) == len(spheres)
    assert (out / "objects.csv").read_text().count("\n") == len(spheres) + 1
    from ml4paleo.formats import open_image

    tmap = np.asarray(open_image(out / "thickness.ome.zarr").array)
    assert tmap.max() == pytest.approx(summary["classes"][0]["thickness"]["max"])
    bad = CliRunner().invoke(measure_command, [str(tmp_path / "labels.npy"), "-o", str(out),
                                               "--measures", "volume", "-q"])
    assert bad.exit_code == 1 and "unknown measure" in bad.output
    assert "Traceback" not in bad.output


def test_a_dask_cluster_gives_the_serial_result(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    lab = _three_class()[:40]
    kwargs = {"voxel_size": ANISO, "max_thickness": 4.0, "chunk_size": 32, "work_dir": tmp_path}
    serial = mm.measure(lab, executor="serial", **kwargs)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        on_dask = mm.measure(lab, executor=client, **kwargs)
    _assert_same(serial.classes, on_dask.classes)
    _assert_same(serial.objects, on_dask.objects)
    assert list(tmp_path.iterdir()) == []  # the planes folder is gone
