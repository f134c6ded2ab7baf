"""Laplacian of Gaussian: the sum of the second derivatives (blobs, ridges, valleys)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import Family, ScaleContext


class LaplacianOfGaussian(Family):
    name = "log"

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        diag = ctx.second_derivatives
        yield sum(diag[1:], diag[0])


FAMILY = LaplacianOfGaussian()
