"""The ml4paleo web app: ``create_app`` factory, one blueprint per area.

A thin layer over :mod:`ml4paleo`: routes validate input, call the library / job
store and render JSON or pages. API errors are JSON ``{"error": ...}`` with a 4xx code.

Safety, applied to every blueprint here:

- access keys and CSRF (:mod:`webapp.auth`): when any key exists, every route except an
  explicit open list (static files, OpenAPI, ``/api/auth``, home and about) needs one;
  failed key checks are rate-limited per client (429);
- errors (:mod:`webapp.errors`): JSON ``{"error": ...}`` on API routes; a full data disk
  or a job over its quota is a 507 saying how much is free; no server path in messages;
- upload size limit (``Settings.max_upload_bytes``), strict security headers with a
  Content-Security-Policy that allows only this server's scripts (no CDN).
"""

from __future__ import annotations

import importlib
import logging

from flask import Flask, Request, g, request
from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter, Rule

from ml4paleo.config import Settings

from .auth import CSRF_COOKIE, CSRF_HEADER, KEY_COOKIE, KEY_HEADER, check_access
from .errors import register_error_handlers

log = logging.getLogger(__name__)

# blueprint modules, each exposing ``bp``
_BLUEPRINTS = ("jobs_api", "pages", "data_api", "downloads", "catalogue", "openapi", "annotate",
               "reports", "results", "measure")

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "KEY_COOKIE", "KEY_HEADER", "MAX_BODY_BYTES",
           "JobIdConverter", "create_app"]
#: routes whose body is a file (up to ``Settings.max_upload_bytes``, spooled to disk)
_UPLOAD_ROUTES = {"/api/upload"}
MAX_BODY_BYTES = 128 * 1024**2


class JobIdConverter(BaseConverter):
    """``<job_id>``: only what a job id can be (URL-safe, 22..64 characters), so a rule
    such as ``/api/job/<job_id>`` never matches ``/api/job/new`` (nor its OPTIONS /
    405 answers list that rule's methods)."""

    regex = r"[A-Za-z0-9_-]{22,64}"


class _Rule(Rule):
    """Every ``<job_id>`` of every blueprint uses :class:`JobIdConverter`."""

    def get_converter(self, variable_name, converter_name, args, kwargs):
        if variable_name == "job_id" and converter_name == "default":
            converter_name = "job_id"
        return super().get_converter(variable_name, converter_name, args, kwargs)


class _Request(Request):
    """Flask's request, with JSON nested too deeply for the parser treated as malformed JSON
    (``json.loads`` raises RecursionError, not ValueError, so ``silent=True`` let it through
    as a 500)."""

    def get_json(self, force=False, silent=False, cache=True):
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            if silent:
                return None
            raise BadRequest("request body is JSON nested too deeply") from None


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    """Build the Flask app.

    Parameters
    ----------
    settings : Settings, optional
        Configuration; read from the environment when None.
    **overrides
        Settings fields to override (e.g. ``data_dir=tmp_path``).
    """
    from ml4paleo.jobs import JobStore

    settings = (settings or Settings.from_env()).with_overrides(**overrides)
    app = Flask(__name__)
    app.request_class = _Request
    app.url_rule_class = _Rule
    app.url_map.converters["job_id"] = JobIdConverter
    app.config["ML4PALEO_SETTINGS"] = settings
    app.config["JSON_SORT_KEYS"] = False
    # a request body may hold one whole (unchunked) file; chunked uploads are smaller
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_upload_bytes) + 1024 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    # every other body (JSON: label masks up to 8192^2, base64) is read into memory: bounded
    app.config["ML4PALEO_MAX_BODY_BYTES"] = MAX_BODY_BYTES
    app.extensions["ml4paleo_store"] = JobStore(settings.data_dir, settings=settings)

    registered: list[str] = []
    for name in _BLUEPRINTS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            # only a blueprint that is not written yet is skipped, never a broken import
            if exc.name != f"{__name__}.{name}":
                raise
            log.warning("web app blueprint %s is not available", name)
            continue
        app.register_blueprint(module.bp)
        registered.append(name)
    app.config["ML4PALEO_BLUEPRINTS"] = tuple(registered)

    app.before_request(_limit_body)
    app.before_request(check_access)
    app.after_request(_security_headers)
    register_error_handlers(app)
    return app


def _limit_body():
    """``before_request``: only upload routes may send multi-gigabyte bodies (413 otherwise)."""
    from flask import current_app

    if request.path not in _UPLOAD_ROUTES:
        limit = current_app.config["ML4PALEO_MAX_BODY_BYTES"]
        request.max_content_length = min(limit, current_app.config["MAX_CONTENT_LENGTH"])


def _security_headers(resp):
    """``after_request``: CSRF cookie for pages, security headers, CSP."""
    token = getattr(g, "csrf_token", None)
    if token and request.cookies.get(CSRF_COOKIE) != token:
        resp.set_cookie(CSRF_COOKIE, token, samesite="Strict", httponly=False, path="/")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    nonce = getattr(g, "csp_nonce", None)
    script_src = "'self' 'wasm-unsafe-eval'" + (f" 'nonce-{nonce}'" if nonce else "")
    resp.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        f"script-src {script_src}; worker-src 'self' blob:; connect-src 'self' blob: data:; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'self'",
    )
    return resp
