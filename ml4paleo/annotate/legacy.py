"""The original annotator's API: 11-slice 512 x 512 filmstrip cut-outs and their metadata.

The original served a random cut-out of the volume as a vertical "filmstrip" PNG with a
``zInfo`` header describing where it lies (xyz-ordered lists); clients paint one slice of it
and send it back with (or without) that metadata, as a raster mask or as polygons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .codecs import MAX_MASK_PIXELS
from .errors import AnnotationError

__all__ = [
    "FILMSTRIP_SHAPE_ZYX",
    "cutout_region",
    "field",
    "filmstrip",
    "filmstrip_slice",
    "legacy_regions",
    "random_cutout",
    "read_cutout",
    "sample_metadata_for_z",
    "uses_polygons",
    "validate_sample_metadata",
    "zinfo_header",
]

#: legacy annotation cut-out: (z, y, x) = 11 slices of 512 x 512
FILMSTRIP_SHAPE_ZYX = (11, 512, 512)


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



# ----------------------------------------------------------------------------- payloads
def field(payload: dict, snake: str, camel: str | None = None) -> Any:
    """``payload[snake]``, else ``payload[camel]`` (old clients send camelCase), else None."""
    if snake in payload:
        return payload[snake]
    if camel and camel in payload:
        return payload[camel]
    return None


def uses_polygons(payload: dict) -> bool:
    """Whether a submission carries polygons (rather than a raster mask)."""
    keys = ("regions_by_slice", "regionsBySlice", "polygons", "positive_regions",
            "positiveRegions", "negative_regions", "negativeRegions")
    return any(k in payload for k in keys)


def legacy_regions(payload: dict, default_z: int) -> dict[int, dict]:
    """``{local z: {positive_regions, negative_regions}}`` from any original polygon form.

    Raises
    ------
    AnnotationError
        When ``regions_by_slice`` has a key that is not a slice index or a value that is
        not an object.
    """

    def regions(obj: dict) -> tuple[list, list]:
        poly = obj.get("polygons") if isinstance(obj.get("polygons"), dict) else obj
        pos = field(poly, "positive_regions", "positiveRegions")
        neg = field(poly, "negative_regions", "negativeRegions")
        return (pos if isinstance(pos, list) else [], neg if isinstance(neg, list) else [])

    out: dict[int, dict] = {}
    by_slice = field(payload, "regions_by_slice", "regionsBySlice")
    if isinstance(by_slice, dict):
        for key, value in by_slice.items():
            try:
                z = int(key)
            except (TypeError, ValueError):
                raise AnnotationError(f"regions_by_slice key {key!r} is not a slice index") from None
            if not isinstance(value, dict):
                raise AnnotationError(f"regions_by_slice[{key}] must be an object")
            pos, neg = regions(value)
            if pos or neg:
                out[z] = {"positive_regions": pos, "negative_regions": neg}
        if out:
            return out
    pos, neg = regions(payload)
    if pos or neg:
        out[default_z] = {"positive_regions": pos, "negative_regions": neg}
    return out
