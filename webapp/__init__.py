"""The ml4paleo web app: ``create_app`` factory, one blueprint per area.

A thin layer over :mod:`ml4paleo`: routes validate input, call the library / job
store and render JSON or pages. API errors are JSON ``{"error": ...}`` with a 4xx code.
"""

from __future__ import annotations

import importlib
import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ml4paleo.config import Settings

log = logging.getLogger(__name__)

# blueprint modules, each exposing ``bp``
_BLUEPRINTS = ("jobs_api",)


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
    app.config["ML4PALEO_SETTINGS"] = settings
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["ml4paleo_store"] = JobStore(settings.data_dir, settings=settings)

    for name in _BLUEPRINTS:
        module = importlib.import_module(f"{__name__}.{name}")
        app.register_blueprint(module.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            return jsonify(error=exc.description or exc.name), exc.code
        return exc

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    return app
