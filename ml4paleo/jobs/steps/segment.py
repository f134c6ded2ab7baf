"""The segment step: train a model on the annotations (unless an existing model is
requested) and segment the whole image with it."""

from __future__ import annotations

import logging

from ml4paleo.jobs.context import JobContext, StepError
from ml4paleo.jobs.statuses import Status
from ml4paleo.jobs.steps.common import executor, library
from ml4paleo.workspace.ids import new_id
from ml4paleo.workspace.models import ModelNotFound, ModelRegistry, record_model
from ml4paleo.workspace.segmentations import SegmentationRegistry, record_segmentation

KIND = "segment"

log = logging.getLogger(__name__)


def _train(ctx: JobContext, image, models: ModelRegistry, do_segment: bool) -> tuple[str, object]:
    """Train the job's model - once per request, whatever the attempts.

    The version id is reserved in the record before training (``pending_model_id``); an
    attempt that died after saving it (e.g. while segmenting) is retried with that saved
    model instead of training another version, and one that died before saving trains
    again into the same id. Either way the job gets one model version per request.
    """
    model_cls = library("ml4paleo.segmentation", "Model", "model loading")
    reserved = ctx.record.get("pending_model_id")
    if reserved and models.exists(reserved):
        try:
            model = models.load(reserved, model_cls.load)
        except (ModelNotFound, ValueError, OSError) as exc:
            log.warning("job %s: the model %s of an earlier attempt cannot be loaded (%s); "
                        "training again", ctx.job_id, reserved, exc)
        else:
            log.info("job %s: reusing model %s trained by an earlier attempt", ctx.job_id,
                     reserved)
            record_model(ctx.owned_update, reserved, current=True)
            return reserved, model
    train = library("ml4paleo.segmentation", "train", "training")
    label_store_cls = library("ml4paleo.segmentation", "LabelStore", "the label store")
    annotations = ctx.paths.annotations
    if not annotations.exists():
        raise StepError("no annotations to train on: label a few slices first")
    try:
        labels = label_store_cls(annotations)
    except (FileNotFoundError, ValueError) as exc:
        raise StepError(f"no usable annotations ({ctx.public(str(exc))})") from None
    model_id = reserved or new_id()
    # the annotations as of now are used; the version id is kept for a retried attempt
    ctx.set_fields(annotations_pending=False, pending_model_id=model_id)
    ctx.message("training a model on the annotations")
    ctx.set_range(0.0, 0.3 if do_segment else 1.0)
    try:
        model = train(image, labels, progress=ctx.progress)
    except ValueError as exc:  # e.g. only one class annotated: retrying cannot help
        raise StepError(f"training failed: {exc}") from None
    ctx.check()
    models.save(model, source={"kind": "train"}, model_id=model_id)
    record_model(ctx.owned_update, model_id, current=True)
    log.info("job %s: trained model %s", ctx.job_id, model_id)
    return model_id, model


def _existing(ctx: JobContext, models: ModelRegistry, request: dict) -> tuple[str, object]:
    model_cls = library("ml4paleo.segmentation", "Model", "model loading")
    model_id = request.get("model_id") or ctx.record.get("model_id")
    try:
        model = models.load(model_id, model_cls.load)
    except ModelNotFound:
        raise StepError(f"model {model_id!r} does not exist in job {ctx.job_id}") from None
    except ValueError as exc:
        raise StepError(str(exc)) from None
    ctx.set_fields(model_id=model_id)
    return model_id, model


def run(ctx: JobContext) -> dict:
    """Train and/or segment as the job's request says; returns the finished status."""
    from ml4paleo.formats import open_image

    request = ctx.record.get("request") or {}
    do_train = request.get("train", True) is not False
    do_segment = request.get("segment", True) is not False
    image_path = ctx.paths.image
    if not image_path.exists():
        raise StepError("the job has no converted image")
    image = open_image(image_path)
    models = ModelRegistry(ctx.paths)
    if do_train:
        model_id, model = _train(ctx, image, models, do_segment)
    else:
        model_id, model = _existing(ctx, models, request)
    if not do_segment:
        return {"status": Status.TRAINED.value, "model_id": model_id, "pending_model_id": None,
                "message": f"{models.name(model_id)} trained"}

    segment = library("ml4paleo.segmentation", "segment", "segmentation")
    ctx.set_status(Status.SEGMENTING, "segmenting the whole image")
    ctx.set_range(0.3 if do_train else 0.0, 1.0)
    segs = SegmentationRegistry(ctx.paths)
    # a retried attempt (runner died) resumes the same segmentation from its done-markers
    seg_id = segs.create(ctx.record.get("pending_segmentation_id"))
    ctx.set_fields(pending_segmentation_id=seg_id)
    # an NGFF label of the image (its world, the model's class names and colours), listed
    # in the image's labels/ once complete
    cleanup = {"min_size": int(request.get("min_size") or 0),
               "fill_holes": bool(request.get("fill_holes"))}
    if cleanup["min_size"] or cleanup["fill_holes"]:
        ctx.message("segmenting the whole image, then cleaning it up")
    segment(image, model, ctx.paths.labels(seg_id), chunk_size=ctx.settings.chunk_size,
            executor=executor(ctx.settings), workers=ctx.settings.workers,
            progress=ctx.progress, **cleanup)
    ctx.check()
    segs.write_meta(seg_id, model_id=model_id, cleanup=cleanup)
    record_segmentation(ctx.owned_update, seg_id)
    return {"status": Status.SEGMENTED.value, "pending_model_id": None,
            "message": f"{segs.name(seg_id)} finished"}
