"""Random forests stored as plain arrays (``.npz`` + JSON), never pickled.

A model file may come from an untrusted upload, so it is loaded with
``numpy.load(allow_pickle=False)`` and the trees are rebuilt from their arrays
(children, split feature, threshold, leaf class fractions), validated node by node.
Prediction walks all trees in one compiled pass (:mod:`.walk`), bit-identical to
scikit-learn's traversal; training is scikit-learn's random forest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Classifier
from .walk import float32_floor, forest_proba

__all__ = ["Forest", "expected_path_length"]

_MAX_NODES = 50_000_000  # refuse absurd files rather than allocating without bound


class Forest(Classifier):
    """A trained random forest: per tree, its node arrays and per-leaf class fractions.

    Parameters
    ----------
    trees : list of dict
        Each with ``left``, ``right`` (tree-local child indices, -1 at leaves), ``feature``
        (int), ``threshold`` (float) per node and ``value`` (nodes x n_classes fractions).
    n_features : int
        Number of input features.
    n_classes : int
        Number of output classes (columns of :meth:`predict_proba`).

    Attributes
    ----------
    importances : ndarray or None
        Impurity-decrease importance per feature, from training (not stored in files).
    """

    kind = "forest"

    def __init__(self, trees: list[dict], n_features: int, n_classes: int) -> None:
        if not trees:
            raise ValueError("a forest needs at least one tree")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.importances: np.ndarray | None = None
        sizes = []
        parts: dict[str, list] = {"left": [], "right": [], "feature": [], "threshold": [], "value": []}
        base = 0
        for t in trees:
            left, right, feature, threshold, value = self._check(t)
            n = len(left)
            leaf = left == -1
            parts["left"].append(np.where(leaf, -1, left + base).astype(np.int32))
            parts["right"].append(np.where(leaf, -1, right + base).astype(np.int32))
            parts["feature"].append(np.where(leaf, -2, feature).astype(np.int32))
            parts["threshold"].append(np.where(leaf, -2.0, threshold).astype(np.float64))
            parts["value"].append(np.ascontiguousarray(value, np.float32))
            sizes.append(n)
            base += n
            if base > _MAX_NODES:
                raise ValueError("corrupt forest: too many nodes")
        self._set(np.cumsum([0, *sizes]).astype(np.int64),
                  *(np.concatenate(parts[k]) for k in ("left", "right", "feature", "threshold", "value")))

    def _set(self, offsets, left, right, feature, threshold, value) -> None:
        self._offsets = offsets
        self._left, self._right, self._feature = left, right, feature
        self._threshold = threshold  # float64, as trained and stored
        self._value = value
        self._thr32 = float32_floor(threshold)

    def _check(self, a: dict):
        left, right = np.asarray(a["left"], np.int64), np.asarray(a["right"], np.int64)
        feature, threshold = np.asarray(a["feature"], np.int64), np.asarray(a["threshold"], np.float64)
        n = len(left)
        if not 0 < n <= _MAX_NODES or any(len(x) != n for x in (right, feature, threshold)):
            raise ValueError("corrupt tree: node arrays of different lengths")
        leaf = left == -1
        inner = ~leaf
        if np.any((right == -1) != leaf):
            raise ValueError("corrupt tree: leaf flags of left and right children differ")
        for child in (left[inner], right[inner]):
            # children come after their parent: every walk ends at a leaf
            if np.any(child <= np.flatnonzero(inner)) or np.any(child >= n):
                raise ValueError("corrupt tree: child index out of range")
        if np.any(feature[inner] < 0) or np.any(feature[inner] >= self.n_features):
            raise ValueError("corrupt tree: split feature out of range")
        if not np.all(np.isfinite(threshold[inner])):
            raise ValueError("corrupt tree: threshold not finite")
        value = np.asarray(a["value"])
        if value.shape != (n, self.n_classes):
            raise ValueError("corrupt tree: leaf value shape mismatch")
        return left, right, feature, threshold, value

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, *, n_classes: int, size: int, settings: Any,
            seed: int, sample_weight: np.ndarray | None = None,
            budget: float | None = None) -> Forest:
        """Fit a random forest of ``size`` trees; with ``budget``, keep only as many trees as fit.

        ``budget`` is the number of tree nodes a voxel may visit on average (the expected
        root-leaf path length, summed over trees, under the training distribution):
        prediction time is proportional to it. A few strokes give shallow trees, so many of
        them fit; whole painted slices give deep trees, so fewer do. Never fewer than
        ``settings.min_trees``. ``settings.max_features`` (default ``"sqrt"``) is the
        number of features tried per split.
        """
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(
            n_estimators=int(size),
            max_depth=settings.max_depth,
            min_samples_leaf=settings.min_samples_leaf,
            max_features=getattr(settings, "max_features", "sqrt"),
            n_jobs=settings.n_jobs,
            random_state=seed,
        )
        rf.fit(X, y, sample_weight=sample_weight)
        if budget:
            paths = np.array([expected_path_length(e.tree_) for e in rf.estimators_])
            keep = max(settings.min_trees, int(np.searchsorted(np.cumsum(paths), budget, side="right")))
            rf.estimators_ = rf.estimators_[:keep]
        out = cls.from_sklearn(rf, [int(c) for c in rf.classes_], n_classes)
        out.importances = np.mean([e.feature_importances_ for e in rf.estimators_], axis=0)
        return out

    @classmethod
    def from_sklearn(cls, rf, classes: Sequence[int], n_classes: int) -> Forest:
        """Take the trees of a fitted ``RandomForestClassifier``.

        ``classes`` maps the forest's class columns to our class indices (a class with no
        labels is absent from the forest and gets probability 0).
        """
        trees = []
        for est in rf.estimators_:
            t = est.tree_
            val = np.asarray(t.value[:, 0, :], np.float64)
            val = val / np.maximum(val.sum(axis=1, keepdims=True), 1e-12)
            full = np.zeros((t.node_count, n_classes), np.float32)
            full[:, list(classes)] = val
            trees.append(
                {
                    "left": np.asarray(t.children_left, np.int64),
                    "right": np.asarray(t.children_right, np.int64),
                    "feature": np.asarray(t.feature, np.int64),
                    "threshold": np.asarray(t.threshold, np.float64),
                    "value": full,
                }
            )
        return cls(trees, rf.n_features_in_, n_classes)

    def predict_proba(self, X: np.ndarray, chunk: int = 131072, threads: int = 1,
                      cascade: Sequence[int] = (), confidence: float = 0.97) -> np.ndarray:
        """Mean class fractions over the trees, optionally with early exit.

        Parameters
        ----------
        X : ndarray (N, n_features)
            Features (float32; any memory layout: the transpose of a channel-major
            (F, N) array is walked as it is, without a copy).
        chunk : int
            Rows per thread task.
        threads : int
            Chunks run on this many threads (the compiled walk releases the GIL).
        cascade : sequence of int
            Early-exit checkpoints (tree counts, increasing). After the first ``k`` trees of a
            checkpoint, a row whose mean class fraction already reaches ``confidence`` keeps
            that mean; only the other rows go on through the next trees. Each row's result
            depends only on that row, so blockwise and whole-volume predictions agree.
            Empty (default): every row through every tree.
        confidence : float
            Max class fraction that ends a row early.

        Returns
        -------
        ndarray float32 (N, n_classes)
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must be (N, {self.n_features}), got {X.shape}")
        return forest_proba(X.T, self._feature, self._thr32, self._left, self._right,
                            self._value, self._offsets[:-1], cascade=cascade,
                            confidence=confidence, threads=threads, chunk=chunk)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flatten into named arrays for ``numpy.savez`` (node arrays concatenated, child
        indices local to their tree)."""
        base = np.repeat(self._offsets[:-1], np.diff(self._offsets)).astype(np.int64)
        leaf = self._left == -1
        return {
            f"{prefix}offsets": self._offsets.astype(np.int64),
            f"{prefix}left": np.where(leaf, -1, self._left - base).astype(np.int32),
            f"{prefix}right": np.where(leaf, -1, self._right - base).astype(np.int32),
            f"{prefix}feature": self._feature.astype(np.int32),
            f"{prefix}threshold": self._threshold,
            f"{prefix}value": self._value,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, n_features: int,
                    n_classes: int) -> Forest:
        """Inverse of :meth:`to_arrays`."""
        try:
            off = np.asarray(arrays[f"{prefix}offsets"], np.int64)
            cols = {k: np.asarray(arrays[f"{prefix}{k}"]) for k in ("left", "right", "feature", "threshold", "value")}
        except KeyError as exc:
            raise ValueError(f"model file lacks array {exc}") from exc
        if off.ndim != 1 or len(off) < 2 or off[0] != 0 or np.any(np.diff(off) <= 0):
            raise ValueError("corrupt model file: bad tree offsets")
        if off[-1] != len(cols["left"]):
            raise ValueError("corrupt model file: node count mismatch")
        trees = [{k: v[a:b] for k, v in cols.items()} for a, b in zip(off[:-1], off[1:], strict=True)]
        return cls(trees, n_features, n_classes)

    def _subset(self, trees: slice) -> Forest:
        out = object.__new__(type(self))
        out.n_features, out.n_classes = self.n_features, self.n_classes
        out.importances = self.importances
        off = self._offsets[trees.start : trees.stop + 1]
        a, b = int(off[0]), int(off[-1])
        shift = lambda v: np.where(v == -1, -1, v - a).astype(np.int32)  # noqa: E731
        out._set(off - a, shift(self._left[a:b]), shift(self._right[a:b]), self._feature[a:b],
                 self._threshold[a:b], self._value[a:b])
        return out

    def truncated(self, n_trees: int) -> Forest:
        """A forest of this one's first ``n_trees`` trees."""
        if not 1 <= int(n_trees) <= self.n_trees:
            raise ValueError(f"n_trees must be 1..{self.n_trees}, got {n_trees}")
        return self._subset(slice(0, int(n_trees)))

    def used_features(self) -> np.ndarray:
        """Sorted indices of the features some split uses."""
        return np.unique(self._feature[self._feature >= 0])

    def remap_features(self, keep: Sequence[int]) -> Forest:
        """This forest on the feature subset ``keep`` (increasing indices into the current
        features): feature ``keep[j]`` becomes feature ``j``. Predictions on the kept
        columns equal this forest's on all columns.

        Raises
        ------
        ValueError
            When a split uses a feature outside ``keep``.
        """
        keep = np.asarray(keep, np.int64)
        if keep.ndim != 1 or np.any(np.diff(keep) <= 0) or (len(keep) and (keep[0] < 0 or keep[-1] >= self.n_features)):
            raise ValueError("keep must be increasing feature indices")
        used = self.used_features()
        missing = np.setdiff1d(used, keep)
        if len(missing):
            raise ValueError(f"the forest splits on features {missing[:5].tolist()} outside keep")
        new = np.full(self.n_features, -2, np.int64)
        new[keep] = np.arange(len(keep))
        out = object.__new__(type(self))
        out.n_features, out.n_classes = len(keep), self.n_classes
        out.importances = None if self.importances is None else self.importances[keep]
        feature = np.where(self._feature >= 0, new[np.maximum(self._feature, 0)], -2).astype(np.int32)
        out._set(self._offsets, self._left, self._right, feature, self._threshold, self._value)
        return out

    @property
    def n_trees(self) -> int:
        return len(self._offsets) - 1

    @property
    def n_nodes(self) -> int:
        return int(self._offsets[-1])

    def describe(self) -> dict:
        return {**super().describe(), "n_trees": self.n_trees}


def expected_path_length(tree) -> float:
    """Nodes a sample visits on average in a fitted scikit-learn tree (training distribution)."""
    left, right = tree.children_left, tree.children_right
    depth = np.zeros(tree.node_count, np.int64)
    for i in range(tree.node_count):
        if left[i] != -1:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    leaf = left == -1
    w = tree.weighted_n_node_samples[leaf]
    return float((depth[leaf] * w).sum() / max(w.sum(), 1e-12)) + 1.0

