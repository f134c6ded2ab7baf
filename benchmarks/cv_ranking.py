"""Does cross-validation on the user's labels rank configurations as the whole volume does?

For each suite volume (:mod:`benchmarks.volumes`) and label set, the training rows of every
candidate configuration are gathered once (the union of their channels, with the second
stage's context), and for each candidate this prints

- ``cv``: the held-out mean Dice that :func:`ml4paleo.segmentation.selection.choose` sees
  (2-fold cross-validation by annotated plane on the class-balanced subset);
- ``true``: the mean Dice over the whole volume of the model trained on all labels;

beside the ilastik-style reference's whole-volume Dice (:mod:`benchmarks.references`, mean
of two sampling seeds). This is how the first candidate and the margin of the per-dataset
choice were set: with brush strokes every candidate scores ~0.98-1.0 held out (strokes lie
inside structures) while their whole-volume Dice differs by 0.03-0.06, so the choice cannot
rank them and the first candidate must be robust on its own; painted planes label the
borders and the held-out scores do separate the candidates.

Run (in memory; ~3 min per volume and label set with strokes on 2 cores)::

    python benchmarks/cv_ranking.py --volumes phantom,fossil_iso,mri --labels strokes
    python benchmarks/cv_ranking.py --labels strokes,painted --out ranking.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import volumes as V  # noqa: E402

#: candidate name -> (feature settings key, two stages, class balance or None for the default)
CANDIDATES = {
    "full, one stage": ("full", False, 1.0),
    "structure, two stages": ("structure", True, None),
    "default, two stages": ("default", True, None),
    "structure, one stage": ("structure", False, None),
    "default, one stage": ("default", False, None),
    "wide, one stage": ("wide", False, None),
}


def feature_sets() -> dict:
    """The feature settings the candidates use (``full``: :data:`~ml4paleo.segmentation.selection.FULL`;
    ``wide``: ``full`` without the Hessian and structure tensor at 0.7)."""
    from ml4paleo.features import FeatureSettings
    from ml4paleo.segmentation.selection import FULL, STRUCTURE

    return {"default": FeatureSettings(), "structure": STRUCTURE, "full": FULL,
            "wide": replace(STRUCTURE, scales=(*STRUCTURE.scales, 5.0, 10.0))}


def reference_dice(vol: V.Vol, labels: np.ndarray, seeds: int = 2) -> float:
    """Whole-volume mean Dice (classes excl. background) of the ilastik-style reference."""
    from benchmarks.references import IlastikStyle

    n = len(vol.class_names)
    ref = IlastikStyle(vol.scan.astype(np.float32), threads=2)
    ds = [np.mean(V.dice_per_class(vol.truth, ref.predict(ref.fit(labels, seed=s)), n)[1:])
          for s in range(seeds)]
    return round(float(np.mean(ds)), 4)


def rank(name: str, label_set: str, names: list[str], quick: bool = False, seed: int = 0) -> dict:
    """Held-out and whole-volume scores of the candidates ``names`` on one volume."""
    import ml4paleo
    from ml4paleo.features import feature_names
    from ml4paleo.io import open_any
    from ml4paleo.segmentation import TrainSettings
    from ml4paleo.segmentation.context import ContextSettings
    from ml4paleo.segmentation.prediction import predict_box
    from ml4paleo.segmentation.selection import Candidate, cross_validate, union_settings
    from ml4paleo.segmentation.training import balanced_sample, gather, labelled_voxels

    vol = V.make(name, quick=quick, seed=seed)
    labels = (V.stroke_labels(vol.truth, 4, seed=seed + 1) if label_set == "strokes"
              else V.painted_labels(vol.truth, 4))
    n = len(vol.class_names)
    classes = [{"name": c} for c in vol.class_names]
    img = open_any(vol.scan, voxel_size=vol.voxel_size)
    sets = feature_sets()
    cands = [Candidate(c, sets[CANDIDATES[c][0]], CANDIDATES[c][1], CANDIDATES[c][2]) for c in names]
    ts = TrainSettings()
    coords, vals, border = labelled_voxels(labels)
    pick = balanced_sample(vals, border, ts.max_per_class, ts.border_weight, ts.seed)
    data = gather(img, coords[pick], (vals[pick] - 1).astype(np.int64), union_settings(cands),
                  ContextSettings(tuple(ts.context_sigmas)), n)
    rows = balanced_sample(data.y, np.zeros(len(data.y), bool), ts.select_per_class, 1.0,
                           ts.seed + 11)
    out = {"volume": name, "labels": label_set, "seed": seed, "reference": reference_dice(vol, labels),
           "candidates": {}}
    whole = tuple(slice(0, k) for k in vol.scan.shape)
    for c in cands:
        cols = data.columns(feature_names(c.features))
        r = cross_validate(data, cols, c.two_stage, c.train_settings(ts), rows, classes)
        t0 = time.perf_counter()
        fixed = replace(c.train_settings(ts).fixed(), two_stage=c.two_stage)
        model = ml4paleo.train(img, labels, classes=list(vol.class_names), feature_settings=c.features,
                               settings=fixed)
        t_train = time.perf_counter() - t0
        pred = np.argmax(predict_box(img, whole, model, vol.voxel_size, threads=2), 0)
        true = float(np.mean(V.dice_per_class(vol.truth, pred, n)[1:]))
        out["candidates"][c.name] = {"cv": None if r is None else round(r["score"], 4),
                                     "true": round(true, 4), "train_s": round(t_train, 1)}
        print(f"{name:13s} {label_set:8s} {c.name:24s} cv {out['candidates'][c.name]['cv']}"
              f"  true {true:.4f}  (reference {out['reference']:.4f})", flush=True)
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", default=",".join(V.SUITE))
    ap.add_argument("--labels", default="strokes")
    ap.add_argument("--candidates", default=";".join(CANDIDATES),
                    help="candidate names separated by ';'")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    names = [c.strip() for c in a.candidates.split(";") if c.strip()]
    bad = [c for c in names if c not in CANDIDATES]
    if bad:
        ap.error(f"unknown candidates {bad}; known: {list(CANDIDATES)}")
    results = []
    for name in a.volumes.split(","):
        for label_set in a.labels.split(","):
            results.append(rank(name, label_set, names, a.quick, a.seed))
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
