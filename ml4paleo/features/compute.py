"""Features of a halo-padded block, channel by channel.

One Gaussian per scale; gradient, Hessian, Laplacian of Gaussian and structure tensor are
finite differences of that smoothed volume (cheap and consistent between training and
prediction); 3x3 (or 2x2) symmetric eigenvalues in closed form, vectorised, float32.
The Gaussian passes are compiled 'valid' sums (:mod:`.compiled`); scales from
``settings.coarse_from`` run on a grid twice as coarse and are interpolated back
(:mod:`.coarse`, :class:`_CoarseScale`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np

from .backend import FilterBackend, crop, get_backend
from .coarse import coarse_sigmas, plan_steps, presample, upsample
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
    origin: Sequence[int] | None = None,
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
    origin : sequence of 3 int, optional
        Index in the volume of the centre's first voxel (default 0, 0, 0): places the
        coarse grid of large scales (``settings.coarse_from``) on the volume's even voxels,
        so blocks of one volume agree. Unused without ``coarse_from``.

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
    for k, channel in enumerate(iter_features(data, settings, voxel_size, halo, backend=backend,
                                              origin=origin)):
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
    origin: Sequence[int] | None = None,
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
    origin = tuple(int(o) for o in (origin if origin is not None else (0, 0, 0)))
    plans = scale_plan(settings)
    coarse_data: dict = {}  # steps -> (pre-sampled block, its centre): shared by scales
    for i, plan in enumerate(plans):
        steps = plan_steps(plan, settings, voxel_size)
        if any(st > 1 for st in steps):
            nxt = plans[i + 1] if i + 1 < len(plans) else None
            next_dog = nxt is not None and nxt.index == plan.index + 1 and any(
                f.name == "dog" for f in nxt.families)
            if plan.index == 0:
                prev = crop(data, halo)
            else:
                prev = previous if previous_index == plan.index - 1 else None
            if steps not in coarse_data:
                coarse_data[steps] = presample(be.to_numpy(data), steps, centre, halo, origin)
            scale = _CoarseScale(be, settings, voxel_size, plan, steps, *coarse_data[steps],
                                 centre, origin, deriv_margin)
            for _name, channel in scale.channels(prev, ndim):
                yield be.to_numpy(channel)
            previous, previous_index = (scale.smoothed_fine if next_dog else None), plan.index
            continue
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


class _CoarseScale:
    """One scale computed on the coarse grid (:mod:`ml4paleo.features.coarse`)."""

    def __init__(self, be: FilterBackend, settings: FeatureSettings, voxel_size, plan, steps,
                 cdata, ccentre, centre, origin, deriv_margin) -> None:
        sig = coarse_sigmas(axis_sigmas(plan.sigma, settings, voxel_size), steps)
        self.plan, self.steps, self.centre, self.origin, self.be = plan, steps, centre, origin, be
        self.ctx = ScaleContext(
            backend=be, settings=settings, voxel_size=voxel_size, sigma=plan.sigma,
            smoothed=be.smooth(be.asarray(cdata), sig, deriv_margin, ccentre), centre=ccentre,
            keep=deriv_margin, deriv_margin=deriv_margin, previous=None, steps=steps,
        )

    def up(self, x):
        """A coarse-centre channel on the fine centre."""
        return upsample(x, self.steps, self.centre, self.origin, xp=self.be.xp)

    @cached_property
    def smoothed_fine(self):
        """The scale's smoothed image on the fine centre."""
        return self.up(self.ctx.smoothed_centre)

    def channels(self, previous, ndim: int):
        """``(name, channel)`` of the kept channels, on the fine centre."""
        plan = self.plan
        for fam in plan.families:
            names = fam.channel_names(plan.sigma, ndim)
            if fam.name == "dog":  # against the previous scale's fine image
                if plan.keeps(names[0]):
                    yield names[0], self.smoothed_fine - previous
            elif fam.name == "gaussian":
                if plan.keeps(names[0]):
                    yield names[0], self.smoothed_fine
            else:
                for name, channel in zip(names, fam.channels(self.ctx), strict=True):
                    if plan.keeps(name):
                        yield name, self.up(channel)
