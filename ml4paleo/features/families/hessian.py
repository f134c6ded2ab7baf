"""Hessian eigenvalues of the smoothed intensity (tubes, sheets, blobs), largest first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..eigen import eigvalsh2, eigvalsh3_slabs
from .base import Family, ScaleContext


class HessianEigenvalues(Family):
    name = "hessian"

    def enabled_at(self, settings: Any, sigma: float) -> bool:
        return sigma >= settings.eigen_min_scale

    def channel_names(self, sigma: float, ndim: int) -> list[str]:
        return [f"hessian{i}_{sigma:g}" for i in range(ndim)]

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        diag, cross = ctx.second_derivatives, ctx.cross_derivative
        if ctx.two_d:
            hyx = cross(1, 2)
            e = eigvalsh2(diag[0], diag[1], hyx, xp=ctx.xp)
        else:
            hzy, hzx, hyx = cross(0, 1), cross(0, 2), cross(1, 2)
            e = eigvalsh3_slabs(diag[0], diag[1], diag[2], hzy, hzx, hyx, xp=ctx.xp)
        yield from e


FAMILY = HessianEigenvalues()
