"""Modules that share their name with the verb they hold (``convert``, ``export``).

``ml4paleo.convert`` is both a module and the verb re-exported by ``ml4paleo``. Once the
module is imported, Python binds the *module* to ``ml4paleo.convert``, shadowing the lazy
verb. Making such a module callable keeps ``ml4paleo.convert(...)`` working either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def make_module_callable(module_name: str, func: Callable[..., Any]) -> None:
    """Let calling module ``module_name`` call ``func`` (same signature and docs)."""
    module = sys.modules[module_name]

    class _VerbModule(type(module)):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

    _VerbModule.__doc__ = func.__doc__
    module.__class__ = _VerbModule
