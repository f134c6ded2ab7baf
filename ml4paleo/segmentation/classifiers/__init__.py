"""Voxel classifiers: the :class:`Classifier` protocol, the implementations, the stage file.

:data:`CLASSIFIERS` maps the ``kind`` stored in model files to its class; a new classifier
is one module with a :class:`Classifier` subclass plus its entry here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ml4paleo import _fs

from .base import CASCADE, CONFIDENCE, Classifier
from .forest import Forest

__all__ = ["CASCADE", "CLASSIFIERS", "CONFIDENCE", "Classifier", "Forest", "classifier_class", "load_stages", "save_stages"]

#: kind -> class
CLASSIFIERS: dict[str, type[Classifier]] = {
    Forest.kind: Forest,
}


def classifier_class(kind: str) -> type[Classifier]:
    """The class of classifier ``kind``.

    Raises
    ------
    ValueError
        For an unknown kind (the message lists the known ones).
    """
    try:
        return CLASSIFIERS[kind]
    except KeyError:
        raise ValueError(f"unknown classifier {kind!r}; known: {sorted(CLASSIFIERS)}") from None


def save_stages(path: str | Path, stages: Sequence[Classifier]) -> None:
    """Write the stages of a model to one ``.npz`` (arrays prefixed ``s<i>_``, no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    for i, c in enumerate(stages):
        arrays.update(c.to_arrays(f"s{i}_"))
    with _fs.atomic_writer(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_stages(path: str | Path, specs: Sequence[tuple[str, int, int]]) -> list[Classifier]:
    """Read stages written by :func:`save_stages`; ``specs`` = (kind, n_features, n_classes) each."""
    with np.load(path, allow_pickle=False) as data:
        return [classifier_class(kind).from_arrays(data, f"s{i}_", nf, nc)
                for i, (kind, nf, nc) in enumerate(specs)]
