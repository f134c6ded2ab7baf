"""The three pipeline steps the runners run: convert, train + segment, mesh.

Each step is a function of a :class:`~ml4paleo.jobs.runner.JobContext` that calls the
library (:mod:`ml4paleo.convert`, :mod:`ml4paleo.segmentation`, :mod:`ml4paleo.meshing`)
on the job's folder and returns the fields to store with the finished status. A library
function that cannot be imported fails the job with a clear error (never fake output).
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ml4paleo.jobs.statuses import Status
from ml4paleo.jobs.store import isoformat, new_id, utcnow

log = logging.getLogger(__name__)


def library(module: str, name: str, what: str) -> Any:
    """Import ``module.name`` or raise :class:`StepError` saying ``what`` is unavailable."""
    from ml4paleo.jobs.runner import StepError

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise StepError(
            f"{what} is not available in this installation: cannot import {module}.{name} ({exc})"
        ) from None


def jsonable(value: Any) -> Any:
    """Convert numpy scalars / tuples / paths into plain JSON values (recursively)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _executor(settings):
    return settings.dask_scheduler or None


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place, replacing ``dest`` (old copy removed after)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{new_id()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- convert
def image_metadata(path: Path) -> dict:
    """Shape, dtype, voxel size, unit and source details of a converted OME-Zarr image."""
    from ml4paleo.omezarr import open_image

    image = open_image(path)
    extra = image.attrs.get("ml4paleo") or {}
    return jsonable({
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "voxel_size": list(image.voxel_size) if image.voxel_size else None,
        "unit": image.unit,
        "levels": len(image.levels),
        "source_type": extra.get("source_type"),
        "source": extra.get("source") or {},
    })


def convert_step(ctx) -> dict:
    """Convert ``upload/`` into ``image.ome.zarr`` and store the image's metadata."""
    convert = library("ml4paleo.convert", "convert", "conversion")
    from ml4paleo.jobs.runner import StepError

    upload = ctx.job_dir / "upload"
    if not upload.is_dir() or not any(p.is_file() for p in upload.rglob("*")):
        raise StepError(f"{upload}: no uploaded files to convert")
    dest = ctx.job_dir / "image.ome.zarr"
    ctx.message("converting the upload to OME-Zarr")
    # written under a temp name and renamed when complete, replacing an earlier attempt's
    convert(upload, dest, chunks=ctx.settings.chunk_size, progress=ctx.progress,
            workers=ctx.settings.workers, overwrite=True)
    metadata = image_metadata(dest)
    fields: dict = {"metadata": metadata,
                    "message": f"converted: {' x '.join(map(str, metadata['shape']))} "
                               f"{metadata['dtype']}"}
    if ctx.record.get("source_type") in (None, "auto") and metadata.get("source_type"):
        fields["source_type"] = metadata["source_type"]
    return fields


# --------------------------------------------------------------------------- segment
def segment_step(ctx) -> dict:
    """Train a model on the annotations (unless an existing model is requested) and
    segment the whole image with it."""
    from ml4paleo.jobs.runner import StepError
    from ml4paleo.omezarr import open_image

    request = ctx.record.get("request") or {}
    do_train = request.get("train", True) is not False
    do_segment = request.get("segment", True) is not False
    image_path = ctx.job_dir / "image.ome.zarr"
    if not image_path.exists():
        raise StepError(f"{image_path}: the job has no converted image")
    image = open_image(image_path)
    models_dir = ctx.job_dir / "models"

    if do_train:
        train = library("ml4paleo.segmentation", "train", "training")
        label_store_cls = library("ml4paleo.segmentation", "LabelStore", "the label store")
        annotations = ctx.job_dir / "annotations"
        if not annotations.exists():
            raise StepError(f"{annotations}: no annotations to train on")
        try:
            labels = label_store_cls(annotations)
        except (FileNotFoundError, ValueError) as exc:
            raise StepError(f"{annotations}: no usable annotations ({exc})") from None
        ctx.set_fields(annotations_pending=False)  # the annotations as of now are used
        ctx.message("training a model on the annotations")
        ctx.set_range(0.0, 0.3 if do_segment else 1.0)
        try:
            model = train(image, labels, progress=ctx.progress)
        except ValueError as exc:  # e.g. only one class annotated: retrying cannot help
            raise StepError(f"training failed: {exc}") from None
        ctx.check()
        model_id = new_id()
        models_dir.mkdir(exist_ok=True)
        tmp = models_dir / f".tmp-{model_id}"
        model.save(tmp)
        os.replace(tmp, models_dir / model_id)
        ctx.owned_update(lambda r: r.update(
            model_id=model_id, models=[*r.get("models", []), model_id]))
        log.info("job %s: trained model %s", ctx.job_id, model_id)
    else:
        model_cls = library("ml4paleo.segmentation", "Model", "model loading")
        model_id = request.get("model_id") or ctx.record.get("model_id")
        if not model_id or not (models_dir / model_id).is_dir():
            raise StepError(f"model {model_id!r} does not exist in job {ctx.job_id}")
        try:
            model = model_cls.load(models_dir / model_id)
        except ValueError as exc:
            raise StepError(str(exc)) from None
        ctx.set_fields(model_id=model_id)

    if not do_segment:
        return {"status": Status.TRAINED.value, "model_id": model_id,
                "message": f"model {model_id} trained"}

    segment = library("ml4paleo.segmentation", "segment", "segmentation")
    ctx.set_status(Status.SEGMENTING, "segmenting the whole image")
    ctx.set_range(0.3 if do_train else 0.0, 1.0)
    # a retried attempt (runner died) resumes the same segmentation from its done-markers
    seg_id = ctx.record.get("pending_segmentation_id") or new_id()
    ctx.set_fields(pending_segmentation_id=seg_id)
    seg_dir = ctx.job_dir / "segmentations" / seg_id
    seg_dir.mkdir(parents=True, exist_ok=True)
    segment(image, model, seg_dir / "labels.ome.zarr", chunk_size=ctx.settings.chunk_size,
            executor=_executor(ctx.settings), workers=ctx.settings.workers,
            progress=ctx.progress)
    ctx.check()
    meta = {"id": seg_id, "job_id": ctx.job_id, "model_id": model_id,
            "created_at": isoformat(utcnow())}
    from ml4paleo.omezarr import write_json_atomic

    write_json_atomic(seg_dir / "segmentation.json", meta)

    def add(record: dict) -> None:
        record["segmentations"] = [*record.get("segmentations", []), seg_id]
        record["segmentation_id"] = seg_id
        record["pending_segmentation_id"] = None

    ctx.owned_update(add)
    return {"status": Status.SEGMENTED.value, "message": f"segmentation {seg_id} finished"}


# --------------------------------------------------------------------------- mesh
def _write_stats_csv(rows: list[dict], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def mesh_step(ctx) -> dict:
    """Mesh every label of a segmentation into ``meshes/`` and write ``stats.csv``."""
    from ml4paleo.jobs.runner import StepError
    from ml4paleo.omezarr import open_image

    mesh = library("ml4paleo.meshing", "mesh", "meshing")
    request = ctx.record.get("request") or {}
    seg_id = request.get("segmentation_id") or ctx.record.get("segmentation_id")
    if not seg_id or seg_id not in ctx.record.get("segmentations", []):
        raise StepError(f"job {ctx.job_id} has no segmentation {seg_id!r} to mesh")
    seg_dir = ctx.job_dir / "segmentations" / seg_id
    labels_path = seg_dir / "labels.ome.zarr"
    if not labels_path.exists():
        raise StepError(f"{labels_path}: the segmentation's labels are missing")
    labels = open_image(labels_path)
    formats = tuple(request.get("formats") or ("stl",))
    tmp = seg_dir / f".meshes.tmp-{new_id()}"
    tmp.mkdir()
    ctx.message(f"meshing segmentation {seg_id}")
    try:
        smooth = {"smooth": request["smooth"]} if request.get("smooth") else {}
        summary = mesh(labels, tmp, chunk_size=ctx.settings.chunk_size, formats=formats,
                       simplify=request.get("simplify"), executor=_executor(ctx.settings),
                       workers=ctx.settings.workers, progress=ctx.progress, **smooth)
        ctx.check()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats = tmp / "stats.csv"
    if stats.is_file():
        shutil.copyfile(stats, seg_dir / ".stats.csv.tmp")
        os.replace(seg_dir / ".stats.csv.tmp", seg_dir / "stats.csv")
    else:
        label_stats = library("ml4paleo.meshing", "label_stats", "label statistics")
        _write_stats_csv(label_stats(labels, voxel_size=labels.voxel_size), seg_dir / "stats.csv")
    _replace_dir(tmp, seg_dir / "meshes")
    files = sorted(p.name for p in (seg_dir / "meshes").iterdir() if p.is_file())
    info = {"formats": list(formats), "files": files, "created_at": isoformat(utcnow()),
            "summary": jsonable(summary) if isinstance(summary, dict) else None}
    ctx.owned_update(lambda r: r.setdefault("meshes", {}).__setitem__(seg_id, info))
    n = sum(1 for f in files if not f.endswith(".csv"))
    return {"status": Status.MESHED.value, "message": f"{n} mesh file(s) written for {seg_id}"}


#: kind -> step function
STEPS = {"convert": convert_step, "segment": segment_step, "mesh": mesh_step}
