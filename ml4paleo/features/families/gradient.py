"""Gradient magnitude of the smoothed intensity (edges)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Family, ScaleContext


class GradientMagnitude(Family):
    name = "gradient"

    def channels(self, ctx: ScaleContext) -> Iterator[Any]:
        acc = ctx.xp.zeros(ctx.centre, np.float32)
        for d in ctx.gradients:
            dc = ctx.crop_to_centre(d)
            acc += dc * dc
        yield ctx.xp.sqrt(acc)


FAMILY = GradientMagnitude()
