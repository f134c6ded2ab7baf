"""Fitting the stages of a model on feature rows: settings, class-balanced sampling and
weights, the training rows of the labelled voxels, one- or two-stage fits, Dice.

:func:`~ml4paleo.segmentation.train` gathers the rows (:class:`TrainingData`) once;
:mod:`.selection` cross-validates candidate configurations on column subsets of them and
the winner is fitted here (:func:`fit_stages`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ml4paleo.features import FeatureSettings

from .classifiers import Classifier, classifier_class
from .context import ContextPlan, ContextSettings, context_features

__all__ = ["PREVIEW", "TrainSettings", "TrainingData", "balance_weights", "balanced_sample",
           "dice_scores", "fit_stage", "fit_stages", "fit_threads", "predict_rows", "stage1_context"]


@dataclass(frozen=True)
class TrainSettings:
    """Forest sizes, sampling and the per-dataset choice of configuration.

    Attributes
    ----------
    n_trees : tuple of int
        Trees of stage 1 and stage 2 (at most; see ``node_budget``).
    context_trees : int or None
        At most this many trees in stage 1 when a second stage follows (None:
        ``n_trees[0]``): its probabilities are only the second stage's context, on a grid
        twice as coarse and smoothed, so half the trees give the same Dice (painted fossil
        planes: 0.9317 with 32, 0.9316 with 64) at half its fitting and prediction time.
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
        Train the auto-context second stage (with ``select``: allow two-stage candidates;
        False = one stage only).
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
    select : bool
        Choose the configuration per dataset (:mod:`ml4paleo.segmentation.selection`):
        score candidate feature sets and one vs two stages by cross-validation over the
        annotated planes and train the best. False = train the given configuration.
    select_budget : float
        Seconds the cross-validation may take; candidates not reached are skipped (the
        first, the default configuration, is always scored).
    select_per_class : int
        Rows per class (a class-balanced subset of the sample) the cross-validation fits.
    select_margin : float
        Another candidate replaces the first (``full, one stage``) only when its
        held-out mean Dice is higher by more than this. Cross-validation on a few planes is
        noisy: with brush strokes the candidates' scores differed by up to 0.018 while
        their whole-volume Dice ranked otherwise; a second stage on painted planes or a
        texture the features miss wins by 0.05 or more.
    prune : bool
        Drop the channels no split of the trained model uses (exact: the predictions do
        not change) and, with ``select``, importance pruning: drop the channels whose importance is below
        ``prune_fraction`` of the mean, keep the pruned set when its cross-validated score
        is within ``prune_tolerance`` of the full one; the model then computes only the
        kept channels.
    prune_fraction : float
    prune_tolerance : float
    prune_saturated : float
        Importance pruning only when the chosen configuration's held-out score is below
        this: above it the cross-validation cannot see what pruning loses (with brush
        strokes inside structures every configuration scores 0.98-1.00 held out; pruning
        passed that check on the MRI and cost it 0.004-0.010 Dice over two seeds).
    context_max_bytes : float
        The second stage's training context needs the features of a slab around every
        annotated box (:func:`~ml4paleo.segmentation.context.context_plan`); when that
        would take more memory than this (large slices), only one-stage configurations are
        trained, and the labelled planes' features are computed plane by plane, tile by
        tile (training out of core: memory bounded by the tile, not the slice).
    plane_tile : int
        In-plane tile edge (pixels) of the plane-by-plane features of a one-stage training.
    """

    n_trees: tuple[int, int] = (64, 64)
    context_trees: int | None = 32
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
    select: bool = True
    select_budget: float = 120.0
    select_per_class: int = 20000
    select_margin: float = 0.02
    prune: bool = True
    prune_fraction: float = 0.25
    prune_tolerance: float = 0.005
    prune_saturated: float = 0.97
    context_max_bytes: float = 1.5e9
    plane_tile: int = 512

    def fixed(self) -> TrainSettings:
        """These settings without the per-dataset choice (train exactly what is given)."""
        return replace(self, select=False, prune=False)


#: the small one-stage forest of the browser preview (no per-dataset choice)
PREVIEW = TrainSettings(n_trees=(24, 0), node_budget=None, max_depth=14, max_per_class=6000,
                        two_stage=False, select=False, prune=False)


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


def dice_scores(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float | None]:
    """Dice per class (None for a class in neither)."""
    out = []
    for c in range(n_classes):
        t, p = truth == c, pred == c
        denom = t.sum() + p.sum()
        out.append(float(2 * (t & p).sum() / denom) if denom else None)
    return out


@dataclass
class ContextBox:
    """What the second stage's context of one annotated box is computed from.

    Attributes
    ----------
    box : tuple of slice
        The annotated box (write box of the context).
    flat : ndarray
        Index (into the box, C order) of each of its training rows.
    members : ndarray
        Its training rows (indices into :attr:`TrainingData.X`).
    coarse : ndarray (F, M)
        Image features at the coarse-grid voxels of its context region.
    plan : ContextPlan
    """

    box: tuple
    flat: np.ndarray
    members: np.ndarray
    coarse: np.ndarray
    plan: ContextPlan


@dataclass
class TrainingData:
    """The training rows of a label volume, gathered once.

    Attributes
    ----------
    X : ndarray (N, F) float32
        Image features of the sampled labelled voxels; columns named :attr:`names`.
    y : ndarray (N,) int64
        Class index per row.
    groups : ndarray (N,) int64
        Annotated box (plane or run of adjacent planes) of each row: the folds of
        cross-validation.
    names : list of str
        Channel names of the columns of :attr:`X`.
    features : FeatureSettings
        Settings the columns were computed with.
    n_classes : int
    context : ContextSettings or None
        Auto-context settings (None: no two-stage fit possible).
    boxes : list of ContextBox
        Per annotated box, what its context is computed from (empty without context).
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    names: list[str]
    features: FeatureSettings
    n_classes: int
    context: ContextSettings | None = None
    boxes: list = None  # type: ignore[assignment]

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """Column indices of the channels ``names`` (in the order given)."""
        where = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in where]
        if missing:
            raise ValueError(f"channels {missing[:5]} were not gathered")
        return np.array([where[n] for n in names], np.int64)


def _cols(X: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
    return X if cols is None else X[:, cols]


def fit_threads(ts: TrainSettings) -> int:
    """Threads ``ts.n_jobs`` stands for (-1 = every core this process may use)."""
    if ts.n_jobs > 0:
        return int(ts.n_jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) + 1 + ts.n_jobs)


def stage1_context(stage1_for: Callable[[ContextBox], Classifier], data: TrainingData,
                   cols: np.ndarray | None, threads: int = 1) -> np.ndarray:
    """Context channels (N, C * len(sigmas)) of every training row: stage-1 probabilities on
    each box's coarse grid (every tree: prediction's early exit gave the second stage a
    worse context to learn from, -0.02 Dice on painted fossil planes), smoothed and
    interpolated. ``threads`` walk the forest (the result does not depend on it)."""
    ctx, C = data.context, data.n_classes
    out = np.zeros((len(data.y), C * len(ctx.sigmas)), np.float32)
    for cb in data.boxes:
        Xc = cb.coarse if cols is None else cb.coarse[cols]
        p1c = stage1_for(cb).predict_proba(Xc.T, threads=threads).T.reshape(C, *cb.plan.coarse_shape)
        cf = context_features(p1c, cb.box, cb.plan, ctx, data.features)
        out[cb.members] = cf[:, cb.flat].T
    return out


def fit_stages(data: TrainingData, cols: np.ndarray | None, two_stage: bool, ts: TrainSettings,
               sizes: Sequence[int], rows: np.ndarray | None = None, seed: int | None = None,
               stage1_for: Callable[[ContextBox, Classifier], Classifier] | None = None,
               budget: float | None = None) -> tuple[list[Classifier], np.ndarray | None]:
    """Fit one or two stages on the columns ``cols`` (None = all) of the rows ``rows``
    (boolean mask or indices; None = all).

    ``stage1_for(box, stage1)`` picks the stage 1 whose probabilities make a box's context
    (default: the stage 1 just fitted). ``budget``: node budget of the last stage.

    Returns the stages and, for two stages, the context channels of every row (else None).
    """
    seed = ts.seed if seed is None else seed
    X = data.X if rows is None else data.X[rows]
    y = data.y if rows is None else data.y[rows]
    X = _cols(X, cols)
    stage1 = fit_stage(X, y, sizes[0], ts, data.n_classes, seed,
                       budget=None if two_stage else budget)
    if not two_stage:
        return [stage1], None
    if data.context is None:
        raise ValueError("two stages need training data gathered with context")
    pick = (lambda cb: stage1) if stage1_for is None else (lambda cb: stage1_for(cb, stage1))
    Xctx = stage1_context(pick, data, cols, fit_threads(ts))
    Xc = Xctx if rows is None else Xctx[rows]
    stage2 = fit_stage(np.concatenate([X, Xc], axis=1), y, sizes[1], ts, data.n_classes,
                       seed + 1, budget=budget)
    return [stage1, stage2], Xctx


def predict_rows(stages: Sequence[Classifier], data: TrainingData, cols: np.ndarray | None,
                 rows: np.ndarray, Xctx: np.ndarray | None, threads: int = 1) -> np.ndarray:
    """Class probabilities (n, C) of the training rows ``rows`` (the exact forest means)."""
    X = _cols(data.X[rows], cols)
    if len(stages) == 1:
        return stages[0].predict_proba(X, cascade=(), threads=threads)
    return stages[1].predict_proba(np.concatenate([X, Xctx[rows]], axis=1), cascade=(),
                                   threads=threads)
