"""Names people read: of jobs, segmentations and models.

Ids are random (``uFdKGHCeVpmJfwABhGrPpLw``); people choose between results by what they
are. A segmentation or model is shown as its number in the job, its classes and when it
was made (``Segmentation 2 · matrix/bone/tooth · 1 Dec 14:03``) until someone renames it;
the name rules (length, no control characters) are the same for jobs and results.

Examples
--------
>>> default_name("Segmentation", 2, ["matrix", "bone", "tooth"], None)
'Segmentation 2 · matrix/bone/tooth'
>>> clean_name("  Skull\\n 42 ")
'Skull 42'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from ml4paleo._fs import parse_iso

__all__ = ["MAX_NAME_LENGTH", "assign_numbers", "clean_name", "default_name", "format_when"]

MAX_NAME_LENGTH = 200
_SPACES_RE = re.compile(r"[ \t\n\r]+")
#: classes shown in a default name before "…"
_MAX_CLASSES_SHOWN = 4


def clean_name(value: object, default: str | None = None) -> str:
    """Validate a name: text of at most 200 characters (1 or more after trimming; runs of
    ASCII whitespace -- space, tab, newline, return -- become one space), no other control
    characters. The rule the OpenAPI schema states.

    Parameters
    ----------
    value : object
        The name given.
    default : str, optional
        Returned for None or an empty name (else those raise).

    Raises
    ------
    ValueError
        With the reason.
    """
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise ValueError("name must be a string")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"name is {len(value)} characters long; at most {MAX_NAME_LENGTH} allowed")
    name = _SPACES_RE.sub(" ", value).strip(" ")  # newlines / tabs too
    if not name:
        if default is not None:
            return default
        raise ValueError("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name is {len(name)} characters long; at most {MAX_NAME_LENGTH} allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("name must not contain control characters")
    return name


def format_when(iso: str | None, now: datetime | None = None) -> str | None:
    """``1 Dec 14:03`` (local time; the year added when it is not this year), None when
    ``iso`` is missing or unreadable.

    Examples
    --------
    >>> format_when(None) is None
    True
    """
    if not iso:
        return None
    try:
        when = parse_iso(str(iso)).astimezone()
    except (TypeError, ValueError):
        return None
    now = now or datetime.now().astimezone()
    year = "" if when.year == now.year else f" {when.year}"
    return f"{when.day} {when.strftime('%b')}{year} {when.strftime('%H:%M')}"


def _class_names(classes: Iterable) -> list[str]:
    out = []
    for c in classes or []:
        name = c.get("name") if isinstance(c, dict) else c
        if name not in (None, ""):
            out.append(str(name))
    return out


def default_name(kind: str, number: int | None, classes: Iterable, created_at: str | None,
                 now: datetime | None = None) -> str:
    """``"<kind> <number> · <classes> · <when>"``, leaving out what is unknown.

    Parameters
    ----------
    kind : str
        ``"Segmentation"`` or ``"Model"``.
    number : int, optional
        Its number within the job (from 1).
    classes : iterable
        Class names (or ``{"name": ...}`` dicts).
    created_at : str, optional
        ISO-8601 time it was made (shown by :func:`format_when`).
    """
    parts = [f"{kind} {number}" if number else kind]
    names = _class_names(classes)
    if names:
        shown = names[:_MAX_CLASSES_SHOWN]
        parts.append("/".join(shown) + ("/…" if len(names) > len(shown) else ""))
    when = format_when(created_at, now)
    if when:
        parts.append(when)
    return " · ".join(parts)


def assign_numbers(items: Iterable[tuple[str, dict]]) -> dict[str, int]:
    """Numbers (from 1) of results given as ``(id, metadata)``: a stored ``number`` is kept,
    the others (written by older versions) get the free numbers in order of ``created_at``.

    Examples
    --------
    >>> assign_numbers([("a", {"number": 2}), ("b", {"created_at": "2024"}), ("c", {})])
    {'a': 2, 'c': 1, 'b': 3}
    """
    items = list(items)
    out: dict[str, int] = {}
    for rid, meta in items:
        n = meta.get("number")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0 and n not in out.values():
            out[rid] = n
    taken = set(out.values())
    rest = sorted((str(meta.get("created_at") or ""), rid) for rid, meta in items
                  if rid not in out)
    n = 1
    for _, rid in rest:
        while n in taken:
            n += 1
        out[rid] = n
        taken.add(n)
    return out
