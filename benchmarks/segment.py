"""Segmentation benchmark on ml4paleo's own phantom: this engine vs the references.

The broad suite (six volumes, several generators and a real scan) is
``benchmarks/segment_suite.py``; this script is the quick single-phantom check plus the
annotator's interactive latency. With the same labels for every method:

- ``ml4paleo``: two-stage auto-context forest, trained with :func:`ml4paleo.segmentation.train`,
  segmented Zarr -> Zarr with :func:`ml4paleo.segmentation.segment` (local worker processes);
- ``ilastik-style`` and ``original-2d``: see :mod:`benchmarks.references` (ilastik's six
  feature families at its default scales, a balanced 100-tree forest, one stage; the
  original per-slice 2D forest).

Reports Dice per class, train seconds, segment voxels/s (end to end for ml4paleo: Zarr in,
Zarr out, including the pyramid), peak RSS (this process + workers) and the annotator's
retrain + one-slice preview latency on a 512 x 512 slice.

Run: ``python benchmarks/segment.py [--shape 128,256,256] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.references import IlastikStyle, Original2D  # noqa: E402
from ml4paleo import formats as omezarr  # noqa: E402
from ml4paleo.phantom import make_phantom, painted_slices, scribble_labels  # noqa: E402
from ml4paleo.segmentation import (  # noqa: E402
    InteractiveSession,
    LabelStore,
    segment,
    train,
)


class PeakRSS:
    """Samples the RSS of this process plus its children every 0.1 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def dice_per_class(truth, pred, n):
    out = []
    for c in range(n):
        t, p = truth == c, pred == c
        out.append(round(float(2 * (t & p).sum() / max(t.sum() + p.sum(), 1)), 4))
    return out


# ---------------------------------------------------------------- references
_REF_CACHE: dict = {}


def run_reference(image, labels, truth, n_classes, seed=0):
    """The ilastik-style reference (:class:`benchmarks.references.IlastikStyle`)."""
    if "ref" not in _REF_CACHE:  # same features for every label set
        _REF_CACHE["ref"] = IlastikStyle(image)
    ref = _REF_CACHE["ref"]
    t1 = time.perf_counter()
    rf = ref.fit(labels, seed=seed)
    t_fit = time.perf_counter() - t1
    t2 = time.perf_counter()
    pred = ref.predict(rf)
    t_pred = time.perf_counter() - t2
    return {
        "dice": dice_per_class(truth, pred, n_classes),
        "train_s": round(ref.feature_s + t_fit, 2),
        "features_whole_volume_s": round(ref.feature_s, 2),
        "segment_voxels_per_s": round(image.size / (ref.feature_s + t_pred)),
    }


def run_original_2d(image, labels, truth, n_classes, painted):
    """The original per-slice method (:class:`benchmarks.references.Original2D`)."""
    t0 = time.perf_counter()
    m = Original2D().fit(image, labels, painted=painted)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = np.stack([m.predict_slice(image[z]) for z in range(image.shape[0])])
    t_pred = time.perf_counter() - t1
    return {
        "dice": dice_per_class(truth, pred, n_classes),
        "train_s": round(t_train, 2),
        "segment_voxels_per_s": round(image.size / t_pred),
    }


# ---------------------------------------------------------------- this engine
def run_ml4paleo(img_path, image, labels, truth, n_classes, tmp, chunk, workers):
    t0 = time.perf_counter()
    model = train(image, labels)
    t_train = time.perf_counter() - t0
    model_dir = tmp / "model"
    model.save(model_dir)
    trees = [f.n_trees for f in model.forests]
    metrics = model.meta.get("metrics")
    del model  # a segmentation run (runner, CLI) holds no trained forest in the parent
    out = tmp / "seg.ome.zarr"
    if out.exists():
        shutil.rmtree(out)
    cpu0 = _cpu_seconds()
    with PeakRSS() as rss:
        t1 = time.perf_counter()
        seg = segment(str(img_path), str(model_dir), out, chunk_size=chunk, workers=workers)
        t_seg = time.perf_counter() - t1
    cpu = _cpu_seconds() - cpu0
    pred = np.asarray(seg.array[:])
    return {
        "dice": dice_per_class(truth, pred, n_classes),
        "train_s": round(t_train, 2),
        "segment_voxels_per_s": round(image.size / t_seg),
        "segment_s": round(t_seg, 2),
        # CPU seconds of this process + its workers: what an idle 2-core machine would need
        "segment_cpu_s": round(cpu, 2),
        "voxels_per_s_2_idle_cores_est": round(2 * image.size / cpu),
        "trees": trees,
        "peak_rss_mb": round(rss.peak / 2**20),
        "held_out_metrics": metrics,
    }


def _cpu_seconds() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def run_latency(tmp, repeats=5):
    """Retrain + one-slice preview after new strokes, on a 512 x 512 slice."""
    image, truth = make_phantom((48, 512, 512), seed=11)
    store = LabelStore.create(tmp / "ann", image.shape, classes=["matrix", "bone", "tooth"])
    strokes = scribble_labels(truth, [24], seed=0, strokes_per_class=4)
    store.write_slice(0, 24, strokes[24])
    session = InteractiveSession(image, store)
    t0 = time.perf_counter()
    session.retrain()
    session.predict_slice(0, 24)
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        more = scribble_labels(truth, [24], seed=100 + r, strokes_per_class=1)[24]
        t = time.perf_counter()
        store.write_slice(0, 24, more, merge=True)
        session.retrain()
        session.predict_slice(0, 24)
        times.append(time.perf_counter() - t)
    return {"first_s": round(first, 3), "p50_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "slice": "512x512"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--json", default=None, help="Write the results here too.")
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="ml4paleo-bench-"))
    results = {"shape": list(shape), "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    try:
        image, truth = make_phantom(shape, seed=args.seed)
        n_classes = int(truth.max()) + 1
        img = omezarr.create_image(tmp / "image.ome.zarr", shape, image.dtype, chunks=args.chunk)
        img.array[:] = image
        label_sets = {
            "strokes": scribble_labels(truth, args.slices, seed=args.seed + 1),
            "painted": painted_slices(truth, args.slices),
        }
        # this engine first, so its peak RSS is not inflated by the reference's feature stack
        for name, labels in label_sets.items():
            results[name] = {"ml4paleo": run_ml4paleo(tmp / "image.ome.zarr", image, labels, truth,
                                                      n_classes, tmp, args.chunk, args.workers)}
            print(name, "ml4paleo", json.dumps(results[name]["ml4paleo"]), flush=True)
        if not args.skip_latency:
            results["interactive"] = run_latency(tmp)
            print("interactive", json.dumps(results["interactive"]), flush=True)
        if not args.skip_reference:
            for name, labels in label_sets.items():
                res = results[name]
                res["ilastik_style"] = run_reference(image, labels, truth, n_classes)
                print(name, "ilastik-style", json.dumps(res["ilastik_style"]), flush=True)
                res["original_2d"] = run_original_2d(image, labels, truth, n_classes,
                                                     painted=name == "painted")
                print(name, "original-2d", json.dumps(res["original_2d"]), flush=True)
        _REF_CACHE.clear()
        results["load_avg_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
