"""Choosing a model configuration per dataset, from the user's own labels.

Defaults tuned on one phantom are what fails on a new scan, so :func:`choose` scores a few
candidate configurations (:func:`candidates`: the default features plus structure-tensor
eigenvalues with one or two stages; the default features with two stages) by
cross-validation grouped by annotated plane (2 folds: the planes of one fold are never seen
by the model that predicts them), within a time budget, and picks the one with the best mean
held-out Dice (the first unless another beats it by a margin: the folds are few, and with
brush strokes every candidate scores near 1). Then, by
*importance pruning*, the channels the winner hardly uses are dropped when the pruned set
scores as well: the model computes only the kept channels (:attr:`FeatureSettings.channels`).

All candidates share one set of training rows: features are gathered once with the union
of the candidates' channels (:func:`union_settings`) and each candidate is a column subset
(a channel's values do not depend on which other channels are computed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ml4paleo.features import FeatureSettings, feature_names

from .fitting import (
    TrainingData,
    TrainSettings,
    balanced_sample,
    dice_scores,
    fit_stages,
    fit_threads,
    predict_rows,
)

__all__ = ["FULL", "STRUCTURE", "Candidate", "Selection", "candidates", "choose", "cross_validate",
           "union_settings"]

log = logging.getLogger(__name__)

#: the default families plus structure-tensor eigenvalues at scales 1 to 3.5 with an outer
#: scale equal to the scale (what separates textures of the same brightness and edge
#: strength: benchmarks' ``texture`` and ``texture_st`` volumes)
STRUCTURE = FeatureSettings(families=FeatureSettings().families + ("structure",),
                            structure_max_scale=3.5, structure_outer=1.0)


#: the scales and families of ilastik's pixel classification (0.7 to 10 voxels; the Hessian
#: and structure tensor from 0.7) with the structure tensor of :data:`STRUCTURE` (scales up
#: to 3.5, outer scale = the scale): large-scale smoothing tells apart structures that only
#: their size and surroundings distinguish (the phantom's dense structure on painted planes:
#: Dice 0.80 with these, 0.41 without); scales 5 and 10 on the coarse grid
#: (:mod:`ml4paleo.features.coarse`: the filter bank 1.35x faster on 32 x 128^2 pieces)
FULL = replace(STRUCTURE, scales=(0.7, 1.0, 1.6, 3.5, 5.0, 10.0), eigen_min_scale=0.7,
               coarse_from=4.0)


@dataclass(frozen=True)
class Candidate:
    """One configuration scored by :func:`choose`.

    Attributes
    ----------
    name : str
    features : FeatureSettings
    two_stage : bool
    class_balance : float or None
        Overrides ``TrainSettings.class_balance`` for this candidate (None: as given).
    """

    name: str
    features: FeatureSettings
    two_stage: bool
    class_balance: float | None = None

    def train_settings(self, ts: TrainSettings) -> TrainSettings:
        """``ts`` with this candidate's class balance."""
        return ts if self.class_balance is None else replace(ts, class_balance=self.class_balance)


def candidates(ts: TrainSettings, features: FeatureSettings | None = None) -> list[Candidate]:
    """The configurations to score, the first being the one kept unless another wins clearly.

    The first is ``full, one stage``: :data:`FULL` (ilastik's scales and families), one
    forest, every class weighing the same (``class_balance`` 1). Strokes lie inside
    structures, so with brush strokes every candidate scores ~0.98-1.0 held out and
    cross-validation cannot rank them; on painted planes of the phantom every candidate
    scored 0.61 held out while their whole-volume Dice ranged 0.62-0.82
    (``benchmarks/cv_ranking.py``). So what is kept by default must be robust on its own.
    In ``benchmarks/segment_suite.py`` (six volumes from four generators and a real MRI,
    strokes and painted planes, full sizes) it was never more than 0.017 below the
    ilastik-style reference trained on the same labels (more than 0.005 below on two of
    twelve label sets: strokes on ``fossil_iso`` and on the MRI), where one stage without
    the large scales fell 0.19 below it (phantom, painted: the dense structure needs the
    10-voxel scale) and the former default (no structure tensor, two stages) 0.04 below it
    (phantom, strokes). The
    others -- ``structure, two stages`` and ``default, two stages`` -- win clearly where the
    second stage's context or the texture matters (texture, painted: +0.14 over the
    reference).

    With ``features`` given only the number of stages is chosen (one stage first);
    ``ts.two_stage`` False leaves out the two-stage candidates.
    """
    if features is None:
        order = [("full", FULL, False, 1.0), ("structure", STRUCTURE, True, None),
                 ("default", FeatureSettings(), True, None)]
    else:
        order = [("given", features, False, None), ("given", features, True, None)]
    return [Candidate(f"{name}, {'two stages' if two else 'one stage'}", fs, two, cb)
            for name, fs, two, cb in order if ts.two_stage or not two]


def union_settings(cands: Sequence[Candidate]) -> FeatureSettings:
    """The candidates' settings whose channels include every candidate's.

    Raises
    ------
    ValueError
        When no candidate's channels cover the others'.
    """
    named = [(c.features, set(feature_names(c.features))) for c in cands]
    every = set().union(*(n for _, n in named))
    # what a channel's values depend on besides its name must agree
    for key, fam in (("mode", None), ("anisotropic", None), ("structure_outer", "structure")):
        if len({getattr(fs, key) for fs, _ in named if fam is None or fam in fs.families}) > 1:
            raise ValueError(f"the candidates' {key} differ: a channel name would hold other values")
    for union, names in sorted(named, key=lambda p: -len(p[1])):
        if names == every:
            for fs, _ in named:  # a scale on the coarse grid in one, not in the other
                starts = [c for c in (fs.coarse_from, union.coarse_from) if c]
                if fs.coarse_from != union.coarse_from and any(s >= min(starts) for s in fs.scales):
                    raise ValueError("the candidates' coarse_from differ at a scale they share: "
                                     "a channel name would hold other values")
            return union
    raise ValueError("the candidates' channels are not nested in one candidate's")


@dataclass
class Selection:
    """What :func:`choose` decided.

    Attributes
    ----------
    candidate : Candidate
        The winner.
    channels : list of str
        Channels the model computes (the winner's, or fewer after pruning).
    pruned : bool
        Whether pruning removed channels.
    metrics : dict
        The held-out metrics of the chosen configuration (``method``, ``accuracy``,
        ``dice`` per class name, ``n_voxels``); {} when nothing could be cross-validated.
    report : dict
        JSON-able record for the model metadata: every candidate's score (or why it was
        skipped), the choice, the pruning, seconds.
    """

    candidate: Candidate
    channels: list[str]
    pruned: bool
    metrics: dict
    report: dict


def _cv_rows(data: TrainingData, ts: TrainSettings) -> np.ndarray:
    """The class-balanced subset of the training rows the cross-validation fits."""
    return balanced_sample(data.y, np.zeros(len(data.y), bool), ts.select_per_class, 1.0,
                           ts.seed + 11)


def cross_validate(data: TrainingData, cols: np.ndarray, two_stage: bool, ts: TrainSettings,
                   rows: np.ndarray, classes: Sequence[dict]) -> dict | None:
    """2-fold cross-validation by annotated box of one configuration (columns ``cols``).

    Returns ``{"score", "dice", "accuracy", "n_voxels", "importances", "seconds"}`` (score
    = mean Dice over the classes present) or None when there are fewer than two annotated
    boxes or a fold lacks a class.
    """
    t0 = time.perf_counter()
    groups = data.groups[rows]
    ug = np.unique(groups)
    if len(ug) < 2:
        return None
    in_a = np.isin(groups, ug[::2])
    y = data.y[rows]
    pred = np.empty_like(y)
    size = max(ts.n_trees[0] // 2, 8)
    imp = np.zeros(len(cols))
    for test in (in_a, ~in_a):
        train = rows[~test]
        if len(np.unique(data.y[train])) < 2:
            return None
        stages, Xctx = fit_stages(data, cols, two_stage, ts, (size, size), rows=train,
                                  seed=ts.seed + 7)
        pred[test] = np.argmax(predict_rows(stages, data, cols, rows[test], Xctx, fit_threads(ts)),
                               axis=1)
        for s in stages:
            w = getattr(s, "importances", None)
            if w is not None:
                imp += w[: len(cols)]
    dice = dice_scores(y, pred, data.n_classes)
    present = [d for d in dice if d is not None]
    return {
        "score": float(np.mean(present)),
        "dice": {c["name"]: d for c, d in zip(classes, dice, strict=True)},
        "accuracy": float((pred == y).mean()),
        "n_voxels": int(len(y)),
        "importances": imp,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _entry(c: Candidate, n: int, r: dict | None) -> dict:
    out = {"name": c.name, "families": list(c.features.families),
           "scales": list(c.features.scales), "two_stage": c.two_stage, "n_channels": n}
    if c.class_balance is not None:
        out["class_balance"] = c.class_balance
    if r is not None:
        out.update(score=round(r["score"], 4), accuracy=round(r["accuracy"], 4),
                   dice={k: None if v is None else round(v, 4) for k, v in r["dice"].items()},
                   seconds=r["seconds"])
    return out


def choose(data: TrainingData, cands: Sequence[Candidate], ts: TrainSettings,
           classes: Sequence[dict], progress: Callable[[int], None] | None = None) -> Selection:
    """Score ``cands`` on ``data`` within ``ts.select_budget`` seconds, pick the best mean
    held-out Dice (the first candidate unless another beats it by more than
    ``ts.select_margin``; the earlier on a tie), then prune by importance (``ts.prune``).

    ``data`` must hold every candidate's channels (gathered with :func:`union_settings`)
    and context when a candidate has two stages. ``progress(k)`` is called after the k-th
    of the ``len(cands) + 1`` steps (each candidate, then the pruning).
    """
    t0 = time.perf_counter()
    rows = _cv_rows(data, ts)
    method = (f"2-fold cross-validation by annotated plane ({len(rows)} of {len(data.y)} "
              f"training voxels, {max(ts.n_trees[0] // 2, 8)} trees per stage)")
    entries, results = [], []
    for i, c in enumerate(cands):
        cols = data.columns(feature_names(c.features))
        if i and time.perf_counter() - t0 > ts.select_budget:
            entries.append({**_entry(c, len(cols), None), "skipped": "time budget"})
            continue
        r = cross_validate(data, cols, c.two_stage, c.train_settings(ts), rows, classes)
        if progress is not None:
            progress(i + 1)
        if r is None:  # one annotated plane, or a fold lacks a class: nothing to compare
            first = cands[0]
            names = feature_names(first.features)
            report = {"method": "none (needs two annotated planes, each fold with two classes)",
                      "candidates": [_entry(x, len(feature_names(x.features)), None) for x in cands],
                      "chosen": first.name, "pruning": None,
                      "seconds": round(time.perf_counter() - t0, 2)}
            return Selection(first, names, False, {}, report)
        log.info("candidate %s: held-out mean Dice %.4f (%.1f s)", c.name, r["score"], r["seconds"])
        entries.append(_entry(c, len(cols), r))
        results.append((r["score"], -i, i, cols, r))
    # the default (first) stays unless another beats it by more than the margin
    bar = results[0][0] + ts.select_margin
    better = [t for t in results[1:] if t[0] > bar] or results[:1]
    _, _, best, cols, r = max(better, key=lambda t: (t[0], t[1]))
    win = cands[best]
    channels = [data.names[j] for j in cols]
    pruning = None
    if ts.prune:
        imp = r["importances"] / max(r["importances"].sum(), 1e-12)
        keep = imp >= ts.prune_fraction / len(cols)
        pruning = {"fraction_of_mean": ts.prune_fraction, "tolerance": ts.prune_tolerance,
                   "from": int(len(cols)), "to": int(keep.sum())}
        if keep.all() or keep.sum() < 1:
            pruning["kept"] = "all (none below the threshold)"
        elif r["score"] >= ts.prune_saturated:
            pruning["kept"] = (f"all (held-out score {r['score']:.3f} >= {ts.prune_saturated}: "
                               "too close to 1 to tell what pruning would lose)")
        elif time.perf_counter() - t0 > ts.select_budget:
            pruning["kept"] = "all (time budget)"
        else:
            rp = cross_validate(data, cols[keep], win.two_stage, win.train_settings(ts), rows,
                                classes)
            pruning["score"] = round(rp["score"], 4)
            pruning["seconds"] = rp["seconds"]
            if rp["score"] >= r["score"] - ts.prune_tolerance:
                pruning["kept"] = "pruned"
                channels = [data.names[j] for j in cols[keep]]
                r = rp
            else:
                pruning["kept"] = "all (pruned set scored lower)"
    if progress is not None:
        progress(len(cands) + 1)
    metrics = {"method": method, "accuracy": r["accuracy"], "dice": r["dice"],
               "n_voxels": r["n_voxels"], "score": r["score"]}
    report = {"method": method, "score": "mean held-out Dice over classes",
              "margin": ts.select_margin,
              "candidates": entries, "chosen": win.name, "pruning": pruning,
              "budget_s": ts.select_budget, "seconds": round(time.perf_counter() - t0, 2)}
    return Selection(win, channels, bool(pruning and pruning.get("kept") == "pruned"), metrics, report)
