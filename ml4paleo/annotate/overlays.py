"""What the annotator shows: display windows, class / label / uncertainty overlays, PNGs, thumbnails."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ml4paleo.classes import hex_to_rgb

__all__ = [
    "apply_window",
    "class_overlay",
    "data_url",
    "display_window",
    "encode_png",
    "label_overlay",
    "legacy_prediction_png",
    "png_base64",
    "thumbnail",
    "uncertainty_from_probabilities",
    "uncertainty_overlay",
]


def display_window(
    values: np.ndarray, lower: float = 1.0, upper: float = 99.5
) -> dict[str, float]:
    """Robust display window of ``values``: percentiles of the non-zero voxels.

    Returns the original's ``{source_min, source_max, window_min, window_max}``.
    """
    v = np.asarray(values)
    v = v[np.isfinite(v)] if v.dtype.kind == "f" else v.ravel()
    if v.size == 0:
        return {"source_min": 0.0, "source_max": 0.0, "window_min": 0.0, "window_max": 0.0}
    smin, smax = float(v.min()), float(v.max())
    nz = v[v != 0]
    pick = nz if nz.size >= 128 else v
    lo, hi = (float(x) for x in np.percentile(pick, [lower, upper]))
    if hi <= lo:
        lo, hi = smin, smax
    return {"source_min": smin, "source_max": smax, "window_min": lo, "window_max": hi}


def apply_window(values: np.ndarray, window_min: float, window_max: float) -> np.ndarray:
    """Map ``values`` linearly to uint8 so ``window_min`` -> 0 and ``window_max`` -> 255."""
    v = np.asarray(values, dtype=np.float32)
    if not window_max > window_min:
        return np.where(v > window_min, 255, 0).astype(np.uint8)
    out = (v - np.float32(window_min)) * np.float32(255.0 / (window_max - window_min))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a 2D uint8 (grey), (h, w, 3) RGB or (h, w, 4) RGBA array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def png_base64(arr: np.ndarray) -> str:
    """Base64 text of :func:`encode_png` (the original API's ``prediction`` field)."""
    return base64.b64encode(encode_png(arr)).decode("ascii")


def class_overlay(
    classes2d: np.ndarray,
    colors: Sequence[str],
    *,
    alpha: int = 140,
    transparent_background: bool = True,
) -> np.ndarray:
    """RGBA overlay of predicted class indices (0 = background) in the class colours.

    Parameters
    ----------
    classes2d : ndarray of int, shape (h, w)
        Class index per pixel.
    colors : sequence of str
        ``#rrggbb`` per class.
    alpha : int
        Opacity of coloured pixels (0..255).
    transparent_background : bool
        Leave class 0 fully transparent so the image shows through.
    """
    table = np.zeros((256, 4), dtype=np.uint8)
    for k, c in enumerate(colors[:256]):
        table[k, :3] = hex_to_rgb(c)
        table[k, 3] = alpha
    if transparent_background:
        table[0, 3] = 0
    return table[np.asarray(classes2d, dtype=np.uint8)]


def label_overlay(labels2d: np.ndarray, colors: Sequence[str], alpha: int = 200) -> np.ndarray:
    """RGBA of a label mask (0 = unlabelled transparent, k+1 = class k's colour)."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for k, c in enumerate(colors[:255]):
        table[k + 1, :3] = hex_to_rgb(c)
        table[k + 1, 3] = alpha
    return table[np.asarray(labels2d, dtype=np.uint8)]


def uncertainty_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """Per-pixel uncertainty 0..1 from class probabilities (C, h, w): 1 - (p1 - p2).

    The margin between the two most likely classes; 1 where the model cannot decide.
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"probabilities must be (C, h, w), got {p.shape}")
    if p.shape[0] == 1:
        return np.zeros(p.shape[1:], dtype=np.float32)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return np.clip(1.0 - (top2[1] - top2[0]), 0.0, 1.0)


def uncertainty_overlay(uncertainty: np.ndarray, max_alpha: int = 200) -> np.ndarray:
    """RGBA heat overlay of an uncertainty map (0..1): transparent when sure, magenta when not."""
    u = np.clip(np.asarray(uncertainty, dtype=np.float32), 0.0, 1.0)
    out = np.zeros(u.shape + (4,), dtype=np.uint8)
    out[..., 0] = 255
    out[..., 1] = np.rint(255 * (1 - u) * 0.6).astype(np.uint8)
    out[..., 2] = 255
    out[..., 3] = np.rint(max_alpha * u**1.5).astype(np.uint8)
    return out


def legacy_prediction_png(classes2d: np.ndarray) -> np.ndarray:
    """The original annotator's prediction overlay: red + alpha where not background."""
    fg = (np.asarray(classes2d) > 0).astype(np.uint8) * 255
    rgba = np.zeros(fg.shape + (4,), dtype=np.uint8)
    rgba[..., 0] = fg
    rgba[..., 3] = fg
    return rgba


def thumbnail(
    gray: np.ndarray, labels2d: np.ndarray | None, colors: Sequence[str], size: int = 192
) -> np.ndarray:
    """RGB thumbnail (longest side ``size``) of a uint8 slice with its labels blended in."""
    rgb = np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=2).astype(np.float32)
    if labels2d is not None:
        ov = label_overlay(labels2d, colors, alpha=150).astype(np.float32)
        a = ov[..., 3:4] / 255.0
        rgb = rgb * (1 - a) + ov[..., :3] * a
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    img.thumbnail((size, size), Image.Resampling.NEAREST)
    return np.asarray(img)



def data_url(arr: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL of :func:`encode_png`."""
    return "data:image/png;base64," + png_base64(arr)
