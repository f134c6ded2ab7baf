"""The one access rule of the web app, and CSRF.

Access keys (:mod:`ml4paleo.keys`): when any key exists, **every** route needs one
except those in :data:`OPEN_ENDPOINTS` (static files, the OpenAPI document, ``/api/auth``
and the home / about page shells, which show no job data). A key comes in header
``X-API-Key`` or in the ``ml4paleo_key`` cookie the browser gets from ``POST /api/auth``.
Without one:

- a page of a job (:data:`PAGE_ENDPOINTS`) answers 401 with the page shell that asks for
  the key and reloads: neither the job's name nor anything else of the job is in it;
- everything else answers 401 JSON ``{"error": ...}``.

Failed key checks are counted per client address (:class:`ml4paleo.keys.AttemptLimiter`):
once a client has used up its budget, requests carrying a key answer 429 with
``Retry-After`` without checking the key.

CSRF: a state-changing request from a browser must be same-origin; the pages' own scripts
also send the per-session token (cookie ``ml4paleo_csrf`` echoed in header
``X-CSRF-Token``). Clients that are not browsers (Python, curl) send neither ``Origin``
nor ``Sec-Fetch-Site`` and keep working, as do same-origin Dropzone posts of the original
pages. A key taken from the cookie (not the header) needs the token.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Response, current_app, g, jsonify, render_template, request

from ml4paleo import keys as keylib
from ml4paleo.config import Settings

__all__ = [
    "CSRF_COOKIE", "CSRF_HEADER", "KEY_COOKIE", "KEY_HEADER", "OPEN_ENDPOINTS",
    "PAGE_ENDPOINTS", "TooManyAttempts", "check_access", "check_key", "limiter",
    "needs_key",
]

CSRF_COOKIE = "ml4paleo_csrf"
CSRF_HEADER = "X-CSRF-Token"
KEY_COOKIE = "ml4paleo_key"
KEY_HEADER = "X-API-Key"
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

#: endpoints that never need a key: they show no job data (and let a browser learn that
#: it must ask for one)
OPEN_ENDPOINTS = frozenset({
    "static",
    "openapi.openapi_json",
    "pages.auth_status", "pages.auth_login", "pages.auth_logout",
    "pages.home", "pages.about",
})
#: HTML pages of a job: without a key they answer 401 with a page shell that asks for it
PAGE_ENDPOINTS = frozenset({
    "pages.job_page", "pages.viewer_page", "pages.view3d_page", "pages.downloads_page",
    "annotate.annotate_page", "annotate.gallery_page", "annotate.models_page",
    "annotate.legacy_annotate_page",
})


class TooManyAttempts(Exception):  # noqa: N818 - an answer, not a bug
    """The client used up its failed-key budget; ``retry_after`` seconds to wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed access-key attempts; retry in "
                         f"{keylib.AttemptLimiter.retry_after(retry_after)} s")
        self.retry_after = retry_after


def _settings() -> Settings:
    return current_app.config["ML4PALEO_SETTINGS"]


def limiter() -> keylib.AttemptLimiter:
    """The app's failed-attempt limiter (made from the settings on first use)."""
    lim = current_app.extensions.get("ml4paleo_auth_limiter")
    if lim is None:
        s = _settings()
        lim = keylib.AttemptLimiter(burst=s.auth_failures_burst,
                                    per_minute=s.auth_failures_per_minute)
        current_app.extensions["ml4paleo_auth_limiter"] = lim
    return lim


def _client() -> str:
    return request.remote_addr or "unknown"


def check_key(key: str | None, keys: list[dict] | None = None) -> dict | None:
    """Verify ``key`` for this request's client: the key's public info or None.

    ``keys``: the key records this request already read (:func:`ml4paleo.keys.load_keys`).

    Raises
    ------
    TooManyAttempts
        When the client has used up its failed attempts (the key is not checked).
    """
    if not key:
        return None
    lim = limiter()
    wait = lim.blocked(_client())
    if wait:
        raise TooManyAttempts(wait)
    info = keylib.verify_key(_settings().data_dir, key, keys=keys)
    if info is None:
        lim.failed(_client())
    return info


def needs_key(endpoint: str | None) -> bool:
    """True when ``endpoint`` needs a key once keys exist (everything not open)."""
    return endpoint is not None and endpoint not in OPEN_ENDPOINTS


def _deny(code: int, message: str, **headers) -> Response:
    resp = jsonify(error=message)
    resp.status_code = code
    resp.headers.update(headers)
    return resp


def _locked_page() -> Response:
    """The page shell that asks for the key (no job data), status 401."""
    g.csp_nonce = secrets.token_urlsafe(16)
    html = render_template("locked.html", auth_required=True, csp_nonce=g.csp_nonce)
    return Response(html, status=401, mimetype="text/html")


def _same_origin(origin: str) -> bool:
    """True when ``origin`` (an Origin/Referer URL) names this server."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


def _same_secret(a: str, b: str) -> bool:
    """Constant-time equality of two header/cookie strings. ``hmac.compare_digest`` raises
    TypeError for ``str`` with non-ASCII characters (a 500 from a forged header): bytes."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def check_access() -> Response | None:
    """``before_request``: the access key rule, then CSRF on state changes."""
    settings = _settings()
    g.csrf_token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    if request.url_rule is None:
        return None  # no route (404 / 405): nothing of a job is answered
    stored = keylib.load_keys(settings.data_dir)  # the key file is looked at once
    keys_exist = bool(stored)
    header_key = request.headers.get(KEY_HEADER)
    cookie_key = request.cookies.get(KEY_COOKIE)
    by_header = False
    if keys_exist:
        try:
            # a header key on an open route is checked only to spare it the CSRF rule
            if header_key and (needs_key(request.endpoint)
                               or request.method in _UNSAFE_METHODS) \
                    and check_key(header_key, stored) is not None:
                by_header = True
            elif needs_key(request.endpoint) and check_key(cookie_key, stored) is None:
                if request.endpoint in PAGE_ENDPOINTS:
                    return _locked_page()
                return _deny(401, "an access key is required (header X-API-Key)")
        except TooManyAttempts as exc:
            return _deny(429, str(exc),
                         **{"Retry-After": str(keylib.AttemptLimiter.retry_after(
                             exc.retry_after))})

    if request.method not in _UNSAFE_METHODS or by_header:
        return None
    sent = request.headers.get(CSRF_HEADER)
    cookie = request.cookies.get(CSRF_COOKIE)
    if sent is not None:
        if cookie and _same_secret(sent, cookie):
            return None
        return _deny(403, "CSRF token does not match; reload the page")
    if cookie_key and keys_exist:
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
