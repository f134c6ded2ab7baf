"""HTML pages (home, job, slice viewer, 3D view, downloads, about) and ``/api/auth``.

Pages are thin shells: they render the job's name (autoescaped) and id, and their
scripts fetch everything else from the JSON API.
"""

from __future__ import annotations

import secrets

from flask import Blueprint, abort, g, jsonify, make_response, render_template, request

from ml4paleo import keys as keylib

from .auth import KEY_COOKIE, KEY_HEADER, TooManyAttempts, check_key
from .common import get_job, json_body, settings

bp = Blueprint("pages", __name__)


def render(template: str, **context):
    """Render with a per-response CSP nonce (for the import map of the 3D page)."""
    g.csp_nonce = secrets.token_urlsafe(16)
    context.setdefault("csp_nonce", g.csp_nonce)
    context.setdefault("auth_required", keylib.has_keys(settings().data_dir))
    return render_template(template, **context)


def _job_page(template: str, job_id: str, **context):
    from ml4paleo.jobs import JobStore

    if not JobStore.is_valid_id(job_id):
        abort(404)
    try:
        job = get_job(job_id)
    except Exception:  # noqa: BLE001 -- get_job aborts with 404; keep the HTML error page
        abort(404)
    return render(template, job=job, job_id=job_id, **context)


@bp.get("/")
def home():
    """Home: upload a scan, list jobs."""
    from ml4paleo.jobs.statuses import status_filters

    return render("home.html", status_filters=status_filters())


@bp.get("/about")
def about():
    """About ml4paleo."""
    return render("about.html")


@bp.get("/job/<job_id>")
def job_page(job_id: str):
    """Job page: pipeline with live progress, metadata, actions, outputs."""
    return _job_page("job.html", job_id)


@bp.get("/job/<job_id>/viewer")
def viewer_page(job_id: str):
    """Slice viewer: three orthogonal planes with the segmentation overlay."""
    return _job_page("viewer.html", job_id)


@bp.get("/job/<job_id>/3d")
def view3d_page(job_id: str):
    """3D view: meshes (three.js) and the volume + segmentation (NiiVue)."""
    return _job_page("view3d.html", job_id)


@bp.get("/job/<job_id>/download")
def downloads_page(job_id: str):
    """Downloads page: every export that exists, with sizes."""
    return _job_page("downloads.html", job_id)


@bp.get("/api/auth")
def auth_status():
    """Whether an access key is required and whether this request carries a valid one."""
    required = keylib.has_keys(settings().data_dir)
    key = request.headers.get(KEY_HEADER) or request.cookies.get(KEY_COOKIE)
    return jsonify(auth_required=required,
                   authenticated=(not required) or _checked(key) is not None)


def _checked(key: str | None) -> dict | None:
    """:func:`webapp.auth.check_key`, a used-up budget answered 429 (with Retry-After)."""
    try:
        return check_key(key)
    except TooManyAttempts as exc:
        abort(make_response(jsonify(error=str(exc)), 429,
                            {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}))


@bp.post("/api/auth")
def auth_login():
    """Check an access key (``{key}``) and remember it in a same-site cookie."""
    key = json_body().get("key")
    if not isinstance(key, str) or not key:
        abort(400, "field 'key' is required")
    info = _checked(key)
    if info is None:
        abort(401, "unknown access key")
    resp = make_response(jsonify(authenticated=True, name=info["name"]))
    resp.set_cookie(KEY_COOKIE, key, httponly=True, samesite="Strict", path="/",
                    max_age=365 * 24 * 3600)
    return resp


@bp.delete("/api/auth")
def auth_logout():
    """Forget the access key cookie."""
    resp = make_response(jsonify(authenticated=False))
    resp.delete_cookie(KEY_COOKIE, path="/")
    return resp
