"""``GET /api/openapi.json``: an OpenAPI 3 document generated from the URL map.

Every registered route is described (so none can be forgotten): its path parameters come
from the rule's converters, summary and description from the view's docstring; what the
URL map cannot tell is declared here, per endpoint: query parameters with their types and
bounds (:data:`QUERY`), request bodies (:data:`BODIES`), success media types
(:data:`MEDIA_TYPES`). Error answers are documented as they are sent: JSON
``{"error": ...}`` on ``/api`` routes, HTML (or JSON from the access rule) on pages.

The document is precise enough for a schema fuzzer (``schemathesis run --checks all``)
to find no difference between what it says and what the server does; the test suite
runs one (``tests/test_openapi_fuzz.py``).
"""

from __future__ import annotations

import copy
import inspect
import re

from flask import Blueprint, current_app, jsonify

from ml4paleo.jobs.index import SORTABLE
from ml4paleo.jobs.store import SOURCE_TYPES
from ml4paleo.workspace.names import MAX_NAME_LENGTH

bp = Blueprint("openapi", __name__)

_CONVERTER_RE = re.compile(r"<(?:(?P<conv>[a-zA-Z_]+)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_]\w*)>")

# -- schemas ---------------------------------------------------------------------------
_JOB_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,64}$"}
_ARTIFACT_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"}
#: a job name: at most 200 characters, no control characters but tab, newline, return
#: (runs of spaces and those become one space); a new job's may be blank (a default name)
_NAME_CHARS = "[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]"
_NEW_NAME = {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": f"^{_NAME_CHARS}*$"}
_NAME = {"type": "string", "maxLength": MAX_NAME_LENGTH,
         "pattern": f"^{_NAME_CHARS}*[^\\u0000-\\u0020\\u007f]{_NAME_CHARS}*$"}
_AXIS = {"type": "string", "enum": ["z", "y", "x", "Z", "Y", "X", "0", "1", "2"]}
#: in a JSON body the axis may also be its number
_BODY_AXIS = {"oneOf": [_AXIS, {"type": "integer", "enum": [0, 1, 2]}]}
_INDEX = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}


def _int(lo: int | None = None, hi: int | None = None) -> dict:
    out: dict = {"type": "integer"}
    if lo is not None:
        out["minimum"] = lo
    out["maximum"] = hi if hi is not None else 2**31 - 1
    return out


def _q(name: str, schema: dict, about: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": about}


_TILE = [
    _q("axis", _AXIS, "plane normal: z, y or x (default z)"),
    _q("index", _INDEX, "plane index in full-resolution voxels, from 0 (the pages number "
                        "slices from 1: slice = index + 1; default: the middle)"),
    _q("level", _int(0, 64), "pyramid level (0 = full resolution)"),
    _q("tile", {"type": "string", "pattern": "^([0-9]{1,6},[0-9]{1,6})?$"},
       "'row,col' of one tile of the plane (empty: the whole plane)"),
    _q("tile_size", _int(16, 2048), "tile edge in pixels of the level (default 512)"),
]
_NUMBER_PAIR = "^(-?[0-9]{1,9}(\\.[0-9]{1,6})?,-?[0-9]{1,9}(\\.[0-9]{1,6})?)?$"
_PLANE = [_q("axis", _AXIS, "plane normal: z, y or x (default z)"),
          _q("index", _INDEX, "plane index", required=True)]
_SORTS = sorted(SORTABLE) + sorted(f"-{c}" for c in SORTABLE)
_FILTERS = [
    _q("q", {"type": "string"}, "substring of name or id"),
    _q("name", {"type": "string"}, "substring of the name"),
    _q("status", {"type": "string"}, "comma-separated statuses"),
    _q("source_type", {"type": "string"}, "image_stack, tiff, dicom, nifti, npy, zarr"),
    _q("modality", {"type": "string"}, "DICOM modality"),
    _q("manufacturer", {"type": "string"}, "DICOM manufacturer"),
    _q("model", {"type": "string"}, "DICOM manufacturer model name"),
    _q("series_uid", {"type": "string"}, "DICOM series instance UID"),
    _q("voxel_size_min", {"type": "number"}, "smallest voxel edge at least this"),
    _q("voxel_size_max", {"type": "number"}, "smallest voxel edge at most this"),
    _q("created_after", {"type": "string", "format": "date"}, "ISO-8601 date"),
    _q("created_before", {"type": "string", "format": "date"}, "ISO-8601 date"),
    _q("sort", {"type": "string", "enum": _SORTS},
       "column, '-' prefix for descending (default -created_at)"),
    _q("page", _int(1, 10**6), "page from 1"),
    _q("per_page", _int(1, 500), "rows per page (default 50)"),
]

#: endpoint -> query parameters; ``(endpoint, METHOD)`` for one method of a view
QUERY: dict = {
    "data_api.image_slice": [*_TILE, _q("window", {"type": "string", "pattern": _NUMBER_PAIR},
                                        "'low,high' intensity window")],
    "data_api.segmentation_slice": _TILE,
    "catalogue.list_jobs": [*_FILTERS, _q("format", {"type": "string", "enum": ["json", "csv"]},
                                          "'csv' for CSV")],
    "catalogue.list_jobs_csv": _FILTERS,
    "jobs_api.upload_status": [
        _q("job_id", _JOB_ID, "the job", required=True),
        _q("filename", {"type": "string", "minLength": 1, "pattern": "[A-Za-z0-9]"},
           "one uploaded file (default: every file)")],
    "annotate.slice_data": [*_PLANE, _q("format", {"type": "string", "enum": ["png", "raw"]},
                                        "png (windowed) or raw (little-endian array)"),
                            _q("wmin", {"type": "number"}, "window low"),
                            _q("wmax", {"type": "number"}, "window high")],
    "annotate.get_labels": [*_PLANE, _q("prefetch", {"type": "string", "enum": ["0", "1"]},
                                        "prepare the plane's features (default 1)")],
    ("annotate.delete_labels", "DELETE"): _PLANE,
    "annotate.predict": [*_PLANE, _q("retrain", {"type": "string", "enum": ["0", "1"]},
                                     "retrain first (default 1)")],
    "annotate.predict_png": _PLANE,
    "annotate.suggest": [_q("axis", _AXIS, "plane normal (default z)")],
    "annotate.gallery_thumbnail": [*_PLANE, _q("size", _int(16, 1024), "edge in pixels")],
    "annotate.legacy_next_image": [_q("seed", {"type": "string"},
                                      "random seed: up to 40 digits (else a random cut-out)")],
    "annotate.cleanup_preview": [
        *_PLANE, _q("min_size", _int(0, 10**9), "remove islands smaller than this many voxels"),
        _q("fill_holes", {"type": "string", "enum": ["0", "1", "true", "yes"]},
           "1 fills enclosed holes")],
    "data_api.thickness_slice": _TILE,
    "measure.measure_results": [_q("segmentation_id", _ARTIFACT_ID, "default: the current one")],
    "results.all_models": [_q("exclude_job", _JOB_ID, "leave this job's models out")],
    "reports.segmentation_report": [_q("download", {"type": "string"},
                                       "1, true or yes: as an attachment")],
}


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    out: dict = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def _json_body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_MASK = {"oneOf": [{"type": "string", "description": "a PNG data URL"},
                   _object({"encoding": {"type": "string", "enum": ["rle", "raw", "zlib"]},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "data": {}}, ("encoding", "shape", "data"))]}
_JOB_REF = _object({"job_id": _JOB_ID}, ("job_id",))
_NEW_JOB = _object({"name": {**_NEW_NAME, "nullable": True},
                    "source_type": {"type": "string", "nullable": True,
                                    "enum": [*sorted(SOURCE_TYPES), None]}})
_UPLOAD = {"required": True, "content": {"multipart/form-data": {"schema": _object({
    "file": {"type": "string", "format": "binary"},
    "job_id": _JOB_ID,
    "fullPath": {"type": "string"},
    "dzuuid": {"type": "string"},
    "dzchunkindex": _int(0),
    "dzchunksize": _int(0),
    "dzchunkbyteoffset": _int(0),
    "dztotalchunkcount": _int(0),
    "dztotalfilesize": _int(0),
}, ("file", "job_id"))}}}

#: endpoint (or ``(endpoint, METHOD)``) -> request body
BODIES: dict = {
    "jobs_api.new_job": _json_body(_NEW_JOB, required=False),
    "jobs_api.job_status_post": _json_body(_JOB_REF),
    "jobs_api.upload_complete": _json_body(_JOB_REF),
    "jobs_api.rename_job": _json_body(_object({"name": _NAME}, ("name",))),
    "jobs_api.upload_chunk": _UPLOAD,
    ("pages.auth_login", "POST"): _json_body(
        _object({"key": {"type": "string", "minLength": 1}}, ("key",))),
    "annotate.submit_labels": _json_body(_object(
        {"axis": _BODY_AXIS, "index": _INDEX, "mask": _MASK, "preview": {"type": "boolean"}},
        ("index", "mask"))),
    ("annotate.delete_labels", "POST"): _json_body(
        _object({"axis": _BODY_AXIS, "index": _INDEX}, ("index",))),
    # names are also unique (case-insensitively): a rule JSON Schema cannot state
    "annotate.put_classes": _json_body(_object({"classes": {
        "type": "array", "minItems": 2, "maxItems": 255, "items": _object(
            {"name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "\\S"},
             "color": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}}, ("name",))}},
        ("classes",))),
    "annotate.model_import": _json_body(_object(
        {"source_job_id": _JOB_ID, "model_id": _ARTIFACT_ID}, ("source_job_id", "model_id"))),
    "annotate.start_segmentation": _json_body(_object(
        {"model_id": _JOB_ID, "train": {"type": "boolean"},
         "use_chosen": {"type": "boolean"}, "min_size": _int(0, 10**9),
         "fill_holes": {"type": "boolean"}}), required=False),
    "annotate.start_meshing": _json_body(_object(
        {"segmentation_id": _ARTIFACT_ID,
         "formats": {"type": "array", "minItems": 1,
                     "items": {"type": "string", "enum": ["stl", "obj", "ply", "glb"]}},
         "smooth": {"type": "string", "enum": ["none", "light", "strong"]}}),
        required=False),
    "measure.start_measure": _json_body(_object(
        {"segmentation_id": _ARTIFACT_ID,
         "measures": {"type": "array", "items": {"type": "string"}},
         "values": {"type": "array", "items": _int(1, 255)},
         "max_thickness": {"type": "number", "exclusiveMinimum": 0},
         "roi_box": {"type": "array", "minItems": 3, "maxItems": 3, "items": {
             "type": "array", "minItems": 2, "maxItems": 2, "items": _int(0)}},
         "thickness_map": {"type": "boolean"},
         "profile_axis": {"type": "string", "enum": ["z", "y", "x"]}}), required=False),
    # the raster form; the polygon form (regions_by_slice, ...) is in the description
    "annotate.legacy_submit": _json_body(_object(
        {"image": {"type": "string"}, "mask": {"type": "string"},
         "sample_metadata": {"type": "object"}}, ("image", "mask"))),
    "annotate.legacy_predict": _json_body(_object(
        {"image": {"type": "string"}, "sample_metadata": {"type": "object"},
         "annotated_local_z_index": {"type": "integer"},
         "intensity_window": {"type": "object"}}, ("sample_metadata",))),
}

#: path parameter -> schema (default: a string); kinds come from the download tables
PATH_SCHEMAS: dict = {
    "job_id": _JOB_ID, "seg_id": _ARTIFACT_ID, "model_id": _ARTIFACT_ID,
    "fmt": {"type": "string", "enum": ["html", "pdf"]},}

_PNG = ("image/png",)
_ZIP = ("application/zip",)
#: endpoint -> media types of its success answer when it is not JSON (API) / HTML (pages)
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "data_api.image_slice": _PNG, "data_api.segmentation_slice": _PNG,
    "data_api.thickness_slice": _PNG,
    "measure.measure_file": ("application/json", "text/csv"),
    "measure.measure_mesh": ("model/gltf-binary", "application/octet-stream"),
    "annotate.predict_png": _PNG, "annotate.gallery_thumbnail": _PNG,
    "annotate.legacy_next_image": _PNG,
    "annotate.slice_data": ("image/png", "application/octet-stream"),
    "data_api.image_zarr": ("application/json", "application/octet-stream"),
    "data_api.segmentation_zarr": ("application/json", "application/octet-stream"),
    "data_api.segmentation_mesh": ("model/stl", "model/obj", "model/gltf-binary",
                                   "application/octet-stream", "text/csv"),
    "data_api.image_preview": ("application/gzip",),
    "data_api.segmentation_preview": ("application/gzip",),
    "downloads.image_download": ("application/zip", "application/gzip"),
    "downloads.segmentation_download": ("application/zip", "application/gzip", "text/csv"),
    "downloads.meshes_download": _ZIP,
    "annotate.model_download": _ZIP,
    "reports.segmentation_report": ("text/html", "application/pdf"),
    "catalogue.list_jobs": ("application/json", "text/csv"),
    "catalogue.list_jobs_csv": ("text/csv",),
    "annotate.annotation_file": ("application/json", "application/octet-stream", "text/plain",
                                 "text/html"),
}
#: endpoints answering 201 Created
CREATED = {"jobs_api.new_job", "annotate.model_import", "annotate.model_save_preview"}
#: endpoints that answer a permanent redirect (the original pages' old addresses)
MOVED = {"annotate.legacy_annotate_page"}
#: routes that never need an access key (:data:`webapp.auth.OPEN_ENDPOINTS`)
_OPEN_API = {"/api/openapi.json", "/api/auth"}

_ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"application/json": {"schema": _ERROR_SCHEMA}}
_PAGE_ERROR = {"text/html": {"schema": {"type": "string"}}, **_JSON_ERROR}
_ERRORS = {
    "400": "malformed or invalid request",
    "401": "an access key is required (header X-API-Key)",
    "403": "a cross-site request, or its CSRF token does not match",
    "404": "no such job, file or route",
    "405": "method not allowed (Allow lists the methods)",
    "409": "the job is not in a state for this (e.g. not converted yet)",
    "413": "request body over the size limit",
    "429": "too many failed access-key attempts (Retry-After says how long to wait)",
    "503": "this installation lacks the library this needs",
    "507": "the data disk is full (N MiB free), or the job's quota is",
}


def _doc(view) -> tuple[str, str]:
    text = inspect.getdoc(view) or ""
    if not text:
        return "", ""
    summary, _, rest = text.partition("\n")
    return summary.strip(), rest.strip()


def _lookup(table: dict, endpoint: str, method: str):
    return table.get((endpoint, method), table.get(endpoint))


def _path_schema(name: str, conv: str, endpoint: str) -> dict:
    if name == "kind":
        kinds = _download_kinds(endpoint)
        if kinds:
            return {"type": "string", "enum": kinds}
    if conv == "int":
        return {"type": "integer"}
    if conv == "path":
        return {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_.][A-Za-z0-9_./-]*$"}
    return copy.deepcopy(PATH_SCHEMAS.get(name, {"type": "string", "minLength": 1}))


def _download_kinds(endpoint: str) -> list[str]:
    try:
        from . import downloads
    except ImportError:
        return []
    table = {"downloads.image_download": downloads.IMAGE_KINDS,
             "downloads.segmentation_download": downloads.SEGMENTATION_KINDS}.get(endpoint)
    return sorted(table) if table else []


def _responses(endpoint: str, method: str, is_api: bool, keyed: bool) -> dict:
    media = MEDIA_TYPES.get(endpoint) or (("application/json",) if is_api else ("text/html",))
    ok = {"description": "success", "content": {m: {"schema": {}} for m in media}}
    errors = _JSON_ERROR if is_api else _PAGE_ERROR
    codes = ["400", "404", "405", "409", "503", "507"]
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        codes += ["403", "413"]
    if keyed:
        codes += ["401", "429"]
    elif endpoint.startswith("pages.auth"):
        codes += ["401", "429"]
    out = {"200": ok}
    if endpoint in CREATED and method == "POST":
        out["201"] = ok
    if endpoint in MOVED:
        out["301"] = {"description": "moved: Location names the page's current address",
                      "headers": {"Location": {"schema": {"type": "string"}}}}
    for code in sorted(set(codes)):
        out[code] = {"description": _ERRORS[code], "content": copy.deepcopy(errors)}
    return out


def build_spec(app) -> dict:
    """The OpenAPI 3.0 document of every route of ``app`` (static files excepted)."""
    from .auth import OPEN_ENDPOINTS

    paths: dict = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = _CONVERTER_RE.sub(lambda m: "{" + m.group("name") + "}", rule.rule)
        path_params = []
        for m in _CONVERTER_RE.finditer(rule.rule):
            conv = m.group("conv") or "string"
            path_params.append({
                "name": m.group("name"), "in": "path", "required": True,
                "schema": _path_schema(m.group("name"), conv, rule.endpoint),
                **({"description": "a path inside the store; may contain '/'"}
                   if conv == "path" else {}),
            })
        view = app.view_functions.get(rule.endpoint)
        summary, description = _doc(view) if view else ("", "")
        is_api = rule.rule.startswith("/api/")
        keyed = rule.endpoint not in OPEN_ENDPOINTS
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            params = path_params + copy.deepcopy(_lookup(QUERY, rule.endpoint, method) or [])
            op = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": summary or rule.endpoint,
                "tags": [rule.endpoint.split(".")[0]],
                "parameters": params,
                "responses": _responses(rule.endpoint, method, is_api, keyed),
            }
            if description:
                op["description"] = description
            body = _lookup(BODIES, rule.endpoint, method)
            if body is not None and method in ("POST", "PUT", "PATCH"):
                op["requestBody"] = copy.deepcopy(body)
            if keyed:
                op["security"] = [{}, {"apiKey": []}]
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ml4paleo",
            "version": _version(),
            "description": "Turn CT scans of fossils into segmentations and meshes. Errors are "
                           "JSON {\"error\": ...} with a 4xx code (507 when the data disk is "
                           "full). When access keys exist, send one in header X-API-Key.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}},
                                  "required": ["error"]}},
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": "X-API-Key"}},
        },
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ml4paleo")
    except Exception:  # not installed (running from a checkout)
        return "0"


@bp.get("/api/openapi.json")
def openapi_json():
    """This OpenAPI document."""
    return jsonify(build_spec(current_app))
