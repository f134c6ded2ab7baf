"""Difference of Gaussians: each scale's smoothed intensity minus the previous scale's
(the first scale against the raw intensity) - a band-pass for blobs of that size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import Family, ScaleContext


class DifferenceOfGaussians(Family):
    name = "dog"

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        yield ctx.smoothed_centre - ctx.previous


FAMILY = DifferenceOfGaussians()
