"""Compiled forest traversal: every tree of a forest over a tile of rows in one pass.

The trees are flat arrays (all trees concatenated): per node its split feature (-1 at a
leaf), a float32 threshold, the absolute indices of its children and (n_nodes, C) leaf
class fractions. Rows are walked tile by tile (:data:`TILE` rows through every tree, tree
by tree), so a tree's nodes and a tile's feature values stay in cache; features are read
straight from a (F, N) channel-major array, the layout the filter bank produces (no
transposed copy).

The result is bit-identical to routing each row through scikit-learn's ``Tree.apply`` and
summing the leaf fractions tree by tree in float32: a float64 threshold ``t`` is stored as
the largest float32 not above it (:func:`float32_floor`), which sends every float32 value
the same way, and the sums run in the same order.

numba compiles the kernel on first use (cached on disk next to this module when it can be
written); importing this module does not import numba.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["TILE", "float32_floor", "forest_proba"]

#: rows walked through every tree together: the deep nodes a tile reaches are loaded once
#: for all its rows (painted-plane forests, 64 trees of ~10^4 nodes: 1.97 s per 0.5 M rows
#: with 256, 1.58 s with 4096; the tile's features, F x 4096 float32, stay in L2)
TILE = 4096


def float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 ``t``: ``x <= t`` iff ``x <= float32_floor(t)``
    for every float32 ``x``."""
    t = np.asarray(t, np.float64)
    f = t.astype(np.float32)
    up = f.astype(np.float64) > t
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


@lru_cache(maxsize=1)
def _kernel():
    import numba

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def walk(X, feature, threshold, left, right, value, roots, stops, limits, out, r0, r1):
        # X (F, N) float32; out (N, C) float32; rows r0..r1; stops: tree counts at which a
        # row whose largest class sum reaches limits[k] ends (the last stop = every tree)
        C = value.shape[1]
        n_stops = stops.shape[0]
        n_trees = roots.shape[0]
        acc = np.zeros((TILE, C), np.float32)
        active = np.empty(TILE, np.int64)
        for t0 in range(r0, r1, TILE):
            t1 = min(t0 + TILE, r1)
            n = t1 - t0
            acc[:n] = 0
            for j in range(n):
                active[j] = j
            n_act = n
            tree = 0
            for k in range(n_stops):
                stop = stops[k]
                while tree < stop:
                    root = roots[tree]
                    for a in range(n_act):
                        j = active[a]
                        i = t0 + j
                        node = root
                        f = feature[node]
                        while f >= 0:
                            if X[f, i] <= threshold[node]:
                                node = left[node]
                            else:
                                node = right[node]
                            f = feature[node]
                        for c in range(C):
                            acc[j, c] += value[node, c]
                    tree += 1
                if stop == n_trees:
                    div = np.float32(stop)
                    for a in range(n_act):
                        j = active[a]
                        for c in range(C):
                            out[t0 + j, c] = acc[j, c] / div
                    break
                lim = limits[k]
                div = np.float32(stop)
                keep = 0
                for a in range(n_act):
                    j = active[a]
                    m = acc[j, 0]
                    for c in range(1, C):
                        if acc[j, c] > m:
                            m = acc[j, c]
                    if m >= lim:
                        for c in range(C):
                            out[t0 + j, c] = acc[j, c] / div
                    else:
                        active[keep] = j
                        keep += 1
                n_act = keep
                if n_act == 0:
                    break

    return walk


def forest_proba(X_cols: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 left: np.ndarray, right: np.ndarray, value: np.ndarray, roots: np.ndarray,
                 cascade: Sequence[int] = (), confidence: float = 0.97, threads: int = 1,
                 chunk: int = 131072) -> np.ndarray:
    """Mean leaf fractions (N, C) float32 of the rows (columns of ``X_cols`` (F, N)).

    ``cascade`` / ``confidence``: early exit after the first ``k`` trees of each checkpoint
    for a row whose mean class fraction reaches ``confidence`` (see
    :meth:`~ml4paleo.segmentation.classifiers.Forest.predict_proba`). ``threads`` > 1 walks
    chunks of ``chunk`` rows on that many threads (the kernel releases the GIL).
    """
    walk = _kernel()
    if X_cols.dtype != np.float32:
        X_cols = X_cols.astype(np.float32)
    n = X_cols.shape[1]
    n_trees = len(roots)
    stops = sorted({int(k) for k in cascade if 0 < int(k) < n_trees}) + [n_trees]
    conf = np.float32(confidence)
    # the same float32 products as a numpy `acc.max(axis=1) >= conf * stop`
    limits = np.array([conf * s for s in stops], np.float32)
    stops_a = np.array(stops, np.int64)
    out = np.empty((n, value.shape[1]), np.float32)
    args = (feature, threshold, left, right, value, roots, stops_a, limits, out)
    starts = list(range(0, n, chunk))
    if threads > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: walk(X_cols, *args, s, min(s + chunk, n)), starts))
    elif n:
        walk(X_cols, *args, 0, n)
    return out
