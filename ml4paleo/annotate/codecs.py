"""Decoding what the annotator submits: base64, data URLs, PNG / RLE / raw label masks, polygons.

Label convention (:mod:`ml4paleo.classes`): in a label mask ``0`` = unlabelled and
``k + 1`` = class ``k`` (class 0 = background).

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
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ml4paleo.classes import hex_to_rgb

from .errors import AnnotationError

__all__ = [
    "MAX_MASK_PIXELS",
    "MAX_PAYLOAD_CHARS",
    "decode_base64",
    "decode_data_url",
    "decode_image_array",
    "decode_label_mask",
    "decode_png",
    "encode_raw_plane",
    "encode_rle",
    "legacy_mask_to_labels",
    "rasterize_polygons",
]

#: largest decoded mask accepted (pixels); guards against decompression bombs
MAX_MASK_PIXELS = 8192 * 8192
#: largest encoded payload accepted (characters of base64)
MAX_PAYLOAD_CHARS = 256 * 1024 * 1024

_DATA_URL_HEAD = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*$")


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



#: plane dtypes sent as they are in ``format=raw``; others become float32
RAW_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


def encode_raw_plane(plane: np.ndarray) -> tuple[bytes, tuple[int, int], str]:
    """``(little-endian bytes, shape, dtype name)`` of a plane for the raw slice format."""
    if plane.dtype not in RAW_DTYPES:
        plane = plane.astype(np.float32)
    data = np.ascontiguousarray(plane).astype(plane.dtype.newbyteorder("<"), copy=False)
    return data.tobytes(), (int(plane.shape[0]), int(plane.shape[1])), str(plane.dtype.name)
