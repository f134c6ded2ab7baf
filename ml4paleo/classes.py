"""Classes and their colours: the one rule for names, colours, counts and label values.

A class list is ``[{"name": str, "color": "#rrggbb"}, ...]``; a class's index in the list
is its class number. Class 0 is the background. Two encodings of class numbers exist:

- a **segmentation** (label image) stores class ``k`` as value ``k`` (0 = background);
- an **annotation** (the label store of painted strokes) stores class ``k`` as ``k + 1``,
  0 = not labelled, and :data:`ERASE` (255) marks "erase" in merged writes.

So at most :data:`MAX_CLASSES` = 254 classes fit in 8 bits. Everything that names,
colours, counts or validates classes (label store, models, annotator, viewers, client,
report, NGFF label metadata) uses this module; the web UI gets the colours from the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_CLASSES",
    "ERASE",
    "MAX_CLASSES",
    "MAX_NAME_LENGTH",
    "PALETTE",
    "ClassError",
    "class_list",
    "colors_of",
    "default_color",
    "hex_to_rgb",
    "ngff_colors",
    "ngff_properties",
    "validate_classes",
]

#: annotation value meaning "erase this pixel" in merged writes
ERASE = 255
#: most classes an 8-bit annotation store can hold (values 1..254; 0 unlabelled, 255 erase)
MAX_CLASSES = 254
MAX_NAME_LENGTH = 64
#: colours handed to classes without one, by class number (distinct, readable on grey)
PALETTE = (
    "#3b82f6", "#f97316", "#22c55e", "#e11d48", "#a855f7", "#eab308",
    "#14b8a6", "#ec4899", "#84cc16", "#6366f1", "#f43f5e", "#0ea5e9",
    "#a16207", "#10b981", "#d946ef", "#64748b",
)
#: what a new annotation starts with
DEFAULT_CLASSES = (
    {"name": "background", "color": PALETTE[0]},
    {"name": "structure", "color": PALETTE[1]},
)

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class ClassError(ValueError):
    """A class list that breaks the rules (message says which class and why)."""


def default_color(index: int) -> str:
    """The palette colour of class ``index``.

    Examples
    --------
    >>> default_color(0), default_color(16)
    ('#3b82f6', '#3b82f6')
    """
    return PALETTE[int(index) % len(PALETTE)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> ``(r, g, b)``.

    Raises
    ------
    ClassError
        When ``color`` is not ``#rrggbb``.
    """
    if not isinstance(color, str) or not _HEX_COLOR.match(color):
        raise ClassError(f"colour must be #rrggbb, got {color!r}")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def validate_classes(classes: Any, *, min_count: int = 1) -> list[dict]:
    """Check and normalise a class list.

    Parameters
    ----------
    classes : sequence of dict or str
        ``{"name", "color"}`` objects or bare names. Missing colours get the palette's.
    min_count : int
        Fewest classes accepted (2 where a model is trained).

    Returns
    -------
    list of dict
        ``[{"name": stripped name, "color": lower-case "#rrggbb"}, ...]``.

    Raises
    ------
    ClassError
        When the list is not a list, has fewer than ``min_count`` or more than
        :data:`MAX_CLASSES` entries, or a name is empty, too long or used twice
        (case-insensitively), or a colour is not ``#rrggbb``.

    Examples
    --------
    >>> validate_classes(["matrix", {"name": "Bone", "color": "#FF0000"}])
    [{'name': 'matrix', 'color': '#3b82f6'}, {'name': 'Bone', 'color': '#ff0000'}]
    """
    if isinstance(classes, str | bytes | dict) or not isinstance(classes, Sequence):
        raise ClassError("classes must be a list of {name, color} objects or names")
    if not min_count <= len(classes) <= MAX_CLASSES:
        raise ClassError(f"need {min_count} to {MAX_CLASSES} classes, got {len(classes)}")
    out: list[dict] = []
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if isinstance(c, str):
            c = {"name": c}
        if not isinstance(c, dict):
            raise ClassError(f"class {i} must be an object with a name and a colour")
        name = c.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_LENGTH:
            raise ClassError(f"class {i} needs a name of 1 to {MAX_NAME_LENGTH} characters")
        name = name.strip()
        if name.lower() in seen:
            raise ClassError(f"class name {name!r} is used twice")
        seen.add(name.lower())
        color = c.get("color") or default_color(i)
        hex_to_rgb(color)
        out.append({"name": name, "color": color.lower()})
    return out


def class_list(classes: Sequence[dict | str] | None, n_classes: int = 0) -> list[dict]:
    """A valid class list of at least ``n_classes`` entries, filling gaps with defaults.

    Missing entries are named ``"background"`` (class 0) and ``"class k"``; missing
    colours come from the palette. Used where a list must exist (a model trained on
    labels without names, a label image without metadata).

    Examples
    --------
    >>> [c["name"] for c in class_list(None, 3)]
    ['background', 'class 1', 'class 2']
    """
    given = list(classes or [])
    count = max(int(n_classes), len(given), 1)
    filled: list[dict | str] = []
    for i in range(count):
        c = given[i] if i < len(given) else None
        if c is None:
            c = {"name": "background" if i == 0 else f"class {i}"}
        filled.append(c)
    return validate_classes(filled)


def colors_of(classes: Sequence[dict]) -> list[str]:
    """The ``#rrggbb`` colour of each class (palette colour when missing)."""
    return [(c.get("color") if isinstance(c, dict) else None) or default_color(i)
            for i, c in enumerate(classes)]


def ngff_colors(classes: Sequence[dict], *, background_alpha: int = 0) -> list[dict]:
    """NGFF ``image-label`` ``colors`` for a segmentation (value ``k`` = class ``k``).

    The background (value 0) is transparent by default so viewers overlay the scan.
    """
    out = []
    for k, color in enumerate(colors_of(classes)):
        r, g, b = hex_to_rgb(color)
        out.append({"label-value": k, "rgba": [r, g, b, background_alpha if k == 0 else 255]})
    return out


def ngff_properties(classes: Sequence[dict]) -> list[dict]:
    """NGFF ``image-label`` ``properties``: each value's class name (and colour)."""
    return [{"label-value": k, "class": c.get("name", f"class {k}"), "color": colors_of(classes)[k]}
            for k, c in enumerate(classes)]
