"""Gaussian kernel rules shared by every feature and by the auto-context smoothing.

One truncation (4 sigma, scipy's default), so the kernel radius here is exactly the
support scipy's Gaussian filters use; halos computed from it make blockwise filtering
equal whole-volume filtering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TRUNCATE", "axis_sigmas", "gaussian_kernel", "kernel_radius"]

#: Gaussian kernels are cut at this many sigmas
TRUNCATE = 4.0


def kernel_radius(sigma: float) -> int:
    """Radius (voxels) of the Gaussian kernel of ``sigma`` (scipy's, ``truncate=4``); 0 for 0.

    Examples
    --------
    >>> kernel_radius(1.0), kernel_radius(3.5), kernel_radius(0)
    (4, 14, 0)
    """
    return int(TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised float32 Gaussian of ``sigma`` over ``-radius .. radius``."""
    r = kernel_radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def axis_sigmas(
    sigma: float, settings: Any, voxel_size: Sequence[float] | None
) -> tuple[float, float, float]:
    """Per-axis sigma (voxels) for scale ``sigma``: finer axes blur more voxels.

    Parameters
    ----------
    sigma : float
        The scale, in voxels of the finest axis.
    settings : FeatureSettings
        Its ``anisotropic`` and ``mode`` (``"2d"`` never blurs along z).
    voxel_size : sequence of 3 float, optional
        Physical voxel size (z, y, x); None = isotropic.
    """
    vs = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    if settings.anisotropic:
        finest = min(vs)
        out = [sigma * finest / v for v in vs]
    else:
        out = [sigma] * 3
    if settings.mode == "2d":
        out[0] = 0.0
    return tuple(out)
