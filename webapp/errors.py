"""How the web app answers errors.

- API routes (``/api/...``): JSON ``{"error": ...}`` with the HTTP code (headers such as
  ``Allow`` of a 405 kept); other routes keep Flask's HTML error pages.
- A full data disk, or a job over its quota (:mod:`ml4paleo.workspace.space`), is
  ``507 {"error": "the data disk is full (N MiB free)"}`` on every route; the write that
  hit it left nothing half-written (atomic writes), so the request can simply be repeated
  once space is freed.
- Messages never show server paths: absolute paths of the data folder are made relative
  to the job (:func:`ml4paleo.workspace.paths.without_server_paths`).
- Anything else unexpected is logged with its traceback and answered
  ``500 {"error": "internal error: <type>"}``.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ml4paleo.workspace.paths import without_server_paths
from ml4paleo.workspace.space import DiskFull, disk_full, is_disk_full

__all__ = ["INSUFFICIENT_STORAGE", "disk_full_response", "public_message",
           "register_error_handlers"]

log = logging.getLogger(__name__)

INSUFFICIENT_STORAGE = 507


def public_message(text: object) -> str:
    """``text`` without server paths (relative to the job / data folder)."""
    return without_server_paths(str(text), current_app.config["ML4PALEO_SETTINGS"].data_dir)


def disk_full_response(exc: BaseException):
    """The 507 answer for a full disk / quota (``exc`` says how much is free when it is a
    :class:`DiskFull`; otherwise the free space is measured now)."""
    if not isinstance(exc, DiskFull):
        exc = disk_full(current_app.config["ML4PALEO_SETTINGS"].data_dir)
    log.warning("%s %s: %s", request.method, request.path[:300], exc)
    resp = jsonify(error=public_message(exc))
    resp.status_code = INSUFFICIENT_STORAGE
    return resp


def register_error_handlers(app: Flask) -> None:
    """Install the handlers described in this module on ``app``."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.description:
            exc.description = public_message(exc.description)
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
        if is_disk_full(exc):
            return disk_full_response(exc)
        log.exception("unhandled error on %s %s", request.method, request.path[:300])
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500
