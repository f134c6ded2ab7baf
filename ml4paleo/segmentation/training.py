"""Training a voxel classifier from a label volume: sampling, the per-dataset choice, stages.

The classifier (a random forest by default) is trained on the filter-bank features
(:mod:`ml4paleo.features`) of a class-balanced sample (capped per class, voxels next to
another class's label preferred). By default the configuration is chosen per dataset from
the labels themselves (:mod:`.selection`): candidate feature sets and one vs two
*auto-context* stages (:mod:`.context`; stage 2 sees the same features plus the stage-1
class probabilities smoothed at a few scales) are cross-validated over the annotated
planes, the best is trained and the channels it hardly uses are pruned.
``TrainSettings(select=False)`` trains the given configuration as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ml4paleo import _fs
from ml4paleo.classes import MAX_CLASSES, class_list
from ml4paleo.features import FeatureSettings, feature_names, halo_for, plane_features
from ml4paleo.io import open_any

from .boxes import features_for_box, features_for_parts
from .classifiers import classifier_class
from .context import ContextSettings, context_plan
from .fitting import (
    PREVIEW,
    ContextBox,
    TrainingData,
    TrainSettings,
    balance_weights,
    balanced_sample,
    dice_scores,
    fit_stage,
    fit_stages,
)
from .labels import LabelStore
from .memory import release_free_memory
from .model import Model
from .selection import Candidate, candidates, choose, union_settings

__all__ = ["PREVIEW", "ProgressCallback", "TrainSettings", "balance_weights", "balanced_sample",
           "dice_scores", "fit_stage", "gather", "held_out_metrics", "labelled_voxels", "train"]

ProgressCallback = Callable[[int, int], None]


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


def context_bytes(box: tuple[slice, ...], shape: Sequence[int], ctx: ContextSettings,
                  fs: FeatureSettings) -> float:
    """Rough peak memory (bytes) of gathering the context features of one annotated box:
    the filter bank over the box's context region read with the feature halo (a few
    float32 copies of that slab) plus the features at its coarse-grid voxels."""
    return _region_bytes(context_plan(box, shape, ctx, fs).region, fs)


def _read_voxels(region: tuple[slice, ...], fs: FeatureSettings) -> float:
    """Voxels the filter bank runs over for ``region``: grown by the feature halo on every
    side (beyond the volume the halo is mirrored, which costs the passes as much)."""
    halo = halo_for(fs, None)
    return float(np.prod([r.stop - r.start + 2 * h for r, h in zip(region, halo, strict=True)]))


def _region_bytes(region: tuple[slice, ...], fs: FeatureSettings) -> float:
    voxels = float(np.prod([r.stop - r.start for r in region]))
    return 4 * (6 * _read_voxels(region, fs) + voxels * len(feature_names(fs)) / 8)


def _max_read(max_bytes: float) -> float | None:
    """Voxels one filter-bank pass may read (with its halo) so that gathering stays within
    ``max_bytes``: the pass takes ~35 bytes per voxel read at its peak (4 painted 512^2
    planes of a 32-slice scan, the full candidate set) and the coarse context features of
    every box are kept meanwhile, so a pass may read cap / 64 voxels (~0.55 of the cap)."""
    return None if not np.isfinite(max_bytes) else max_bytes / 64


def _shift(sl: slice, n: int, by: int) -> slice:
    """``sl`` (into an axis of length ``n``) moved ``by`` voxels."""
    start, stop, st = sl.indices(n)
    return slice(start + by, stop + by, st)


def _hull(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def merge_regions(regions: Sequence[tuple[slice, ...]], fs: FeatureSettings, max_bytes: float = float("inf")) -> list[tuple[tuple[slice, ...], list[int]]]:
    """Group context regions whose bounding box costs no more filtering than they do apart.

    Annotated planes a few voxels apart have context regions that overlap (each reaches
    ~10 voxels to either side): one filter-bank pass over their bounding box replaces a pass
    per plane. Regions are taken in order along their first coordinates and a region joins
    the current group when the group's bounding box (with the feature halo) reads no more
    voxels than the members would apart and stays within ``max_bytes``
    (:func:`context_bytes`' estimate). Returns (bounding box, member indices) per group.
    """
    order = sorted(range(len(regions)), key=lambda i: tuple(r.start for r in regions[i]))
    out: list[tuple[tuple[slice, ...], list[int]]] = []
    cost = 0.0
    for i in order:
        own = _read_voxels(regions[i], fs)
        if out:
            hull = _hull(out[-1][0], regions[i])
            if _read_voxels(hull, fs) <= cost + own and _region_bytes(hull, fs) <= max_bytes:
                out[-1] = (hull, [*out[-1][1], i])
                cost += own
                continue
        out.append((regions[i], [i]))
        cost = own
    return out


def _labelled_rows_by_plane(arr: Any, box: tuple[slice, ...], local: np.ndarray,
                            fs: FeatureSettings, tile: int) -> np.ndarray:
    """Features (N, F) at the voxels ``local`` (box coordinates) of a one-plane box,
    computed tile by tile in the plane (filtered along the normal first), so memory is
    bounded by one tile whatever the plane's size; only the labelled rows are kept."""
    axis = next(a for a in range(3) if box[a].stop - box[a].start == 1)
    ia, ib = (a for a in range(3) if a != axis)
    r = local[:, ia] + box[ia].start
    c = local[:, ib] + box[ib].start
    out = np.empty((len(local), len(feature_names(fs))), np.float32)
    key = (r // tile) * (int(arr.shape[ib]) // tile + 1) + c // tile
    for k in np.unique(key):
        sel = np.flatnonzero(key == k)
        r0, r1 = int(r[sel].min()), int(r[sel].max()) + 1
        c0, c1 = int(c[sel].min()), int(c[sel].max()) + 1
        f = plane_features(arr, axis, box[axis].start, slice(r0, r1), slice(c0, c1), fs,
                           arr.voxel_size)
        out[sel] = f[:, r[sel] - r0, c[sel] - c0].T
    return out


def gather(arr: Any, coords: np.ndarray, y: np.ndarray, fs: FeatureSettings,
           ctx: ContextSettings | None, n_classes: int,
           progress: ProgressCallback | None = None, extra_steps: int = 0,
           plane_tile: int = 512, max_bytes: float = float("inf")) -> TrainingData:
    """Features ``fs`` of the voxels ``coords`` (N, 3) of ``arr`` (classes ``y``), box by
    annotated box, with the coarse-grid features the context of each box needs (``ctx``).

    Without context, a box one plane thick is computed plane-wise, tile by tile
    (``plane_tile`` pixels; values equal the 3-D features to float32 rounding). With
    context, boxes whose context regions overlap share one filter-bank pass over their
    bounding box (:func:`merge_regions`, within ``max_bytes``), computed in tiles of rows
    when its read would not fit (:func:`_max_read`); the values are those of a pass per
    box, exactly.
    """
    vs = arr.voxel_size
    boxes = _group_boxes(coords, arr.shape)
    names = feature_names(fs)
    X = np.empty((len(y), len(names)), np.float32)
    groups = np.empty(len(y), np.int64)
    flats = []
    for i, (box, members) in enumerate(boxes):
        groups[members] = i
        local = coords[members] - np.array([b.start for b in box])
        flats.append((local, np.ravel_multi_index(local.T, tuple(b.stop - b.start for b in box))))
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, len(boxes) + extra_steps)

    if ctx is None:
        for i, (box, members) in enumerate(boxes):
            local, flat = flats[i]
            if min(b.stop - b.start for b in box) == 1:
                X[members] = _labelled_rows_by_plane(arr, box, local, fs, plane_tile)
            else:
                X[members] = features_for_box(arr, box, fs, vs)[0][:, flat].T
            step(1)
        return TrainingData(X, y, groups, names, fs, n_classes, None, [])
    plans = [context_plan(box, arr.shape, ctx, fs) for box, _ in boxes]
    cboxes: list[ContextBox | None] = [None] * len(boxes)
    for hull, idx in merge_regions([p.region for p in plans], fs, max_bytes):
        parts = []
        for i in idx:
            p, box = plans[i], boxes[i][0]
            off = [r.start - h.start for r, h in zip(p.region, hull, strict=True)]
            inner = tuple(slice(b.start - h.start, b.stop - h.start) for b, h in zip(box, hull, strict=True))
            coarse = tuple(_shift(c, r.stop - r.start, o) for c, r, o in zip(p.coarse, p.region, off, strict=True))
            parts.append((inner, coarse))
        tiled = features_for_parts(arr, hull, fs, vs, parts, max_read=_max_read(max_bytes))
        for i, (Xb, Xc) in zip(idx, tiled, strict=True):
            box, members = boxes[i]
            X[members] = Xb[:, flats[i][1]].T
            cboxes[i] = ContextBox(box, flats[i][1], members, Xc, plans[i])
            step(1)  # a box at a time, as without merging
    return TrainingData(X, y, groups, names, fs, n_classes, ctx, cboxes)


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
        Features to use. Default: chosen per dataset among the candidates of
        :func:`ml4paleo.segmentation.selection.candidates` (with ``settings.select``;
        given settings leave only the number of stages to choose).
    preview : bool
        A small one-stage forest (fast; what the annotator uses; no per-dataset choice).
    settings : TrainSettings, optional
        Forest sizes, sampling, the per-dataset choice (``select``, ``select_budget``,
        ``prune``); overrides ``preview``.
    progress : callable, optional
        ``progress(done, total)`` over the feature boxes, the candidates of the choice
        and the pruning (with ``settings.select``), and the fitting as a last step.

    Returns
    -------
    Model
        ``model.meta["selection"]`` records the candidates' held-out scores and the choice
        (with ``settings.select``); ``model.meta["metrics"]`` the held-out metrics.

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
    ts = settings or (PREVIEW if preview else TrainSettings())
    if ts.n_trees[0] < 1 or (ts.two_stage and ts.n_trees[1] < 1):
        raise ValueError(f"n_trees must be >= 1 for every stage trained, got {ts.n_trees}")
    if ts.context_trees is not None and ts.context_trees < 1:
        raise ValueError(f"context_trees must be >= 1 or None, got {ts.context_trees}")
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
    select = ts.select and not preview
    if select:
        cands = candidates(ts, feature_settings)
    else:
        cands = [Candidate("given", feature_settings or FeatureSettings(), ts.two_stage)]
    gather_fs = union_settings(cands)
    ctx = ContextSettings(tuple(ts.context_sigmas)) if any(c.two_stage for c in cands) else None
    too_big = None
    boxes = [box for box, _ in _group_boxes(coords, arr.shape)]
    if ctx is not None:
        need = max(context_bytes(box, arr.shape, ctx, gather_fs) for box in boxes)
        if need > ts.context_max_bytes:  # large slices: one stage, trained out of core
            too_big = {"context_bytes": round(need), "context_max_bytes": ts.context_max_bytes}
            cands = [c for c in cands if not c.two_stage] or \
                [Candidate(c.name.replace("two stages", "one stage"), c.features, False,
                           c.class_balance) for c in cands]
            gather_fs, ctx = union_settings(cands), None
    n_boxes = len(boxes)
    # steps: the feature boxes, each candidate and the pruning (with select), the fitting
    extra = 1 + (len(cands) + 1 if select else 0)
    data = gather(arr, coords, y, gather_fs, ctx, n_classes, progress, extra_steps=extra,
                  plane_tile=ts.plane_tile, max_bytes=ts.context_max_bytes)
    t_feat = time.perf_counter() - t0
    selection = None
    fold_stages = fold = None
    if select:
        step = None if progress is None else (lambda k: progress(n_boxes + k, n_boxes + extra))
        selection = choose(data, cands, ts, cls_list, step)
        cand, channels, metrics = selection.candidate, selection.channels, selection.metrics
    else:
        cand, channels = cands[0], data.names
        metrics = {}
        if not preview:
            metrics, fold_stages, fold = held_out_metrics(data.X, y, data.groups, ts, cls_list)
    cols = data.columns(channels)
    stage1_for = None
    if cand.two_stage and fold_stages is not None and ts.cross_fit:
        # out-of-fold stage 1 (stacking): stage 2 learns from realistic stage-1 errors
        stage1_for = lambda cb, s1: fold_stages[0] if fold[cb.members[0]] else fold_stages[1]  # noqa: E731
    sizes = ts.n_trees
    if cand.two_stage and ts.context_trees:
        sizes = (min(ts.context_trees, ts.n_trees[0]), ts.n_trees[1])
    stages, _ = fit_stages(data, None if len(cols) == len(data.names) else cols, cand.two_stage,
                           cand.train_settings(ts), sizes, stage1_for=stage1_for,
                           budget=ts.node_budget)
    if progress is not None:
        progress(n_boxes + extra, n_boxes + extra)
    fs = cand.features
    if channels != feature_names(fs):
        fs = fs.with_channels(channels)
    counts = np.bincount(y, minlength=n_classes)
    meta = {
        "created_at": _fs.now_iso(),
        "metrics": metrics,
        "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, np.bincount(vals - 1, minlength=n_classes), strict=True)},
        "training_voxels": {c["name"]: int(n) for c, n in zip(cls_list, counts, strict=True)},
        "train_settings": {"n_trees": [getattr(f, "n_trees", None) for f in stages],
                           "max_depth": ts.max_depth, "node_budget": ts.node_budget,
                           "cross_fit": ts.cross_fit, "max_per_class": ts.max_per_class,
                           "two_stage": cand.two_stage, "select": select,
                           "class_balance": cand.train_settings(ts).class_balance},
        "seconds": {"features": round(t_feat, 3), "total": round(time.perf_counter() - t0, 3)},
        "shape": list(arr.shape),
        "classes": cls_list,
        "feature_settings": fs.to_dict(),
        "voxel_size": list(vs) if vs else None,
    }
    if too_big is not None:
        meta["train_settings"]["one_stage_because"] = {
            **too_big, "reason": "the second stage's context would not fit the memory cap"}
    if selection is not None:
        meta["selection"] = selection.report
        meta["seconds"]["selection"] = selection.report["seconds"]
    if ts.classifier != "forest":
        meta["train_settings"]["classifier"] = ts.classifier
    model_ctx = ContextSettings(tuple(ts.context_sigmas)) if cand.two_stage else None
    del data, coords, vals, border
    release_free_memory()
    model = Model(stages, fs, model_ctx, cls_list, vs, meta)
    return model.without_unused_channels() if ts.prune and not preview else model
