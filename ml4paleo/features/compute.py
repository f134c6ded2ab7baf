"""Features of a halo-padded block, channel by channel.

One Gaussian per scale; gradient, Hessian, Laplacian of Gaussian and structure tensor are
finite differences of that smoothed volume (cheap and consistent between training and
prediction); 3x3 (or 2x2) symmetric eigenvalues in closed form, vectorised, float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .backend import FilterBackend, crop, get_backend
from .families import ScaleContext
from .kernels import axis_sigmas
from .settings import FeatureSettings, halo_for, n_features, scale_plan

__all__ = ["check_block", "compute_features", "iter_features"]


def compute_features(
    block_with_halo: np.ndarray,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    halo: Sequence[int] | None = None,
    *,
    backend: str | FilterBackend | None = None,
) -> np.ndarray:
    """Features of the centre of a halo-padded block.

    Parameters
    ----------
    block_with_halo : ndarray (z, y, x)
        Intensities of the block grown by ``halo`` on every side (mirror-padded at the
        volume border, as :func:`ml4paleo.blocks.read_with_halo` does).
    settings : FeatureSettings, optional
        Filters and scales (default: ``FeatureSettings()``).
    voxel_size : sequence of 3 float, optional
        Physical voxel size (z, y, x) for per-axis sigmas.
    halo : sequence of 3 int, optional
        Halo present in ``block_with_halo``; default :func:`halo_for` (must be at least that).
    backend : str or FilterBackend, optional
        The filter backend (default ``"numpy"``; see :mod:`ml4paleo.features.backend`).

    Returns
    -------
    ndarray, float32, shape (F, z, y, x)
        ``F = n_features(settings)`` channels for the block centre.

    Raises
    ------
    ValueError
        When the block is not 3D or the halo is smaller than the filters need.

    Examples
    --------
    >>> s = FeatureSettings(scales=(1.0,))
    >>> h = halo_for(s)
    >>> block = np.random.default_rng(0).random((8 + 2 * h[0], 8 + 2 * h[1], 8 + 2 * h[2]))
    >>> compute_features(block, s).shape
    (8, 8, 8, 8)
    """
    settings = settings or FeatureSettings()
    data = np.asarray(block_with_halo)
    centre, halo = check_block(data, settings, voxel_size, halo)
    out = np.empty((n_features(settings), *centre), dtype=np.float32)
    for k, channel in enumerate(iter_features(data, settings, voxel_size, halo, backend=backend)):
        out[k] = channel
    return out


def check_block(data: np.ndarray, settings: FeatureSettings, voxel_size, halo
                ) -> tuple[list[int], tuple[int, ...]]:
    """``(centre shape, halo)`` of a halo-padded block, checked against what ``settings`` need.

    Raises
    ------
    ValueError
        When the block is not 3D, the halo is too small or leaves no centre.
    """
    if data.ndim != 3:
        raise ValueError(f"block must be 3D (z, y, x), got shape {data.shape}")
    need = halo_for(settings, voxel_size)
    halo = tuple(int(h) for h in (halo if halo is not None else need))
    if len(halo) != 3 or any(h < n for h, n in zip(halo, need, strict=True)):
        raise ValueError(f"halo {halo} is smaller than the {need} these features need")
    centre = [s - 2 * h for s, h in zip(data.shape, halo, strict=True)]
    if any(c <= 0 for c in centre):
        raise ValueError(f"block of shape {data.shape} has no centre inside halo {halo}")
    return centre, halo


def iter_features(
    block_with_halo: np.ndarray,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    halo: Sequence[int] | None = None,
    *,
    backend: str | FilterBackend | None = None,
) -> Iterator[np.ndarray]:
    """Yield the channels of :func:`compute_features` one by one (lower peak memory)."""
    settings = settings or FeatureSettings()
    be = get_backend(backend)
    data = np.asarray(block_with_halo)
    centre, halo = check_block(data, settings, voxel_size, halo)
    data = be.asarray(data)
    two_d = settings.mode == "2d"
    ndim = 2 if two_d else 3
    if settings.raw and (settings.channels is None or "raw" in settings.channels):
        yield be.to_numpy(crop(data, halo))
    previous = None  # previous scale's smoothed centre (for DoG)
    previous_index = -1
    deriv_margin = [0 if (two_d and a == 0) else 1 for a in range(3)]
    for plan in scale_plan(settings):
        # the previous scale's context (its derivatives) is released only when this scale's
        # context replaces it, after the new Gaussian: its freed buffers, all of the same
        # size, are then reused for this scale's derivatives (fewer fresh pages from malloc;
        # dropping it earlier cost ~5-10 % CPU)
        sig = axis_sigmas(plan.sigma, settings, voxel_size)
        extra = plan.margin(settings, voxel_size)
        keep = [m + (0 if (two_d and a == 0) else extra[a]) for a, m in enumerate(deriv_margin)]
        if plan.index == 0:
            prev = crop(data, halo)
        else:  # None when the previous scale was pruned (then no kept DoG needs it)
            prev = previous if previous_index == plan.index - 1 else None
        ctx = ScaleContext(
            backend=be, settings=settings, voxel_size=voxel_size, sigma=plan.sigma,
            smoothed=be.smooth(data, sig, keep, centre), centre=centre, keep=keep,
            deriv_margin=deriv_margin, previous=prev,
        )
        for fam in plan.families:
            if plan.names is None:
                for channel in fam.channels(ctx):
                    yield be.to_numpy(channel)
                continue
            for name, channel in zip(fam.channel_names(plan.sigma, ndim), fam.channels(ctx),
                                     strict=True):
                if plan.keeps(name):
                    yield be.to_numpy(channel)
        previous, previous_index = ctx.smoothed_centre, plan.index
