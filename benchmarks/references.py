"""Reference methods the engine is judged against, trained on the same labels.

``ilastik-style`` (:class:`IlastikStyle`)
    ilastik's pixel-classification recipe: its six feature families -- Gaussian smoothing,
    Laplacian of Gaussian, Gaussian gradient magnitude, difference of Gaussians
    (sigma - 0.66 sigma), structure-tensor eigenvalues (inner scale sigma, outer 0.5 sigma)
    and Hessian-of-Gaussian eigenvalues -- at ilastik's default scales 0.7, 1.0, 1.6, 3.5,
    5.0 and 10.0 voxels (:data:`REF_SIGMAS`; the 0.3 scale ilastik offers for the Gaussian
    only is left out), all in 3D with the sigma in voxels on every axis (ilastik ignores the
    voxel size), 60 channels; a 100-tree scikit-learn random forest with balanced class
    weights on every labelled voxel; one stage. Features are computed for the whole volume
    with scipy (mirror borders), prediction in row chunks. (The issue's table used sigma up
    to 8; we use ilastik's actual defaults.)
``original-2d`` (:class:`Original2D`)
    The original ml4paleo web app's method: every z-slice on its own, scikit-image
    ``multiscale_basic_features`` (intensity, edges, texture; sigma 1..16), a 50-tree
    forest of depth <= 12 (the original runner's ``model_factory``). The original painted
    positive regions on whole slices and kept one pixel in 500 for training; here, with
    painted slices every non-background pixel and 1 in 500 background pixels are kept, with
    strokes (where unlabelled is not background) every labelled pixel.

Both read the scan from an OME-Zarr image and write the labels into a Zarr array, like
:func:`ml4paleo.segment`, so their voxel rates compare Zarr to Zarr.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

REF_SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FAMILIES = ("gaussian", "log", "gradient", "dog", "structure", "hessian")


# ----------------------------------------------------------------------------- eigenvalues
def eigvalsh3(a11, a22, a33, a12, a13, a23):
    """Eigenvalues (largest, middle, smallest) of symmetric 3x3 matrices, element-wise
    (closed-form trigonometric solution, float32)."""
    f = np.float32
    q = (a11 + a22 + a33) / f(3)
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p = np.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + f(2) * p1) / f(6))
    tiny = p < f(1e-12)
    inv = np.where(tiny, f(0), f(1) / np.where(tiny, f(1), p))
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    r = np.clip(det * inv**3 / f(2), -1, 1)
    phi = np.arccos(r) / f(3)
    e1 = q + f(2) * p * np.cos(phi)
    e3 = q + f(2) * p * np.cos(phi + f(2 * math.pi / 3))
    return e1, f(3) * q - e1 - e3, e3


def _eig_slabs(parts, out, k0):
    """Write the 3 eigenvalues of 6 tensor components into out[k0:k0+3], a slab at a time."""
    n = parts[0].shape[0]
    step = max(1, (1 << 20) // int(np.prod(parts[0].shape[1:])))
    for z0 in range(0, n, step):
        sl = slice(z0, z0 + step)
        for j, e in enumerate(eigvalsh3(*(p[sl] for p in parts))):
            out[k0 + j, sl] = e


# ----------------------------------------------------------------------------- ilastik-style
def feature_names(sigmas=REF_SIGMAS) -> list[str]:
    """Channel names of :func:`ilastik_features`, in order."""
    names = []
    for s in sigmas:
        names += [f"gaussian_{s:g}", f"log_{s:g}", f"gradient_{s:g}", f"dog_{s:g}"]
        names += [f"structure{i}_{s:g}" for i in range(3)]
        names += [f"hessian{i}_{s:g}" for i in range(3)]
    return names


def _derivs(v: np.ndarray, s: float) -> dict:
    """Gaussian derivatives of order <= 2 at sigma ``s``, sharing the 1D passes."""
    want = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2),
            (1, 1, 0), (1, 0, 1), (0, 1, 1)]
    xs = {o: ndi.gaussian_filter1d(v, s, axis=2, order=o, output=np.float32) for o in (0, 1, 2)}
    ys = {}
    for _oz, oy, ox in want:
        if (oy, ox) not in ys:
            ys[(oy, ox)] = ndi.gaussian_filter1d(xs[ox], s, axis=1, order=oy, output=np.float32)
    del xs
    out = {}
    for oz, oy, ox in want:
        out[(oz, oy, ox)] = ndi.gaussian_filter1d(ys[(oy, ox)], s, axis=0, order=oz, output=np.float32)
    return out


def _one_scale(v: np.ndarray, s: float, out: np.ndarray, k0: int) -> None:
    d = _derivs(v, s)
    g = d[(0, 0, 0)]
    out[k0] = g
    out[k0 + 1] = d[(2, 0, 0)] + d[(0, 2, 0)] + d[(0, 0, 2)]
    gz, gy, gx = d[(1, 0, 0)], d[(0, 1, 0)], d[(0, 0, 1)]
    out[k0 + 2] = np.sqrt(gz * gz + gy * gy + gx * gx)
    out[k0 + 3] = g - ndi.gaussian_filter(v, 0.66 * s, output=np.float32)
    st = [ndi.gaussian_filter(a * b, 0.5 * s, output=np.float32)
          for a, b in ((gz, gz), (gy, gy), (gx, gx), (gz, gy), (gz, gx), (gy, gx))]
    _eig_slabs(st, out, k0 + 4)
    del st
    hs = [d[o] for o in ((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1))]
    _eig_slabs(hs, out, k0 + 7)


def ilastik_features(image: np.ndarray, sigmas=REF_SIGMAS, threads: int = 2) -> np.ndarray:
    """ilastik's six feature families at ``sigmas``: float32 (10 * len(sigmas), z, y, x)."""
    v = np.asarray(image, np.float32)
    out = np.empty((10 * len(sigmas), *v.shape), np.float32)
    # scipy's filters release the GIL: two scales at a time
    with ThreadPoolExecutor(max(1, threads)) as ex:
        list(ex.map(lambda ks: _one_scale(v, ks[1], out, 10 * ks[0]), enumerate(sigmas)))
    return out


def _predict_rows(rf, F2d: np.ndarray, step: int = 262144) -> np.ndarray:
    """Class index (argmax probability) of every column of ``F2d`` (F, N)."""
    n = F2d.shape[1]
    pred = np.empty(n, np.uint8)
    for i in range(0, n, step):
        p = rf.predict_proba(np.ascontiguousarray(F2d[:, i : i + step].T))
        pred[i : i + step] = rf.classes_[p.argmax(1)]
    return pred


class IlastikStyle:
    """The ilastik-style reference on one volume: features once, then fit / predict per labels.

    Parameters
    ----------
    image : ndarray (z, y, x)
        The scan (read from the OME-Zarr image by the caller).
    sigmas : tuple of float
    n_trees : int
    threads : int
        Threads for features and the forest.
    """

    def __init__(self, image: np.ndarray, sigmas=REF_SIGMAS, n_trees: int = 100, threads: int = 2):
        t0 = time.perf_counter()
        self.F = ilastik_features(image, sigmas, threads)
        self.feature_s = time.perf_counter() - t0
        self.shape = image.shape
        self.n_trees = n_trees
        self.threads = threads

    def fit(self, labels: np.ndarray, seed: int = 0):
        """A balanced random forest on every labelled voxel (0 = unlabelled, k + 1 = class k)."""
        from sklearn.ensemble import RandomForestClassifier

        m = labels > 0
        X = np.ascontiguousarray(self.F[:, m].T)
        y = labels[m].astype(np.int64) - 1
        rf = RandomForestClassifier(self.n_trees, class_weight="balanced", n_jobs=self.threads,
                                    random_state=seed)
        return rf.fit(X, y)

    def predict(self, rf) -> np.ndarray:
        """Labels (z, y, x) uint8 of the whole volume."""
        F2d = self.F.reshape(self.F.shape[0], -1)
        return _predict_rows(rf, F2d).reshape(self.shape)


# ----------------------------------------------------------------------------- original 2D
def features_2d(plane: np.ndarray) -> np.ndarray:
    """The original's per-slice features: (H * W, F) float32."""
    from skimage.feature import multiscale_basic_features

    f = multiscale_basic_features(plane.astype(np.float32), intensity=True, edges=True,
                                  texture=True, sigma_min=1, sigma_max=16)
    return f.reshape(-1, f.shape[-1]).astype(np.float32)


class Original2D:
    """The original ml4paleo per-slice 2D random forest (see the module docstring)."""

    def __init__(self, n_trees: int = 50, max_depth: int = 12, sparsity: int = 500,
                 threads: int = 2, seed: int = 0):
        self.n_trees, self.max_depth, self.sparsity = n_trees, max_depth, sparsity
        self.threads, self.seed = threads, seed
        self.rf = None

    def fit(self, image, labels: np.ndarray, painted: bool) -> Original2D:
        """Train on the labelled z-slices of ``image`` (array-like, read slice by slice)."""
        from sklearn.ensemble import RandomForestClassifier

        rng = np.random.default_rng(self.seed)
        Xs, ys = [], []
        for z in np.flatnonzero(labels.any(axis=(1, 2))):
            lab = labels[z].reshape(-1)
            keep = np.flatnonzero(lab > 1) if painted else np.flatnonzero(lab > 0)
            if painted:
                bg = np.flatnonzero(lab == 1)
                keep = np.concatenate([keep, bg[rng.random(len(bg)) < 1 / self.sparsity]])
            X = features_2d(np.asarray(image[z]))
            Xs.append(X[keep])
            ys.append(lab[keep].astype(np.int64) - 1)
        self.rf = RandomForestClassifier(self.n_trees, max_depth=self.max_depth,
                                         n_jobs=self.threads, random_state=self.seed)
        self.rf.fit(np.concatenate(Xs), np.concatenate(ys))
        return self

    def predict_slice(self, plane: np.ndarray) -> np.ndarray:
        p = self.rf.predict_proba(features_2d(plane))
        return self.rf.classes_[p.argmax(1)].reshape(plane.shape).astype(np.uint8)
