"""The annotate-retrain-preview loop of the browser, kept in memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ml4paleo import _fs
from ml4paleo.blocks import default_workers
from ml4paleo.classes import class_list
from ml4paleo.features import FeatureSettings
from ml4paleo.io import open_any

from .boxes import features_for_box
from .labels import LabelStore
from .model import Model
from .training import PREVIEW, TrainSettings, balanced_sample, fit_stage

__all__ = ["InteractiveSession"]


class InteractiveSession:
    """The annotate-retrain-preview loop of the browser, kept in memory.

    Features of previewed / annotated slices are cached, so after new strokes on a slice
    that was just shown, retraining only fits a small forest on cached feature rows and
    the preview only runs that forest over cached slice features.

    Parameters
    ----------
    image : volume-like
        The scan (see :func:`ml4paleo.io.open_any`).
    label_store : LabelStore
    feature_settings : FeatureSettings, optional
    settings : TrainSettings, optional
        Forest used for previews (default: a 24-tree one-stage forest).
    cache_slices : int
        How many slices' features to keep (each is F x H x W float32).
    """

    def __init__(self, image: Any, label_store: LabelStore, *,
                 feature_settings: FeatureSettings | None = None,
                 settings: TrainSettings | None = None, cache_slices: int = 6) -> None:
        self.array = open_any(image)
        self.voxel_size = self.array.voxel_size
        self.store = label_store
        if tuple(self.array.shape) != tuple(label_store.shape):
            raise ValueError(f"label store shape {label_store.shape} differs from image {tuple(self.array.shape)}")
        self.feature_settings = feature_settings or FeatureSettings()
        self.settings = settings or PREVIEW
        self.model: Model | None = None
        self._slice_cache: OrderedDict = OrderedDict()
        self._cache_slices = cache_slices
        self._rows: dict[tuple[int, int], tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.RLock()

    def slice_features(self, axis: int, index: int) -> np.ndarray:
        """Features (F, H, W) of one slice (cached)."""
        key = (int(axis), int(index))
        with self._lock:
            f = self._slice_cache.get(key)
            if f is not None:
                self._slice_cache.move_to_end(key)
                return f
        box = [slice(0, n) for n in self.array.shape]
        box[axis] = slice(index, index + 1)
        X, _ = features_for_box(self.array, tuple(box), self.feature_settings, self.voxel_size)
        plane = tuple(n for i, n in enumerate(self.array.shape) if i != axis)
        f = X.reshape(X.shape[0], *plane)
        with self._lock:
            self._slice_cache[key] = f
            while len(self._slice_cache) > self._cache_slices:
                self._slice_cache.popitem(last=False)
        return f

    def retrain(self, classes: list[dict] | None = None) -> Model:
        """Fit the preview forest on every annotated slice (feature rows cached per slice).

        ``classes``: the store's class list when the caller already holds it.
        """
        with self._lock:
            return self._retrain(classes)

    def _retrain(self, classes: list[dict] | None) -> Model:
        t0 = time.perf_counter()
        classes = classes if classes is not None else self.store.classes
        seen = set()
        for s in self.store.annotated_slices():
            key = (s["axis"], s["index"])
            seen.add(key)
            stamp = s["updated_at"]
            if key in self._rows and self._rows[key][0] == stamp:
                continue
            lab = self.store.read_slice(*key)
            nz = np.nonzero(lab)
            feats = self.slice_features(*key)
            X = feats[(slice(None), *nz)].T.copy()
            y = lab[nz].astype(np.int64) - 1
            mx = ndi.maximum_filter(lab, size=3)
            mn = ndi.minimum_filter(np.where(lab == 0, 255, lab).astype(np.uint8), size=3)
            border = (mx[nz] != lab[nz]) | (mn[nz] != lab[nz])
            self._rows[key] = (stamp, X, y, border)
        for key in list(self._rows):
            if key not in seen:
                del self._rows[key]
        if not self._rows:
            raise ValueError("no annotations yet: label at least two classes")
        X = np.concatenate([r[1] for r in self._rows.values()])
        y = np.concatenate([r[2] for r in self._rows.values()])
        border = np.concatenate([r[3] for r in self._rows.values()])
        if len(np.unique(y)) < 2:
            raise ValueError("annotations hold only one class: label at least two classes")
        ts = self.settings
        pick = balanced_sample(y, border, ts.max_per_class, ts.border_weight, ts.seed)
        n_classes = max(len(classes), int(y.max()) + 1)
        stage = fit_stage(X[pick], y[pick], ts.n_trees[0], ts, n_classes, ts.seed)
        cls_list = class_list(classes, n_classes)
        meta = {"created_at": _fs.now_iso(), "preview": True,
                "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, np.bincount(y, minlength=n_classes), strict=True)},
                "seconds": {"total": round(time.perf_counter() - t0, 3)}}
        with self._lock:
            self.model = Model([stage], self.feature_settings, None, cls_list, self.voxel_size, meta)
        return self.model

    def _probabilities(self, axis: int, index: int) -> np.ndarray:
        if self.model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        f = self.slice_features(axis, index)
        F, H, W = f.shape
        p = self.model.forests[0].predict_proba(f.reshape(F, -1).T, chunk=16384,
                                                threads=default_workers())
        return p.T.reshape(-1, H, W)

    def predict_slice(self, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels2d uint8 class index, probabilities (C, H, W) float32) of one slice."""
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
        if self.model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        n = self.array.shape[axis]
        done = [s["index"] for s in self.store.annotated_slices() if s["axis"] == axis]
        pool = [i for i in range(n) if all(abs(i - d) > 2 for d in done)] or list(range(n))
        k = min(candidates, len(pool))
        pick = [pool[int((j + 1) * len(pool) / (k + 1))] for j in range(k)]
        best, best_u = pick[0], -1.0
        plane = [n_ for i, n_ in enumerate(self.array.shape) if i != axis]
        for idx in dict.fromkeys(pick):
            box = []
            k = 0
            for a in range(3):
                if a == axis:
                    box.append(slice(idx, idx + 1))
                else:
                    size = min(patch, plane[k])
                    start = (plane[k] - size) // 2
                    box.append(slice(start, start + size))
                    k += 1
            X, _ = features_for_box(self.array, tuple(box), self.feature_settings, self.voxel_size)
            p = np.sort(self.model.forests[0].predict_proba(X.T), axis=1)
            u = float(np.mean(1.0 - (p[:, -1] - p[:, -2])))
            if u > best_u:
                best, best_u = idx, u
        return int(best)
