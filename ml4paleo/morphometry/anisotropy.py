"""Degree of anisotropy from the mean intercept length (MIL) tensor.

BoneJ casts random parallel lines in ~2000 directions and counts phase changes. Here the
counts are exact instead of sampled: lines of direction ``w`` cross the marching-cubes
surface ``sum_t |a_t . w|`` times per unit of cross-section (Cauchy–Crofton, ``a_t`` the
area vector of triangle ``t``), so the intercept density in any direction follows from
the configuration histogram of the ROI (mirror-continued at the box faces, as for the
surface density):

``P_L(w) = sum_t |a_t . w| / TV``   and   ``MIL(w) = 1 / P_L(w)`` (Harrigan & Mann 1984).

The MIL ellipsoid is the quadratic form ``M`` fitted by least squares to
``1 / MIL(w)^2 = w^T M w`` over evenly spread directions. Its eigenvalues ``m1 >= m2 >= m3``
give the principal MILs ``1 / sqrt(m)`` and the degree of anisotropy

``DA = 1 - m3 / m1`` (BoneJ2's ``1 - (1/c^2) / (1/a^2)``; 0 isotropic, 1 fully oriented).

The fabric tensor returned is ``M^(-1/2)`` normalised to unit trace, in ``(x, y, z)``.
A digital surface has facets on a few lattice directions only, so an isotropic
structure measures a small DA (a few hundredths), not 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from ml4paleo.morphometry.configurations import intercept_lut, mirror_histogram
from ml4paleo.morphometry.thickness import check_voxel_size

__all__ = ["anisotropy", "anisotropy_from_histogram", "hemisphere_directions"]

#: directions used for the fit (BoneJ2 samples 2000 over the sphere)
N_DIRECTIONS = 1000


@functools.cache
def _directions(n: int) -> np.ndarray:
    # Fibonacci lattice on the upper hemisphere (MIL is symmetric: w and -w agree)
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1)  # (z, y, x)


def hemisphere_directions(n: int = N_DIRECTIONS) -> np.ndarray:
    """``n`` evenly spread unit vectors ``(z, y, x)`` on a hemisphere."""
    if n < 6:
        raise ValueError(f"need at least 6 directions to fit a tensor, got {n}")
    return _directions(int(n))


@functools.cache
def _lut(voxel_size: tuple[float, float, float], n: int) -> np.ndarray:
    return intercept_lut(voxel_size, _directions(n))


def anisotropy_from_histogram(mirror_hist8: np.ndarray, voxel_size: Sequence[float],
                              total_volume: float, n_directions: int = N_DIRECTIONS) -> dict:
    """MIL ellipsoid and degree of anisotropy from a mirror histogram (weights x8).

    Returns
    -------
    dict
        ``degree_of_anisotropy`` (None when there is no surface), ``mil_eigenvalues``
        (``m1 >= m2 >= m3``, unit^-2), ``mil_principal`` (``1/sqrt(m)``, None where
        ``m`` is 0: no intercepts in that direction), ``mil_axes`` (the three axis
        directions as ``(x, y, z)`` unit vectors, same order) and ``fabric_tensor``
        (3 x 3 in ``(x, y, z)``, unit trace).
    """
    vs = check_voxel_size(voxel_size)
    dirs = hemisphere_directions(n_directions)
    if total_volume <= 0 or not np.any(mirror_hist8):
        return _empty()
    crossings = (mirror_hist8 @ _lut(vs, len(dirs))) / 8.0
    p_l = crossings / total_volume
    if not np.any(p_l > 0):
        return _empty()
    z, y, x = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    design = np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], axis=1)
    coef, *_ = np.linalg.lstsq(design, p_l * p_l, rcond=None)
    m = np.array([[coef[0], coef[3], coef[4]],
                  [coef[3], coef[1], coef[5]],
                  [coef[4], coef[5], coef[2]]])
    evals, evecs = np.linalg.eigh(m)
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0.0, None)
    evecs = evecs[:, order]
    top = float(evals[0])
    da = 1.0 - float(evals[2]) / top if top > 0 else None
    radii = [1.0 / math.sqrt(e) if e > 0 else None for e in evals.tolist()]
    if all(r is not None for r in radii):
        fabric = evecs @ np.diag(radii) @ evecs.T
        fabric = fabric / np.trace(fabric)
        fabric_list = fabric.tolist()
    else:
        fabric_list = None
    return {
        "degree_of_anisotropy": da,
        "mil_eigenvalues": evals.tolist(),
        "mil_principal": radii,
        "mil_axes": [evecs[:, i].tolist() for i in range(3)],
        "fabric_tensor": fabric_list,
    }


def _empty() -> dict:
    return {"degree_of_anisotropy": None, "mil_eigenvalues": None, "mil_principal": None,
            "mil_axes": None, "fabric_tensor": None}


def anisotropy(mask: np.ndarray, voxel_size: Sequence[float] | float = 1.0,
               n_directions: int = N_DIRECTIONS) -> dict:
    """Degree of anisotropy of a binary structure held in memory (the array is the box).

    Examples
    --------
    >>> plates = np.zeros((32, 16, 16), bool); plates[::4] = True   # layers normal to z
    >>> a = anisotropy(plates)
    >>> round(a["degree_of_anisotropy"], 3), [abs(round(v, 3)) for v in a["mil_axes"][0]]
    (1.0, [0.0, 0.0, 1.0])
    """
    m = np.asarray(mask, bool)
    vs = check_voxel_size(voxel_size)
    tv = float(m.size) * vs[0] * vs[1] * vs[2]
    return anisotropy_from_histogram(mirror_histogram(m), vs, tv, n_directions)
