"""Structure-tensor eigenvalues: products of gradients smoothed at an outer scale
(orientation coherence: laminae, fibres), largest first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..backend import crop_to
from ..eigen import eigvalsh2, eigvalsh3_slabs
from ..kernels import axis_sigmas, kernel_radius
from .base import Family, ScaleContext


class StructureTensorEigenvalues(Family):
    name = "structure"

    def enabled_at(self, settings: Any, sigma: float) -> bool:
        return settings.eigen_min_scale <= sigma <= settings.structure_max_scale

    def channel_names(self, sigma: float, ndim: int) -> list[str]:
        return [f"structure{i}_{sigma:g}" for i in range(ndim)]

    @staticmethod
    def outer_sigmas(settings: Any, sigma: float, voxel_size: Sequence[float] | None):
        """Per-axis integration scale."""
        return axis_sigmas(sigma * settings.structure_outer, settings, voxel_size)

    def margin(self, settings: Any, sigma: float, voxel_size: Sequence[float] | None
               ) -> tuple[int, int, int]:
        outer = self.outer_sigmas(settings, sigma, voxel_size)
        return tuple(kernel_radius(o) for o in outer)

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        # gradients cover centre + outer margin; products smoothed at the outer scale
        outer = self.outer_sigmas(ctx.settings, ctx.sigma, ctx.voxel_size)
        shape_g = [c + 2 * (m - dm) for c, m, dm in zip(ctx.centre, ctx.keep, ctx.deriv_margin,
                                                         strict=True)]
        gr = [crop_to(d, shape_g) for d in ctx.gradients]
        prods = []
        n = len(gr)
        for i in range(n):
            for j in range(i, n):
                prods.append(ctx.backend.smooth(gr[i] * gr[j], outer, [0, 0, 0], ctx.centre))
        if ctx.two_d:
            e = eigvalsh2(prods[0], prods[2], prods[1], xp=ctx.xp)
        else:
            # order: zz, zy, zx, yy, yx, xx
            e = eigvalsh3_slabs(prods[0], prods[3], prods[5], prods[1], prods[2], prods[4],
                                xp=ctx.xp)
        for ev in e:
            yield ctx.crop_to_centre(ev)


FAMILY = StructureTensorEigenvalues()
