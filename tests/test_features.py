"""Tests for ml4paleo.features: closed-form eigenvalues, blockwise == whole volume."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ml4paleo.blocks import block_grid, read_with_halo
from ml4paleo.features import (
    FAMILIES,
    FeatureSettings,
    compute_features,
    eigvalsh2,
    eigvalsh3,
    feature_names,
    halo_for,
    n_features,
)


def test_eigvalsh3_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:10] = np.eye(3) * 2.5  # degenerate: all eigenvalues equal
    a[10:20] = np.diag([1.0, 1.0, -3.0])  # two equal
    got = np.stack(eigvalsh3(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]), 1)
    ref = np.linalg.eigvalsh(a)[:, ::-1]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())


def test_eigvalsh2_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1000, 2, 2)).astype(np.float32)
    a = a + a.transpose(0, 2, 1)
    got = np.stack(eigvalsh2(a[:, 0, 0], a[:, 1, 1], a[:, 0, 1]), 1)
    np.testing.assert_allclose(got, np.linalg.eigvalsh(a)[:, ::-1], atol=1e-5)


def _tensor_scale(feats, settings):
    """Per channel: largest magnitude among the channels of the same tensor (eigenvalues of
    one matrix share its round-off), else of the channel itself."""
    mags = np.abs(feats).reshape(feats.shape[0], -1).max(axis=1)
    keys = [n.rstrip("_0123456789.").rstrip("012") + n.split("_")[-1] for n in feature_names(settings)]
    return np.array([max(m for m, k2 in zip(mags, keys, strict=True) if k2 == k) for k in keys]) + 1e-6


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape).astype(np.float32), 1.5) * 1000


@pytest.mark.parametrize(
    "settings,voxel_size",
    [
        (FeatureSettings(), None),
        (FeatureSettings(scales=(0.7, 1.0, 1.6, 3.5, 5.0), families=FAMILIES), None),
        (FeatureSettings(scales=(0.7, 1.6, 3.0)), (2.0, 1.0, 1.0)),
        (FeatureSettings(mode="2d"), None),
    ],
)
def test_blockwise_equals_whole_volume(settings, voxel_size):
    vol = _volume((40, 52, 46))
    h = halo_for(settings, voxel_size)
    whole = compute_features(read_with_halo(vol, block_grid(vol.shape, vol.shape, h)[0]), settings, voxel_size)
    assert whole.shape == (n_features(settings), *vol.shape)
    assert len(feature_names(settings)) == whole.shape[0]
    out = np.full_like(whole, np.nan)
    for b in block_grid(vol.shape, (17, 24, 20), h):
        out[(slice(None), *b.write)] = compute_features(read_with_halo(vol, b), settings, voxel_size)
    scale = _tensor_scale(whole, settings)[:, None, None, None]
    # float32 round-off only: relative to each channel, or to the intensities for
    # derivatives that cancel (e.g. a Laplacian of ~1 from values of ~1000)
    tol = np.maximum(5e-4 * scale, 1e-5 * np.abs(vol).max())
    assert not np.isnan(out).any()
    assert np.all(np.abs(out - whole) <= tol)


def test_thin_slab_equals_whole_volume():
    s = FeatureSettings()
    vol = _volume((30, 40, 40), seed=2)
    h = halo_for(s)
    whole = compute_features(read_with_halo(vol, block_grid(vol.shape, vol.shape, h)[0]), s)
    for z in (0, 7, 29):
        b = block_grid(vol.shape, (1, 40, 40), h)[z]
        one = compute_features(read_with_halo(vol, b), s)
        scale = _tensor_scale(whole, s)[:, None, None]
        tol = np.maximum(5e-4 * scale, 1e-5 * np.abs(vol).max())
        assert np.all(np.abs(one[:, 0] - whole[:, z]) <= tol)


def test_features_respond_to_structure():
    # a bright tube along x: the smallest Hessian eigenvalue is strongly negative on its axis
    vol = np.zeros((32, 32, 32), np.float32)
    vol[14:18, 14:18, :] = 100
    s = FeatureSettings(scales=(1.6,), families=("hessian",), raw=False)
    h = halo_for(s)
    f = compute_features(np.pad(vol, [(x, x) for x in h], mode="symmetric"), s)
    assert f.shape == (3, 32, 32, 32)
    centre = f[:, 16, 16, 16]
    assert centre[2] < -5 and centre[1] < -5 and abs(centre[0]) < 0.5 * abs(centre[2])
    assert abs(f[2, 2, 2, 16]) < 1e-3  # far away: flat


def test_bad_input():
    with pytest.raises(ValueError, match="halo"):
        compute_features(np.zeros((10, 10, 10)), FeatureSettings(), halo=(1, 1, 1))
    with pytest.raises(ValueError, match="scales"):
        FeatureSettings(scales=(2.0, 1.0))
    with pytest.raises(ValueError, match="families"):
        FeatureSettings(families=("gaussian", "nope"))
    s = FeatureSettings(scales=(1.0, 2.0), mode="2d")
    assert FeatureSettings.from_dict(s.to_dict()) == s


# --------------------------------------------------------------------------- reference values
_ALL = ("gaussian", "gradient", "log", "dog", "hessian", "structure")
#: compute_features() on one fixed random volume, kept in tests/fixtures/feature_reference.npz
#: (regenerate with ``python tests/test_features.py``): a refactor must give the same values.
#: Not bit digests: numpy's float32 square roots and trigonometry take other SIMD paths on
#: AVX-512 CPUs (the closed-form eigenvalues differ there by up to 1.5e-6 of a channel's
#: largest value), so the values are compared to 1e-5 of it -- far below what a changed
#: kernel, border rule or scale does.
REFERENCE = {
    "default": (FeatureSettings(), None),
    "all_aniso": (FeatureSettings(families=_ALL, scales=(0.7, 1.0, 1.6, 2.5)), (2.0, 1.0, 1.0)),
    "2d_all": (FeatureSettings(families=_ALL, mode="2d", scales=(1.0, 2.0)), None),
    "noraw_iso": (FeatureSettings(raw=False, anisotropic=False, scales=(1.0, 3.0)), (3.0, 1.0, 1.0)),
}
FIXTURE = Path(__file__).parent / "fixtures" / "feature_reference.npz"
TOLERANCE = 1e-5  # of each channel's largest absolute value


def _reference_features(name: str) -> np.ndarray:
    settings, voxel_size = REFERENCE[name]
    vol = (np.random.default_rng(42).random((40, 42, 44)) * 1000).astype(np.float32)
    return compute_features(vol, settings, voxel_size)


def _sample_index(shape, n: int = 256) -> np.ndarray:
    """Flat indices of the 8 corners, the face centres and ``n`` random voxels."""
    corners = [[a * (s - 1) for a, s in zip(c, shape, strict=True)] for c in np.ndindex(2, 2, 2)]
    faces = []
    for axis in range(3):
        for end in (0, shape[axis] - 1):
            p = [s // 2 for s in shape]
            p[axis] = end
            faces.append(p)
    rnd = np.random.default_rng(7).integers(0, shape, size=(n, 3))
    return np.ravel_multi_index(np.array(corners + faces + rnd.tolist()).T, shape)


def _summary(f: np.ndarray) -> dict[str, np.ndarray]:
    flat = f.reshape(len(f), -1).astype(np.float64)
    return {"shape": np.array(f.shape), "values": flat[:, _sample_index(f.shape[1:])],
            "mean": flat.mean(1), "std": flat.std(1), "maxabs": np.abs(flat).max(1)}


def write_reference(path: Path = FIXTURE) -> None:
    """Recompute the reference summaries (only when the features are meant to change)."""
    arrays = {f"{name}/{k}": v for name in REFERENCE for k, v in _summary(_reference_features(name)).items()}
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_features_match_the_reference(name):
    with np.load(FIXTURE) as ref:
        want = {k: ref[f"{name}/{k}"] for k in ("shape", "values", "mean", "std", "maxabs")}
    got = _summary(_reference_features(name))
    assert tuple(got["shape"]) == tuple(want["shape"])
    tol = TOLERANCE * want["maxabs"]
    assert np.all(np.abs(got["maxabs"] - want["maxabs"]) <= tol)
    for key in ("mean", "std"):
        assert np.all(np.abs(got[key] - want[key]) <= tol), key
    bad = np.abs(got["values"] - want["values"]) > tol[:, None]
    assert not bad.any(), f"{int(bad.sum())} sampled values differ, channels {np.flatnonzero(bad.any(1))}"


# --------------------------------------------------------------------------- seams
def test_backend_is_selected_by_name_and_a_new_one_costs_one_class():
    from ml4paleo.features import NumpyBackend, backend_names, get_backend, register_backend

    class Counting(NumpyBackend):
        name = "counting"

        def __init__(self):
            self.calls = {"gaussian1d": 0, "gaussian1d_valid_window": 0}

        def gaussian1d(self, x, sigma, axis):
            self.calls["gaussian1d"] += 1
            return super().gaussian1d(x, sigma, axis)

        def gaussian1d_valid_window(self, x, sigma, axis, window):
            self.calls["gaussian1d_valid_window"] += 1
            return super().gaussian1d_valid_window(x, sigma, axis, window)

    register_backend("counting", Counting)
    assert "counting" in backend_names() and isinstance(get_backend(), NumpyBackend)
    settings = FeatureSettings(scales=(1.0, 2.0), families=FAMILIES)
    vol = _volume((22, 31, 32), seed=4)  # a thin centre (4 planes): both Gaussian passes run
    ref = compute_features(vol, settings)
    got = compute_features(vol, settings, backend="counting")
    np.testing.assert_array_equal(got, ref)
    calls = get_backend("counting").calls
    assert calls["gaussian1d_valid_window"] > 0  # every pass of the filter bank has its margin
    # a margin too thin for the kernel takes the mirrored pass
    be = get_backend("counting")
    thin = be.smooth(vol[:12, :12, :12], (1.0, 1.0, 1.0), (0, 0, 0), (8, 8, 8))
    assert thin.shape == (8, 8, 8) and calls["gaussian1d"] == 3
    with pytest.raises(ValueError, match="unknown feature backend 'cuda'.*numpy"):
        compute_features(vol, settings, backend="cuda")


def test_compiled_passes_equal_scipys_to_rounding():
    """The compiled float32 passes against scipy.ndimage's float64-accumulating ones."""
    from scipy import ndimage as ndi

    from ml4paleo.features import NumpyBackend, register_backend
    from ml4paleo.features.kernels import TRUNCATE, kernel_radius

    class Scipy(NumpyBackend):
        name = "scipy-passes"

        def gaussian1d_valid(self, x, sigma, axis):
            r = kernel_radius(sigma)
            y = ndi.gaussian_filter1d(x, sigma, axis=axis, mode="reflect", truncate=TRUNCATE,
                                      output=np.float32)
            sl = [slice(None)] * 3
            sl[axis] = slice(r, x.shape[axis] - r)
            return y[tuple(sl)]

    register_backend("scipy-passes", Scipy)
    for settings, vs in ((FeatureSettings(families=FAMILIES, scales=(0.7, 1.6, 3.5)), None),
                         (FeatureSettings(scales=(1.0, 5.0, 10.0), coarse_from=4.0), (2.0, 1.0, 1.0))):
        h = halo_for(settings, vs)
        vol = np.pad(_volume((20, 30, 34), seed=7), [(x, x) for x in h], mode="symmetric")
        got = compute_features(vol, settings, vs)
        ref = compute_features(vol, settings, vs, backend="scipy-passes")
        names = feature_names(settings)
        for k, n in enumerate(names):
            # relative to the largest value of the channel's family at that scale: finite
            # differences of a smooth field cancel most digits (the second difference of
            # a sigma-10 Gaussian of values ~500 keeps ~3 of float32's 7)
            fam = [j for j, m in enumerate(names) if m.split("_")[-1] == n.split("_")[-1]
                   and m.rstrip("0123456789._")[:4] == n.rstrip("0123456789._")[:4]]
            scale = max(float(np.abs(ref[fam]).max()), 1e-6)
            assert float(np.abs(got[k] - ref[k]).max()) <= 1e-3 * scale, n


def test_families_table_sets_channel_order_and_halo():
    from ml4paleo.features import kernel_radius
    from ml4paleo.features.families import REGISTRY, family

    assert FAMILIES == tuple(f.name for f in REGISTRY)
    s = FeatureSettings(scales=(0.5, 1.0, 2.0), families=("structure", "gaussian", "hessian"))
    # channel order comes from the table, not from the order the settings list families in
    assert feature_names(s) == ["raw", "gaussian_0.5", "gaussian_1", "hessian0_1", "hessian1_1",
                                "hessian2_1", "structure0_1", "structure1_1", "structure2_1",
                                "gaussian_2", "hessian0_2", "hessian1_2", "hessian2_2"]
    # only the structure tensor adds to the halo, at the scales where it is computed (1.0)
    assert family("structure").margin(s, 1.0, None) == (kernel_radius(0.5),) * 3
    assert halo_for(s) == (kernel_radius(2.0) + 1,) * 3
    assert halo_for(FeatureSettings(scales=(1.0,), families=("structure",))) == (4 + 1 + 2,) * 3
    with pytest.raises(KeyError, match="nope"):
        family("nope")


if __name__ == "__main__":
    write_reference()
