"""Gaussian smoothing: the smoothed intensity at each scale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import Family, ScaleContext


class Gaussian(Family):
    name = "gaussian"

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        yield ctx.smoothed_centre


FAMILY = Gaussian()
