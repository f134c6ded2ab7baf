"""The per-class morphometry table: one flat row per class, as a paper's table shows it.

Built from :meth:`Morphometry.to_dict` (or the ``morphometry.json`` a run wrote), so the
job step, the CLI, the web app and the report all show the same columns.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TABLE_COLUMNS", "class_table", "column_units", "table_csv", "write_table_csv"]

#: columns of the table, in order (lengths in the voxel size's unit)
TABLE_COLUMNS = (
    "value", "name", "bv", "tv", "bv_tv", "bs", "bs_tv",
    "thickness_mean", "thickness_sd", "thickness_max",
    "spacing_mean", "spacing_sd", "spacing_max",
    "euler", "connectivity", "connectivity_density", "degree_of_anisotropy", "objects",
)

#: power of the length unit of each column (``None``: no unit)
_UNIT_POWER = {
    "bv": 3, "tv": 3, "bs": 2, "bs_tv": -1, "thickness_mean": 1, "thickness_sd": 1,
    "thickness_max": 1, "spacing_mean": 1, "spacing_sd": 1, "spacing_max": 1,
    "connectivity_density": -3,
}


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def class_table(summary: Mapping[str, Any]) -> list[dict]:
    """One row per measured class, columns :data:`TABLE_COLUMNS` (missing measures None).

    Parameters
    ----------
    summary : mapping
        :meth:`~ml4paleo.morphometry.Morphometry.to_dict` or its JSON.

    Examples
    --------
    >>> rows = class_table({"classes": [{"value": 1, "name": "bone", "bv_tv": 0.25,
    ...                                  "thickness": {"mean": 2.0, "sd": 0.5, "max": 3.0}}]})
    >>> rows[0]["name"], rows[0]["bv_tv"], rows[0]["thickness_max"], rows[0]["euler"]
    ('bone', 0.25, 3.0, None)
    """
    rows = []
    for c in summary.get("classes") or []:
        row: dict[str, Any] = {}
        for col in TABLE_COLUMNS:
            head, _, stat = col.partition("_")
            if head in ("thickness", "spacing") and stat in ("mean", "sd", "max"):
                row[col] = _number((c.get(head) or {}).get(stat))
            else:
                row[col] = _number(c.get(col))
        rows.append(row)
    return rows


def column_units(unit: str | None) -> dict[str, str]:
    """The unit of each column that has one (e.g. ``{"bv": "micrometer^3", ...}``).

    Examples
    --------
    >>> column_units("mm")["bs_tv"], column_units(None)["thickness_mean"]
    ('mm^-1', 'voxel')
    """
    u = unit or "voxel"
    return {col: u if p == 1 else f"{u}^{p}" for col, p in _UNIT_POWER.items()}


def table_csv(rows: Sequence[Mapping[str, Any]], unit: str | None = None) -> str:
    """The table as CSV text (header :data:`TABLE_COLUMNS` plus a ``unit`` column)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*TABLE_COLUMNS, "unit"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: "" if row.get(k) is None else row.get(k) for k in TABLE_COLUMNS},
                         "unit": unit or ""})
    return out.getvalue()


def write_table_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    unit: str | None = None) -> Path:
    """Write :func:`table_csv` to ``path`` atomically; returns the path."""
    from ml4paleo._fs import atomic_write

    return atomic_write(path, table_csv(rows, unit))
