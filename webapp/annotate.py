"""Annotation studio routes: the annotator, gallery and models pages and their JSON API.

Thin over :mod:`ml4paleo.annotate` (the per-job :class:`~ml4paleo.annotate.JobAnnotator`:
submit -> write -> record -> retrain -> preview, overlays, the original API's cut-outs) and
:mod:`ml4paleo.jobs` (status rules). The server keeps one in-memory annotator (image, label
store, interactive session with cached features) per job in a small LRU, so previews never
reload from disk.

Also keeps the original ml4paleo annotation routes working:
``GET /api/annotate/<id>/images/next``, ``POST /api/annotate/<id>/data/submit``,
``POST /api/annotate/<id>/data/predict`` and ``POST /api/job/<id>/retrain|start|mesh``.
"""

from __future__ import annotations

import re
import tempfile
import time
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

from ml4paleo.annotate import (
    AXIS_NAMES,
    MAX_MASK_PIXELS,
    AnnotationConflict,
    AnnotationError,
    AnnotationNotFound,
    JobAnnotator,
    SessionPool,
    apply_window,
    encode_png,
    encode_raw_plane,
    encode_rle,
    parse_axis,
    parse_index,
    plane_shape,
    zinfo_header,
)
from ml4paleo.meshing.smooth import SMOOTH_LEVELS
from ml4paleo.segmentation import ByteCache
from ml4paleo.workspace.paths import JobPaths

from .common import get_job, json_body, settings, store

bp = Blueprint("annotate", __name__)

# model / segmentation ids (the job store's are URL-safe base64 and may start with "-")
_MODEL_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


# ----------------------------------------------------------------------------- helpers
def _pool() -> SessionPool:
    """The open annotators (one per job), bounded in count and bytes by the settings."""
    pool = current_app.extensions.get("ml4paleo_annotators")
    if pool is None:
        s = settings()
        pool = current_app.extensions.setdefault(
            "ml4paleo_annotators", SessionPool(s.annotate_sessions, s.annotate_session_bytes))
    return pool


def _cache() -> ByteCache:
    """The previews' derived data of every open annotator: one budget in bytes."""
    cache = current_app.extensions.get("ml4paleo_annotate_cache")
    if cache is None:
        cache = current_app.extensions.setdefault(
            "ml4paleo_annotate_cache", ByteCache(settings().annotate_cache_bytes))
    return cache


def _job_dir(job_id: str) -> Path:
    get_job(job_id)
    return Path(store().job_dir(job_id))


def _open_annotator(job_id: str) -> JobAnnotator:
    folder = _job_dir(job_id)
    jobs = store()
    s = settings()
    cache = _cache()

    def build() -> JobAnnotator:
        try:
            return JobAnnotator(folder, store=jobs, cache=cache, tile=s.annotate_tile,
                                coarse_pixels=s.annotate_coarse_pixels,
                                workers=s.annotate_workers)
        except AnnotationConflict as exc:
            abort(409, str(exc))

    return _pool().get(job_id, build)


@contextmanager
def _errors():
    try:
        yield
    except AnnotationNotFound as exc:
        abort(404, str(exc))
    except AnnotationConflict as exc:
        abort(409, str(exc))
    except AnnotationError as exc:
        abort(400, str(exc))


@contextmanager
def _annotator(job_id: str, plane: tuple[int, int] | None = None, *, locked: bool = True):
    """The job's in-memory annotator, locked for the duration of the block (``locked=False``
    for its thread-safe calls: tiles of one job are then computed side by side).

    :class:`~ml4paleo.annotate.AnnotationNotFound` (a level or tile the image does not
    have) becomes a 404, :class:`~ml4paleo.annotate.AnnotationConflict` a 409, any other
    :class:`~ml4paleo.annotate.AnnotationError` a 400. ``plane`` ``(axis, index)`` (the
    reading routes): a plane the image does not have is a resource that does not exist,
    404 (as for the image's slices); a negative index is an invalid request, 400, and so
    is writing to a plane beyond the image.
    """
    ann = _open_annotator(job_id)
    if plane is not None and plane[1] >= ann.shape[plane[0]]:  # (a negative one is a 400)
        abort(404, f"no plane {plane[1]} along this axis: planes are "
                   f"0..{ann.shape[plane[0]] - 1}")
    if not locked:
        with _errors():
            yield ann
        return
    with ann.lock, _errors():
        yield ann


def _int_arg(name: str, default: int | None = None) -> int:
    """A non-negative integer query argument (400 when malformed)."""
    raw = request.args.get(name)
    if raw is None and default is not None:
        return default
    try:
        value = parse_index(raw)
    except AnnotationError:
        abort(400, f"{name} must be an integer, got {raw!r}")
    if value < 0:
        abort(400, f"{name} must be >= 0, got {value}")
    return value


def _axis_index(source: dict | None = None) -> tuple[int, int]:
    src = source if source is not None else request.args
    try:
        return parse_axis(src.get("axis", "z")), parse_index(src.get("index"))
    except AnnotationError as exc:
        abort(400, str(exc))


def _status_value(record: dict) -> str:
    s = record.get("status")
    return str(getattr(s, "value", s))


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

    target = safe_join(JobPaths(_job_dir(job_id)).annotations, filename)
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
    """Shape, dtype, voxel size (and how well it is known), display window, classes +
    palette, annotated slices, model, and how to orient each plane (``planes``, as the
    slice viewer: :func:`ml4paleo.world.plane_orientation`). Slice indices count from 0;
    the page shows slice numbers from 1."""
    from ml4paleo.convert import voxel_size_status
    from ml4paleo.world import plane_orientation

    record = get_job(job_id)
    with _annotator(job_id) as ann:
        answer = ann.info(record)
        world = ann.volume.world
    image = getattr(ann.volume, "image", None)
    attrs = image.attrs if image is not None else {}
    answer["voxel_size_status"] = voxel_size_status(attrs)
    answer["orientation"] = world.orientation
    answer["planes"] = plane_orientation(world.orientation)
    return jsonify(answer)


@bp.get("/api/job/<job_id>/annotate/cleanup")
def cleanup_preview(job_id: str):
    """The prediction of one plane cleaned up as the whole-volume segmentation would be:
    ``min_size`` (remove islands smaller than this many voxels; on the slice, below the
    cross-section of a cube that size) and ``fill_holes`` (0/1). Overlay as a data URL and
    how many pixels the clean-up changes there."""
    axis, index = _axis_index()
    try:
        min_size = int(request.args.get("min_size", "0") or 0)
    except ValueError:
        abort(400, "min_size must be a whole number of voxels")
    if not 0 <= min_size <= 10**9:
        abort(400, "min_size must be between 0 and 1000000000 voxels")
    fill_holes = request.args.get("fill_holes", "0") in ("1", "true", "yes")
    with _annotator(job_id, plane=(axis, index)) as ann:
        return jsonify(ann.cleanup_preview(axis, index, min_size=min_size,
                                           fill_holes=fill_holes))


@bp.get("/api/job/<job_id>/annotate/slice")
def slice_data(job_id: str):
    """One plane: ``format=raw`` (little-endian array, headers X-Shape/X-Dtype) or PNG.

    ``level``: pyramid level (default 0, full resolution). PNG uses the image's display
    window unless ``wmin``/``wmax`` are given.
    """
    axis, index = _axis_index()
    level = _int_arg("level", 0)
    fmt = request.args.get("format", "png")
    if fmt not in ("png", "raw"):
        abort(400, "format must be png or raw")
    with _annotator(job_id, plane=(axis, index), locked=False) as ann:
        h, w = plane_shape(ann.shape, axis)
        if h * w > MAX_MASK_PIXELS:
            abort(400, f"the {AXIS_NAMES[axis]} plane is {h} x {w}: too large to annotate "
                       "at full resolution")
        plane = ann.read_plane(axis, index, level)
        window = ann.window()
    if fmt == "raw":
        data, shape, dtype = encode_raw_plane(plane)
        resp = Response(data, mimetype="application/octet-stream")
        resp.headers["X-Shape"] = f"{shape[0]},{shape[1]}"
        resp.headers["X-Dtype"] = dtype
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
    with _annotator(job_id, plane=(axis, index)) as ann:
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
    with _annotator(job_id) as ann:  # a plane beyond the image: an invalid body, 400
        out = ann.submit(axis, index, body.get("mask", body.get("labels")),
                         preview=bool(body.get("preview", True)))
    return jsonify(out)


@bp.delete("/api/job/<job_id>/annotate/labels")
@bp.post("/api/job/<job_id>/annotate/labels/delete")
def delete_labels(job_id: str):
    """Delete one annotated plane (query or JSON ``axis``, ``index``)."""
    body = request.get_json(silent=True)
    axis, index = _axis_index(body if isinstance(body, dict) and "index" in body else None)
    with _annotator(job_id) as ann:  # a plane beyond the image: an invalid request, 400
        return jsonify(ann.delete(axis, index))


@bp.get("/api/job/<job_id>/annotate/predict")
def predict(job_id: str):
    """Prediction overlay + uncertainty overlay (data URLs) of one plane."""
    axis, index = _axis_index()
    retrain = request.args.get("retrain", "1") not in ("0", "false", "no")
    with _annotator(job_id, plane=(axis, index)) as ann:
        return jsonify(ann.preview(axis, index, retrain=retrain))


@bp.get("/api/job/<job_id>/annotate/tile")
def predict_tile(job_id: str):
    """One preview tile as an RGBA PNG: ``axis, index, level, ty, tx`` (tile row and column
    of the plane on that pyramid level, :attr:`tile` pixels each), ``kind=classes`` (default)
    or ``uncertainty``, ``v`` (the preview's ``version``; with the current one the answer
    may be cached by the browser).

    The job's tiles are computed side by side (no job lock held); other jobs never wait
    for them. 409 while fewer than two classes hold labels.
    """
    axis, index = _axis_index()
    level, ty, tx = _int_arg("level"), _int_arg("ty"), _int_arg("tx")
    kind = request.args.get("kind", "classes")
    with _annotator(job_id, plane=(axis, index), locked=False) as ann:
        version = ann.version
        png = ann.tile_png(axis, index, level, ty, tx, kind)
    resp = Response(png, mimetype="image/png")
    current = request.args.get("v") == version
    resp.headers["Cache-Control"] = "private, max-age=3600" if current else "no-store"
    resp.headers["X-Version"] = version
    return resp


@bp.get("/api/job/<job_id>/annotate/predict.png")
@bp.get("/api/job/<job_id>/annotate/uncertainty.png")
def predict_png(job_id: str):
    """The class overlay (or uncertainty overlay) of one plane as an RGBA PNG."""
    axis, index = _axis_index()
    kind = "uncertainty" if request.path.endswith("uncertainty.png") else "classes"
    with _annotator(job_id, plane=(axis, index)) as ann:
        overlay = ann.overlay(axis, index, kind)
    if overlay is None:
        abort(409, "no model yet: label at least two classes")
    return _png_response(overlay)


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
    """The class list, the palette new classes take their colours from, labels per class."""
    with _annotator(job_id) as ann:
        return jsonify(ann.classes_state())


@bp.put("/api/job/<job_id>/annotate/classes")
@bp.post("/api/job/<job_id>/annotate/classes")
def put_classes(job_id: str):
    """Replace the class list ``{classes: [{name, color}, ...]}`` (add, rename, recolour)."""
    get_job(job_id)
    body = json_body()
    with _annotator(job_id) as ann:
        ann.set_classes(body.get("classes"))
        return jsonify(ann.classes_state())


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
    with _annotator(job_id, plane=(axis, index)) as ann:
        thumb = ann.thumbnail(axis, index, int(size))
    return _png_response(thumb)


# ----------------------------------------------------------------------------- models
# thin over the job's model registry (ml4paleo.workspace.models): listing, metadata,
# download, choice, import from another job, saving the annotator's preview model
def _models(job_id: str):
    from ml4paleo.workspace import ModelRegistry

    return ModelRegistry(_job_dir(job_id))


def _model_folder(job_id: str, model_id: str) -> Path:
    from ml4paleo.workspace import ModelNotFound

    try:
        return _models(job_id).folder(model_id)
    except ModelNotFound:
        abort(404, f"no model {model_id!r} in job {job_id!r}")


def _record_update(job_id: str):
    return lambda fn: store().update(job_id, fn)


@bp.get("/api/job/<job_id>/models")
def models_list(job_id: str):
    """Model versions, oldest first, with their metadata; which one segments."""
    record = get_job(job_id)
    models = _models(job_id).list(record)
    for m in models:
        m["download"] = url_for("annotate.model_download", job_id=job_id, model_id=m["id"])
    return jsonify(job_id=job_id, chosen=record.get("chosen_model_id"),
                   current=record.get("model_id"), models=models)


@bp.get("/api/job/<job_id>/models/<model_id>/download/json")
def model_meta(job_id: str, model_id: str):
    _model_folder(job_id, model_id)
    return jsonify(_models(job_id).meta(model_id))


@bp.get("/api/job/<job_id>/models/<model_id>/download")
def model_download(job_id: str, model_id: str):
    """The model folder as a zip (safe format: JSON + arrays, never a pickle)."""
    _model_folder(job_id, model_id)
    tmp = tempfile.TemporaryFile()
    _models(job_id).write_zip(model_id, tmp)
    tmp.seek(0)
    return send_file(tmp, mimetype="application/zip", as_attachment=True,
                     download_name=f"model-{model_id}.zip")


@bp.post("/api/job/<job_id>/models/<model_id>/choose")
def model_choose(job_id: str, model_id: str):
    """Use this model for the next "segment the whole volume" (until new labels arrive)."""
    from ml4paleo.workspace import choose_model

    _model_folder(job_id, model_id)
    record = choose_model(_record_update(job_id), model_id)
    return jsonify(job_id=job_id, chosen=record.get("chosen_model_id"))


@bp.post("/api/job/<job_id>/models/<model_id>/migrate")
def model_migrate(job_id: str, model_id: str):
    """Original route (metadata backfill): our models always carry ``meta.json``."""
    from ml4paleo.workspace import JobPaths

    _model_folder(job_id, model_id)
    meta = JobPaths(_job_dir(job_id)).model_meta(model_id)
    if not meta.is_file():
        abort(409, f"model {model_id!r} has no meta.json; it cannot be described")
    return jsonify(status="success", model_id=model_id, metadata_file=meta.name)


@bp.post("/api/job/<job_id>/models/import")
def model_import(job_id: str):
    """Reuse a model of another job: ``{source_job_id, model_id}``.

    The model is loaded with the engine's safe loader first (no pickle), so only the
    trusted format is ever copied.
    """
    from ml4paleo.jobs import JobStore
    from ml4paleo.segmentation import Model
    from ml4paleo.workspace import ModelNotFound, record_model

    get_job(job_id)
    body = json_body()
    src_job, src_model = body.get("source_job_id"), body.get("model_id")
    if not isinstance(src_job, str) or not JobStore.is_valid_id(src_job):
        abort(400, "source_job_id must be a job id")
    if not isinstance(src_model, str) or not _MODEL_ID.match(src_model):
        abort(400, "model_id must be a model id")
    try:
        new_id = _models(job_id).import_from(_models(src_job), src_model, load=Model.load)
    except ModelNotFound:
        abort(404, f"no model {src_model!r} in job {src_job!r}")
    except ValueError as exc:
        abort(400, str(exc))
    record_model(_record_update(job_id), new_id)
    return jsonify(job_id=job_id, model_id=new_id), 201


@bp.post("/api/job/<job_id>/models/save-preview")
def model_save_preview(job_id: str):
    """Save the annotator's current preview model as a model version of the job."""
    from ml4paleo.workspace import record_model

    with _annotator(job_id) as ann:
        model = ann.retrain()
        if model is None:
            abort(409, "no model yet: label at least two classes")
        new_id = _models(job_id).save(model, source={"kind": "preview",
                                                     "model_version": ann.model_version})
    record_model(_record_update(job_id), new_id)
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
    min_size = body.get("min_size", 0)
    fill_holes = body.get("fill_holes", False)
    try:
        return store().request_segmentation(job_id, model_id=model_id, train=train,
                                            min_size=min_size, fill_holes=fill_holes)
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

    Body (optional): ``{model_id, train, min_size, fill_holes}``; by default the chosen
    model segments without retraining when one was chosen on the models page, else a new
    model is trained from the annotations. Clean-up, applied block by block after the
    prediction: ``min_size`` removes islands of a class smaller than that many voxels,
    ``fill_holes`` fills enclosed holes.
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
    with _annotator(job_id) as ann:
        return jsonify(ann.legacy_submit(payload))


@bp.post("/api/annotate/<job_id>/data/predict")
def legacy_predict(job_id: str):
    """Original predict: ``{sample_metadata, annotated_local_z_index, intensity_window}``
    or ``{image}`` -> ``{prediction: base64 RGBA PNG | null}`` from the in-memory model.
    """
    get_job(job_id)
    payload = json_body()
    with _annotator(job_id) as ann:
        return jsonify(ann.legacy_predict(payload))
