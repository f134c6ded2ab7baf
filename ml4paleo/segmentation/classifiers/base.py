"""What a voxel classifier is: fit, predict_proba, and a pickle-free array format.

A model stage is any :class:`Classifier`. It stores itself as named numpy arrays (never a
pickle: model files may come from untrusted uploads) so that stages of one model share one
``.npz`` (see :func:`ml4paleo.segmentation.classifiers.save_stages`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ml4paleo import _fs

__all__ = ["CASCADE", "CONFIDENCE", "Classifier"]

#: early-exit checkpoints (trees) of each forest at prediction, and at training where the
#: second stage's context is made as prediction makes it
CASCADE = (8, 16, 32)
#: mean class fraction that ends a voxel early
CONFIDENCE = 0.97


class Classifier(abc.ABC):
    """A trained classifier of feature rows into class probabilities.

    Subclasses (one file each, listed in :data:`ml4paleo.segmentation.classifiers.CLASSIFIERS`)
    implement the abstract methods.

    Attributes
    ----------
    kind : str
        Name stored in model files (``"forest"``).
    n_features : int
        Input columns.
    n_classes : int
        Output columns of :meth:`predict_proba`.
    """

    kind: ClassVar[str] = ""
    n_features: int
    n_classes: int

    @classmethod
    @abc.abstractmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, *, n_classes: int, size: int, settings: Any,
            seed: int, sample_weight: np.ndarray | None = None,
            budget: float | None = None) -> Classifier:
        """Train on rows ``X`` (N, F) with class indices ``y`` (N,).

        Parameters
        ----------
        n_classes : int
            Output columns (classes without rows get probability 0).
        size : int
            Model size (trees of a forest).
        settings : TrainSettings
            Depth, leaf size, threads, ... (each classifier reads what it knows).
        seed : int
        sample_weight : ndarray, optional
            Per-row weights.
        budget : float, optional
            Prediction-cost cap (classifier-specific; a forest drops trees beyond it).
        """

    @abc.abstractmethod
    def predict_proba(self, X: np.ndarray, chunk: int = 131072, threads: int = 1,
                      cascade: Sequence[int] = (), confidence: float = 0.97) -> np.ndarray:
        """Class probabilities (N, n_classes) float32 of rows ``X`` (N, n_features).

        Each row's answer depends only on that row, so blockwise and whole-volume
        predictions agree. ``cascade`` / ``confidence``: optional early exit (classifiers
        without one ignore them).
        """

    @abc.abstractmethod
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Named arrays (keys start with ``prefix``) that :meth:`from_arrays` rebuilds it from."""

    @classmethod
    @abc.abstractmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, n_features: int,
                    n_classes: int) -> Classifier:
        """Inverse of :meth:`to_arrays`; validates everything (a corrupt file raises ValueError)."""

    def describe(self) -> dict:
        """What model metadata records of this stage (kind, sizes)."""
        return {"kind": self.kind, "n_features": self.n_features, "n_classes": self.n_classes}

    # -- one classifier in its own file ------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write this classifier alone to ``path`` (``.npz``, atomically, no pickle)."""
        head = {"kind": np.array(self.kind), "n_features": np.array(self.n_features),
                "n_classes": np.array(self.n_classes)}
        with _fs.atomic_writer(path, "wb") as fh:
            np.savez_compressed(fh, **head, **self.to_arrays("c_"))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ValueError
            When the file is not this kind of classifier or is corrupt.
        """
        with np.load(path, allow_pickle=False) as data:
            try:
                kind = str(data["kind"])
                nf, nc = int(data["n_features"]), int(data["n_classes"])
            except KeyError as exc:
                raise ValueError(f"{path}: not a classifier file (lacks {exc})") from exc
            if cls.kind and kind != cls.kind:
                raise ValueError(f"{path}: holds a {kind!r} classifier, not {cls.kind!r}")
            return cls.from_arrays(data, "c_", nf, nc)
