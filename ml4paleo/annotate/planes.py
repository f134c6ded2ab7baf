"""Planes of a (z, y, x) volume: axis names, parsing axis and index, plane shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import AnnotationError

__all__ = ["AXIS_NAMES", "parse_axis", "parse_index", "plane_shape"]

AXIS_NAMES = ("z", "y", "x")


def parse_axis(value: Any) -> int:
    """``"z"|"y"|"x"|0|1|2`` -> 0, 1 or 2."""
    text = str(value).strip().lower()
    if text in AXIS_NAMES:
        return AXIS_NAMES.index(text)
    if text in ("0", "1", "2"):
        return int(text)
    raise AnnotationError(f"axis must be z, y or x, got {value!r}")


def parse_index(raw: Any) -> int:
    """A plane index from a query string or JSON: an integer (``2``, ``2.0``, ``"2"``).

    Raises
    ------
    AnnotationError
        When missing, a boolean, a non-integer number (also NaN, Infinity) or not a number.
    """
    if raw is None or isinstance(raw, bool):
        raise AnnotationError("index is required")
    if isinstance(raw, float) and not raw.is_integer():  # also NaN, Infinity (JSON allows them)
        raise AnnotationError(f"index must be an integer, got {raw!r}")
    try:
        return int(raw)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"index must be an integer, got {raw!r}") from None


def plane_shape(shape_zyx: Sequence[int], axis: int) -> tuple[int, int]:
    """(height, width) of a plane across ``axis`` of a (z, y, x) volume."""
    s = [int(v) for v in shape_zyx]
    del s[axis]
    return s[0], s[1]
