"""What a feature family is, and the per-scale intermediates families share.

A family turns the Gaussian-smoothed block of one scale into channels. Intermediates
several families need (the smoothed centre, first and second derivatives) are computed once
per scale by :class:`ScaleContext`, on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from ..backend import crop_to

__all__ = ["Family", "ScaleContext"]


class Family:
    """One family of feature channels (subclass per family; one file each).

    Attributes
    ----------
    name : str
        The name used in :attr:`FeatureSettings.families` and channel names.
    """

    name: str = ""

    def enabled_at(self, settings: Any, sigma: float) -> bool:
        """Whether the family is computed at scale ``sigma`` (when selected at all)."""
        return True

    def channel_names(self, sigma: float, ndim: int) -> list[str]:
        """Names of its channels at ``sigma`` (``ndim`` = 2 in 2D mode, else 3)."""
        return [f"{self.name}_{sigma:g}"]

    def margin(self, settings: Any, sigma: float, voxel_size: Sequence[float] | None
               ) -> tuple[int, int, int]:
        """Voxels of the smoothed image it needs around the centre beyond the one voxel of
        the finite differences (adds to the halo)."""
        return (0, 0, 0)

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        """Yield its channels (each of the centre's shape) for one scale."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<feature family {self.name}>"


class ScaleContext:
    """The smoothed block of one scale and what families derive from it (cached).

    Attributes
    ----------
    backend : FilterBackend
    settings : FeatureSettings
    voxel_size : tuple or None
    sigma : float
        The scale.
    smoothed : array
        The Gaussian of the block, ``centre`` plus ``keep`` voxels of margin.
    centre : list of int
        Shape of the block's centre (what every channel has).
    keep : list of int
        Margin kept in ``smoothed`` per axis.
    deriv_margin : list of int
        1 per filtered axis (0 for z in 2D mode): the finite differences' margin.
    previous : array
        The previous scale's smoothed centre (the raw centre at the first scale).
    axes : tuple of int
        Axes that are filtered (``(1, 2)`` in 2D mode).
    steps : tuple of int
        Fine voxels per voxel of ``smoothed`` along each axis (2 on the coarse grid of a
        large scale, see :mod:`ml4paleo.features.coarse`): derivatives are divided by it,
        so they are per fine voxel on either grid.
    """

    def __init__(self, *, backend: Any, settings: Any, voxel_size: Sequence[float] | None,
                 sigma: float, smoothed: Any, centre: Sequence[int], keep: Sequence[int],
                 deriv_margin: Sequence[int], previous: Any,
                 steps: Sequence[int] = (1, 1, 1)) -> None:
        self.backend = backend
        self.settings = settings
        self.voxel_size = voxel_size
        self.sigma = sigma
        self.smoothed = smoothed
        self.centre = list(centre)
        self.keep = list(keep)
        self.deriv_margin = list(deriv_margin)
        self.previous = previous
        self.two_d = settings.mode == "2d"
        self.axes = (1, 2) if self.two_d else (0, 1, 2)
        self.steps = tuple(int(st) for st in steps)

    def _per_fine(self, x: Any, *axes: int) -> Any:
        """``x`` (a difference along ``axes``) per fine voxel: divided by the steps (exact:
        powers of two); unchanged on the fine grid."""
        f = 1
        for a in axes:
            f *= self.steps[a]
        if f == 1:
            return x
        x *= self.xp.float32(1.0 / f)
        return x

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def crop_to_centre(self, x: Any) -> Any:
        """``x`` cropped to the centre."""
        return crop_to(x, self.centre)

    @cached_property
    def smoothed_centre(self) -> Any:
        """The smoothed image on the centre."""
        return self.crop_to_centre(self.smoothed)

    @cached_property
    def gradients(self) -> list[Any]:
        """Central differences of :attr:`smoothed` along each filtered axis (margin - 1)."""
        return [self._per_fine(self.backend.diff1(self.smoothed, a), a) for a in self.axes]

    @cached_property
    def hessian_base(self) -> Any:
        """:attr:`smoothed` cropped to the centre plus the finite-difference margin."""
        return crop_to(self.smoothed, [c + 2 * m for c, m in zip(self.centre, self.deriv_margin,
                                                                  strict=True)])

    @cached_property
    def second_derivatives(self) -> list[Any]:
        """Second differences along each filtered axis, on the centre."""
        return [self._per_fine(self.crop_to_centre(self.backend.diff2(self.hessian_base, a)), a, a)
                for a in self.axes]

    def cross_derivative(self, a: int, b: int) -> Any:
        """The mixed second difference along axes ``a`` and ``b``, on the centre."""
        d1 = self.backend.diff1
        return self._per_fine(self.crop_to_centre(d1(d1(self.hessian_base, a), b)), a, b)
