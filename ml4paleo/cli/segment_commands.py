"""``ml4paleo train`` and ``ml4paleo segment``: thin wrappers over ml4paleo.segmentation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ml4paleo.blocks import tqdm_progress


def _fail(message: str) -> None:
    from ml4paleo.cli import fail

    fail(message)


def _open_source(path: str):
    """Open IMAGE / LABELS: a label-store folder, or any source the readers open."""
    from ml4paleo.io import open_any
    from ml4paleo.segmentation import LabelStore
    from ml4paleo.segmentation.labels import LABELS_NAME

    p = Path(path)
    if p.is_dir() and (p / LABELS_NAME).exists():
        return LabelStore(p)
    return open_any(p)


@click.command("train")
@click.argument("image", type=click.Path(exists=True))
@click.argument("labels", type=click.Path(exists=True))
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--classes", default=None, help="Comma-separated class names, background first.")
@click.option("--preview", is_flag=True, help="Small one-stage forest (fast, less accurate).")
@click.option("--one-stage", is_flag=True, help="Skip the auto-context second stage (faster).")
@click.option("--trees", default=None, help="Most trees per stage, e.g. 64 or 64,64.")
@click.option("--select/--no-select", default=True, show_default=True,
              help="Choose features and stages per dataset by cross-validation over the "
                   "annotated planes (--no-select: train the default configuration as it is).")
@click.option("--select-budget", default=None, type=float,
              help="Seconds the per-dataset choice may take (default 120).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(image, labels, output, classes, preview, one_stage, trees, select, select_budget,
                  quiet):
    """Train a voxel classifier on IMAGE from LABELS (0 = unlabelled, k+1 = class k).

    IMAGE and LABELS: OME-Zarr, .npy or any source the readers open; LABELS may also be
    a label-store folder (a job's annotations/).
    """
    from dataclasses import replace

    from ml4paleo.segmentation import PREVIEW, TrainSettings, train

    try:
        img = _open_source(image)
        lab = _open_source(labels)
        ts = PREVIEW if preview else TrainSettings()
        if one_stage:
            ts = replace(ts, two_stage=False)
        if trees:
            n = [int(t) for t in trees.split(",")]
            ts = replace(ts, n_trees=(n[0], n[-1]), context_trees=None)  # as given
        if not select:
            ts = ts.fixed()
        if select_budget is not None:
            ts = replace(ts, select_budget=select_budget)
        names = [c.strip() for c in classes.split(",")] if classes else None
        t0 = time.perf_counter()
        model = train(img, lab, classes=names, settings=ts,
                      progress=tqdm_progress("features", disable=quiet))
        model.save(output)
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    m = model.meta.get("metrics", {})
    click.echo(f"model saved to {output} ({len(model.forests)} stage(s), "
               f"{time.perf_counter() - t0:.1f} s)")
    sel = model.meta.get("selection")
    if sel:
        scores = ", ".join(f"{c['name']} {c['score']:.3f}" if "score" in c else
                           f"{c['name']} ({c.get('skipped', 'not scored')})" for c in sel["candidates"])
        click.echo(f"chosen: {sel['chosen']} (held-out mean Dice: {scores})")
    if m.get("dice"):
        click.echo("held-out Dice: " + json.dumps({k: round(v, 3) if v is not None else None
                                                    for k, v in m["dice"].items()}))


@click.command("segment")
@click.argument("image", type=click.Path(exists=True))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True), help="Model folder.")
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="Output OME-Zarr labels.")
@click.option("--chunk-size", default=128, show_default=True, type=int, help="Block / chunk edge.")
@click.option("--scheduler", default=None, envvar="ML4PALEO_DASK_SCHEDULER",
              help="Dask scheduler address (default: this process's threads).")
@click.option("--workers", default=None, type=int, help="Local threads (default: CPUs).")
@click.option("--probabilities", is_flag=True, help="Also write uint8 class probabilities.")
@click.option("--min-size", default=0, show_default=True, type=int, help="Remove smaller objects (voxels).")
@click.option("--fill-holes", is_flag=True, help="Fill enclosed background pockets.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def segment_command(image, model_dir, output, chunk_size, scheduler, workers, probabilities,
                    min_size, fill_holes, quiet):
    """Segment IMAGE with a trained model into an OME-Zarr label image (resumable)."""
    from ml4paleo.segmentation import segment

    try:
        # a folder (OME-Zarr, slices) is opened by path (Dask workers reopen it); a single
        # file is read here first; either way this process's threads run the blocks unless
        # a Dask scheduler is given
        is_dir = Path(image).is_dir()
        src = image if is_dir else _open_source(image)
        executor = scheduler or None
        t0 = time.perf_counter()
        out = segment(src, model_dir, output,
                      chunk_size=chunk_size, executor=executor, workers=workers,
                      probabilities=probabilities, min_size=min_size, fill_holes=fill_holes,
                      progress=tqdm_progress("segment", disable=quiet))
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    dt = time.perf_counter() - t0
    n = 1
    for s in out.shape:
        n *= s
    click.echo(f"labels written to {output} ({n / dt / 1e6:.2f} Mvoxel/s)")


commands: list = [train_command, segment_command]
