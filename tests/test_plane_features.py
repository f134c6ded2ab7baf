"""Features of a plane / tile (normal first) against the 3-D whole-volume features."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ml4paleo.blocks import block_grid, read_with_halo
from ml4paleo.features import (
    FeatureSettings,
    compute_features,
    feature_names,
    halo_for,
    plane_axes,
    plane_box,
    plane_features,
)

SETTINGS = [
    (FeatureSettings(), None),
    (FeatureSettings(), (2.0, 1.0, 1.0)),
    (FeatureSettings(families=("gaussian", "gradient", "structure"), scales=(1.0, 1.6)), (1.0, 0.5, 1.0)),
    (FeatureSettings(mode="2d"), None),
]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    base = rng.random((22, 50, 58)) * 3000
    # structure at several scales on top of the noise, uint16 like a scan
    z, y, x = np.mgrid[:22, :50, :58]
    base += 8000 * (((y - 25) ** 2 + (x - 29) ** 2 + 4 * (z - 11) ** 2) < 150)
    return base.astype(np.uint16)


def _whole(vol, settings, vs):
    h = halo_for(settings, vs)
    return compute_features(read_with_halo(vol, block_grid(vol.shape, vol.shape, h)[0]), settings, vs)


@pytest.mark.parametrize("settings,vs", SETTINGS)
def test_plane_features_equal_the_3d_features_of_the_whole_volume(volume, settings, vs):
    whole = _whole(volume, settings, vs)
    names = feature_names(settings)
    # channels of one family at one scale (hessian0..2_1.6, ...) share one magnitude
    groups = [re.sub(r"\d+_", "_", n) for n in names]
    for axis in (0, 1, 2):
        for index in (0, 7, volume.shape[axis] - 1):  # the border planes are mirrored
            got = plane_features(volume, axis, index, settings=settings, voxel_size=vs)
            ref = np.take(whole, index, axis=axis + 1)
            assert got.shape == ref.shape == (len(feature_names(settings)), *ref.shape[1:])
            assert got.dtype == np.float32
            # float32 rounding of the smoothed image (another pass order, ~1e-7 relative),
            # amplified by the finite differences and the closed-form eigenvalues: at most
            # 5e-4 of the largest value of the channel's family at that scale
            for k, g in enumerate(groups):
                scale = max(float(np.abs(ref[j]).max()) for j, gg in enumerate(groups) if gg == g)
                np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=5e-4 * scale,
                                           err_msg=f"{names[k]} axis {axis} plane {index}")
            if axis == 0 and settings.mode == "3d":
                assert np.array_equal(got[0], ref[0])  # the raw channel is the raw plane


@pytest.mark.parametrize("settings,vs", SETTINGS)
def test_tiles_of_a_plane_equal_the_whole_plane_exactly(volume, settings, vs):
    for axis in (0, 1, 2):
        index = volume.shape[axis] // 2
        whole = plane_features(volume, axis, index, settings=settings, voxel_size=vs)
        h, w = whole.shape[1:]
        got = np.full_like(whole, np.nan)
        for r0 in range(0, h, 16):
            for c0 in range(0, w, 24):
                # tiles of at least 9 pixels per side (thinner ones take another filter path)
                rows = slice(min(r0, h - 16), min(r0 + 16, h))
                cols = slice(min(c0, w - 24), min(c0 + 24, w))
                got[:, rows, cols] = plane_features(volume, axis, index, rows, cols, settings, vs)
        assert np.array_equal(got, whole)


def test_plane_features_read_only_the_slab_they_need(volume):
    class Counting:
        def __init__(self, arr):
            self.arr, self.shape, self.dtype, self.reads = arr, arr.shape, arr.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.arr[key]

    s = FeatureSettings(scales=(1.0,))
    h = halo_for(s)
    vol = Counting(volume)
    assert h == (5, 5, 5)
    plane_features(vol, 1, 20, slice(8, 14), slice(6, 25), s)  # rows: z, columns: x
    (read,) = vol.reads
    assert read == (slice(3, 19), slice(15, 26), slice(1, 30))
    vol.reads.clear()
    plane_features(vol, 0, 0, slice(0, 10), slice(50, 58), s)  # clipped at the border
    assert vol.reads == [(slice(0, 6), slice(0, 15), slice(45, 58))]


def test_plane_axes_put_the_normal_first_and_boxes_check_their_input():
    assert plane_axes(1) == (1, 0, 2) and plane_axes(2, FeatureSettings(mode="2d")) == (0, 2, 1)
    assert plane_box((4, 5, 6), 2, 3, slice(1, 3)) == (slice(1, 3), slice(0, 5), slice(3, 4))
    for bad in ((3, 0), (0, 4), (0, -1)):
        with pytest.raises(ValueError):
            plane_box((4, 5, 6), *bad)
    with pytest.raises(ValueError, match="empty"):
        plane_box((4, 5, 6), 0, 1, slice(3, 3))
