"""``GET /api/openapi.json``: an OpenAPI 3 document generated from the URL map.

Every registered route is described (so none can be forgotten): its path parameters
come from the rule's converters, summary and description from the view's docstring,
and known query parameters from :data:`QUERY_PARAMETERS`.
"""

from __future__ import annotations

import inspect
import re

from flask import Blueprint, current_app, jsonify

bp = Blueprint("openapi", __name__)

_CONVERTER_RE = re.compile(r"<(?:(?P<conv>[a-zA-Z_]+)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_]\w*)>")
_TILE = [
    ("axis", "string", "plane normal: z, y or x"),
    ("index", "integer", "plane index in full-resolution voxels"),
    ("level", "integer", "pyramid level (0 = full resolution)"),
    ("tile", "string", "'row,col' of one tile of the plane (optional)"),
    ("tile_size", "integer", "tile edge in pixels of the level (16..2048, default 512)"),
]
#: endpoint -> [(name, type, description)]
QUERY_PARAMETERS: dict[str, list[tuple[str, str, str]]] = {
    "data_api.image_slice": [*_TILE, ("window", "string", "'low,high' intensity window")],
    "data_api.segmentation_slice": _TILE,
    "catalogue.list_jobs": [
        ("q", "string", "substring of name or id"),
        ("name", "string", "substring of the name"),
        ("status", "string", "comma-separated statuses"),
        ("source_type", "string", "image_stack, tiff, dicom, nifti, npy, zarr"),
        ("modality", "string", "DICOM modality"),
        ("manufacturer", "string", "DICOM manufacturer"),
        ("model", "string", "DICOM manufacturer model name"),
        ("series_uid", "string", "DICOM series instance UID"),
        ("voxel_size_min", "number", "smallest voxel edge at least this"),
        ("voxel_size_max", "number", "smallest voxel edge at most this"),
        ("created_after", "string", "ISO-8601 date"),
        ("created_before", "string", "ISO-8601 date"),
        ("sort", "string", "column, '-' prefix for descending (default -created_at)"),
        ("page", "integer", "page from 1"),
        ("per_page", "integer", "rows per page, 1..500"),
        ("format", "string", "'csv' for CSV"),
    ],
}
QUERY_PARAMETERS["catalogue.list_jobs_csv"] = QUERY_PARAMETERS["catalogue.list_jobs"][:12]
QUERY_PARAMETERS["annotate.predict_tile"] = [
    *_TILE[:3],
    ("ty", "integer", "tile row of the plane on that level"),
    ("tx", "integer", "tile column of the plane on that level"),
    ("kind", "string", "classes (default) or uncertainty"),
    ("v", "string", "the preview's version (answers for the current one may be cached)"),
]
QUERY_PARAMETERS["annotate.slice_data"] = [
    *_TILE[:3], ("format", "string", "png (default) or raw"),
    ("wmin", "number", "window low (png)"), ("wmax", "number", "window high (png)"),
]

_PNG = ("image/png",)
_ZIP = ("application/zip",)
#: endpoint -> media types of its success answer when it is not JSON (API) / HTML (pages)
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "data_api.image_slice": _PNG, "data_api.segmentation_slice": _PNG,
    "annotate.predict_png": _PNG, "annotate.gallery_thumbnail": _PNG,
    "annotate.predict_tile": _PNG,
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
    "annotate.annotation_file": ("application/json", "application/octet-stream"),
}
#: endpoints answering 201 Created
CREATED = {"jobs_api.new_job", "annotate.model_import", "annotate.model_save_preview"}

_ERROR = {"description": "error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _doc(view) -> tuple[str, str]:
    text = inspect.getdoc(view) or ""
    if not text:
        return "", ""
    summary, _, rest = text.partition("\n")
    return summary.strip(), rest.strip()


def build_spec(app) -> dict:
    """The OpenAPI 3.0 document of every route of ``app`` (static files excepted)."""
    paths: dict = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = _CONVERTER_RE.sub(lambda m: "{" + m.group("name") + "}", rule.rule)
        params = []
        for m in _CONVERTER_RE.finditer(rule.rule):
            conv = m.group("conv") or "string"
            params.append({
                "name": m.group("name"), "in": "path", "required": True,
                "schema": {"type": "integer" if conv == "int" else "string"},
                **({"description": "a path inside the store; may contain '/'"}
                   if conv == "path" else {}),
            })
        for name, typ, about in QUERY_PARAMETERS.get(rule.endpoint, []):
            params.append({"name": name, "in": "query", "required": False,
                           "schema": {"type": typ}, "description": about})
        view = app.view_functions.get(rule.endpoint)
        summary, description = _doc(view) if view else ("", "")
        is_api = rule.rule.startswith("/api/")
        media = MEDIA_TYPES.get(rule.endpoint) or (
            ("application/json",) if is_api else ("text/html",))
        ok = {"description": "success", "content": {m: {"schema": {}} for m in media}}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": summary or rule.endpoint,
                "tags": [rule.endpoint.split(".")[0]],
                "parameters": params,
                # 409: the job is not in a state for this (e.g. not converted yet)
                "responses": {"200": ok, "400": _ERROR, "404": _ERROR, "409": _ERROR},
            }
            if description:
                op["description"] = description
            if rule.endpoint in CREATED and method == "POST":
                op["responses"]["201"] = ok
            if method in ("POST", "PUT", "PATCH"):
                op["responses"]["413"] = _ERROR  # body over the size limit
            if is_api and rule.rule not in ("/api/openapi.json", "/api/auth"):
                op["security"] = [{}, {"apiKey": []}]
                op["responses"]["401"] = _ERROR
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ml4paleo",
            "version": _version(),
            "description": "Turn CT scans of fossils into segmentations and meshes. Errors are "
                           "JSON {\"error\": ...} with a 4xx code. When access keys exist, send "
                           "one in header X-API-Key.",
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
