"""Large scales on the coarse grid (FeatureSettings.coarse_from, ml4paleo.features.coarse)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from ml4paleo.features import (
    FeatureSettings,
    compute_features,
    feature_names,
    halo_for,
    plane_features,
    scale_plan,
)
from ml4paleo.features.coarse import coarse_halo, plan_steps
from ml4paleo.segmentation.boxes import features_for_box

FINE = FeatureSettings(scales=(1.0, 3.5, 5.0, 10.0),
                       families=("gaussian", "dog", "gradient", "log", "hessian"))
COARSE = replace(FINE, coarse_from=4.0)


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = ndi.gaussian_filter(rng.random(shape).astype(np.float32), 2.0) * 10
    return v + rng.random(shape).astype(np.float32)


def _whole(vol, settings, vs):
    h = halo_for(settings, vs)
    return compute_features(np.pad(vol, [(x, x) for x in h], mode="symmetric"), settings, vs)


@pytest.mark.parametrize("vs", [None, (2.5, 1.0, 1.0)])
def test_blocks_at_any_origin_equal_the_whole_volume_exactly(vs):
    vol = _volume((50, 61, 58), seed=1)
    whole = _whole(vol, COARSE, vs)
    n = len(feature_names(COARSE))
    # odd and even starts, thin and thick boxes, boxes at the border
    for box in [(slice(0, 50), slice(0, 61), slice(0, 58)), (slice(3, 20), slice(5, 40), slice(1, 58)),
                (slice(17, 18), slice(0, 33), slice(9, 31)), (slice(44, 50), slice(60, 61), slice(0, 7))]:
        X, _ = features_for_box(vol, box, COARSE, vs)
        assert np.array_equal(X, whole[(slice(None), *box)].reshape(n, -1)), box


def test_a_pruned_channel_set_holds_the_same_values():
    vol = _volume((40, 44, 46), seed=2)
    whole = _whole(vol, COARSE, None)
    names = feature_names(COARSE)
    keep = ["gaussian_1", "dog_5", "hessian2_10", "log_10"]
    pruned = COARSE.with_channels(keep)
    assert halo_for(pruned) == halo_for(COARSE)  # the largest scale is kept
    X, _ = features_for_box(vol, (slice(5, 30), slice(3, 41), slice(0, 46)), pruned, None)
    kept = feature_names(pruned)  # the canonical order
    assert sorted(kept) == sorted(keep)
    ref = whole[[names.index(k) for k in kept]][:, 5:30, 3:41, :].reshape(len(keep), -1)
    assert np.array_equal(X, ref)


def test_planes_and_their_tiles_agree_with_the_volume():
    vol = _volume((48, 52, 50), seed=3)
    whole = _whole(vol, COARSE, None)
    names = feature_names(COARSE)
    for axis, index in [(0, 7), (0, 30), (1, 0), (2, 33)]:
        plane = plane_features(vol, axis, index, settings=COARSE)
        sl = [slice(None)] * 4
        sl[axis + 1] = index
        ref = whole[tuple(sl)]
        for k, n in enumerate(names):
            # float32 rounding, amplified by the second differences of a sigma-10 Gaussian
            # (values ~1e-4 of the image's): 1e-2 of the channel's largest value
            tol = (1e-2 if n.startswith(("hessian", "log")) else 2e-3) * float(np.abs(ref[k]).max())
            assert float(np.abs(plane[k] - ref[k]).max()) <= tol + 1e-6, (axis, index, n)
        # tiles put side by side (odd starts included) are the whole plane exactly
        h, w = plane.shape[1:]
        tiled = np.empty_like(plane)
        for r0, r1 in ((0, 11), (11, 30), (30, h)):
            for c0, c1 in ((0, 17), (17, w)):
                tiled[:, r0:r1, c0:c1] = plane_features(vol, axis, index, slice(r0, r1),
                                                        slice(c0, c1), settings=COARSE)
        assert np.array_equal(tiled, plane)


def test_the_coarse_grid_approximates_the_fine_computation():
    vol = _volume((64, 64, 64), seed=4)
    fine, coarse = _whole(vol, FINE, None), _whole(vol, COARSE, None)
    names = feature_names(FINE)
    assert names == feature_names(COARSE)
    for k, n in enumerate(names):
        a, b = fine[k].ravel(), coarse[k].ravel()
        if not n.endswith(("_5", "_10")):
            assert np.array_equal(a, b), n  # small scales stay at full resolution
            continue
        rel = float(np.abs(a - b).max() / np.abs(a).max())
        if n.startswith("gaussian"):
            assert rel < 2e-3, (n, rel)
        else:  # differences over two fine voxels instead of one: same structure
            assert np.corrcoef(a, b)[0, 1] > 0.98, n


def test_settings_steps_and_halo():
    with pytest.raises(ValueError, match="coarse_from"):
        FeatureSettings(coarse_from=2.0)
    d = COARSE.to_dict()
    assert d["coarse_from"] == 4.0 and FeatureSettings.from_dict(d) == COARSE
    assert "coarse_from" not in FINE.to_dict()  # older model files read as before
    plans = {p.sigma: p for p in scale_plan(COARSE)}
    assert plan_steps(plans[3.5], COARSE, None) == (1, 1, 1)
    assert plan_steps(plans[5.0], COARSE, None) == (2, 2, 2)
    # anisotropic voxels: the coarse z axis only where its own sigma reaches coarse_from
    assert plan_steps(plans[5.0], COARSE, (2.0, 1.0, 1.0)) == (1, 2, 2)
    assert plan_steps(plans[10.0], COARSE, (2.0, 1.0, 1.0)) == (2, 2, 2)
    assert halo_for(COARSE) == (coarse_halo(10.0, 2),) * 3
    # the structure tensor keeps its scale at full resolution
    st = FeatureSettings(scales=(1.0, 5.0), families=("gaussian", "structure"), coarse_from=4.0,
                         structure_max_scale=5.0)
    assert plan_steps(scale_plan(st)[1], st, None) == (1, 1, 1)
