"""Colours of thickness maps: one colour scale for the slice viewer, the meshes and the report.

The scale is perceptually ordered (dark violet -> blue -> green -> yellow, the viridis
anchors), from 0 to the run's ``max_thickness``; voxels outside every class are
transparent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["THICKNESS_COLORMAP", "colorize", "legend"]

#: anchors of the colour scale (viridis at 0, 1/8, ..., 1), RGB 0..255
_ANCHORS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype=np.float64)


def _lut(n: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, len(_ANCHORS))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, _ANCHORS[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


#: 256 x 3 uint8 lookup table of the scale
THICKNESS_COLORMAP: np.ndarray = _lut()


def colorize(values: np.ndarray, vmax: float, *, vmin: float = 0.0, alpha: int = 255) -> np.ndarray:
    """RGBA uint8 of ``values`` on the scale ``[vmin, vmax]``; values <= 0 are transparent.

    Examples
    --------
    >>> rgba = colorize(np.array([0.0, 1.0, 2.0]), vmax=2.0)
    >>> rgba[:, 3].tolist(), rgba[2, :3].tolist()
    ([0, 255, 255], [253, 231, 37])
    """
    v = np.asarray(values, dtype=np.float64)
    span = float(vmax) - float(vmin)
    frac = np.clip((v - vmin) / span, 0.0, 1.0) if span > 0 else np.ones_like(v)
    idx = np.nan_to_num(frac * 255.0).round().astype(np.intp)
    out = np.empty((*v.shape, 4), np.uint8)
    out[..., :3] = THICKNESS_COLORMAP[idx]
    out[..., 3] = np.where(v > 0, int(alpha), 0)
    return out


def legend(vmax: float, unit: str | None, *, stops: int = 5, vmin: float = 0.0) -> dict:
    """What a legend shows: ``unit``, ``min``, ``max``, ``ticks`` and CSS ``gradient`` stops.

    Examples
    --------
    >>> leg = legend(4.0, "micrometer", stops=3)
    >>> leg["ticks"], leg["colors"][0]
    ([0.0, 2.0, 4.0], '#440154')
    """
    ticks = np.linspace(vmin, vmax, stops).tolist()
    picks: Sequence[int] = np.linspace(0, 255, 9).round().astype(int).tolist()
    colors = ["#{:02x}{:02x}{:02x}".format(*THICKNESS_COLORMAP[i]) for i in picks]
    return {"unit": unit, "min": float(vmin), "max": float(vmax), "ticks": ticks, "colors": colors}
