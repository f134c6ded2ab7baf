"""The ml4paleo web app: ``create_app`` factory, one blueprint per area.

A thin layer over :mod:`ml4paleo`: routes validate input, call the library / job
store and render JSON or pages. API errors are JSON ``{"error": ...}`` with a 4xx code.

Safety, applied to every blueprint here:

- access keys (:mod:`ml4paleo.keys`): when any key exists, every ``/api`` route except
  the OpenAPI document and ``/api/auth`` needs one, in header ``X-API-Key`` (or the
  ``ml4paleo_key`` cookie the browser sets after asking once);
- CSRF: a state-changing request from a browser must be same-origin; the pages' own
  scripts also send the per-session token (cookie ``ml4paleo_csrf`` echoed in header
  ``X-CSRF-Token``). Clients that are not browsers (Python, curl) send neither
  ``Origin`` nor ``Sec-Fetch-Site`` and keep working, as do same-origin Dropzone posts
  of the original pages. A key taken from the cookie (not the header) needs the token;
- upload size limit (``Settings.max_upload_bytes``), strict security headers with a
  Content-Security-Policy that allows only this server's scripts (no CDN).
"""

from __future__ import annotations

import hmac
import importlib
import logging
import secrets
from urllib.parse import urlsplit

from flask import Flask, Request, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from ml4paleo import keys as keylib
from ml4paleo.config import Settings

log = logging.getLogger(__name__)

# blueprint modules, each exposing ``bp``
_BLUEPRINTS = ("jobs_api", "pages", "data_api", "downloads", "catalogue", "openapi", "annotate",
               "reports", "measure")

CSRF_COOKIE = "ml4paleo_csrf"
CSRF_HEADER = "X-CSRF-Token"
KEY_COOKIE = "ml4paleo_key"
KEY_HEADER = "X-API-Key"
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# /api routes that stay open when keys exist (so a browser can learn it must ask)
_OPEN_API = {"/api/openapi.json", "/api/auth"}
#: routes whose body is a file (up to ``Settings.max_upload_bytes``, spooled to disk)
_UPLOAD_ROUTES = {"/api/upload"}
MAX_BODY_BYTES = 128 * 1024**2


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
    app.before_request(_check_access)
    app.after_request(_security_headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            resp = jsonify(error=exc.description or exc.name)
            resp.status_code = exc.code or 500
            for name, value in exc.get_headers():  # e.g. Allow of a 405
                if name.lower() != "content-type":
                    resp.headers[name] = value
            return resp
        return exc

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path[:300])
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    return app


def _deny(code: int, message: str):
    resp = jsonify(error=message)
    resp.status_code = code
    return resp


def _same_origin(origin: str) -> bool:
    """True when ``origin`` (an Origin/Referer URL) names this server."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


def _limit_body():
    """``before_request``: only upload routes may send multi-gigabyte bodies (413 otherwise)."""
    from flask import current_app

    if request.path not in _UPLOAD_ROUTES:
        limit = current_app.config["ML4PALEO_MAX_BODY_BYTES"]
        request.max_content_length = min(limit, current_app.config["MAX_CONTENT_LENGTH"])


def _same_secret(a: str, b: str) -> bool:
    """Constant-time equality of two header/cookie strings. ``hmac.compare_digest`` raises
    TypeError for ``str`` with non-ASCII characters (a 500 from a forged header): bytes."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def _check_access():
    """``before_request``: access key on /api routes, then CSRF on state changes."""
    from flask import current_app

    settings: Settings = current_app.config["ML4PALEO_SETTINGS"]
    g.csrf_token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    header_key = request.headers.get(KEY_HEADER)
    key_ok_by_header = False
    if request.path.startswith("/api/") and request.path not in _OPEN_API:
        if keylib.has_keys(settings.data_dir):
            if header_key and keylib.verify_key(settings.data_dir, header_key):
                key_ok_by_header = True
            elif not keylib.verify_key(settings.data_dir, request.cookies.get(KEY_COOKIE)):
                return _deny(401, "an access key is required (header X-API-Key)")
    elif header_key and keylib.verify_key(settings.data_dir, header_key):
        key_ok_by_header = True

    if request.method not in _UNSAFE_METHODS or key_ok_by_header:
        return None
    sent = request.headers.get(CSRF_HEADER)
    cookie = request.cookies.get(CSRF_COOKIE)
    if sent is not None:
        if cookie and _same_secret(sent, cookie):
            return None
        return _deny(403, "CSRF token does not match; reload the page")
    if request.cookies.get(KEY_COOKIE) and keylib.has_keys(settings.data_dir):
        # authenticated by cookie alone: a browser must prove it is our page
        return _deny(403, "CSRF token missing (header X-CSRF-Token)")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site in ("cross-site", "same-site"):
        return _deny(403, "cross-site request refused")
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin):
        return _deny(403, "cross-origin request refused")
    if origin is None and fetch_site is None:
        referer = request.headers.get("Referer")
        if referer and not _same_origin(referer):
            return _deny(403, "cross-origin request refused")
    return None


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
