"""The feature families, one module each, registered in one table.

:data:`REGISTRY` lists them in channel order (per scale: gaussian, dog, gradient, log,
hessian, structure). A new family is one module defining ``FAMILY`` (a
:class:`~ml4paleo.features.families.base.Family` subclass instance) plus its entry here.
"""

from __future__ import annotations

from . import dog, gaussian, gradient, hessian, laplacian, structure
from .base import Family, ScaleContext

__all__ = ["FAMILIES", "REGISTRY", "Family", "ScaleContext", "family"]

#: the families, in channel order
REGISTRY: tuple[Family, ...] = (
    gaussian.FAMILY,
    dog.FAMILY,
    gradient.FAMILY,
    laplacian.FAMILY,
    hessian.FAMILY,
    structure.FAMILY,
)
#: their names (what ``FeatureSettings.families`` holds)
FAMILIES: tuple[str, ...] = tuple(f.name for f in REGISTRY)


def family(name: str) -> Family:
    """The family called ``name``.

    Raises
    ------
    KeyError
        For an unknown name.
    """
    for f in REGISTRY:
        if f.name == name:
            return f
    raise KeyError(f"unknown feature family {name!r}; known: {FAMILIES}")
