"""Checking the options of a morphometry run given as JSON (a job request, an HTTP body).

:func:`measure_options` turns loosely typed values into the keyword arguments of
:func:`ml4paleo.morphometry.measure` (JSON-able, so they can be queued in a job record),
or raises ``ValueError`` naming the bad field.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["measure_options"]


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{field}: expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    return int(number)


def measure_options(*, measures: Any = None, values: Any = None, max_thickness: Any = None,
                    roi_box: Any = None, thickness_map: Any = True,
                    profile_axis: Any = "z") -> dict:
    """Checked, JSON-able options of :func:`ml4paleo.morphometry.measure`.

    Parameters
    ----------
    measures : str or list of str, optional
        Names of :data:`ml4paleo.morphometry.MEASURES` (default: all).
    values : list of int, optional
        Class values (default: all present).
    max_thickness : number, optional
        Positive, in the voxel size's unit.
    roi_box : 3 pairs of int, optional
        ``[[z0, z1], [y0, y1], [x0, x1]]`` voxel ranges (checked against the volume later).
    thickness_map : bool
        Write the thickness map.
    profile_axis : {"z", "y", "x"} or 0, 1, 2

    Returns
    -------
    dict
        ``measures`` (sorted list or None), ``values``, ``max_thickness``, ``roi_box``,
        ``thickness_map``, ``profile_axis`` (a letter).

    Raises
    ------
    ValueError
        Naming the field, e.g. ``"measures: unknown measure(s) volume: use ..."``.

    Examples
    --------
    >>> measure_options(measures="thickness,objects", values=[1], roi_box=[[0, 4], [0, 8], [2, 6]])
    ... # doctest: +NORMALIZE_WHITESPACE
    {'measures': ['objects', 'thickness'], 'values': [1], 'max_thickness': None,
     'roi_box': [[0, 4], [0, 8], [2, 6]], 'thickness_map': True, 'profile_axis': 'z'}
    >>> measure_options(max_thickness=-1)
    Traceback (most recent call last):
    ...
    ValueError: max_thickness: expected a positive number, got -1
    """
    from ml4paleo.morphometry import parse_measures

    out: dict[str, Any] = {}
    if measures in (None, "", []):
        out["measures"] = None
    else:
        if not isinstance(measures, str | list | tuple) or (
                not isinstance(measures, str) and not all(isinstance(m, str) for m in measures)):
            raise ValueError(f"measures: expected a list of names, got {measures!r}")
        try:
            out["measures"] = sorted(parse_measures(measures))
        except ValueError as exc:
            raise ValueError(f"measures: {exc}") from None
    if values in (None, []):
        out["values"] = None
    else:
        if not isinstance(values, list | tuple):
            raise ValueError(f"values: expected a list of class values, got {values!r}")
        vals = sorted({_int(v, "values") for v in values})
        if any(not 0 < v < 256 for v in vals):
            raise ValueError(f"values: class values are 1..255, got {vals}")
        out["values"] = vals
    if max_thickness in (None, ""):
        out["max_thickness"] = None
    else:
        try:
            t = float(max_thickness)
        except (TypeError, ValueError):
            t = float("nan")
        if isinstance(max_thickness, bool) or not (math.isfinite(t) and t > 0):
            raise ValueError(f"max_thickness: expected a positive number, got {max_thickness!r}")
        out["max_thickness"] = t
    if roi_box in (None, []):
        out["roi_box"] = None
    else:
        if not isinstance(roi_box, list | tuple) or len(roi_box) != 3 or not all(
                isinstance(r, list | tuple) and len(r) == 2 for r in roi_box):
            raise ValueError(f"roi_box: expected [[z0, z1], [y0, y1], [x0, x1]], got {roi_box!r}")
        box = [[_int(a, "roi_box"), _int(b, "roi_box")] for a, b in roi_box]
        for axis, (a, b) in zip("zyx", box, strict=True):
            if not 0 <= a < b:
                raise ValueError(f"roi_box: axis {axis} range {a}..{b} is empty or negative")
        out["roi_box"] = box
    if not isinstance(thickness_map, bool):
        raise ValueError(f"thickness_map: expected true or false, got {thickness_map!r}")
    out["thickness_map"] = thickness_map
    axis = "z" if profile_axis in (None, "") else profile_axis
    if isinstance(axis, int) and not isinstance(axis, bool) and axis in (0, 1, 2):
        axis = "zyx"[axis]
    if not isinstance(axis, str) or axis.lower() not in ("z", "y", "x"):
        raise ValueError(f"profile_axis: expected z, y or x, got {profile_axis!r}")
    out["profile_axis"] = axis.lower()
    return out
