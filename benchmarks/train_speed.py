"""Training time on painted or stroked slices: features, the per-dataset choice, the fit.

Builds a :func:`benchmarks.volumes.fossil_iso` scan (default 32 x 512 x 512), labels 4
slices (whole painted planes, or brush strokes), converts the scan to OME-Zarr and trains
:func:`ml4paleo.train` with its defaults from the Zarr, as the web app does. Prints the
seconds of each phase (``model.meta["seconds"]``: features, selection; the fit is the
rest), the chosen configuration, the number of training rows and the peak RSS of the
process (sampled every 0.05 s), and optionally the whole-volume Dice after segmenting.

Run::

    python benchmarks/train_speed.py                          # 4 painted 512^2 slices
    python benchmarks/train_speed.py --labels strokes --shape 24,2048,2048
    python benchmarks/train_speed.py --segment                # + segment and Dice
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import volumes as V  # noqa: E402
from benchmarks.segment_suite import PeakRSS  # noqa: E402

log = logging.getLogger("train_speed")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32,512,512", help="z,y,x of the fossil_iso scan")
    ap.add_argument("--labels", choices=("painted", "strokes"), default="painted")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segment", action="store_true", help="also segment and print Dice")
    ap.add_argument("--work", default=None, help="keep the scan and model here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import ml4paleo
    from ml4paleo.io import open_any

    shape = tuple(int(s) for s in args.shape.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="train_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vol = V.fossil_iso(shape, args.seed)
    np.save(work / "scan.npy", vol.scan)
    image = work / "image.ome.zarr"
    if image.exists():
        shutil.rmtree(image)
    ml4paleo.convert(str(work / "scan.npy"), str(image), voxel_size=vol.voxel_size)
    (work / "scan.npy").unlink()
    labels = (V.painted_labels(vol.truth, args.slices) if args.labels == "painted"
              else V.stroke_labels(vol.truth, args.slices, seed=args.seed + 1))
    log.info("scan %s built and converted in %.1f s", shape, time.perf_counter() - t0)
    with PeakRSS() as rss:
        t1 = time.perf_counter()
        model = ml4paleo.train(str(image), labels, classes=list(vol.class_names))
        t_train = time.perf_counter() - t1
    sec = model.meta["seconds"]
    sel = model.meta.get("selection", {})
    out = {"shape": list(shape), "labels": args.labels, "slices": args.slices,
           "labelled_voxels": int((labels > 0).sum()),
           "training_rows": int(sum(model.meta["training_voxels"].values())),
           "train_s": round(t_train, 2), "features_s": sec["features"],
           "selection_s": sec.get("selection"),
           "fit_s": round(t_train - sec["features"] - (sec.get("selection") or 0.0), 2),
           "chosen": sel.get("chosen"),
           "candidates": {c["name"]: c.get("score") for c in sel.get("candidates", [])},
           "trees": [f.n_trees for f in model.forests], "peak_rss_mb": rss.mb}
    if args.segment:
        model_dir = work / "model"
        model.save(model_dir)
        seg = work / "seg.ome.zarr"
        if seg.exists():
            shutil.rmtree(seg)
        t2 = time.perf_counter()
        ml4paleo.segment(str(image), str(model_dir), seg)
        out["segment_s"] = round(time.perf_counter() - t2, 2)
        pred = np.asarray(open_any(str(seg))[:])
        dice = V.dice_per_class(vol.truth, pred, len(vol.class_names))
        out["dice"] = [round(d, 4) for d in dice]
        out["mean_dice"] = round(float(np.mean(dice[1:])), 4)
    print(json.dumps(out, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
