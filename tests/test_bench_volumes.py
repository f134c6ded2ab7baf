"""The benchmark volumes' truths are what their docstrings say (small sizes, fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import volumes as V  # noqa: E402


def _medians(vol):
    return [float(np.median(vol.scan[vol.truth == k])) for k in range(len(vol.class_names))]


def _check_basic(vol, shape):
    assert vol.scan.shape == tuple(shape) == vol.truth.shape
    assert vol.truth.dtype == np.uint8
    assert sorted(np.unique(vol.truth).tolist()) == list(range(len(vol.class_names)))
    assert len(vol.voxel_size) == 3


@pytest.mark.parametrize("fn", [V.fossil_iso, V.fossil_aniso])
def test_fossil_classes_are_ordered_by_density_and_reproducible(fn):
    shape = (24, 64, 64)
    vol = fn(shape, seed=3)
    _check_basic(vol, shape)
    matrix, bone, dense = _medians(vol)
    assert matrix < bone < dense
    frac = np.bincount(vol.truth.ravel(), minlength=3) / vol.truth.size
    assert frac[0] > 0.5 and 0.005 < frac[1] < 0.4 and 0 < frac[2] < 0.1
    again = fn(shape, seed=3)
    assert np.array_equal(vol.scan, again.scan) and np.array_equal(vol.truth, again.truth)
    assert not np.array_equal(vol.truth, fn(shape, seed=4).truth)


def test_fossil_aniso_samples_the_same_object_with_thicker_z_voxels():
    vol = V.fossil_aniso((16, 64, 64), seed=0)
    assert vol.voxel_size == (2.0, 1.0, 1.0)
    # Poisson noise: the spread grows with the signal
    sd = [float(vol.scan[vol.truth == k].std()) for k in range(3)]
    assert sd[0] > 0


def test_texture_classes_share_brightness_but_not_structure():
    vol = V.texture((32, 64, 64), seed=1)
    _check_basic(vol, (32, 64, 64))
    s = vol.scan.astype(np.float64)
    means = [s[vol.truth == k].mean() for k in range(3)]
    sds = [s[vol.truth == k].std() for k in range(3)]
    assert max(means) - min(means) < 0.1 * min(sds)
    assert max(sds) / min(sds) < 1.15
    # fibres run along x: voxels 3 apart along x are far more alike than along y; sheets
    # (normal to z) are alike along y and x but not along z
    f = s - s.mean()

    def corr(k, axis, lag=3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(lag, None), slice(None, -lag)
        m = (vol.truth[tuple(a)] == k) & (vol.truth[tuple(b)] == k)
        return (f[tuple(a)] * f[tuple(b)])[m].mean()

    assert corr(1, 2) > 2 * corr(1, 1)
    assert corr(2, 1) > 2 * corr(2, 0)
    assert corr(0, 2) < 0.5 * corr(1, 2)


def test_texture_coherence_differs_only_in_orientation_coherence():
    vol = V.texture_coherence((32, 64, 64), seed=0)
    _check_basic(vol, (32, 64, 64))
    s = vol.scan.astype(np.float64)
    m0, m1 = (s[vol.truth == k].mean() for k in (0, 1))
    sd0, sd1 = (s[vol.truth == k].std() for k in (0, 1))
    assert abs(m0 - m1) < 0.05 * sd0 and abs(sd0 / sd1 - 1) < 0.1


def test_rock_phases_from_porespy():
    pytest.importorskip("porespy")
    vol = V.rock((24, 48, 48), seed=0)
    _check_basic(vol, (24, 48, 48))
    pore, grain, mineral = _medians(vol)
    assert pore < grain < mineral
    frac = np.bincount(vol.truth.ravel(), minlength=3) / vol.truth.size
    assert 0.2 < frac[0] < 0.5  # porosity 0.35 after partial-volume majority


def test_mri_is_the_real_mni_template():
    pytest.importorskip("nilearn")
    vol = V.mri((40, 80, 80))
    _check_basic(vol, (40, 80, 80))
    other, grey, white = _medians(vol)
    assert grey < white  # T1: white matter is brighter than grey matter
    full = V.mri()
    assert full.scan.shape == (189, 233, 197)
    frac = np.bincount(full.truth.ravel(), minlength=3) / full.truth.size
    assert 0.05 < frac[1] < 0.3 and 0.04 < frac[2] < 0.3


def test_strokes_stay_inside_their_class_away_from_boundaries():
    vol = V.fossil_iso((24, 64, 64), seed=2)
    lab = V.stroke_labels(vol.truth, 2, seed=0)
    planes = [z for z in range(lab.shape[0]) if lab[z].any()]
    assert planes == V.slice_indices(24, 2)
    for z in planes:
        t, s = vol.truth[z], lab[z]
        assert np.all(t[s > 0] == s[s > 0] - 1)  # every stroke voxel has its true class
        for c in np.unique(t):
            assert (s == c + 1).any(), f"class {c} got no stroke on slice {z}"
        # big classes: strokes keep 2 voxels off the class boundary
        from scipy import ndimage as ndi

        inner = ndi.binary_erosion(t == 0, iterations=2)
        assert np.all(inner[s == 1])
        assert (s > 0).mean() < 0.2  # scribbles, not painting


def test_painted_labels_are_whole_truth_slices():
    truth = V.rock((12, 32, 32), seed=1).truth if _has("porespy") else V.texture((12, 32, 32)).truth
    lab = V.painted_labels(truth, 3)
    for z in V.slice_indices(12, 3):
        assert np.array_equal(lab[z], truth[z] + 1)
    assert int((lab > 0).sum()) == 3 * 32 * 32


def test_dice():
    t = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    assert V.dice_per_class(t, p, 3) == [0.5, 0.8, 0.0]


def _has(mod: str) -> bool:
    try:
        __import__(mod)
    except ImportError:
        return False
    return True
