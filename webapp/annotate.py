"""Annotation studio routes: the annotator, gallery and models pages and their JSON API.

Thin over :mod:`ml4paleo.annotation` (mask decoding, overlays, the per-job
:class:`~ml4paleo.annotation.JobAnnotator`) and :mod:`ml4paleo.jobs` (status rules).
The server keeps one in-memory annotator (image, label store, interactive session with
cached features) per job in a small LRU, so previews never reload from disk.

Also keeps the original ml4paleo annotation routes working:
``GET /api/annotate/<id>/images/next``, ``POST /api/annotate/<id>/data/submit``,
``POST /api/annotate/<id>/data/predict`` and ``POST /api/job/<id>/retrain|start|mesh``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from ml4paleo.annotation import (
    AXIS_NAMES,
    FILMSTRIP_SHAPE_ZYX,
    MAX_MASK_PIXELS,
    AnnotationError,
    JobAnnotator,
    SessionPool,
    apply_window,
    class_overlay,
    cutout_region,
    decode_image_array,
    decode_label_mask,
    encode_png,
    encode_rle,
    filmstrip_slice,
    legacy_mask_to_labels,
    legacy_prediction_png,
    parse_axis,
    plane_shape,
    png_base64,
    rasterize_polygons,
    sample_metadata_for_z,
    thumbnail,
    uncertainty_overlay,
    validate_sample_metadata,
    zinfo_header,
)
from ml4paleo.meshing.smooth import SMOOTH_LEVELS

from .common import get_job, json_body, store

log = logging.getLogger(__name__)
bp = Blueprint("annotate", __name__)

POOL_SIZE = 3
# model / segmentation ids (the job store's are URL-safe base64 and may start with "-")
_MODEL_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


# ----------------------------------------------------------------------------- helpers
def _pool() -> SessionPool:
    pool = current_app.extensions.get("ml4paleo_annotators")
    if pool is None:
        pool = current_app.extensions.setdefault("ml4paleo_annotators", SessionPool(POOL_SIZE))
    return pool


def _job_dir(job_id: str) -> Path:
    get_job(job_id)
    return Path(store().job_dir(job_id))


@contextmanager
def _annotator(job_id: str):
    """The job's in-memory annotator, locked for the duration of the block."""
    folder = _job_dir(job_id)
    pool = _pool()

    def build() -> JobAnnotator:
        try:
            return JobAnnotator(folder)
        except AnnotationError as exc:
            abort(409, str(exc))

    ann = pool.get(job_id, build)
    with ann.lock:
        try:
            yield ann
        except AnnotationError as exc:
            abort(400, str(exc))


def _axis_index(source: dict | None = None) -> tuple[int, int]:
    src = source if source is not None else request.args
    try:
        axis = parse_axis(src.get("axis", "z"))
    except AnnotationError as exc:
        abort(400, str(exc))
    raw = src.get("index")
    if raw is None or isinstance(raw, bool):
        abort(400, "index is required")
    if isinstance(raw, float) and not raw.is_integer():  # also NaN, Infinity (JSON allows them)
        abort(400, f"index must be an integer, got {raw!r}")
    try:
        index = int(raw)
    except (TypeError, ValueError, OverflowError):
        abort(400, f"index must be an integer, got {raw!r}")
    return axis, index


def _status_value(record: dict) -> str:
    s = record.get("status")
    return str(getattr(s, "value", s))


def _record_annotation(job_id: str) -> dict:
    """Tell the job store annotations changed (keeps queued/running work)."""
    from ml4paleo.jobs import InvalidTransition

    try:
        # new labels mean the next segmentation should train on them: drop the choice
        return store().record_annotation(job_id, chosen_model_id=None)
    except InvalidTransition as exc:
        abort(409, str(exc))


def _data_url(arr: np.ndarray) -> str:
    return "data:image/png;base64," + png_base64(arr)


def _preview(ann: JobAnnotator, axis: int, index: int, *, retrain: bool = True) -> dict:
    """Retrain (if labels changed) and predict one plane: overlay + uncertainty data URLs."""
    t0 = time.perf_counter()
    if retrain:
        ann.retrain()
    t1 = time.perf_counter()
    pred = ann.predict(axis, index)
    t2 = time.perf_counter()
    out: dict = {
        "axis": AXIS_NAMES[axis],
        "index": index,
        "model_version": ann.model_version,
        "stale": ann.stale,
    }
    if pred is None:
        out.update(overlay=None, uncertainty=None,
                   message="label at least two classes to see a prediction")
    else:
        classes2d, probs = pred
        from ml4paleo.annotation import uncertainty_from_probabilities

        unc = uncertainty_from_probabilities(probs)
        out.update(
            overlay=_data_url(class_overlay(classes2d, ann.colors)),
            uncertainty=_data_url(uncertainty_overlay(unc)),
            fractions={c["name"]: float((classes2d == k).mean())
                       for k, c in enumerate(ann.classes)},
            mean_uncertainty=float(unc.mean()),
        )
    out["timing"] = {"retrain_s": round(t1 - t0, 4), "predict_s": round(t2 - t1, 4),
                     "total_s": round(time.perf_counter() - t0, 4)}
    return out


def _png_response(arr: np.ndarray, cache: bool = False) -> Response:
    resp = Response(encode_png(arr), mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=60" if cache else "no-store"
    return resp


# ----------------------------------------------------------------------------- pages
@bp.get("/job/<job_id>/annotate")
def annotate_page(job_id: str):
    """The annotator: any slice along z/y/x, brush/eraser/polygon/fill, retrain preview."""
    record = get_job(job_id)
    return render_template("annotate.html", job=record, job_id=job_id,
                           viewer_url=_page_url("pages.viewer_page", job_id),
                           view3d_url=_page_url("pages.view3d_page", job_id))


def _page_url(endpoint: str, job_id: str) -> str:
    """URL of another blueprint's page, or "" when that page does not exist."""
    from werkzeug.routing import BuildError

    try:
        return url_for(endpoint, job_id=job_id)
    except BuildError:
        return ""


@bp.get("/job/annotate/<job_id>")
@bp.get("/job/annotate-v2/<job_id>")
def legacy_annotate_page(job_id: str):
    """The original brush and polygon annotators now lead to the one annotator."""
    get_job(job_id)
    return redirect(url_for("annotate.annotate_page", job_id=job_id), code=301)


@bp.get("/job/<job_id>/annotations")
def gallery_page(job_id: str):
    """Every annotated slice as a thumbnail with its classes; delete or reopen."""
    record = get_job(job_id)
    return render_template("annotate_gallery.html", job=record, job_id=job_id)


@bp.get("/job/<job_id>/annotations/<path:filename>")
def annotation_file(job_id: str, filename: str):
    """A file of the job's annotation folder (label log, classes.json); never outside it."""
    from .common import safe_join

    base = _job_dir(job_id) / "annotations"
    target = safe_join(base, filename)
    if not target.is_file():
        abort(404, f"no annotation file {filename!r}")
    return send_file(target)


@bp.get("/job/<job_id>/models")
def models_page(job_id: str):
    """Model versions: classes, label counts, held-out metrics over versions; choose, reuse."""
    record = get_job(job_id)
    return render_template("annotate_models.html", job=record, job_id=job_id)


# ----------------------------------------------------------------------------- new API
@bp.get("/api/job/<job_id>/annotate/info")
def info(job_id: str):
    """Shape, dtype, voxel size, display window, classes, annotated slices, model state."""
    record = get_job(job_id)
    with _annotator(job_id) as ann:
        return jsonify(
            job_id=job_id,
            name=record.get("name"),
            status=_status_value(record),
            shape=list(ann.shape),
            dtype=str(ann.image.dtype),
            voxel_size=list(ann.image.voxel_size),
            unit=ann.image.unit,
            window=ann.window(),
            classes=ann.classes,
            counts={str(k): v for k, v in ann.count_by_class().items()},
            annotated=ann.annotated_slices(),
            model_version=ann.model_version,
            stale=ann.stale,
            chosen_model=record.get("chosen_model_id"),
        )


@bp.get("/api/job/<job_id>/annotate/slice")
def slice_data(job_id: str):
    """One plane: ``format=raw`` (little-endian array, headers X-Shape/X-Dtype) or PNG.

    PNG uses the image's display window unless ``wmin``/``wmax`` are given.
    """
    axis, index = _axis_index()
    fmt = request.args.get("format", "png")
    if fmt not in ("png", "raw"):
        abort(400, "format must be png or raw")
    with _annotator(job_id) as ann:
        h, w = plane_shape(ann.shape, axis)
        if h * w > MAX_MASK_PIXELS:
            abort(400, f"the {AXIS_NAMES[axis]} plane is {h} x {w}: too large to annotate "
                       "at full resolution")
        plane = ann.read_plane(axis, index)
        window = ann.window()
    if fmt == "raw":
        kind = plane.dtype
        if kind not in (np.uint8, np.uint16, np.int16, np.float32):
            plane = plane.astype(np.float32)
        data = np.ascontiguousarray(plane).astype(plane.dtype.newbyteorder("<"), copy=False)
        resp = Response(data.tobytes(), mimetype="application/octet-stream")
        resp.headers["X-Shape"] = f"{plane.shape[0]},{plane.shape[1]}"
        resp.headers["X-Dtype"] = str(plane.dtype.name)
        resp.headers["Cache-Control"] = "private, max-age=300"
        return resp
    try:
        lo = float(request.args.get("wmin", window["window_min"]))
        hi = float(request.args.get("wmax", window["window_max"]))
    except ValueError:
        abort(400, "wmin and wmax must be numbers")
    return _png_response(apply_window(plane, lo, hi), cache=True)


@bp.get("/api/job/<job_id>/annotate/labels")
def get_labels(job_id: str):
    """Stored labels of one plane as ``{encoding: "rle", shape, data}`` (0 = unlabelled)."""
    axis, index = _axis_index()
    with _annotator(job_id) as ann:
        labels = ann.read_labels(axis, index)
        if request.args.get("prefetch", "1") != "0":
            ann.prefetch(axis, index)  # features ready before the first strokes arrive
    return jsonify(axis=AXIS_NAMES[axis], index=index, labels=encode_rle(labels))


@bp.post("/api/job/<job_id>/annotate/labels")
def submit_labels(job_id: str):
    """Replace one plane's labels and return the retrained preview of that plane.

    Body: ``{axis, index, mask, preview?: true}``; ``mask`` is a grey class-index PNG
    data URL or ``{encoding: rle|raw|zlib, shape, data}`` (0 = unlabelled, k+1 = class k).
    """
    get_job(job_id)
    body = json_body()
    axis, index = _axis_index(body)
    if "mask" not in body and "labels" not in body:
        abort(400, "mask is required")
    with _annotator(job_id) as ann:
        try:
            labels = decode_label_mask(
                body.get("mask", body.get("labels")),
                plane_shape(ann.shape, axis),
                n_classes=len(ann.classes),
                colors=ann.colors,
            )
        except AnnotationError as exc:
            abort(400, str(exc))
        if not 0 <= index < ann.shape[axis]:
            abort(400, f"{AXIS_NAMES[axis]} index {index} outside 0..{ann.shape[axis] - 1}")
        _record_annotation(job_id)
        saved = ann.write_labels(axis, index, labels)
        out = {"saved": saved, "counts": {str(k): v for k, v in ann.count_by_class().items()}}
        if body.get("preview", True):
            try:
                out["preview"] = _preview(ann, axis, index)
            except (ValueError, RuntimeError) as exc:
                log.warning("preview failed for job %s: %s", job_id, exc)
                out["preview"] = {"overlay": None, "uncertainty": None, "message": str(exc)}
    return jsonify(out)


@bp.delete("/api/job/<job_id>/annotate/labels")
@bp.post("/api/job/<job_id>/annotate/labels/delete")
def delete_labels(job_id: str):
    """Delete one annotated plane (query or JSON ``axis``, ``index``)."""
    body = request.get_json(silent=True)
    axis, index = _axis_index(body if isinstance(body, dict) and "index" in body else None)
    with _annotator(job_id) as ann:
        ann.clear_labels(axis, index)
        counts = {str(k): v for k, v in ann.count_by_class().items()}
    _record_annotation(job_id)
    return jsonify(deleted={"axis": AXIS_NAMES[axis], "index": index}, counts=counts)


@bp.get("/api/job/<job_id>/annotate/predict")
def predict(job_id: str):
    """Prediction overlay + uncertainty overlay (data URLs) of one plane."""
    axis, index = _axis_index()
    retrain = request.args.get("retrain", "1") not in ("0", "false", "no")
    with _annotator(job_id) as ann:
        if not 0 <= index < ann.shape[axis]:
            abort(400, f"{AXIS_NAMES[axis]} index {index} outside 0..{ann.shape[axis] - 1}")
        return jsonify(_preview(ann, axis, index, retrain=retrain))


@bp.get("/api/job/<job_id>/annotate/predict.png")
@bp.get("/api/job/<job_id>/annotate/uncertainty.png")
def predict_png(job_id: str):
    """The class overlay (or uncertainty overlay) of one plane as an RGBA PNG."""
    axis, index = _axis_index()
    with _annotator(job_id) as ann:
        if not 0 <= index < ann.shape[axis]:
            abort(400, f"{AXIS_NAMES[axis]} index {index} outside 0..{ann.shape[axis] - 1}")
        ann.retrain()
        pred = ann.predict(axis, index)
        if pred is None:
            abort(409, "no model yet: label at least two classes")
        if request.path.endswith("uncertainty.png"):
            from ml4paleo.annotation import uncertainty_from_probabilities

            return _png_response(uncertainty_overlay(uncertainty_from_probabilities(pred[1])))
        return _png_response(class_overlay(pred[0], ann.colors))


@bp.get("/api/job/<job_id>/annotate/suggest")
def suggest(job_id: str):
    """The slice to annotate next along ``axis`` (least certain, else least covered)."""
    try:
        axis = parse_axis(request.args.get("axis", "z"))
    except AnnotationError as exc:
        abort(400, str(exc))
    with _annotator(job_id) as ann:
        ann.retrain()
        result = ann.suggest(axis)
    return jsonify(axis=AXIS_NAMES[axis], **result)


@bp.get("/api/job/<job_id>/annotate/classes")
def get_classes(job_id: str):
    with _annotator(job_id) as ann:
        return jsonify(classes=ann.classes,
                       counts={str(k): v for k, v in ann.count_by_class().items()})


@bp.put("/api/job/<job_id>/annotate/classes")
@bp.post("/api/job/<job_id>/annotate/classes")
def put_classes(job_id: str):
    """Replace the class list ``{classes: [{name, color}, ...]}`` (add, rename, recolour)."""
    get_job(job_id)
    body = json_body()
    with _annotator(job_id) as ann:
        classes = ann.set_classes(body.get("classes"))
    return jsonify(classes=classes)


@bp.get("/api/job/<job_id>/annotate/annotations")
def gallery_data(job_id: str):
    """Annotated planes with per-class counts and thumbnail URLs."""
    with _annotator(job_id) as ann:
        items = ann.annotated_slices()  # per-class counts come from the store's index
        classes = ann.classes
    for item in items:
        counts = item.get("counts") if isinstance(item.get("counts"), dict) else {}
        item["counts"] = {k: int(v) for k, v in counts.items() if v}
        item["thumbnail"] = url_for("annotate.gallery_thumbnail", job_id=job_id,
                                    axis=item["axis"], index=item["index"])
        item["edit"] = url_for("annotate.annotate_page", job_id=job_id) + \
            f"#axis={item['axis']}&index={item['index']}"
    return jsonify(classes=classes, annotations=items)


@bp.get("/api/job/<job_id>/annotate/thumbnail")
def gallery_thumbnail(job_id: str):
    axis, index = _axis_index()
    size = request.args.get("size", "192")
    # isascii: str.isdigit() accepts digits int() refuses ("²"); len: int() caps at 4300
    if not (size.isascii() and size.isdigit() and len(size) <= 4) or not 16 <= int(size) <= 1024:
        abort(400, "size must be 16..1024")
    with _annotator(job_id) as ann:
        plane = ann.read_plane(axis, index)
        w = ann.window()
        gray = apply_window(plane, w["window_min"], w["window_max"])
        thumb = thumbnail(gray, ann.read_labels(axis, index), ann.colors, int(size))
    return _png_response(thumb)


# ----------------------------------------------------------------------------- models
def _models_dir(job_id: str) -> Path:
    return _job_dir(job_id) / "models"


def _model_meta(folder: Path) -> dict:
    meta_file = folder / "meta.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def _model_entry(job_id: str, folder: Path, chosen: str | None, current: str | None) -> dict:
    meta = _model_meta(folder)
    return {
        "id": folder.name,
        "created_at": meta.get("created_at"),
        "classes": meta.get("classes", []),
        "label_counts": meta.get("label_counts", meta.get("counts")),
        "metrics": meta.get("metrics", {}),
        "source": meta.get("source"),
        "chosen": folder.name == chosen,
        "current": folder.name == current,
        "download": url_for("annotate.model_download", job_id=job_id,
                            model_id=folder.name),
    }


@bp.get("/api/job/<job_id>/models")
def models_list(job_id: str):
    """Model versions, oldest first, with their metadata; which one segments."""
    record = get_job(job_id)
    root = _models_dir(job_id)
    chosen = record.get("chosen_model_id")
    models = []
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and _MODEL_ID.match(folder.name) and not folder.name.startswith("."):
                models.append(_model_entry(job_id, folder, chosen, record.get("model_id")))
    models.sort(key=lambda m: (m["created_at"] or "", m["id"]))
    return jsonify(job_id=job_id, chosen=chosen, current=record.get("model_id"), models=models)


def _model_folder(job_id: str, model_id: str) -> Path:
    if not _MODEL_ID.match(model_id) or ".." in model_id:
        abort(404, f"no model {model_id!r}")
    folder = _models_dir(job_id) / model_id
    if not folder.is_dir():
        abort(404, f"no model {model_id!r} in job {job_id!r}")
    return folder


@bp.get("/api/job/<job_id>/models/<model_id>/download/json")
def model_meta(job_id: str, model_id: str):
    return jsonify(_model_meta(_model_folder(job_id, model_id)))


@bp.get("/api/job/<job_id>/models/<model_id>/download")
def model_download(job_id: str, model_id: str):
    """The model folder as a zip (safe format: JSON + arrays, never a pickle)."""
    folder = _model_folder(job_id, model_id)
    tmp = tempfile.TemporaryFile()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and not f.is_symlink():
                zf.write(f, f"{model_id}/{f.relative_to(folder).as_posix()}")
    tmp.seek(0)
    return send_file(tmp, mimetype="application/zip", as_attachment=True,
                     download_name=f"model-{model_id}.zip")


@bp.post("/api/job/<job_id>/models/<model_id>/choose")
def model_choose(job_id: str, model_id: str):
    """Use this model for the next "segment the whole volume" (until new labels arrive)."""
    _model_folder(job_id, model_id)
    record = store().set_fields(job_id, model_id=model_id, chosen_model_id=model_id)
    return jsonify(job_id=job_id, chosen=record.get("chosen_model_id"))


@bp.post("/api/job/<job_id>/models/<model_id>/migrate")
def model_migrate(job_id: str, model_id: str):
    """Original route (metadata backfill): our models always carry ``meta.json``."""
    folder = _model_folder(job_id, model_id)
    if not (folder / "meta.json").is_file():
        abort(409, f"model {model_id!r} has no meta.json; it cannot be described")
    return jsonify(status="success", model_id=model_id, metadata_file="meta.json")


def _new_model_id() -> str:
    from ml4paleo.jobs.store import new_id

    return new_id()


def _add_model(job_id: str, fill, source: dict) -> str:
    """Create ``models/<new id>`` atomically with ``fill(tmp_folder)``; list it on the job."""
    root = _models_dir(job_id)
    root.mkdir(parents=True, exist_ok=True)
    model_id = _new_model_id()
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=root))
    try:
        target_tmp = tmp / "model"
        fill(target_tmp)
        meta = _model_meta(target_tmp)
        meta["source"] = source
        meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        from ml4paleo.omezarr import write_json_atomic

        write_json_atomic(target_tmp / "meta.json", meta)
        os.replace(target_tmp, root / model_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def apply(record: dict) -> None:
        models = list(record.get("models") or [])
        if model_id not in models:
            models.append(model_id)
        record["models"] = models

    store().update(job_id, apply)
    return model_id


@bp.post("/api/job/<job_id>/models/import")
def model_import(job_id: str):
    """Reuse a model of another job: ``{source_job_id, model_id}``.

    The model is loaded with the engine's safe loader first (no pickle), so only the
    trusted format is ever copied.
    """
    get_job(job_id)
    from ml4paleo.jobs import JobStore
    from ml4paleo.segmentation import Model

    body = json_body()
    src_job, src_model = body.get("source_job_id"), body.get("model_id")
    if not isinstance(src_job, str) or not JobStore.is_valid_id(src_job):
        abort(400, "source_job_id must be a job id")
    if not isinstance(src_model, str) or not _MODEL_ID.match(src_model):
        abort(400, "model_id must be a model id")
    _job_dir(job_id)
    src = _model_folder(src_job, src_model)
    try:
        Model.load(src)
    except Exception as exc:  # any failure means: not a model we trust
        abort(400, f"model {src_model!r} of job {src_job!r} cannot be loaded: {exc}")

    def fill(target: Path) -> None:
        shutil.copytree(src, target, symlinks=False)

    new_id = _add_model(job_id, fill, {"kind": "import", "job_id": src_job, "model_id": src_model})
    return jsonify(job_id=job_id, model_id=new_id), 201


@bp.post("/api/job/<job_id>/models/save-preview")
def model_save_preview(job_id: str):
    """Save the annotator's current preview model as a model version of the job."""
    with _annotator(job_id) as ann:
        model = ann.retrain()
        if model is None:
            abort(409, "no model yet: label at least two classes")
        new_id = _add_model(job_id, lambda t: model.save(t),
                            {"kind": "preview", "model_version": ann.model_version})
    return jsonify(job_id=job_id, model_id=new_id), 201


# ----------------------------------------------------------------------------- job actions
def _queue_segmentation(job_id: str, body: dict) -> dict:
    from ml4paleo.jobs import InvalidTransition

    record = get_job(job_id)
    model_id = body.get("model_id")
    train = body.get("train")
    chosen = record.get("chosen_model_id")
    if model_id is None and train is None and chosen and body.get("use_chosen", True):
        model_id, train = chosen, False
    if model_id is not None and (not isinstance(model_id, str) or not _MODEL_ID.match(model_id)):
        abort(400, "model_id must be a model id")
    if train is not None and not isinstance(train, bool):
        abort(400, "train must be true or false")
    try:
        return store().request_segmentation(job_id, model_id=model_id, train=train)
    except InvalidTransition as exc:
        abort(409, str(exc))
    except ValueError as exc:
        abort(400, str(exc))


def _action_reply(record: dict) -> Response:
    return jsonify(status="success", job_id=record.get("id"), job_status=_status_value(record),
                   request=record.get("request"))


@bp.post("/api/job/<job_id>/segment")
@bp.post("/api/job/<job_id>/start")
def start_segmentation(job_id: str):
    """Queue training + whole-volume segmentation (409 with the reason when not allowed).

    Body (optional): ``{model_id, train}``; by default the chosen model segments
    without retraining when one was chosen on the models page, else a new model is
    trained from the annotations.
    """
    body = request.get_json(silent=True)
    if body is not None and not isinstance(body, dict):
        abort(400, "request body must be a JSON object")
    return _action_reply(_queue_segmentation(job_id, body or {}))


@bp.post("/api/job/<job_id>/mesh")
def start_meshing(job_id: str):
    """Queue meshing of the current segmentation (409 when there is none or work runs)."""
    from ml4paleo.jobs import InvalidTransition

    get_job(job_id)
    body = request.get_json(silent=True)
    body = body if isinstance(body, dict) else {}
    seg = body.get("segmentation_id")
    if seg is not None and (not isinstance(seg, str) or not _MODEL_ID.match(seg)):
        abort(400, "segmentation_id must be an id")
    formats = body.get("formats", ["stl"])
    if not isinstance(formats, list) or not formats or not all(
        f in ("stl", "obj", "ply", "glb") for f in formats
    ):
        abort(400, "formats must be a list of stl, obj, ply, glb")
    smooth = body.get("smooth")
    if smooth is not None and smooth not in SMOOTH_LEVELS:
        abort(400, f"smooth must be one of {', '.join(SMOOTH_LEVELS)}")
    try:
        record = store().request_mesh(job_id, segmentation_id=seg, formats=formats,
                                      smooth=smooth)
    except InvalidTransition as exc:
        abort(409, str(exc))
    return _action_reply(record)


@bp.post("/api/job/<job_id>/retrain")
def retrain(job_id: str):
    """Original route: retrain now. Fast in-memory preview model (cached features).

    Never blocks on a whole-volume run: that is ``/start``.
    """
    get_job(job_id)
    with _annotator(job_id) as ann:
        t0 = time.perf_counter()
        model = ann.retrain()
        seconds = time.perf_counter() - t0
        if model is None:
            abort(409, "training needs labels of at least two classes")
        return jsonify(status="success", model_version=ann.model_version,
                       seconds=round(seconds, 4))


# ----------------------------------------------------------------------------- original API
def _field(payload: dict, snake: str, camel: str | None = None):
    if snake in payload:
        return payload[snake]
    if camel and camel in payload:
        return payload[camel]
    return None


@bp.get("/api/annotate/<job_id>/images/next")
def legacy_next_image(job_id: str):
    """A random cut-out as an 11-slice 512x512 PNG filmstrip + the ``zInfo`` header."""
    seed = request.args.get("seed")
    usable = bool(seed) and seed.isascii() and seed.isdigit() and len(seed) <= 40
    rng = np.random.default_rng(int(seed)) if usable else None
    with _annotator(job_id) as ann:
        strip, meta, window = ann.issue_cutout(rng)
    resp = _png_response(strip)
    resp.headers["zInfo"] = zinfo_header(meta, window)
    resp.headers["Access-Control-Expose-Headers"] = "zInfo"
    return resp


def _legacy_regions(payload: dict, default_z: int) -> dict[int, dict]:
    """``{local z: {positive_regions, negative_regions}}`` from any original polygon form."""

    def regions(obj: dict) -> tuple[list, list]:
        poly = obj.get("polygons") if isinstance(obj.get("polygons"), dict) else obj
        pos = _field(poly, "positive_regions", "positiveRegions")
        neg = _field(poly, "negative_regions", "negativeRegions")
        return (pos if isinstance(pos, list) else [], neg if isinstance(neg, list) else [])

    out: dict[int, dict] = {}
    by_slice = _field(payload, "regions_by_slice", "regionsBySlice")
    if isinstance(by_slice, dict):
        for key, value in by_slice.items():
            try:
                z = int(key)
            except (TypeError, ValueError):
                abort(400, f"regions_by_slice key {key!r} is not a slice index")
            if not isinstance(value, dict):
                abort(400, f"regions_by_slice[{key}] must be an object")
            pos, neg = regions(value)
            if pos or neg:
                out[z] = {"positive_regions": pos, "negative_regions": neg}
        if out:
            return out
    pos, neg = regions(payload)
    if pos or neg:
        out[default_z] = {"positive_regions": pos, "negative_regions": neg}
    return out


def _uses_polygons(payload: dict) -> bool:
    keys = ("regions_by_slice", "regionsBySlice", "polygons", "positive_regions",
            "positiveRegions", "negative_regions", "negativeRegions")
    return any(k in payload for k in keys)


def _legacy_meta(ann: JobAnnotator, payload: dict, image_gray: np.ndarray | None) -> dict | None:
    raw = _field(payload, "sample_metadata", "sampleMetadata")
    local_z = _field(payload, "annotated_local_z_index", "annotatedLocalZIndex")
    if isinstance(raw, dict):
        meta = validate_sample_metadata(raw, ann.shape)
        if local_z is not None:
            meta = sample_metadata_for_z(meta, local_z)
        window = _field(payload, "intensity_window", "intensityWindow")
        if isinstance(window, dict):
            meta["intensity_window"] = window
        return meta
    if raw is not None:
        abort(400, "sample_metadata must be an object")
    if image_gray is not None:
        n = FILMSTRIP_SHAPE_ZYX[0]
        z = local_z if isinstance(local_z, int) and not isinstance(local_z, bool) else n // 2
        return ann.find_cutout(filmstrip_slice(image_gray, n, z))
    return None


@bp.post("/api/annotate/<job_id>/data/submit")
def legacy_submit(job_id: str):
    """Original submit: raster ``{image, mask, sample_metadata?, ...}`` or polygons
    ``{regions_by_slice, sample_metadata, canvas_size_xy?}`` (snake or camel case).

    Labels go into the label store (painted = structure, rest of the cut-out slice =
    background, as the original trained); the reply's ``prediction`` is the retrained
    model's red-alpha overlay of the annotated slice.
    """
    get_job(job_id)
    payload = json_body()
    polygons = _uses_polygons(payload)
    image_text = _field(payload, "image")
    mask_text = _field(payload, "mask")
    if not polygons and (image_text is None or mask_text is None):
        abort(400, "{mask, image} not provided")
    with _annotator(job_id) as ann:
        image_gray = decode_image_array(image_text, "image") if image_text is not None else None
        meta = _legacy_meta(ann, payload, image_gray)
        if meta is None:
            abort(400, "sample_metadata is required (the image matches no cut-out served by "
                       "/images/next)")
        rx, ry, _ = meta["requested_shape_xyz"]
        writes: list[tuple[dict, np.ndarray]] = []
        if polygons:
            size = _field(payload, "canvas_size_xy", "canvasSizeXY") or \
                _field(payload, "displayed_image_shape_xy", "displayedImageShapeXY")
            by_slice = _legacy_regions(payload, int(meta["annotated_local_z_index"]))
            if not by_slice:
                abort(400, "polygon submission requires at least one region")
            for z in sorted(by_slice):
                m = sample_metadata_for_z(meta, z)
                mask = rasterize_polygons((ry, rx), by_slice[z]["positive_regions"],
                                          by_slice[z]["negative_regions"], size)
                writes.append((m, np.where(mask, 2, 1).astype(np.uint8)))
        else:
            from PIL import Image

            from ml4paleo.annotation import decode_data_url, decode_png

            img = decode_png(decode_data_url(mask_text, "mask"), "mask").convert("RGBA")
            if img.size != (rx, ry):
                img = img.resize((rx, ry), Image.Resampling.NEAREST)
            writes.append((meta, legacy_mask_to_labels(img)))
        _record_annotation(job_id)
        saved = []
        for m, labels in writes:
            try:
                z, vy, vx, my, mx = cutout_region(m)
            except AnnotationError as exc:
                abort(400, str(exc))
            ann.merge_labels(0, z, (vy, vx), labels[my, mx])
            saved.append({"slice_index": int(m["annotated_local_z_index"]),
                          "global_z_index": z, "axis": "z",
                          "origin_xyz": [vx.start, vy.start, z],
                          "shape_xy": [vx.stop - vx.start, vy.stop - vy.start]})
        show = next((m for m, _ in writes
                     if m["annotated_local_z_index"] == meta["annotated_local_z_index"]),
                    writes[0][0])
        ann.retrain()
        pred = ann.cutout_prediction(show)
        if pred is None:  # one class only: echo the mask like the original did
            pred = (writes[0][1] == 2).astype(np.uint8)
    return jsonify(prediction=png_base64(legacy_prediction_png(pred)), saved_samples=saved)


@bp.post("/api/annotate/<job_id>/data/predict")
def legacy_predict(job_id: str):
    """Original predict: ``{sample_metadata, annotated_local_z_index, intensity_window}``
    or ``{image}`` -> ``{prediction: base64 RGBA PNG | null}`` from the in-memory model.
    """
    get_job(job_id)
    payload = json_body()
    image_text = _field(payload, "image")
    raw_meta = _field(payload, "sample_metadata", "sampleMetadata")
    if image_text is None and raw_meta is None:
        abort(400, "image or sample_metadata not provided")
    with _annotator(job_id) as ann:
        image_gray = decode_image_array(image_text, "image") if image_text is not None else None
        meta = _legacy_meta(ann, payload, image_gray)
        if meta is None or meta.get("annotated_global_z_index") is None:
            return jsonify(prediction=None)
        ann.retrain()
        pred = ann.cutout_prediction(meta)
    if pred is None:
        return jsonify(prediction=None)
    return jsonify(prediction=png_base64(legacy_prediction_png(pred)))
