"""Transitional alias of :mod:`ml4paleo.formats` (OME-Zarr images), kept while other
branches still import ``ml4paleo.omezarr``; new code imports :mod:`ml4paleo.formats`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml4paleo._fs import atomic_write
from ml4paleo.formats import *  # noqa: F403
from ml4paleo.formats import __all__ as _formats_all


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` atomically (through :func:`ml4paleo._fs.atomic_write`).

    Transitional: the JSON text is what this function always wrote (indent 2, no
    trailing newline, NaN allowed); new code uses :func:`ml4paleo._fs.atomic_write_json`.
    """
    atomic_write(path, json.dumps(obj, indent=2))


__all__ = [*_formats_all, "write_json_atomic"]
