"""Random forests stored as plain arrays (``.npz`` + JSON), never pickled.

A model file may come from an untrusted upload, so it is loaded with
``numpy.load(allow_pickle=False)`` and the trees are rebuilt from their arrays
(children, split feature, threshold, leaf class fractions). Prediction runs scikit-learn's
compiled tree traversal on the rebuilt trees; training is scikit-learn's random forest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Classifier

__all__ = ["Forest", "expected_path_length"]

_MAX_NODES = 50_000_000  # refuse absurd files rather than allocating without bound


class Forest(Classifier):
    """A trained random forest: per tree, its node arrays and per-leaf class fractions.

    Parameters
    ----------
    trees : list of dict
        Each with ``left``, ``right``, ``feature`` (int), ``threshold`` (float) per node and
        ``value`` (nodes x n_classes fractions).
    n_features : int
        Number of input features.
    n_classes : int
        Number of output classes (columns of :meth:`predict_proba`).
    """

    kind = "forest"

    def __init__(self, trees: list[dict], n_features: int, n_classes: int) -> None:
        if not trees:
            raise ValueError("a forest needs at least one tree")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        # keep only the compiled trees (structure) and float32 leaf fractions: one copy
        self._trees = [self._build(t) for t in trees]
        self._values = [np.ascontiguousarray(t["value"], np.float32) for t in trees]

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, *, n_classes: int, size: int, settings: Any,
            seed: int, sample_weight: np.ndarray | None = None,
            budget: float | None = None) -> Forest:
        """Fit a random forest of ``size`` trees; with ``budget``, keep only as many trees as fit.

        ``budget`` is the number of tree nodes a voxel may visit on average (the expected
        root-leaf path length, summed over trees, under the training distribution):
        prediction time is proportional to it. A few strokes give shallow trees, so many of
        them fit; whole painted slices give deep trees, so fewer do. Never fewer than
        ``settings.min_trees``.
        """
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(
            n_estimators=int(size),
            max_depth=settings.max_depth,
            min_samples_leaf=settings.min_samples_leaf,
            max_features="sqrt",
            n_jobs=settings.n_jobs,
            random_state=seed,
        )
        rf.fit(X, y, sample_weight=sample_weight)
        if budget:
            paths = np.array([expected_path_length(e.tree_) for e in rf.estimators_])
            keep = max(settings.min_trees, int(np.searchsorted(np.cumsum(paths), budget, side="right")))
            rf.estimators_ = rf.estimators_[:keep]
        return cls.from_sklearn(rf, [int(c) for c in rf.classes_], n_classes)

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

    def _build(self, a: dict) -> Any:
        # scikit-learn is imported on first use: importing ml4paleo.segmentation (the web
        # app does at start) stays fast
        from sklearn.tree._tree import NODE_DTYPE, Tree

        left, right = np.asarray(a["left"]), np.asarray(a["right"])
        feature, threshold = np.asarray(a["feature"]), np.asarray(a["threshold"])
        n = len(left)
        if not 0 < n <= _MAX_NODES or any(len(x) != n for x in (right, feature, threshold)):
            raise ValueError("corrupt tree: node arrays of different lengths")
        leaf = left == -1
        inner = ~leaf
        if np.any((right == -1) != leaf):
            raise ValueError("corrupt tree: leaf flags of left and right children differ")
        for child in (left[inner], right[inner]):
            if np.any(child <= np.flatnonzero(inner)) or np.any(child >= n):
                raise ValueError("corrupt tree: child index out of range")
        if np.any(feature[inner] < 0) or np.any(feature[inner] >= self.n_features):
            raise ValueError("corrupt tree: split feature out of range")
        value = np.asarray(a["value"])
        if value.shape != (n, self.n_classes):
            raise ValueError("corrupt tree: leaf value shape mismatch")
        nodes = np.zeros(n, dtype=NODE_DTYPE)
        nodes["left_child"] = left
        nodes["right_child"] = right
        nodes["feature"] = np.where(leaf, -2, feature)
        nodes["threshold"] = np.where(leaf, -2.0, threshold)
        nodes["n_node_samples"] = 1
        nodes["weighted_n_node_samples"] = 1.0
        depth = _depth(left, right)
        # the compiled tree only routes samples to leaves (apply); class fractions live in
        # self._values, so it carries a 1-class dummy value table
        tree = Tree(self.n_features, np.array([1], dtype=np.intp), 1)
        tree.__setstate__(
            {"max_depth": depth, "node_count": n, "nodes": nodes, "values": np.zeros((n, 1, 1))}
        )
        return tree

    def predict_proba(self, X: np.ndarray, chunk: int = 131072, threads: int = 1,
                      cascade: Sequence[int] = (), confidence: float = 0.97) -> np.ndarray:
        """Mean class fractions over the trees, optionally with early exit.

        Parameters
        ----------
        X : ndarray (N, n_features)
            Features (converted to C-contiguous float32 batch by batch).
        chunk : int
            Rows per batch (bounds temporary memory).
        threads : int
            Batches run on this many threads (the tree traversal releases the GIL).
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
        out = np.zeros((X.shape[0], self.n_classes), np.float32)
        starts = range(0, X.shape[0], chunk)
        n_trees = len(self._trees)
        stops = sorted({int(k) for k in cascade if 0 < int(k) < n_trees}) + [n_trees]
        pairs = list(zip(self._trees, self._values, strict=True))
        conf = np.float32(confidence)

        def run(i: int) -> None:
            xb = np.ascontiguousarray(X[i : i + chunk], dtype=np.float32)
            acc = np.zeros((len(xb), self.n_classes), np.float32)
            buf = np.empty_like(acc)  # leaf values of one tree (no temporary per tree)
            rows = None  # indices (into the batch) of rows still running; None = all
            t0 = 0
            for stop in stops:
                b = buf[: len(acc)]
                for tree, val in pairs[t0:stop]:
                    np.take(val, tree.apply(xb), axis=0, out=b)
                    acc += b
                t0 = stop
                if stop == n_trees:
                    break
                done = (acc.max(axis=1) >= conf * stop)
                if done.any():
                    sel = np.flatnonzero(done)
                    dst = sel if rows is None else rows[sel]
                    out[i + dst] = acc[sel] / np.float32(stop)
                    keep = np.flatnonzero(~done)
                    rows = keep if rows is None else rows[keep]
                    if not len(keep):
                        return
                    xb = np.ascontiguousarray(xb[keep])
                    acc = np.ascontiguousarray(acc[keep])
            dst = slice(None) if rows is None else rows
            if rows is None:
                out[i : i + len(acc)] = acc / np.float32(n_trees)
            else:
                out[i + dst] = acc / np.float32(n_trees)

        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, starts))
        else:
            for i in starts:
                run(i)
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flatten into named arrays for ``numpy.savez`` (node arrays concatenated)."""
        trees = self._trees
        offsets = np.cumsum([0] + [t.node_count for t in trees])
        return {
            f"{prefix}offsets": offsets.astype(np.int64),
            f"{prefix}left": np.concatenate([t.children_left for t in trees]).astype(np.int32),
            f"{prefix}right": np.concatenate([t.children_right for t in trees]).astype(np.int32),
            f"{prefix}feature": np.concatenate([t.feature for t in trees]).astype(np.int32),
            f"{prefix}threshold": np.concatenate([t.threshold for t in trees]),
            f"{prefix}value": np.concatenate(self._values).astype(np.float32),
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
        trees = []
        for a, b in zip(off[:-1], off[1:], strict=True):
            t = {k: v[a:b] for k, v in cols.items()}
            t["left"] = t["left"].astype(np.int64)
            t["right"] = t["right"].astype(np.int64)
            t["feature"] = t["feature"].astype(np.int64)
            t["threshold"] = t["threshold"].astype(np.float64)
            trees.append(t)
        return cls(trees, n_features, n_classes)

    def truncated(self, n_trees: int) -> Forest:
        """A forest of this one's first ``n_trees`` trees (shares their arrays)."""
        if not 1 <= int(n_trees) <= self.n_trees:
            raise ValueError(f"n_trees must be 1..{self.n_trees}, got {n_trees}")
        out = object.__new__(type(self))
        out.n_features, out.n_classes = self.n_features, self.n_classes
        out._trees, out._values = self._trees[:n_trees], self._values[:n_trees]
        return out

    @property
    def n_trees(self) -> int:
        return len(self._trees)

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


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Depth of a tree, level by level (vectorised; children come after their parent)."""
    depth = 0
    level = np.zeros(1, np.int64)
    while True:
        level = level[left[level] != -1]
        if not len(level):
            return depth
        level = np.unique(np.concatenate([left[level], right[level]]))  # a DAG stays bounded
        depth += 1
