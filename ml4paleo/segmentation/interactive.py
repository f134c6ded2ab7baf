"""The annotate-retrain-preview loop of the browser, kept in memory, tile by tile.

What the user sees is predicted at the resolution it is shown: the plane is cut into tiles
(:class:`~ml4paleo.segmentation.tiles.TileGrid`) on the pyramid level that matches the
zoom, each tile's features are computed with their halo, filtered along the plane normal
first (:func:`ml4paleo.features.plane_features`), and a small forest trained *for that
level* classifies them. A whole plane at its coarse level (at most ``coarse_pixels`` on a
side) is the first overlay; finer tiles refine it in place.

Why one forest per level rather than one full-resolution forest on rescaled sigmas: the
feature scales are in voxels of the level (so, physically, larger on coarser levels) and
every level's forest is trained on that level's features at the labels carried down to it
(:func:`~ml4paleo.segmentation.tiles.downsample_labels`), so training and prediction see
the same filters. ``benchmarks/preview_accuracy.py`` compares both against the full
resolution prediction and the truth.

Memory: feature tiles, training rows (features of labelled pixels only, at most
``rows_per_class`` per class and plane) and predicted tiles live in one
:class:`~ml4paleo.segmentation.cache.ByteCache` bounded in bytes, shared by every session
of a server; a session itself holds only its forests.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4paleo import _fs
from ml4paleo.blocks import default_workers
from ml4paleo.classes import class_list
from ml4paleo.features import FeatureSettings, n_features, plane_features
from ml4paleo.io import open_any

from .cache import ByteCache
from .labels import LabelStore
from .model import Model
from .tiles import TileGrid, compute_range, downsample_labels, label_border, level_index
from .training import PREVIEW, TrainSettings, balanced_sample, fit_stage

__all__ = ["CELL", "PREVIEW_CASCADE", "InteractiveSession"]

#: training rows are gathered from cells of this many pixels (per axis), each computed
#: once with its halo (a stroke touches few of them)
CELL = 64
#: early-exit checkpoints of the preview forest on tiles (see ``Forest.predict_proba``)
PREVIEW_CASCADE = (8, 16)
#: default budget of a session's own cache (when none is shared)
DEFAULT_CACHE_BYTES = 512 * 1024**2


def model_nbytes(model: Model) -> int:
    """Memory a model's classifiers hold, bytes (the arrays their files store)."""
    return int(sum(a.nbytes for f in model.forests for a in f.to_arrays("").values()))


_warm = threading.Lock()
_warmed: set[str] = set()


def warm_up_training(settings: Any) -> None:
    """Fit one tiny stage of ``settings.classifier`` once per process, so the first real fit
    does not pay for loading the training library (scikit-learn: 1-3 s); called off the
    request path, when a plane is opened."""
    with _warm:
        if settings.classifier in _warmed:
            return
        _warmed.add(settings.classifier)
    X = np.arange(16, dtype=np.float32).reshape(8, 2)
    fit_stage(X, np.repeat(np.arange(2), 4), 1, settings, 2, 0)


class InteractiveSession:
    """The annotate-retrain-preview loop of the browser, kept in memory.

    Parameters
    ----------
    image : volume-like
        The scan (see :func:`ml4paleo.io.open_any`); an OME-Zarr image brings its pyramid
        levels (else only full resolution is used).
    label_store : LabelStore
    feature_settings : FeatureSettings, optional
    settings : TrainSettings, optional
        Forest used for previews (default: a 24-tree one-stage forest).
    cache : ByteCache, optional
        Where features, training rows and predicted tiles are kept (share one between
        sessions to bound a server's memory); default a private one of ``cache_bytes``.
    cache_bytes : int
        Budget of the private cache.
    tile : int
        Tile edge (pixels of the level), a multiple of :data:`CELL`.
    coarse_pixels : int
        The first overlay is the whole plane on the finest level at most this large.
    rows_per_class : int
        Training rows kept per class and plane (a balanced sample preferring pixels next
        to another label when more are labelled).
    cascade : sequence of int
        Early exit of the forest on preview tiles (``()`` = every tree).
    """

    def __init__(self, image: Any, label_store: LabelStore, *,
                 feature_settings: FeatureSettings | None = None,
                 settings: TrainSettings | None = None, cache: ByteCache | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, tile: int = 256,
                 coarse_pixels: int = 512, rows_per_class: int = 24000,
                 cascade: Sequence[int] = PREVIEW_CASCADE) -> None:
        self.array = open_any(image)
        self.voxel_size = self.array.voxel_size
        self.store = label_store
        if tuple(self.array.shape) != tuple(label_store.shape):
            raise ValueError(f"label store shape {label_store.shape} differs from image {tuple(self.array.shape)}")
        if tile < CELL or tile % CELL:
            raise ValueError(f"tile must be a multiple of {CELL}, got {tile}")
        self.feature_settings = feature_settings or FeatureSettings()
        self.settings = settings or PREVIEW
        self.cache = cache if cache is not None else ByteCache(cache_bytes)
        self.tile = int(tile)
        self.coarse_pixels = int(coarse_pixels)
        self.rows_per_class = int(rows_per_class)
        self.cascade = tuple(cascade)
        self.levels = self._open_levels()
        #: owner of this session's cache entries
        self.owner = f"session-{uuid.uuid4().hex[:12]}"
        self._models: dict[int, tuple[tuple, Model, int]] = {}
        self._model_bytes: dict[int, int] = {}  # bytes of each level's model (at its fit)
        self._level_locks: dict[int, threading.Lock] = {}
        self._lock = threading.RLock()
        self._model_ids = itertools.count(1)
        self.last_timing: dict[str, float] = {}

    # ---------------------------------------------------------------- levels and tiles
    def _open_levels(self) -> list[Any]:
        image = getattr(self.array, "image", None)
        if image is None or getattr(self.array, "level", 0) != 0:
            return [self.array]
        out = [self.array]
        for level in range(1, len(image.levels)):
            out.append(open_any(image, level=level))
        return out

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def level_voxel_size(self, level: int) -> tuple[float, float, float] | None:
        """Voxel size of ``level``: full resolution's times ``2 ** level`` (the 2x pyramid)."""
        if self.voxel_size is None:
            return None if level == 0 else (float(2**level),) * 3
        return tuple(float(v) * 2**level for v in self.voxel_size)

    def plane_shape(self, axis: int, level: int = 0) -> tuple[int, int]:
        """(rows, columns) of a plane across ``axis`` on ``level``."""
        s = [int(n) for n in self.levels[level].shape]
        del s[axis]
        return s[0], s[1]

    def level_plane(self, axis: int, index: int, level: int) -> int:
        """The plane of ``level`` holding full-resolution plane ``index``."""
        return level_index(index, level, self.levels[level].shape[axis])

    def grid(self, axis: int, level: int = 0) -> TileGrid:
        """The preview tiles of a plane across ``axis`` on ``level``."""
        return TileGrid(self.plane_shape(axis, level), self.tile)

    def coarse_level(self, axis: int) -> int:
        """Finest level whose planes across ``axis`` fit in ``coarse_pixels`` (the first
        overlay); the coarsest level when none does."""
        for level in range(self.n_levels):
            if max(self.plane_shape(axis, level)) <= self.coarse_pixels:
                return level
        return self.n_levels - 1

    def _check(self, axis: int, index: int, level: int) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= int(index) < self.array.shape[axis]:
            raise IndexError(f"slice {index} outside 0..{self.array.shape[axis] - 1} along axis {axis}")
        if not 0 <= int(level) < self.n_levels:
            raise ValueError(f"level {level} outside 0..{self.n_levels - 1}")

    # ---------------------------------------------------------------- features
    def _region_features(self, axis: int, li: int, level: int, rows: slice, cols: slice
                         ) -> np.ndarray:
        """Features of a region of level plane ``li`` (computed over at least
        ``MIN_EXTENT`` pixels per axis, so they equal the whole plane's exactly)."""
        h, w = self.plane_shape(axis, level)
        r0, r1 = compute_range(rows.start, rows.stop, h)
        c0, c1 = compute_range(cols.start, cols.stop, w)
        f = plane_features(self.levels[level], axis, li, slice(r0, r1), slice(c0, c1),
                           self.feature_settings, self.level_voxel_size(level))
        if (r0, r1, c0, c1) != (rows.start, rows.stop, cols.start, cols.stop):
            f = np.ascontiguousarray(f[:, rows.start - r0 : rows.stop - r0,
                                       cols.start - c0 : cols.stop - c0])
        return f

    def tile_features(self, axis: int, index: int, level: int, ty: int, tx: int) -> np.ndarray:
        """Features (F, h, w) of one preview tile (cached)."""
        self._check(axis, index, level)
        li = self.level_plane(axis, index, level)
        rows, cols = self.grid(axis, level).slices(ty, tx)
        key = (self.owner, "tile", axis, li, level, ty, tx)
        return self.cache.get_or_compute(
            key, lambda: self._region_features(axis, li, level, rows, cols))

    def _cell_features(self, axis: int, li: int, level: int, cy: int, cx: int) -> np.ndarray:
        """Features of one training cell: sliced from its preview tile when that is cached,
        else computed (and not kept: only the labelled pixels' rows are)."""
        per = self.tile // CELL
        ty, tx = cy // per, cx // per
        tile = self.cache.get((self.owner, "tile", axis, li, level, ty, tx))
        rows, cols = TileGrid(self.plane_shape(axis, level), CELL).slices(cy, cx)
        if tile is not None:
            r0, c0 = ty * self.tile, tx * self.tile
            return tile[:, rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]
        return self._region_features(axis, li, level, rows, cols)

    def features_at(self, axis: int, index: int, level: int, rr: np.ndarray, cc: np.ndarray
                    ) -> np.ndarray:
        """Feature rows (N, F) of pixels ``(rr, cc)`` of a plane on ``level``, in that order.

        Computed cell by cell (:data:`CELL` pixels): only the cells holding the pixels (from
        the cached preview tile when there is one); nothing else is kept.
        """
        self._check(axis, index, level)
        li = self.level_plane(axis, index, level)
        F = n_features(self.feature_settings)
        out = np.empty((len(rr), F), np.float32)
        if len(rr) == 0:
            return out
        n_cx = -(-self.plane_shape(axis, level)[1] // CELL)
        cell = (rr // CELL).astype(np.int64) * n_cx + cc // CELL
        order = np.argsort(cell, kind="stable")
        cuts = np.flatnonzero(np.diff(cell[order])) + 1
        for part in np.split(order, cuts):
            cy, cx = divmod(int(cell[part[0]]), n_cx)
            f = self._cell_features(axis, li, level, cy, cx)
            out[part] = f[:, rr[part] - cy * CELL, cc[part] - cx * CELL].T
        return out

    def slice_features(self, axis: int, index: int, level: int = 0) -> np.ndarray:
        """Features (F, H, W) of a whole plane on ``level``, assembled from its tiles."""
        self._check(axis, index, level)
        grid = self.grid(axis, level)
        out = np.empty((n_features(self.feature_settings), *grid.shape), np.float32)
        for ty, tx in grid:
            out[(slice(None), *grid.slices(ty, tx))] = self.tile_features(axis, index, level, ty, tx)
        return out

    def prefetch(self, axis: int, index: int, level: int | None = None) -> None:
        """Compute the feature tiles of a plane on ``level`` (default: its coarse level)."""
        level = self.coarse_level(axis) if level is None else level
        for ty, tx in self.grid(axis, level):
            self.tile_features(axis, index, level, ty, tx)
        warm_up_training(self.settings)


    # ---------------------------------------------------------------- training rows
    def _plane_rows(self, axis: int, index: int, level: int, stamp: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, border) of a plane's labelled pixels on ``level`` (cached per plane; after
        an edit, pixels labelled before keep their feature rows and only the cells holding
        new ones are computed)."""
        key = (self.owner, "rows", axis, int(index), level)
        with self._level_lock(("rows", axis, int(index), level)):
            hit = self.cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[3], hit[4], hit[5]
            entry = (stamp, *self._compute_rows(axis, index, level, hit))
            self.cache.put(key, entry)
        return entry[3], entry[4], entry[5]

    def _compute_rows(self, axis: int, index: int, level: int, previous: tuple | None):
        """(rr, cc, X (N, F), y (N,) class index, border (N,)) of the labelled pixels of a
        plane on ``level`` (at most :attr:`rows_per_class` per class)."""
        shape = self.plane_shape(axis, level)
        lab = downsample_labels(self.store.read_slice(axis, index), level, shape)
        rr, cc = np.nonzero(lab)
        y = lab[rr, cc].astype(np.int64) - 1
        border = label_border(lab, rr, cc)
        if len(y) and np.bincount(y).max() > self.rows_per_class:
            ts = self.settings
            pick = balanced_sample(y, border, self.rows_per_class, ts.border_weight, ts.seed)
            rr, cc, y, border = rr[pick], cc[pick], y[pick], border[pick]
        rr, cc = rr.astype(np.int32), cc.astype(np.int32)
        X = np.empty((len(rr), n_features(self.feature_settings)), np.float32)
        todo = np.ones(len(rr), bool)
        if previous is not None and len(previous[1]):
            # features do not depend on labels: reuse the rows of pixels labelled before
            old = previous[1].astype(np.int64) * shape[1] + previous[2]
            new = rr.astype(np.int64) * shape[1] + cc
            order = np.argsort(old)
            pos = np.clip(np.searchsorted(old, new, sorter=order), 0, len(old) - 1)
            found = old[order[pos]] == new
            X[found] = previous[3][order[pos[found]]]
            todo = ~found
        if todo.any():
            X[todo] = self.features_at(axis, index, level, rr[todo], cc[todo])
        return rr, cc, X, y, border

    # ---------------------------------------------------------------- models
    def _signature(self, classes: list[dict]) -> tuple:
        slices = tuple((s["axis"], s["index"], s.get("updated_at")) for s in self.store.annotated_slices())
        return (slices, tuple(c.get("name") for c in classes))

    def _level_lock(self, level: Any) -> threading.Lock:
        with self._lock:
            return self._level_locks.setdefault(level, threading.Lock())

    def retrain(self, classes: list[dict] | None = None, level: int = 0) -> Model:
        """The preview forest of ``level`` for the current labels (refitted when they changed).

        Training rows are the features of labelled pixels only (cached per plane).
        ``classes``: the store's class list when the caller already holds it.

        Raises
        ------
        ValueError
            Without labels of at least two classes.
        """
        return self._retrain(classes, level)[1]

    def _retrain(self, classes: list[dict] | None, level: int) -> tuple[tuple, Model, int]:
        """(signature, model, model id) of ``level`` for the current labels."""
        classes = classes if classes is not None else self.store.classes
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level {level} outside 0..{self.n_levels - 1}")
        sig = self._signature(classes)
        with self._level_lock(level):
            with self._lock:
                hit = self._models.get(level)
            if hit is not None and hit[0] == sig:
                return hit
            entry = (sig, self._fit(classes, level, sig[0]), next(self._model_ids))
            size = model_nbytes(entry[1])
            with self._lock:
                self._models[level] = entry
                self._model_bytes[level] = size
        return entry

    def _fit(self, classes: list[dict], level: int, slices: tuple) -> Model:
        t0 = time.perf_counter()
        parts = [self._plane_rows(axis, index, level, stamp) for axis, index, stamp in slices]
        parts = [p for p in parts if len(p[1])]
        if not parts:
            raise ValueError("no annotations yet: label at least two classes")
        X = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        border = np.concatenate([p[2] for p in parts])
        if len(np.unique(y)) < 2:
            raise ValueError("annotations hold only one class: label at least two classes")
        t1 = time.perf_counter()
        ts = self.settings
        pick = balanced_sample(y, border, ts.max_per_class, ts.border_weight, ts.seed)
        n_classes = max(len(classes), int(y.max()) + 1)
        stage = fit_stage(X[pick], y[pick], ts.n_trees[0], ts, n_classes, ts.seed)
        cls_list = class_list(classes, n_classes)
        t2 = time.perf_counter()
        self.last_timing.update(rows_s=t1 - t0, fit_s=t2 - t1)
        counts = np.bincount(y, minlength=n_classes)
        meta = {"created_at": _fs.now_iso(), "preview": True, "level": int(level),
                "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, counts, strict=True)},
                "seconds": {"rows": round(t1 - t0, 3), "fit": round(t2 - t1, 3),
                            "total": round(t2 - t0, 3)}}
        return Model([stage], self.feature_settings, None, cls_list, self.level_voxel_size(level), meta)

    @property
    def model(self) -> Model | None:
        """The last full-resolution preview model (None before :meth:`retrain`)."""
        with self._lock:
            hit = self._models.get(0)
        return hit[1] if hit is not None else None

    def model_id(self, level: int) -> int | None:
        """A number that changes whenever ``level``'s model is refitted (None when unfitted)."""
        with self._lock:
            hit = self._models.get(level)
        return hit[2] if hit is not None else None

    @property
    def nbytes(self) -> int:
        """Memory the session holds outside the cache (its forests), bytes."""
        with self._lock:
            return sum(self._model_bytes.get(level, 0) for level in self._models)

    def close(self) -> None:
        """Forget the models and drop this session's entries from the cache."""
        with self._lock:
            self._models.clear()
        self.cache.drop_owner(self.owner)

    # ---------------------------------------------------------------- prediction
    def _forest(self, level: int, classes: list[dict] | None, refit: bool = True
                ) -> tuple[Any, int]:
        with self._lock:
            hit = self._models.get(level)
        if refit or hit is None:
            hit = self._retrain(classes, level)
        return hit[1].forests[0], hit[2]

    def tile_prediction(self, axis: int, index: int, level: int, ty: int, tx: int,
                        classes: list[dict] | None = None, *, refit: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(class index uint8, uncertainty uint8 0..255) of one preview tile (cached per
        model); retrains ``level``'s forest first when the labels changed (unless
        ``refit=False`` and the level has a model).

        Uncertainty is ``1 - (p1 - p2)`` (the two most likely classes) scaled to 0..255.
        """
        self._check(axis, index, level)
        forest, mid = self._forest(level, classes, refit)
        li = self.level_plane(axis, index, level)
        key = (self.owner, "pred", axis, li, level, ty, tx, mid)

        def compute() -> tuple[np.ndarray, np.ndarray]:
            f = self.tile_features(axis, index, level, ty, tx)
            F, h, w = f.shape
            p = forest.predict_proba(f.reshape(F, -1).T, chunk=16384, cascade=self.cascade)
            cls = np.argmax(p, axis=1).astype(np.uint8).reshape(h, w)
            if p.shape[1] < 2:
                unc = np.zeros((h, w), np.uint8)
            else:
                top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
                u = np.clip(1.0 - (top[:, 1] - top[:, 0]), 0.0, 1.0)
                unc = np.rint(u * 255).astype(np.uint8).reshape(h, w)
            return cls, unc

        return self.cache.get_or_compute(key, compute)

    def predict_region(self, axis: int, index: int, level: int = 0, rows: slice | None = None,
                       cols: slice | None = None, classes: list[dict] | None = None, *,
                       refit: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(class index uint8, uncertainty uint8) of a region of a plane on ``level``
        (default the whole plane), assembled from :meth:`tile_prediction`."""
        self._check(axis, index, level)
        grid = self.grid(axis, level)
        r0, r1, _ = (rows or slice(None)).indices(grid.shape[0])
        c0, c1, _ = (cols or slice(None)).indices(grid.shape[1])
        cls = np.zeros((r1 - r0, c1 - c0), np.uint8)
        unc = np.zeros((r1 - r0, c1 - c0), np.uint8)
        for ty, tx in grid.covering(slice(r0, r1), slice(c0, c1)):
            tr, tc = grid.slices(ty, tx)
            a, u = self.tile_prediction(axis, index, level, ty, tx, classes, refit=refit)
            ir = slice(max(tr.start, r0), min(tr.stop, r1))
            ic = slice(max(tc.start, c0), min(tc.stop, c1))
            src = (slice(ir.start - tr.start, ir.stop - tr.start),
                   slice(ic.start - tc.start, ic.stop - tc.start))
            dst = (slice(ir.start - r0, ir.stop - r0), slice(ic.start - c0, ic.stop - c0))
            cls[dst] = a[src]
            unc[dst] = u[src]
        return cls, unc

    def _probabilities(self, axis: int, index: int) -> np.ndarray:
        """Full-resolution class probabilities (C, H, W) of a plane, every tree (exact)."""
        model = self.model
        if model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        self._check(axis, index, 0)
        grid = self.grid(axis, 0)
        out = np.empty((model.n_classes, *grid.shape), np.float32)
        threads = default_workers()
        for ty, tx in grid:
            f = self.tile_features(axis, index, 0, ty, tx)
            F, h, w = f.shape
            p = model.forests[0].predict_proba(f.reshape(F, -1).T, chunk=16384, threads=threads)
            out[(slice(None), *grid.slices(ty, tx))] = p.T.reshape(-1, h, w)
        return out

    def predict_slice(self, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels2d uint8 class index, probabilities (C, H, W) float32) of one slice at full
        resolution with the last :meth:`retrain`'s model (every tree)."""
        p = self._probabilities(axis, index)
        return np.argmax(p, axis=0).astype(np.uint8), p

    def uncertainty_slice(self, axis: int, index: int) -> np.ndarray:
        """1 - (top probability - second probability), float32 (H, W): 1 = undecided."""
        p = np.sort(self._probabilities(axis, index), axis=0)
        return (1.0 - (p[-1] - p[-2])).astype(np.float32)

    def suggest_slice(self, axis: int, candidates: int = 6, patch: int = 96) -> int:
        """Index of the slice along ``axis`` where the model is least certain.

        Evaluates a centre patch of up to ``candidates`` evenly spaced interior slices that
        are more than 2 slices from any annotated one; returns the most uncertain
        (mean of :meth:`uncertainty_slice` over the patch).
        """
        model = self.model
        if model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        n = self.array.shape[axis]
        done = [s["index"] for s in self.store.annotated_slices() if s["axis"] == axis]
        pool = [i for i in range(n) if all(abs(i - d) > 2 for d in done)] or list(range(n))
        k = min(candidates, len(pool))
        pick = [pool[int((j + 1) * len(pool) / (k + 1))] for j in range(k)]
        best, best_u = pick[0], -1.0
        h, w = self.plane_shape(axis, 0)
        ph, pw = min(patch, h), min(patch, w)
        rows = slice((h - ph) // 2, (h - ph) // 2 + ph)
        cols = slice((w - pw) // 2, (w - pw) // 2 + pw)
        for idx in dict.fromkeys(pick):
            f = self._region_features(axis, idx, 0, rows, cols)
            p = np.sort(model.forests[0].predict_proba(f.reshape(f.shape[0], -1).T), axis=1)
            u = float(np.mean(1.0 - (p[:, -1] - p[:, -2])))
            if u > best_u:
                best, best_u = idx, u
        return int(best)
