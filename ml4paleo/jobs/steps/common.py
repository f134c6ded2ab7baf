"""Helpers every pipeline step uses: importing a library function, JSON values, executors."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ml4paleo.config import Settings
from ml4paleo.jobs.context import StepError

__all__ = ["executor", "jsonable", "library"]


def library(module: str, name: str, what: str) -> Any:
    """Import ``module.name`` or raise :class:`StepError` saying ``what`` is unavailable
    (a step fails with a clear error, never with fake output)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise StepError(
            f"{what} is not available in this installation: cannot import {module}.{name} ({exc})"
        ) from None


def jsonable(value: Any) -> Any:
    """Convert numpy scalars / tuples / paths into plain JSON values (recursively).

    Examples
    --------
    >>> import numpy as np
    >>> jsonable({"a": np.float32(1.5), "b": (1, 2)})
    {'a': 1.5, 'b': [1, 2]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def executor(settings: Settings) -> str | None:
    """The executor of chunked work: the Dask scheduler address, or None (local workers)."""
    return settings.dask_scheduler or None
