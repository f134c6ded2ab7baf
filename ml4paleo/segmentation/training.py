"""Training a voxel classifier from a label volume: sampling, held-out metrics, two stages.

The classifier (a random forest by default) is trained on the filter-bank features
(:mod:`ml4paleo.features`) of a class-balanced sample (capped per class, voxels next to
another class's label preferred), in two *auto-context* stages (:mod:`.context`): stage 2
sees the same features plus the stage-1 class probabilities smoothed at a few scales.
``TrainSettings(two_stage=False)`` trains one stage; ``node_budget`` caps the forest size by
prediction cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ml4paleo import _fs
from ml4paleo.classes import MAX_CLASSES, class_list
from ml4paleo.features import FeatureSettings, n_features
from ml4paleo.io import open_any

from .boxes import features_for_box
from .classifiers import Classifier, classifier_class
from .context import ContextSettings, context_features, context_plan
from .labels import LabelStore
from .memory import release_free_memory
from .model import Model

__all__ = ["PREVIEW", "ProgressCallback", "TrainSettings", "balance_weights", "balanced_sample",
           "dice_scores", "fit_stage", "held_out_metrics", "labelled_voxels", "train"]

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainSettings:
    """Forest sizes and sampling.

    Attributes
    ----------
    n_trees : tuple of int
        Trees of stage 1 and stage 2 (at most; see ``node_budget``).
    node_budget : float or None
        Prediction cost cap: tree nodes a voxel visits on average in the full-resolution
        stage (stage 2, or stage 1 of a one-stage model); trees beyond it are dropped.
        None (default) keeps every tree; 480 roughly doubles segmentation speed for deep
        (painted-slice) forests at a small cost in Dice.
    min_trees : int
        Never fewer trees than this.
    max_depth : int or None
    min_samples_leaf : int
    max_per_class : int
        Cap on training voxels per class (balanced sampling).
    border_weight : float
        How much more likely a labelled voxel next to another class's label is sampled.
    two_stage : bool
        Train the auto-context second stage.
    cross_fit : bool
        Train the second stage on out-of-fold stage-1 probabilities (folds = annotated
        planes) when there are at least two annotated planes.
    class_balance : float
        Reweight the sampled voxels by (balanced weight) ** this: 0 = as sampled, 1 = every
        class weighs the same, 0.5 = in between (rare classes after the cap).
    context_sigmas : tuple of float
        Smoothing scales (coarse voxels) of the stage-1 probabilities fed to stage 2.
    n_jobs : int
        Threads for fitting.
    seed : int
    classifier : str
        Kind of classifier per stage (see
        :data:`ml4paleo.segmentation.classifiers.CLASSIFIERS`).
    """

    n_trees: tuple[int, int] = (64, 64)
    node_budget: float | None = None
    min_trees: int = 16
    max_depth: int | None = None
    min_samples_leaf: int = 1
    max_per_class: int = 100000
    border_weight: float = 4.0
    two_stage: bool = True
    cross_fit: bool = False
    class_balance: float = 0.5
    context_sigmas: tuple[float, ...] = (0.0, 1.0)
    n_jobs: int = -1
    seed: int = 0
    classifier: str = "forest"


#: the small one-stage forest of the browser preview
PREVIEW = TrainSettings(n_trees=(24, 0), node_budget=None, max_depth=14, max_per_class=6000,
                        two_stage=False)


def labelled_voxels(labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates (N, 3), values (N,) and border flags of labelled voxels, read slab by slab.

    A voxel is on a border when a neighbour (3x3x3) holds another label or none.

    Raises
    ------
    ValueError
        When nothing is labelled.
    """
    shape = tuple(labels.shape)
    step = 64
    chunks = getattr(labels, "chunks", None) or getattr(labels, "metadata", {}).get("chunks")
    if chunks and len(chunks) == 3:
        step = max(int(chunks[0]), 16)
    coords, vals, border = [], [], []
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        a0, a1 = max(z0 - 1, 0), min(z1 + 1, shape[0])
        slab = np.asarray(labels[a0:a1])
        if not slab.any():
            continue
        mx = ndi.maximum_filter(slab, size=3, mode="nearest")
        low = np.where(slab == 0, 255, slab).astype(np.uint8)
        mn = ndi.minimum_filter(low, size=3, mode="nearest")
        core = slice(z0 - a0, z0 - a0 + (z1 - z0))
        s, mx, mn = slab[core], mx[core], mn[core]
        nz = np.nonzero(s)
        if not len(nz[0]):
            continue
        v = s[nz]
        coords.append(np.stack([nz[0] + z0, nz[1], nz[2]], axis=1))
        vals.append(v)
        border.append((mx[nz] != v) | (mn[nz] != v))
    if not coords:
        raise ValueError("no labelled voxels: annotate at least one voxel of two classes")
    return np.concatenate(coords), np.concatenate(vals), np.concatenate(border)


def balanced_sample(vals: np.ndarray, border: np.ndarray, cap: int, border_weight: float,
                    seed: int) -> np.ndarray:
    """Indices of a class-balanced sample (at most ``cap`` per class, borders preferred)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for v in np.unique(vals):
        idx = np.flatnonzero(vals == v)
        if len(idx) <= cap:
            chosen.append(idx)
            continue
        w = np.where(border[idx], border_weight, 1.0)
        chosen.append(rng.choice(idx, size=cap, replace=False, p=w / w.sum()))
    return np.sort(np.concatenate(chosen))


def balance_weights(y: np.ndarray, power: float) -> np.ndarray | None:
    """Per-row weights ``(balanced class weight) ** power``; None for ``power`` 0."""
    if power <= 0:
        return None
    counts = np.bincount(y)
    per_class = (len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1))) ** power
    return per_class[y]


def fit_stage(X: np.ndarray, y: np.ndarray, size: int, ts: TrainSettings, n_classes: int,
              seed: int, budget: float | None = None) -> Classifier:
    """Fit one stage of ``ts.classifier`` (class-balanced weights from ``ts``)."""
    cls = classifier_class(ts.classifier)
    return cls.fit(X, y, n_classes=n_classes, size=size, settings=ts, seed=seed,
                   sample_weight=balance_weights(y, ts.class_balance), budget=budget)


def _group_boxes(coords: np.ndarray, shape) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Group voxel coordinates into thin boxes (planes along the axis with fewest planes)."""
    n_planes = [len(np.unique(coords[:, a])) for a in range(3)]
    axis = int(np.argmin(n_planes))
    order = np.argsort(coords[:, axis], kind="stable")
    planes = coords[order, axis]
    cuts = np.flatnonzero(np.diff(planes) > 1) + 1  # runs of adjacent planes
    out = []
    for part in np.split(order, cuts):
        c = coords[part]
        lo, hi = c.min(axis=0), c.max(axis=0) + 1
        out.append((tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), part))
    return out


def dice_scores(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float | None]:
    """Dice per class (None for a class in neither)."""
    out = []
    for c in range(n_classes):
        t, p = truth == c, pred == c
        denom = t.sum() + p.sum()
        out.append(float(2 * (t & p).sum() / denom) if denom else None)
    return out


def held_out_metrics(X, y, groups, ts: TrainSettings, classes):
    """2-fold metrics with folds split by annotated box (stage-1 features only).

    Returns (metrics dict, fold classifiers or None, fold membership of each row). The fold
    classifiers also provide out-of-fold stage-1 probabilities for training the second stage.
    """
    ug = np.unique(groups)
    if len(ug) < 2:
        return {"method": "none (one annotated plane)"}, None, None
    fold = np.isin(groups, ug[::2])
    pred = np.empty_like(y)
    fitted = []
    for test in (fold, ~fold):
        train_rows = ~test
        if len(np.unique(y[train_rows])) < 2:
            return {"method": "none (a fold lacks classes)"}, None, None
        f = fit_stage(X[train_rows], y[train_rows], max(ts.n_trees[0] // 2, 8), ts, len(classes),
                      ts.seed + 7)
        fitted.append(f)
        pred[test] = np.argmax(f.predict_proba(X[test]), axis=1)
    dice = dice_scores(y, pred, len(classes))
    metrics = {
        "method": "2-fold cross-validation by annotated plane, stage-1 features",
        "accuracy": float((pred == y).mean()),
        "dice": {c["name"]: d for c, d in zip(classes, dice, strict=True)},
        "n_voxels": int(len(y)),
    }
    return metrics, fitted, fold


def train(
    image: Any,
    labels: Any,
    *,
    classes: Sequence[dict | str] | None = None,
    feature_settings: FeatureSettings | None = None,
    preview: bool = False,
    settings: TrainSettings | None = None,
    progress: ProgressCallback | None = None,
) -> Model:
    """Train a voxel classifier from a label volume.

    Parameters
    ----------
    image : volume-like
        The scan (z, y, x): a path, OmeImage, Volume, zarr array or ndarray
        (see :func:`ml4paleo.io.open_any`).
    labels : LabelStore or volume-like
        Same shape; 0 = unlabelled, ``k + 1`` = class ``k``.
    classes : list of str or dict, optional
        Class names (class 0 = background); default from the LabelStore or
        ``class 0..K-1``.
    feature_settings : FeatureSettings, optional
    preview : bool
        A small one-stage forest (fast; what the annotator uses).
    settings : TrainSettings, optional
        Forest sizes and sampling (overrides ``preview``).
    progress : callable, optional
        ``progress(done, total)`` over feature boxes.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        When shapes differ or fewer than two classes are labelled.
    """
    t0 = time.perf_counter()
    arr = open_any(image)
    vs = arr.voxel_size
    if isinstance(labels, LabelStore):
        classes = classes or labels.classes
        lab_arr = labels.labels
    else:
        lab_arr = open_any(labels)
    if tuple(lab_arr.shape) != tuple(arr.shape):
        raise ValueError(f"labels shape {tuple(lab_arr.shape)} differs from image shape {tuple(arr.shape)}")
    fs = feature_settings or FeatureSettings()
    ts = settings or (PREVIEW if preview else TrainSettings())
    if ts.n_trees[0] < 1 or (ts.two_stage and ts.n_trees[1] < 1):
        raise ValueError(f"n_trees must be >= 1 for every stage trained, got {ts.n_trees}")
    classifier_class(ts.classifier)
    if not np.issubdtype(np.dtype(lab_arr.dtype), np.integer):
        raise ValueError(f"labels must be integers (0 = unlabelled, k + 1 = class k), got {lab_arr.dtype}")
    coords, vals, border = labelled_voxels(lab_arr)
    if int(vals.max()) > MAX_CLASSES:
        raise ValueError(f"labels hold value {int(vals.max())}: expected 0 (unlabelled) or k + 1 for "
                         f"class k, at most {MAX_CLASSES} classes (is this the image instead of the labels?)")
    n_classes = max(int(vals.max()), len(classes) if classes else 0)
    cls_list = class_list(classes, n_classes)
    if len(np.unique(vals)) < 2:
        raise ValueError("labels hold only one class: annotate at least two classes")
    pick = balanced_sample(vals, border, ts.max_per_class, ts.border_weight, ts.seed)
    coords, y = coords[pick], (vals[pick] - 1).astype(np.int64)
    ctx = ContextSettings(tuple(ts.context_sigmas)) if ts.two_stage else None
    boxes = _group_boxes(coords, arr.shape)
    F = n_features(fs)
    X1 = np.empty((len(y), F), np.float32)
    ctx_items = []
    for i, (box, members) in enumerate(boxes):
        if ctx is None:
            Xb, _ = features_for_box(arr, box, fs, vs)
        else:
            plan = context_plan(box, arr.shape, ctx, fs)
            Xb, Xc = features_for_box(arr, plan.region, fs, vs, plan.coarse, plan.inner(box))
            ctx_items.append((box, members, Xc, plan))
        local = coords[members] - np.array([b.start for b in box])
        bshape = tuple(b.stop - b.start for b in box)
        flat = np.ravel_multi_index(local.T, bshape)
        X1[members] = Xb[:, flat].T
        if progress is not None:
            progress(i + 1, len(boxes) + (1 if ctx else 0))
    t_feat = time.perf_counter() - t0
    groups = np.empty(len(y), np.int64)
    for i, (_, members) in enumerate(boxes):
        groups[members] = i
    metrics, fold_stages, fold = ({}, None, None)
    if not preview:
        metrics, fold_stages, fold = held_out_metrics(X1, y, groups, ts, cls_list)
    stage1 = fit_stage(X1, y, ts.n_trees[0], ts, n_classes, ts.seed,
                       budget=None if ctx is not None else ts.node_budget)
    stages = [stage1]
    if ctx is not None:
        Xctx = np.empty((len(y), n_classes * len(ctx.sigmas)), np.float32)
        for box, members, Xc, plan in ctx_items:
            # out-of-fold stage 1 (stacking): stage 2 learns from realistic stage-1 errors
            f1 = stage1
            if fold_stages is not None and ts.cross_fit:
                f1 = fold_stages[0] if fold[members[0]] else fold_stages[1]
            p1c = f1.predict_proba(Xc.T).T.reshape(n_classes, *plan.coarse_shape)
            cf = context_features(p1c, box, plan, ctx, fs)
            local = coords[members] - np.array([b.start for b in box])
            flat = np.ravel_multi_index(local.T, tuple(b.stop - b.start for b in box))
            Xctx[members] = cf[:, flat].T
        ctx_items.clear()
        stages.append(fit_stage(np.concatenate([X1, Xctx], axis=1), y, ts.n_trees[1], ts,
                                n_classes, ts.seed + 1, budget=ts.node_budget))
        if progress is not None:
            progress(len(boxes) + 1, len(boxes) + 1)
    counts = np.bincount(y, minlength=n_classes)
    meta = {
        "created_at": _fs.now_iso(),
        "metrics": metrics,
        "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, np.bincount(vals - 1, minlength=n_classes), strict=True)},
        "training_voxels": {c["name"]: int(n) for c, n in zip(cls_list, counts, strict=True)},
        "train_settings": {"n_trees": [getattr(f, "n_trees", None) for f in stages],
                           "max_depth": ts.max_depth, "node_budget": ts.node_budget,
                           "cross_fit": ts.cross_fit, "max_per_class": ts.max_per_class,
                           "two_stage": ts.two_stage},
        "seconds": {"features": round(t_feat, 3), "total": round(time.perf_counter() - t0, 3)},
        "shape": list(arr.shape),
        "classes": cls_list,
        "feature_settings": fs.to_dict(),
        "voxel_size": list(vs) if vs else None,
    }
    if ts.classifier != "forest":
        meta["train_settings"]["classifier"] = ts.classifier
    del X1, ctx_items, coords, vals, border
    release_free_memory()
    return Model(stages, fs, ctx, cls_list, vs, meta)
