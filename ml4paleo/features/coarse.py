"""Large scales on a grid twice as coarse, aligned to the volume (``FeatureSettings.coarse_from``).

A Gaussian of sigma 5 or 10 voxels holds nothing a grid of every other voxel cannot carry,
yet at full resolution it is the costliest filter of the bank (an 81-tap kernel over a
block grown by a 41-voxel halo). For a scale whose per-axis sigma is at least
``coarse_from`` the block is

1. smoothed by :data:`PRE_SIGMA` along that axis and sampled at every *even* voxel of the
   volume (a 'valid' strided weighted sum: the samples sit at even global indices, so every
   block, plane and tile of a volume samples the same points);
2. smoothed there by ``sqrt(sigma**2 - PRE_SIGMA**2) / 2`` coarse voxels (Gaussians
   compose: the two passes are the Gaussian of ``sigma``; what the sampling folds back is
   below 1e-4 of the signal for sigma >= 4);
3. handed to the same families (finite differences rescaled to fine voxels: a coarse step
   is two fine ones);
4. brought back to every voxel of the block's centre by linear interpolation between the
   two coarse samples around it (a sample itself where the voxel is even).

Each step is the same arithmetic for a voxel whatever block holds it, so blockwise features
still equal whole-volume features exactly. Scales where the structure tensor is computed
stay at full resolution (its outer smoothing is defined on the fine grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .compiled import correlate_valid
from .kernels import axis_sigmas, gaussian_kernel, kernel_radius

__all__ = ["PRE_SIGMA", "STEP", "coarse_halo", "coarse_sigmas", "plan_steps", "presample",
           "upsample"]

#: the anti-alias Gaussian (fine voxels) before every other voxel is kept
PRE_SIGMA = 1.5
#: the coarse grid keeps one voxel in STEP along a coarse axis
STEP = 2


def plan_steps(plan: Any, settings: Any, voxel_size: Sequence[float] | None) -> tuple[int, ...]:
    """Per axis, 2 where scale ``plan.sigma`` is computed on the coarse grid, else 1.

    An axis is coarse when ``settings.coarse_from`` is set, the axis's sigma reaches it and
    no family of the plan is the structure tensor.
    """
    start = float(getattr(settings, "coarse_from", 0.0) or 0.0)
    if start <= 0 or any(f.name == "structure" for f in plan.families):
        return (1, 1, 1)
    sig = axis_sigmas(plan.sigma, settings, voxel_size)
    return tuple(STEP if s >= start else 1 for s in sig)


def coarse_sigmas(sigmas: Sequence[float], steps: Sequence[int]) -> tuple[float, ...]:
    """Sigma per axis on the coarse grid (what remains after :data:`PRE_SIGMA`, in coarse voxels)."""
    return tuple(math.sqrt(s * s - PRE_SIGMA * PRE_SIGMA) / st if st > 1 else s
                 for s, st in zip(sigmas, steps, strict=True))


def coarse_halo(sigma: float, step: int, extra: int = 0) -> int:
    """Fine halo an axis of a coarse scale needs: the pre-smoothing, the coarse Gaussian and
    the finite difference in coarse voxels, and one voxel for the parity of the block start."""
    rest = math.sqrt(sigma * sigma - PRE_SIGMA * PRE_SIGMA) / step
    return kernel_radius(PRE_SIGMA) + step * (kernel_radius(rest) + 1 + extra) + 1


def coarse_range(origin: int, n: int) -> tuple[int, int]:
    """``(first, count)`` of the coarse samples (global coarse indices) spanning fine voxels
    ``origin .. origin + n - 1``."""
    first = origin // STEP
    last = -(-(origin + n - 1) // STEP)
    return first, last - first + 1


def presample(data: np.ndarray, steps: Sequence[int], centre: Sequence[int],
              halo: Sequence[int], origin: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """The block smoothed by :data:`PRE_SIGMA` and sampled at even global voxels along the
    coarse axes (other axes untouched).

    Returns the coarse block (the coarse centre plus the same margin on both sides of each
    axis) and the coarse centre's shape.
    """
    k = gaussian_kernel(PRE_SIGMA)
    r = len(k) // 2
    out = data
    ccentre = list(centre)
    for a, st in enumerate(steps):
        if st == 1:
            continue
        first, count = coarse_range(int(origin[a]), int(centre[a]))
        h, c = int(halo[a]), int(centre[a])
        # local fine index of global coarse sample q is STEP * q - origin + halo
        lo = (h - r + STEP * first - int(origin[a])) // STEP
        hi = (c + h - 1 - r - STEP * (first + count - 1) + int(origin[a])) // STEP
        m = min(lo, hi)
        if m < 0:
            raise ValueError(f"halo {h} too small for the coarse grid along axis {a}")
        n = count + 2 * m
        j0 = STEP * (first - m) - int(origin[a]) + h - r  # first tap of the first sample
        sl = [slice(None)] * 3
        sl[a] = slice(j0, j0 + STEP * (n - 1) + len(k))
        out = correlate_valid(out, k, a, STEP, window=tuple(sl))
        ccentre[a] = count
    return out, ccentre


def upsample(channel: Any, steps: Sequence[int], centre: Sequence[int],
             origin: Sequence[int], xp: Any = np) -> Any:
    """A channel on the coarse centre brought to the fine centre: linear interpolation
    between the coarse samples around each voxel (the sample itself at even voxels)."""
    out = channel
    for a, st in enumerate(steps):
        if st == 1:
            continue
        first, _ = coarse_range(int(origin[a]), int(centre[a]))
        g = int(origin[a]) + np.arange(int(centre[a]))
        q = g // STEP - first
        lo = xp.take(out, xp.asarray(q), axis=a)
        hi = xp.take(out, xp.asarray(q + (g % STEP)), axis=a)
        out = (lo + hi) * np.float32(0.5)
    return out
