"""Annotation helpers for the browser annotator: masks in, overlays out.

Everything the web annotator needs that is not HTTP: decoding submitted label masks
(PNG data URLs, run-length or raw base64 arrays), rasterising polygons, cutting the
legacy 11-slice "filmstrip" out of a volume, display windows, class-coloured overlays,
and a small thread-safe LRU of in-memory interactive sessions.

Label convention (same as :class:`ml4paleo.segmentation.LabelStore`): in a label mask
``0`` = unlabelled and ``k + 1`` = class ``k`` (class 0 = background).  Predictions are
class indices ``k`` (0 = background).

Examples
--------
>>> import numpy as np
>>> labels = np.array([[0, 1], [2, 2]], dtype=np.uint8)
>>> decode_label_mask(encode_rle(labels), (2, 2)).tolist()
[[0, 1], [2, 2]]
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

#: legacy annotation cut-out: (z, y, x) = 11 slices of 512 x 512
FILMSTRIP_SHAPE_ZYX = (11, 512, 512)
#: largest decoded mask accepted (pixels); guards against decompression bombs
MAX_MASK_PIXELS = 8192 * 8192
#: largest encoded payload accepted (characters of base64)
MAX_PAYLOAD_CHARS = 256 * 1024 * 1024

DEFAULT_CLASSES = (
    {"name": "background", "color": "#3b82f6"},
    {"name": "structure", "color": "#f97316"},
)
#: colours handed to new classes, in order
PALETTE = (
    "#3b82f6", "#f97316", "#22c55e", "#e11d48", "#a855f7", "#eab308",
    "#14b8a6", "#ec4899", "#84cc16", "#6366f1", "#f43f5e", "#0ea5e9",
)

_DATA_URL_HEAD = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*$")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class AnnotationError(ValueError):
    """A submitted annotation cannot be used; the message says why, in one line."""


# ----------------------------------------------------------------------------- decoding
def decode_base64(text: str, what: str = "data") -> bytes:
    """Decode standard or URL-safe base64 (padding optional).

    Raises
    ------
    AnnotationError
        When ``text`` is not a string, too long, or not base64.
    """
    if not isinstance(text, str):
        raise AnnotationError(f"{what} must be a base64 string")
    if len(text) > MAX_PAYLOAD_CHARS:
        raise AnnotationError(f"{what} is too large ({len(text)} characters)")
    clean = "".join(text.split())
    clean = clean.replace("-", "+").replace("_", "/")
    clean += "=" * (-len(clean) % 4)
    try:
        return base64.b64decode(clean, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AnnotationError(f"{what} is not valid base64") from exc


def decode_data_url(text: str, what: str = "image") -> bytes:
    """Bytes of a ``data:...;base64,...`` URL (a bare base64 string is accepted too)."""
    if not isinstance(text, str):
        raise AnnotationError(f"{what} must be a data URL string")
    if text.startswith("data:"):
        head, sep, data = text.partition(",")
        if not sep or not _DATA_URL_HEAD.match(head) or not head.endswith(";base64"):
            raise AnnotationError(f"{what} is not a base64 data URL")
        return decode_base64(data, what)
    return decode_base64(text, what)


def decode_png(data: bytes, what: str = "image") -> Image.Image:
    """Open PNG (or other PIL-readable) bytes, refusing images above :data:`MAX_MASK_PIXELS`."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_MASK_PIXELS:
            raise AnnotationError(f"{what} is too large ({img.width} x {img.height})")
        img.load()
    except AnnotationError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise AnnotationError(f"{what} is not a readable image ({type(exc).__name__})") from exc
    return img


def decode_image_array(text: str, what: str = "image") -> np.ndarray:
    """A data-URL image as a 2D uint8 grey array (RGB(A) averaged, alpha ignored)."""
    img = decode_png(decode_data_url(text, what), what)
    if img.mode in ("L", "P", "1"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("L"))


def encode_rle(labels: np.ndarray) -> dict:
    """Run-length encode a 2D uint8 array (row-major) as ``{encoding, shape, data}``.

    ``data`` is a flat list ``[value0, run0, value1, run1, ...]``.
    """
    arr = np.ascontiguousarray(labels, dtype=np.uint8).ravel()
    if arr.size == 0:
        return {"encoding": "rle", "shape": list(labels.shape), "data": []}
    change = np.flatnonzero(np.diff(arr)) + 1
    starts = np.concatenate(([0], change))
    runs = np.diff(np.concatenate((starts, [arr.size])))
    out = np.empty(2 * len(starts), dtype=np.int64)
    out[0::2] = arr[starts]
    out[1::2] = runs
    return {"encoding": "rle", "shape": [int(s) for s in labels.shape], "data": out.tolist()}


def _decode_rle(data: Any, n: int) -> np.ndarray:
    if isinstance(data, str):
        raw = decode_base64(data, "rle data")
        if len(raw) % 8:
            raise AnnotationError("rle data (base64) must hold uint32 value/run pairs")
        data = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if not isinstance(data, list | tuple | np.ndarray):
        raise AnnotationError("rle data must be a list [value, run, value, run, ...]")
    try:
        pairs = np.asarray(data, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AnnotationError("rle data must hold integers") from exc
    if pairs.ndim != 1 or pairs.size % 2:
        raise AnnotationError("rle data must be a flat list of value/run pairs")
    values, runs = pairs[0::2], pairs[1::2]
    if values.size and (values.min() < 0 or values.max() > 255):
        raise AnnotationError("rle values must be 0..255")
    if runs.size and runs.min() < 0:
        raise AnnotationError("rle runs must be non-negative")
    if int(runs.sum()) != n:
        raise AnnotationError(f"rle runs cover {int(runs.sum())} pixels, expected {n}")
    return np.repeat(values.astype(np.uint8), runs)


def decode_label_mask(
    payload: Any,
    shape: Sequence[int] | None = None,
    *,
    n_classes: int | None = None,
    colors: Sequence[str] | None = None,
) -> np.ndarray:
    """Decode a submitted label mask into a 2D uint8 array (0 = unlabelled, k+1 = class k).

    Parameters
    ----------
    payload : str or dict
        One of

        - a PNG data URL (or bare base64 PNG). Grey / palette images hold the label
          values directly; RGB(A) images are mapped to the nearest class colour in
          ``colors`` where alpha > 0 (unlabelled where alpha is 0);
        - ``{"encoding": "rle", "shape": [h, w], "data": [v0, n0, v1, n1, ...]}``
          (``data`` may also be base64 of little-endian uint32 pairs);
        - ``{"encoding": "raw" | "zlib", "shape": [h, w], "data": base64}`` of ``h*w``
          uint8 values, optionally zlib-compressed.
    shape : (int, int), optional
        Expected (height, width); checked when given.
    n_classes : int, optional
        Number of classes; values above ``n_classes`` are refused.
    colors : sequence of str, optional
        ``#rrggbb`` class colours, for RGB(A) PNG masks.

    Returns
    -------
    ndarray of uint8, shape (h, w)

    Raises
    ------
    AnnotationError
        On any malformed, oversized or out-of-range input.
    """
    if isinstance(payload, str):
        img = decode_png(decode_data_url(payload, "mask"), "mask")
        labels = _labels_from_image(img, colors)
    elif isinstance(payload, dict):
        enc = payload.get("encoding", "rle")
        mshape = payload.get("shape", shape)
        if (
            not isinstance(mshape, list | tuple)
            or len(mshape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in mshape)
            or min(mshape) <= 0
        ):
            raise AnnotationError("mask shape must be two positive integers [height, width]")
        h, w = int(mshape[0]), int(mshape[1])
        if h * w > MAX_MASK_PIXELS:
            raise AnnotationError(f"mask is too large ({h} x {w})")
        if enc == "rle":
            flat = _decode_rle(payload.get("data"), h * w)
        elif enc in ("raw", "zlib"):
            raw = decode_base64(payload.get("data"), "mask data")
            if enc == "zlib":
                try:
                    d = zlib.decompressobj()
                    raw = d.decompress(raw, h * w + 1)
                except zlib.error as exc:
                    raise AnnotationError("mask data is not zlib-compressed") from exc
            if len(raw) != h * w:
                raise AnnotationError(f"mask data holds {len(raw)} bytes, expected {h * w}")
            flat = np.frombuffer(raw, dtype=np.uint8)
        else:
            raise AnnotationError(f"unknown mask encoding {enc!r} (use rle, raw or zlib)")
        labels = flat.reshape(h, w).copy()
    else:
        raise AnnotationError("mask must be a PNG data URL or an {encoding, shape, data} object")
    if shape is not None and tuple(labels.shape) != tuple(int(s) for s in shape):
        raise AnnotationError(
            f"mask is {labels.shape[0]} x {labels.shape[1]}, expected {shape[0]} x {shape[1]}"
        )
    if n_classes is not None and labels.size and int(labels.max()) > n_classes:
        raise AnnotationError(
            f"mask holds label {int(labels.max())} but only {n_classes} classes exist"
        )
    return labels


def _labels_from_image(img: Image.Image, colors: Sequence[str] | None) -> np.ndarray:
    if img.mode in ("L", "P", "1", "I", "I;16"):
        arr = np.asarray(img if img.mode != "1" else img.convert("L"))
        if arr.max(initial=0) > 255:
            raise AnnotationError("mask values must be 0..255")
        return arr.astype(np.uint8)
    rgba = np.asarray(img.convert("RGBA")).astype(np.int32)
    alpha = rgba[..., 3] > 0
    if not colors:
        raise AnnotationError("an RGB mask needs class colours; send a grey class-index PNG")
    table = np.array([hex_to_rgb(c) for c in colors], dtype=np.int32)
    d = ((rgba[..., None, :3] - table[None, None]) ** 2).sum(-1)
    labels = (d.argmin(-1) + 1).astype(np.uint8)
    labels[~alpha] = 0
    return labels


def legacy_mask_to_labels(mask_rgba: Image.Image | np.ndarray) -> np.ndarray:
    """Labels from the original annotator's red-plus-alpha mask of a whole slice.

    The original trained on whole painted slices: painted pixels are the structure,
    every other pixel is background. Returns 2 (class 1) where painted, 1 (class 0)
    elsewhere.
    """
    arr = np.asarray(mask_rgba)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            painted = (arr[..., 3] > 127) & (arr[..., :3].max(-1) > 127)
        else:
            painted = arr[..., :3].max(-1) > 127
    else:
        painted = arr > 127
    return np.where(painted, 2, 1).astype(np.uint8)


# ----------------------------------------------------------------------------- polygons
def _points(region: Any, sx: float, sy: float) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    if isinstance(region, dict):
        region = region.get("points", region.get("vertices"))
    if not isinstance(region, list | tuple):
        return pts
    for p in region:
        if isinstance(p, dict):
            p = (p.get("x"), p.get("y"))
        if not isinstance(p, list | tuple) or len(p) != 2:
            continue
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError):
            continue
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        pts.append((x * sx, y * sy))
    return pts


def rasterize_polygons(
    shape: Sequence[int],
    positive_regions: Sequence[Any],
    negative_regions: Sequence[Any] | None = None,
    source_size_xy: Sequence[int] | None = None,
) -> np.ndarray:
    """Rasterise polygons into a boolean ``(h, w)`` mask: positives filled, negatives cut out.

    Parameters
    ----------
    shape : (int, int)
        Output (height, width).
    positive_regions, negative_regions : list of polygons
        Each polygon is a list of ``[x, y]`` points (or ``{"x", "y"}`` dicts) in the
        coordinate space of ``source_size_xy``. Polygons with fewer than 3 valid points
        are skipped.
    source_size_xy : (int, int), optional
        (width, height) of the canvas the points were drawn on; defaults to ``shape``.

    Returns
    -------
    ndarray of bool
    """
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise AnnotationError(f"polygon canvas must be positive, got {h} x {w}")
    sw, sh = w, h
    if source_size_xy is not None:
        try:
            sw, sh = int(source_size_xy[0]), int(source_size_xy[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise AnnotationError("canvas_size_xy must be [width, height]") from exc
        if sw <= 0 or sh <= 0 or sw > 65536 or sh > 65536:
            raise AnnotationError("canvas_size_xy must be two positive integers")
    sx, sy = w / sw, h / sh
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for fill, regions in ((255, positive_regions or []), (0, negative_regions or [])):
        if not isinstance(regions, list | tuple):
            raise AnnotationError("polygon regions must be lists of points")
        for region in regions:
            pts = _points(region, sx, sy)
            if len(pts) >= 3:
                draw.polygon(pts, fill=fill, outline=fill)
    return np.asarray(img) > 0


# ----------------------------------------------------------------------------- display
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


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> (r, g, b)."""
    if not isinstance(color, str) or not _HEX_COLOR.match(color):
        raise AnnotationError(f"colour must look like #rrggbb, got {color!r}")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


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


# ----------------------------------------------------------------------------- classes
def validate_classes(classes: Any) -> list[dict]:
    """Check and normalise a class list ``[{name, color}, ...]`` (2..255 entries).

    Names are stripped, 1..64 characters and unique; colours ``#rrggbb`` (a palette
    colour is given when missing).
    """
    if not isinstance(classes, list) or not 2 <= len(classes) <= 255:
        raise AnnotationError("classes must be a list of 2 to 255 {name, color} objects")
    out, seen = [], set()
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            raise AnnotationError(f"class {i} must be an object with name and color")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64:
            raise AnnotationError(f"class {i} needs a name of 1 to 64 characters")
        name = name.strip()
        if name.lower() in seen:
            raise AnnotationError(f"class name {name!r} is used twice")
        seen.add(name.lower())
        color = c.get("color") or PALETTE[i % len(PALETTE)]
        hex_to_rgb(color)
        out.append({"name": name, "color": color.lower()})
    return out


# ----------------------------------------------------------------------------- filmstrip
def random_cutout(
    shape_zyx: Sequence[int],
    requested_zyx: Sequence[int] = FILMSTRIP_SHAPE_ZYX,
    rng: np.random.Generator | None = None,
) -> dict:
    """Pick a random cut-out of ``requested_zyx`` in a volume of ``shape_zyx``.

    Returns the original API's ``sampleMetadata`` (xyz-ordered lists): the cut-out is
    centred in the requested box with zero padding where the volume is smaller.
    """
    rng = rng or np.random.default_rng()
    req_z, req_y, req_x = (int(v) for v in requested_zyx)
    vz, vy, vx = (int(v) for v in shape_zyx)
    act = [min(vx, req_x), min(vy, req_y), min(vz, req_z)]
    origin = [
        int(rng.integers(0, n - a + 1)) if n > a else 0
        for n, a in zip((vx, vy, vz), act, strict=True)
    ]
    req = [req_x, req_y, req_z]
    before = [(r - a) // 2 for r, a in zip(req, act, strict=True)]
    after = [r - a - b for r, a, b in zip(req, act, before, strict=True)]
    meta = {
        "cutout_origin_xyz": origin,
        "cutout_shape_xyz": act,
        "requested_shape_xyz": req,
        "padding_before_xyz": before,
        "padding_after_xyz": after,
    }
    return sample_metadata_for_z(meta, req_z // 2)


def sample_metadata_for_z(meta: dict, local_z: Any = None) -> dict:
    """Copy of ``meta`` with ``annotated_local_z_index`` (clamped) and the global z set.

    ``annotated_global_z_index`` is None when the local slice falls in the padding.
    """
    out = dict(meta)
    req_z = max(1, _int(out.get("requested_shape_xyz", [0, 0, 1])[2], "requested_shape_xyz"))
    if local_z is None:
        local_z = out.get("annotated_local_z_index", req_z // 2)
    local = min(max(_int(local_z, "annotated_local_z_index"), 0), req_z - 1)
    out["annotated_local_z_index"] = local
    src = local - _int(out["padding_before_xyz"][2], "padding_before_xyz")
    act_z = _int(out["cutout_shape_xyz"][2], "cutout_shape_xyz")
    out["annotated_global_z_index"] = (
        _int(out["cutout_origin_xyz"][2], "cutout_origin_xyz") + src if 0 <= src < act_z else None
    )
    return out


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise AnnotationError(f"{name} must hold integers")
    try:
        f = float(value)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{name} must hold integers") from exc
    if not math.isfinite(f) or abs(f) > 2**40 or f != int(f):
        raise AnnotationError(f"{name} must hold finite integers, got {value!r}")
    return int(f)


def validate_sample_metadata(meta: Any, volume_shape_zyx: Sequence[int]) -> dict:
    """Check a client's ``sample_metadata`` against the volume; return a clean copy.

    Raises
    ------
    AnnotationError
        When fields are missing, not integers, or the cut-out leaves the volume.
    """
    if not isinstance(meta, dict):
        raise AnnotationError("sample_metadata must be an object")
    clean: dict[str, Any] = {}
    for key in ("cutout_origin_xyz", "cutout_shape_xyz", "requested_shape_xyz", "padding_before_xyz"):
        v = meta.get(key)
        if not isinstance(v, list | tuple) or len(v) != 3:
            raise AnnotationError(f"sample_metadata.{key} must be a list of 3 integers")
        clean[key] = [_int(x, f"sample_metadata.{key}") for x in v]
    vz, vy, vx = (int(s) for s in volume_shape_zyx)
    ox, oy, oz = clean["cutout_origin_xyz"]
    ax, ay, az = clean["cutout_shape_xyz"]
    rx, ry, rz = clean["requested_shape_xyz"]
    px, py, pz = clean["padding_before_xyz"]
    if min(ox, oy, oz, px, py, pz) < 0 or min(ax, ay, az, rx, ry, rz) <= 0:
        raise AnnotationError("sample_metadata has negative or empty extents")
    if ox + ax > vx or oy + ay > vy or oz + az > vz:
        raise AnnotationError("sample_metadata cut-out lies outside the volume")
    if px + ax > rx or py + ay > ry or pz + az > rz or rx * ry > MAX_MASK_PIXELS or rz > 4096:
        raise AnnotationError("sample_metadata padding does not fit the requested shape")
    clean["padding_after_xyz"] = [rx - ax - px, ry - ay - py, rz - az - pz]
    for key in ("intensity_window", "intensityWindow"):
        if isinstance(meta.get(key), dict):
            clean["intensity_window"] = dict(meta[key])
    return sample_metadata_for_z(clean, meta.get("annotated_local_z_index"))


def read_cutout(image_array: Any, meta: dict) -> np.ndarray:
    """Read the (z, y, x) cut-out ``meta`` describes, zero-padded to the requested shape."""
    ox, oy, oz = meta["cutout_origin_xyz"]
    ax, ay, az = meta["cutout_shape_xyz"]
    rx, ry, rz = meta["requested_shape_xyz"]
    px, py, pz = meta["padding_before_xyz"]
    data = np.asarray(image_array[oz : oz + az, oy : oy + ay, ox : ox + ax])
    out = np.zeros((rz, ry, rx), dtype=data.dtype)
    out[pz : pz + az, py : py + ay, px : px + ax] = data
    return out


def filmstrip(volume_zyx: np.ndarray) -> np.ndarray:
    """Stack the z slices of a (z, y, x) uint8 block vertically: shape (z * y, x)."""
    v = np.asarray(volume_zyx)
    return v.reshape(v.shape[0] * v.shape[1], v.shape[2])


def cutout_region(meta: dict) -> tuple[int, slice, slice, slice, slice]:
    """Where the annotated slice of a cut-out lies.

    Returns ``(z, vol_y, vol_x, mask_y, mask_x)``: the global z index, the slices of
    the volume plane and the matching slices of the (requested-size) mask.

    Raises
    ------
    AnnotationError
        When the annotated slice is padding (outside the volume).
    """
    z = meta.get("annotated_global_z_index")
    if z is None:
        raise AnnotationError("the annotated slice lies in the padding outside the volume")
    ox, oy, _ = meta["cutout_origin_xyz"]
    ax, ay, _ = meta["cutout_shape_xyz"]
    px, py, _ = meta["padding_before_xyz"]
    return (
        int(z),
        slice(oy, oy + ay),
        slice(ox, ox + ax),
        slice(py, py + ay),
        slice(px, px + ax),
    )


def filmstrip_slice(strip: np.ndarray, n_slices: int, index: int) -> np.ndarray:
    """Cut slice ``index`` out of a vertically stacked filmstrip of ``n_slices`` slices.

    An image that is not a filmstrip (height == width) is returned as is.
    """
    s = np.asarray(strip)
    if n_slices <= 1 or s.shape[0] % n_slices or s.shape[0] == s.shape[1]:
        return s
    h = s.shape[0] // n_slices
    i = min(max(int(index), 0), n_slices - 1)
    return s[i * h : (i + 1) * h]


def zinfo_header(meta: dict, window: dict) -> str:
    """The original ``zInfo`` response header for a cut-out (JSON text)."""
    rz = int(meta["requested_shape_xyz"][2])
    return json.dumps(
        {
            "zInfo": {"min": 0, "max": rz - 1, "current": int(meta["annotated_local_z_index"])},
            "intensityWindow": window,
            "sampleMetadata": meta,
        }
    )


# ----------------------------------------------------------------------------- sessions
class SessionPool:
    """A small thread-safe LRU of expensive per-key objects (interactive sessions).

    ``get(key, factory)`` returns the cached object or builds it with ``factory()``
    (outside the pool lock, so one slow build does not block other keys); the least
    recently used object beyond ``max_size`` is dropped. ``lock(key)`` gives a
    per-key lock for callers that mutate the object.

    Examples
    --------
    >>> pool = SessionPool(max_size=2)
    >>> pool.get("a", lambda: 1), pool.get("a", lambda: 2)
    (1, 1)
    """

    def __init__(self, max_size: int = 3) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, key: str) -> threading.RLock:
        """The lock serialising work on ``key``'s object."""
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def peek(self, key: str) -> Any:
        """The cached object or None (does not build, does not refresh recency)."""
        with self._guard:
            return self._items.get(key)

    def get(self, key: str, factory: Callable[[], Any]) -> Any:
        """The object for ``key``, built by ``factory`` when not cached."""
        with self._guard:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with self.lock(key):
            with self._guard:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            obj = factory()
            with self._guard:
                self._items[key] = obj
                self._items.move_to_end(key)
                while len(self._items) > self.max_size:
                    old, old_obj = self._items.popitem(last=False)
                    log.info("dropped interactive session %s (LRU)", old)
                    if callable(getattr(old_obj, "close", None)):
                        old_obj.close()
            return obj

    def drop(self, key: str) -> None:
        """Forget ``key``'s object (e.g. after its job was deleted)."""
        with self._guard:
            obj = self._items.pop(key, None)
        if callable(getattr(obj, "close", None)):
            obj.close()

    def __contains__(self, key: str) -> bool:
        with self._guard:
            return key in self._items

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)


# ----------------------------------------------------------------------------- one job
AXIS_NAMES = ("z", "y", "x")


def parse_axis(value: Any) -> int:
    """``"z"|"y"|"x"|0|1|2`` -> 0, 1 or 2."""
    text = str(value).strip().lower()
    if text in AXIS_NAMES:
        return AXIS_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise AnnotationError(f"axis must be z, y or x, got {value!r}")


def plane_shape(shape_zyx: Sequence[int], axis: int) -> tuple[int, int]:
    """(height, width) of a plane across ``axis`` of a (z, y, x) volume."""
    s = [int(v) for v in shape_zyx]
    del s[axis]
    return s[0], s[1]


class JobAnnotator:
    """The interactive annotate -> retrain -> preview loop of one job, kept in memory.

    Holds the job's opened image, its :class:`~ml4paleo.segmentation.LabelStore`
    (``<job>/annotations``) and one :class:`~ml4paleo.segmentation.InteractiveSession`
    whose features at labelled voxels stay cached, so a retrain after a few more
    strokes does not read the volume again. Not thread-safe by itself: callers hold
    :attr:`lock` (the web app keeps these in a :class:`SessionPool`).

    Parameters
    ----------
    job_dir : path
        The job folder holding ``image.ome.zarr``.
    classes : list of dict, optional
        Classes of a new label store (default: background + structure).

    Raises
    ------
    AnnotationError
        When the job has no converted image yet.
    """

    def __init__(self, job_dir: Any, classes: Sequence[dict] | None = None) -> None:
        from pathlib import Path

        from ml4paleo.omezarr import open_image

        self.job_dir = Path(job_dir)
        image_path = self.job_dir / "image.ome.zarr"
        if not image_path.is_dir():
            raise AnnotationError("the image is not converted yet; wait for the conversion")
        self.image = open_image(image_path)
        self.shape = tuple(int(s) for s in self.image.shape)
        self.lock = threading.RLock()
        self.labels = self._open_store(classes)
        self._session: Any = None
        self.model: Any = None
        self.model_version = 0
        self.revision = 0  # bumps on every label change
        self._trained_revision = -1
        self._predictions: OrderedDict[tuple[int, int], tuple[int, np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._window: dict | None = None
        self._issued: OrderedDict[str, dict] = OrderedDict()  # legacy cut-outs by content hash
        self.last_timing: dict[str, float] = {}
        self._prefetch: dict[tuple[int, int], Any] = {}
        self._prefetch_pool: Any = None
        self._prefetch_lock = threading.Lock()

    # ---------------------------------------------------------------- labels
    def _open_store(self, classes: Sequence[dict] | None) -> Any:
        from ml4paleo.segmentation import LabelStore

        folder = self.job_dir / "annotations"
        if folder.is_dir() and any(folder.iterdir()):
            return LabelStore(folder)
        return LabelStore.create(folder, self.shape, classes=list(classes or DEFAULT_CLASSES))

    @property
    def classes(self) -> list[dict]:
        """The label store's classes ``[{name, color}, ...]``."""
        return [dict(c) for c in self.labels.classes]

    @property
    def colors(self) -> list[str]:
        return [c.get("color") or PALETTE[i % len(PALETTE)] for i, c in enumerate(self.classes)]

    def set_classes(self, classes: Any) -> list[dict]:
        """Replace names/colours (validated); never drops a class that holds labels."""
        clean = validate_classes(classes)
        counts = self.count_by_class()
        used = max((k for k, n in counts.items() if n), default=-1)
        if len(clean) <= used:
            raise AnnotationError(
                f"class {used} ({self.classes[used]['name']}) still holds labels; "
                "delete those annotations before removing the class"
            )
        if len(clean) != len(self.classes):
            self._invalidate_model()
        self.labels.set_classes(clean)
        return self.classes

    def count_by_class(self) -> dict[int, int]:
        """Labelled voxels per class index."""
        raw = self.labels.count_by_class() or {}
        if isinstance(raw, list | tuple | np.ndarray):
            return {i: int(n) for i, n in enumerate(raw)}
        out: dict[int, int] = {}
        names = [c["name"] for c in self.classes]
        for k, n in raw.items():
            idx = names.index(k) if isinstance(k, str) and k in names else int(k)
            out[idx] = int(n)
        return out

    def read_labels(self, axis: int, index: int) -> np.ndarray:
        self._check_index(axis, index)
        return np.asarray(self.labels.read_slice(axis, index), dtype=np.uint8)

    def write_labels(self, axis: int, index: int, labels2d: np.ndarray) -> dict:
        """Replace the labels of one plane with ``labels2d`` (0 = unlabelled)."""
        self._check_index(axis, index)
        labels2d = np.asarray(labels2d, dtype=np.uint8)
        expected = plane_shape(self.shape, axis)
        if labels2d.shape != expected:
            raise AnnotationError(
                f"labels are {labels2d.shape[0]} x {labels2d.shape[1]}, "
                f"the {AXIS_NAMES[axis]} plane is {expected[0]} x {expected[1]}"
            )
        if labels2d.size and int(labels2d.max()) > len(self.classes):
            raise AnnotationError(
                f"labels hold class value {int(labels2d.max())} but only "
                f"{len(self.classes)} classes exist"
            )
        # the plane becomes exactly labels2d (0 erases), one log entry per submission
        self.labels.write_slice(axis, index, labels2d, source="annotator")
        self._labels_changed()
        return {"axis": AXIS_NAMES[axis], "index": int(index), "labelled": int((labels2d > 0).sum())}

    def merge_labels(self, axis: int, index: int, region: tuple[slice, slice], patch: np.ndarray) -> dict:
        """Set ``region`` of a plane to ``patch`` (the rest of the plane is kept)."""
        current = self.read_labels(axis, index).copy()
        current[region] = patch
        return self.write_labels(axis, index, current)

    def clear_labels(self, axis: int, index: int) -> None:
        self._check_index(axis, index)
        self.labels.clear_slice(axis, index)
        self._labels_changed()

    def annotated_slices(self) -> list[dict]:
        """``[{axis, index, counts{class: n}}, ...]`` of planes holding labels."""
        out = []
        for item in self.labels.annotated_slices():
            axis = parse_axis(item.get("axis", 0))
            index = int(item.get("index", item.get("slice", 0)))
            entry = {"axis": AXIS_NAMES[axis], "index": index}
            for key in ("counts", "count", "labelled", "classes", "updated_at", "created_at"):
                if key in item:
                    entry[key] = item[key]
            out.append(entry)
        return out

    def _labels_changed(self) -> None:
        self.revision += 1

    def _invalidate_model(self) -> None:
        with self._prefetch_lock:
            for f in self._prefetch.values():
                f.cancel()
            self._prefetch.clear()
        self._session = None
        self.model = None
        self._predictions.clear()

    def _check_index(self, axis: int, index: int) -> None:
        if axis not in (0, 1, 2):
            raise AnnotationError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= int(index) < self.shape[axis]:
            raise AnnotationError(
                f"{AXIS_NAMES[axis]} index {index} outside 0..{self.shape[axis] - 1}"
            )

    # ---------------------------------------------------------------- model
    @property
    def session(self) -> Any:
        if self._session is None:
            from ml4paleo.segmentation import InteractiveSession

            self._session = InteractiveSession(self.image, self.labels)
        return self._session

    def prefetch(self, axis: int, index: int) -> None:
        """Start computing the features of a plane in the background.

        Called when the browser opens a plane: the features are ready by the time the
        first strokes arrive, so the first retrain + preview does not wait for them.
        Safe to call without holding :attr:`lock`; at most one plane is computed at once.
        """
        from concurrent.futures import ThreadPoolExecutor

        self._check_index(axis, index)
        key = (int(axis), int(index))
        with self._prefetch_lock:
            fut = self._prefetch.get(key)
            if fut is not None and not fut.cancelled():
                return
            for k, f in list(self._prefetch.items()):
                if f.done() or f.cancel():  # drop finished and not-yet-started planes
                    del self._prefetch[k]
            if self._prefetch_pool is None:
                self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="features")
            session = self.session
            self._prefetch[key] = self._prefetch_pool.submit(session.slice_features, *key)

    def _await_prefetch(self, axis: int, index: int) -> None:
        """Wait for a running feature prefetch of this plane instead of computing twice."""
        with self._prefetch_lock:
            fut = self._prefetch.get((int(axis), int(index)))
        if fut is not None:
            try:
                fut.result()
            except Exception as exc:  # the synchronous path reports real errors
                log.warning("feature prefetch failed: %s", exc)

    def close(self) -> None:
        """Stop the background feature thread (pending prefetches are dropped)."""
        if self._prefetch_pool is not None:
            self._prefetch_pool.shutdown(wait=False, cancel_futures=True)

    def labelled_classes(self) -> int:
        return sum(1 for n in self.count_by_class().values() if n)

    def retrain(self) -> Any:
        """Retrain the preview model on the current labels (cached features).

        Returns the model, or None when fewer than two classes hold labels.
        """
        if self._trained_revision == self.revision and self.model is not None:
            return self.model
        if self.labelled_classes() < 2:
            self.model = None
            self._trained_revision = self.revision
            self._predictions.clear()
            return None
        import time

        with self._prefetch_lock:
            pending = set(self._prefetch)
        for s in self.labels.annotated_slices():
            if (int(s["axis"]), int(s["index"])) in pending:
                self._await_prefetch(int(s["axis"]), int(s["index"]))
        t0 = time.perf_counter()
        self.model = self.session.retrain()
        self.last_timing["retrain_s"] = time.perf_counter() - t0
        self.model_version += 1
        self._trained_revision = self.revision
        self._predictions.clear()
        return self.model

    @property
    def stale(self) -> bool:
        """True when labels changed since the last retrain."""
        return self._trained_revision != self.revision

    def predict(self, axis: int, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(classes2d, probabilities (C, h, w)) of one plane, or None without a model."""
        self._check_index(axis, index)
        if self.model is None:
            return None
        key = (axis, int(index))
        hit = self._predictions.get(key)
        if hit is not None and hit[0] == self.model_version:
            self._predictions.move_to_end(key)
            return hit[1], hit[2]
        import time

        self._await_prefetch(axis, index)
        t0 = time.perf_counter()
        classes2d, probs = self.session.predict_slice(axis, int(index))
        self.last_timing["predict_s"] = time.perf_counter() - t0
        classes2d = np.asarray(classes2d, dtype=np.uint8)
        probs = np.asarray(probs, dtype=np.float32)
        self._predictions[key] = (self.model_version, classes2d, probs)
        while len(self._predictions) > 16:
            self._predictions.popitem(last=False)
        return classes2d, probs

    def uncertainty(self, axis: int, index: int) -> np.ndarray | None:
        """Uncertainty 0..1 of one plane (from the cached prediction), or None."""
        pred = self.predict(axis, index)
        if pred is None:
            return None
        return uncertainty_from_probabilities(pred[1])

    def suggest(self, axis: int) -> dict:
        """The plane along ``axis`` to annotate next.

        The engine's choice (least certain plane) when a model exists; otherwise the
        plane farthest from every annotated plane of that axis.
        """
        n = self.shape[axis]
        if self.model is not None:
            try:
                return {"index": int(self.session.suggest_slice(axis)), "reason": "least certain"}
            except (AttributeError, NotImplementedError):
                log.debug("session has no suggest_slice; using distance")
        done = sorted(
            s["index"] for s in self.annotated_slices() if s["axis"] == AXIS_NAMES[axis]
        )
        if not done:
            return {"index": n // 2, "reason": "middle of the volume"}
        idx = np.arange(n)
        dist = np.min(np.abs(idx[:, None] - np.asarray(done)[None, :]), axis=1)
        return {"index": int(dist.argmax()), "reason": "farthest from annotated slices"}

    # ---------------------------------------------------------------- image
    def window(self) -> dict:
        """Display window of the whole image (from its smallest pyramid level)."""
        if self._window is None:
            level = self.image.level(len(self.image.levels) - 1)
            if int(np.prod(level.shape)) <= 32 * 1024**2:
                values = np.asarray(level[...])
            else:
                mid = [s // 2 for s in level.shape]
                values = np.concatenate(
                    [np.asarray(level[mid[0]]).ravel(), np.asarray(level[:, mid[1]]).ravel()]
                )
            self._window = display_window(values)
        return self._window

    def read_plane(self, axis: int, index: int) -> np.ndarray:
        from ml4paleo.omezarr import read_slice

        self._check_index(axis, index)
        return read_slice(self.image, axis, int(index))

    # ---------------------------------------------------------------- legacy cut-outs
    def issue_cutout(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict, dict]:
        """A random legacy cut-out: (filmstrip uint8 (z*512, 512), sample metadata, window).

        Each served slice is remembered by its content hash so an old client that
        submits only the image (no metadata) is still placed in the volume.
        """
        import hashlib

        meta = random_cutout(self.shape, FILMSTRIP_SHAPE_ZYX, rng)
        block = read_cutout(self.image.array, meta)
        window = display_window(block)
        display = apply_window(block, window["window_min"], window["window_max"])
        meta["intensity_window"] = window
        for z in range(display.shape[0]):
            m = sample_metadata_for_z(meta, z)
            if m["annotated_global_z_index"] is None:
                continue
            key = hashlib.sha1(display[z].tobytes()).hexdigest()
            self._issued[key] = m
        while len(self._issued) > 11 * 64:
            self._issued.popitem(last=False)
        return filmstrip(display), meta, window

    def find_cutout(self, gray2d: np.ndarray) -> dict | None:
        """Sample metadata of a served cut-out slice equal to ``gray2d``, if any."""
        import hashlib

        return self._issued.get(hashlib.sha1(np.ascontiguousarray(gray2d, np.uint8).tobytes()).hexdigest())

    def cutout_prediction(self, meta: dict) -> np.ndarray | None:
        """Predicted classes of a cut-out's annotated slice, at the requested size."""
        z, vy, vx, my, mx = cutout_region(meta)
        pred = self.predict(0, z)
        if pred is None:
            return None
        rx, ry, _ = meta["requested_shape_xyz"]
        out = np.zeros((ry, rx), dtype=np.uint8)
        out[my, mx] = pred[0][vy, vx]
        return out
