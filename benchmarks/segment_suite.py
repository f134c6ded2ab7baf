"""Segmentation suite: ml4paleo vs an ilastik-style reference vs the original 2D method.

For every volume of :mod:`benchmarks.volumes` (``SUITE``) and each label set (brush
strokes on 4 slices, 4 painted slices), in one run per volume:

1. the scan is written as ``.npy`` and converted to OME-Zarr with :func:`ml4paleo.convert`;
2. ``ml4paleo``: :func:`ml4paleo.train` with its defaults (image read from the OME-Zarr),
   then :func:`ml4paleo.segment` Zarr -> Zarr (default chunking and workers), once per
   training seed (``--our-seeds``, 2 by default like the reference's ``--seeds``: one
   seed's forest alone moves fossil_iso strokes by 0.018 Dice, so one against the mean of
   several is not a comparison); its mean and range over the seeds are shown;
3. ``ilastik-style`` (:class:`benchmarks.references.IlastikStyle`): the scan read from the
   OME-Zarr, features once, a forest per label set and sampling seed, labels written to a
   Zarr array; its range over the seeds is shown;
4. ``original-2d`` (:class:`benchmarks.references.Original2D`): per-slice Zarr -> Zarr.

Each method runs in its own subprocess, which samples the RSS of itself plus its children
every 0.05 s (peak RSS per method, workers included). Columns: Dice per class and mean,
train s, segment voxel/s (Zarr in -> labels Zarr out; the reference's includes its feature
computation, as a new volume needs it; its train s includes the features too), peak RSS.

Run::

    python benchmarks/segment_suite.py                    # the full suite
    python benchmarks/segment_suite.py --quick            # small sizes (smoke test)
    python benchmarks/segment_suite.py --volumes rock,mri --out results.json
    python benchmarks/segment_suite.py --texture-check    # default vs + structure tensor
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import volumes as V  # noqa: E402

LABEL_SETS = ("strokes", "painted")
METHODS = ("ml4paleo", "ml4paleo-fixed", "ilastik-style", "original-2d")


class PeakRSS:
    """Peak RSS (bytes) of this process plus all its descendants, sampled every 0.05 s."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._sample())

    @property
    def mb(self) -> int:
        return round(self.peak / 2**20)


def _mean(xs) -> float:
    return round(float(np.mean(xs)), 4)


def _seed_summary(d: np.ndarray) -> dict:
    """Dice over seeds (rows of ``d``, one column per class): mean, min and max per class,
    the mean over the non-background classes and its range over the seeds."""
    per_seed = d[:, 1:].mean(1)
    return {"dice": [_mean(c) for c in d.T],
            "dice_min": [round(float(x), 4) for x in d.min(0)],
            "dice_max": [round(float(x), 4) for x in d.max(0)],
            "mean_dice": _mean(d[:, 1:].mean()),
            "mean_dice_range": [round(float(per_seed.min()), 4), round(float(per_seed.max()), 4)]}


def _create_labels_zarr(path: Path, shape, chunk: int):
    import zarr

    return zarr.create_array(str(path), shape=shape, chunks=(chunk,) * 3, dtype=np.uint8,
                             fill_value=0, overwrite=True)


# ----------------------------------------------------------------------------- children
def child_ml4paleo(spec: dict) -> list[dict]:
    import ml4paleo
    import ml4paleo.segmentation
    from ml4paleo.io import open_any

    work = Path(spec["work"])
    image = str(work / "image.ome.zarr")
    truth = np.load(work / "truth.npy")
    n = len(spec["classes"])
    rows = []
    for lab_name in spec["labels"]:
        labels = np.load(work / f"labels_{lab_name}.npy")
        per_seed = []
        for seed in range(max(1, int(spec.get("our_seeds", 1)))):
            with PeakRSS() as r_train:
                t0 = time.perf_counter()
                # ml4paleo: the per-dataset choice (the default); ml4paleo-fixed: the default
                # configuration trained as it is (main's behaviour before the choice); the
                # seed of the forests and of the sampling, like the reference's
                ts = ml4paleo.segmentation.TrainSettings(seed=seed)
                if spec["method"] == "ml4paleo-fixed":
                    ts = ts.fixed()
                model = ml4paleo.train(image, labels, classes=list(spec["classes"]), settings=ts)
                t_train = time.perf_counter() - t0
            model_dir = work / f"model_{lab_name}"
            if model_dir.exists():
                shutil.rmtree(model_dir)
            model.save(model_dir)
            trees = [f.n_trees for f in model.forests]
            held_out = model.meta.get("metrics", {})
            chosen = model.meta.get("selection", {}).get("chosen")
            del model
            out = work / f"ml4paleo_{lab_name}.ome.zarr"
            if out.exists():
                shutil.rmtree(out)
            with PeakRSS() as r_seg:
                t1 = time.perf_counter()
                ml4paleo.segment(image, str(model_dir), out, chunk_size=spec["chunk"],
                                 workers=spec.get("workers"))
                t_seg = time.perf_counter() - t1
            pred = np.asarray(open_any(str(out))[:])
            per_seed.append({"dice": V.dice_per_class(truth, pred, n), "chosen": chosen,
                             "train_s": t_train, "segment_s": t_seg, "trees": trees,
                             "train_rss_mb": r_train.mb, "segment_rss_mb": r_seg.mb,
                             "held_out": held_out.get("dice")})
        d = np.array([p["dice"] for p in per_seed])
        seg_s = float(np.mean([p["segment_s"] for p in per_seed]))
        chosen = sorted({p["chosen"] for p in per_seed if p["chosen"]})
        rows.append({"method": spec["method"], "labels": lab_name,
                     **_seed_summary(d),
                     "seeds": len(per_seed), "chosen": " | ".join(chosen) or None,
                     "train_s": round(float(np.mean([p["train_s"] for p in per_seed])), 2),
                     "segment_s": round(seg_s, 2), "voxels_per_s": round(truth.size / seg_s),
                     "train_rss_mb": max(p["train_rss_mb"] for p in per_seed),
                     "segment_rss_mb": max(p["segment_rss_mb"] for p in per_seed),
                     "peak_rss_mb": max(max(p["train_rss_mb"], p["segment_rss_mb"]) for p in per_seed),
                     "per_seed": per_seed})
        del labels
    return rows


def child_reference(spec: dict) -> list[dict]:
    from benchmarks.references import IlastikStyle
    from ml4paleo.io import open_any

    work = Path(spec["work"])
    truth = np.load(work / "truth.npy")
    n = len(spec["classes"])
    rows = []
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        image = np.asarray(open_any(str(work / "image.ome.zarr"))[:])
        t_read = time.perf_counter() - t0
        ref = IlastikStyle(image, threads=spec["threads"])
        del image
        for lab_name in spec["labels"]:
            labels = np.load(work / f"labels_{lab_name}.npy")
            per_seed = []
            for seed in range(spec["seeds"]):
                t1 = time.perf_counter()
                rf = ref.fit(labels, seed=seed)
                t_fit = time.perf_counter() - t1
                t2 = time.perf_counter()
                pred = ref.predict(rf)
                t_pred = time.perf_counter() - t2
                t3 = time.perf_counter()
                _create_labels_zarr(work / f"ref_{lab_name}_{seed}.zarr", pred.shape, spec["chunk"])[:] = pred
                t_write = time.perf_counter() - t3
                del rf
                per_seed.append({"dice": V.dice_per_class(truth, pred, n), "fit_s": t_fit,
                                 "predict_s": t_pred, "write_s": t_write})
            d = np.array([p["dice"] for p in per_seed])
            seg_s = t_read + ref.feature_s + np.mean([p["predict_s"] + p["write_s"] for p in per_seed])
            rows.append({"method": "ilastik-style", "labels": lab_name,
                         **_seed_summary(d),
                         "seeds": spec["seeds"],
                         "train_s": round(ref.feature_s + np.mean([p["fit_s"] for p in per_seed]), 2),
                         "features_s": round(ref.feature_s, 2),
                         "fit_s": [round(p["fit_s"], 2) for p in per_seed],
                         "segment_s": round(float(seg_s), 2),
                         "voxels_per_s": round(truth.size / seg_s)})
    for r in rows:
        r["peak_rss_mb"] = rss.mb  # one process for both label sets
    return rows


def child_original(spec: dict) -> list[dict]:
    from benchmarks.references import Original2D
    from ml4paleo.io import open_any

    work = Path(spec["work"])
    truth = np.load(work / "truth.npy")
    n = len(spec["classes"])
    rows = []
    for lab_name in spec["labels"]:
        labels = np.load(work / f"labels_{lab_name}.npy")
        with PeakRSS() as r_train:
            vol = open_any(str(work / "image.ome.zarr"))
            t0 = time.perf_counter()
            m = Original2D(threads=spec["threads"]).fit(vol, labels, painted=lab_name == "painted")
            t_train = time.perf_counter() - t0
        del labels
        with PeakRSS() as r_seg:
            t1 = time.perf_counter()
            vol = open_any(str(work / "image.ome.zarr"))
            out = _create_labels_zarr(work / f"orig_{lab_name}.zarr", vol.shape, spec["chunk"])
            c = spec["chunk"]
            for z0 in range(0, vol.shape[0], c):  # one chunk-row of slices at a time
                slab = np.asarray(vol[z0 : z0 + c])
                out[z0 : z0 + c] = np.stack([m.predict_slice(p) for p in slab])
            t_seg = time.perf_counter() - t1
        pred = np.asarray(out[:])
        dice = V.dice_per_class(truth, pred, n)
        rows.append({"method": "original-2d", "labels": lab_name, "dice": dice,
                     "mean_dice": _mean(dice[1:]), "train_s": round(t_train, 2),
                     "segment_s": round(t_seg, 2), "voxels_per_s": round(truth.size / t_seg),
                     "peak_rss_mb": max(r_train.mb, r_seg.mb), "train_rss_mb": r_train.mb,
                     "segment_rss_mb": r_seg.mb})
    return rows


CHILDREN = {"ml4paleo": child_ml4paleo, "ml4paleo-fixed": child_ml4paleo, "ilastik-style": child_reference,
            "original-2d": child_original}


def _run_child(spec: dict) -> list[dict]:
    """Run one method in a fresh interpreter; returns its rows."""
    spec_path = Path(spec["work"]) / f"spec_{spec['method']}.json"
    res_path = Path(spec["work"]) / f"result_{spec['method']}.json"
    spec = {**spec, "result": str(res_path)}
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                          env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['method']} on {spec['volume']} failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(res_path.read_text())
    for r in rows:
        r["wall_s"] = round(time.perf_counter() - t0, 1)
    return rows


# ----------------------------------------------------------------------------- texture check
def texture_check(shape=(40, 80, 80), seed: int = 0, slices: int = 4, tmp: Path | None = None) -> dict:
    """ml4paleo's default features vs + structure tensor on :func:`volumes.texture_coherence`.

    Classes separable only by structure-tensor texture: does the default configuration
    fail, does adding the ``structure`` family (at its default scales, and at larger scales
    with a wider integration window) succeed? The ilastik-style reference for comparison.
    """
    import dataclasses

    import ml4paleo
    from benchmarks.references import IlastikStyle
    from ml4paleo.features import FeatureSettings

    vol = V.texture_coherence(shape, seed)
    d = FeatureSettings()
    configs = {
        "default": d,
        "+structure": dataclasses.replace(d, families=(*d.families, "structure")),
        "+structure to 3.5, outer 1.0": dataclasses.replace(
            d, families=(*d.families, "structure"), structure_max_scale=3.5, structure_outer=1.0),
    }
    tmp = Path(tmp or tempfile.mkdtemp(prefix="ml4paleo-texture-"))
    out: dict = {"shape": list(shape), "classes": list(vol.class_names), "results": []}
    ref = IlastikStyle(vol.scan)
    for lab_name, labels in (("strokes", V.stroke_labels(vol.truth, slices, seed=seed + 1)),
                             ("painted", V.painted_labels(vol.truth, slices))):
        for cname, fs in configs.items():
            t0 = time.perf_counter()
            model = ml4paleo.train(vol.scan, labels, classes=list(vol.class_names), feature_settings=fs)
            t_train = time.perf_counter() - t0
            seg = ml4paleo.segment(vol.scan, model, tmp / f"{lab_name}_{len(out['results'])}.ome.zarr")
            pred = np.asarray(seg.array[:])
            dice = V.dice_per_class(vol.truth, pred, 2)
            held = (model.meta.get("metrics") or {}).get("dice")
            out["results"].append({"labels": lab_name, "config": cname, "dice": dice,
                                   "train_s": round(t_train, 2), "held_out_dice": held})
            print(f"{lab_name:8s} {cname:32s} Dice incoherent/coherent {dice[0]:.3f} / {dice[1]:.3f}"
                  f"  held-out {held}", flush=True)
        rf = ref.fit(labels, seed=0)
        dice = V.dice_per_class(vol.truth, ref.predict(rf), 2)
        out["results"].append({"labels": lab_name, "config": "ilastik-style", "dice": dice})
        print(f"{lab_name:8s} {'ilastik-style reference':32s} Dice incoherent/coherent "
              f"{dice[0]:.3f} / {dice[1]:.3f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- driver
def prepare(name: str, work: Path, quick: bool, slices: int, seed: int) -> dict:
    """Build the volume, its labels and its OME-Zarr image in ``work``."""
    import ml4paleo

    t0 = time.perf_counter()
    vol = V.make(name, quick=quick, seed=seed)
    t_gen = time.perf_counter() - t0
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "scan.npy", vol.scan)
    np.save(work / "truth.npy", vol.truth)
    np.save(work / "labels_strokes.npy", V.stroke_labels(vol.truth, slices, seed=seed + 1))
    np.save(work / "labels_painted.npy", V.painted_labels(vol.truth, slices))
    t1 = time.perf_counter()
    unit = "millimeter" if name == "mri" else "micrometer"
    ml4paleo.convert(str(work / "scan.npy"), str(work / "image.ome.zarr"),
                     voxel_size=vol.voxel_size, unit=unit)
    t_conv = time.perf_counter() - t1
    (work / "scan.npy").unlink()
    frac = np.bincount(vol.truth.ravel(), minlength=len(vol.class_names)) / vol.truth.size
    return {"volume": name, "shape": list(vol.scan.shape), "voxels": int(vol.scan.size),
            "voxel_size": list(vol.voxel_size), "classes": list(vol.class_names),
            "class_fractions": [round(float(f), 4) for f in frac],
            "generate_s": round(t_gen, 1), "convert_s": round(t_conv, 1)}


def run_volume(name: str, tmp: Path, args) -> dict:
    work = tmp / name
    info = prepare(name, work, args.quick, args.slices, args.seed)
    print(f"# {name}: shape {info['shape']} voxel size {info['voxel_size']} classes "
          f"{info['classes']} fractions {info['class_fractions']} (generate {info['generate_s']} s,"
          f" convert {info['convert_s']} s)", flush=True)
    rows = []
    base = {"work": str(work), "volume": name, "classes": info["classes"], "labels": list(LABEL_SETS),
            "chunk": args.chunk, "workers": args.workers, "threads": args.threads,
            "seeds": args.seeds, "our_seeds": args.our_seeds}
    for method in args.methods:
        t0 = time.perf_counter()
        got = _run_child({**base, "method": method})
        print(f"#   {method}: {time.perf_counter() - t0:.0f} s", flush=True)
        rows += got
    info["rows"] = rows
    info["load_avg"] = list(os.getloadavg())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table([info]), flush=True)
    return info


def _fmt_dice(r: dict) -> str:
    if "dice_min" in r and r.get("seeds", 1) > 1:
        return " / ".join(f"{lo:.3f}-{hi:.3f}" if hi - lo >= 0.0005 else f"{lo:.3f}"
                          for lo, hi in zip(r["dice_min"][1:], r["dice_max"][1:], strict=True))
    return " / ".join(f"{d:.3f}" for d in r["dice"][1:])


def format_table(results: list[dict]) -> str:
    """The markdown table: Dice of the non-background classes (class 0's in the JSON)."""
    lines = ["| volume | labels | method | Dice per class (excl. background) | mean | train s |"
             " segment voxel/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for info in results:
        cls = "/".join(info["classes"][1:])
        for lab in LABEL_SETS:
            ours = next((r for r in info["rows"] if r["method"] == "ml4paleo" and r["labels"] == lab), None)
            for r in (r for r in info["rows"] if r["labels"] == lab):
                mean = f"{r['mean_dice']:.3f}"
                if "mean_dice_range" in r and r.get("seeds", 1) > 1:
                    lo, hi = r["mean_dice_range"]
                    mean = f"{r['mean_dice']:.3f} ({lo:.3f}-{hi:.3f})"
                if ours is not None and r is ours:
                    ref = next((x for x in info["rows"] if x["method"] == "ilastik-style"
                                and x["labels"] == lab), None)
                    if ref is not None:  # seed means against seed means
                        mean += f" [{r['mean_dice'] - ref['mean_dice']:+.3f}]"
                method = r["method"] + (f" [{r['chosen']}]" if r.get("chosen") else "")
                lines.append(f"| {info['volume']} ({cls}) | {lab} | {method} | {_fmt_dice(r)} |"
                             f" {mean} | {r['train_s']:.1f} | {r['voxels_per_s']:,} |"
                             f" {r['peak_rss_mb']:,} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--volumes", default=",".join(V.SUITE),
                    help=f"comma-separated, from {sorted({**V.SUITE, **V.EXTRA})}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--seeds", type=int, default=2, help="sampling seeds of the reference")
    ap.add_argument("--our-seeds", type=int, default=2,
                    help="seeds of ml4paleo's training (forests, sampling), as the reference's")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="threads of the reference methods")
    ap.add_argument("--tmp", default=None, help="work folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--texture-check", action="store_true",
                    help="only: ml4paleo default vs + structure tensor on the texture_st volume")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.texture_check:
        res = texture_check(V.EXTRA["texture_st"][2 if args.quick else 1], seed=args.seed,
                            slices=args.slices)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return [res]
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        rows = CHILDREN[spec["method"]](spec)
        Path(spec["result"]).write_text(json.dumps(rows))
        return rows
    args.methods = [m for m in args.methods.split(",") if m]
    bad = set(args.methods) - set(METHODS)
    if bad:
        ap.error(f"unknown methods {sorted(bad)}; known: {METHODS}")
    names = [v for v in args.volumes.split(",") if v]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="ml4paleo-suite-"))
    header = {"cpus": os.cpu_count(), "load_avg_at_start": list(os.getloadavg()),
              "quick": args.quick, "seeds": args.seeds,
              "our_seeds": args.our_seeds}
    print(f"# suite: {names}, {'quick' if args.quick else 'full'} sizes, load average "
          f"{header['load_avg_at_start']} on {header['cpus']} CPUs", flush=True)
    results = []
    t0 = time.perf_counter()
    try:
        for name in names:
            t = time.perf_counter()
            results.append(run_volume(name, tmp, args))
            results[-1]["volume_s"] = round(time.perf_counter() - t, 1)
            print(f"# {name} done in {results[-1]['volume_s']} s", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({**header, "volumes": results}, indent=1))
    finally:
        if not args.keep and not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    header["total_s"] = round(time.perf_counter() - t0, 1)
    header["load_avg_at_end"] = list(os.getloadavg())
    print(f"\n## all volumes ({header['total_s']} s, load average at end {header['load_avg_at_end']})")
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "volumes": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
