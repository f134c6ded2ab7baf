"""Names of results, and models across jobs: rename a segmentation or a model, list every
model of every job (the model picker reuses a model by its job's name, not its raw id).

Thin over the workspace registries (:class:`~ml4paleo.workspace.SegmentationRegistry`,
:class:`~ml4paleo.workspace.ModelRegistry`), which keep the names in
``segmentation.json`` / the model's ``meta.json``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, jsonify, request

from ml4paleo.workspace import (
    JobPaths,
    ModelNotFound,
    ModelRegistry,
    SegmentationNotFound,
    SegmentationRegistry,
)

from .common import get_job, job_paths, json_body, store

log = logging.getLogger(__name__)
bp = Blueprint("results", __name__)


def _name_field() -> str | None:
    body = json_body()
    if "name" not in body:
        abort(400, "field 'name' is required (an empty name restores the default)")
    name = body["name"]
    if name is not None and not isinstance(name, str):
        abort(400, "name must be a string")
    return name


@bp.post("/api/job/<job_id>/segmentation/<seg_id>/rename")
def rename_segmentation(job_id: str, seg_id: str):
    """Name a segmentation: ``{name}`` (``""`` or null: back to its default name
    ``Segmentation <n> · <classes> · <date>``)."""
    get_job(job_id)
    segs = SegmentationRegistry(job_paths(job_id))
    name = _name_field()
    try:
        segs.rename(seg_id, name)
    except SegmentationNotFound:
        abort(404, f"no segmentation {seg_id[:80]!r} in job {job_id!r}")
    except ValueError as exc:
        abort(400, str(exc))
    return jsonify(job_id=job_id, segmentation=segs.describe(seg_id))


@bp.post("/api/job/<job_id>/models/<model_id>/rename")
def rename_model(job_id: str, model_id: str):
    """Name a model version: ``{name}`` (``""`` or null: back to its default name
    ``Model <n> · <classes> · <date>``)."""
    record = get_job(job_id)
    models = ModelRegistry(job_paths(job_id))
    name = _name_field()
    try:
        models.rename(model_id, name)
    except ModelNotFound:
        abort(404, f"no model {model_id[:80]!r} in job {job_id!r}")
    except ValueError as exc:
        abort(400, str(exc))
    return jsonify(job_id=job_id, model=models.entry(model_id, record))


def _metric_summary(metrics: object) -> float | None:
    """The held-out accuracy of a model's metrics, when it has one."""
    if not isinstance(metrics, dict):
        return None
    value = metrics.get("accuracy")
    if isinstance(value, int | float) and value == value:  # not NaN
        return float(value)
    return None


@bp.get("/api/models")
def all_models():
    """Every model version of every job, newest job first, each with its job's name: what
    a model picker offers for reuse (``POST /api/job/<id>/models/import`` copies one).

    Query ``exclude_job`` leaves one job's own models out.
    """
    exclude = request.args.get("exclude_job")
    out = []
    records = [r for r in store().list() if isinstance(r, dict) and r.get("id")]
    records.sort(key=lambda r: str(r.get("created_at") or ""), reverse=True)
    for record in records:
        if record["id"] == exclude:
            continue
        registry = ModelRegistry(JobPaths(store().job_dir(record["id"])))
        try:
            entries = registry.list(record)
        except OSError as exc:  # a job being deleted at this moment
            log.info("models of job %s not listed: %s", record["id"], exc)
            continue
        for entry in entries:
            out.append({
                "job_id": record["id"], "job_name": record.get("name"),
                "model_id": entry["id"], "name": entry["name"], "number": entry["number"],
                "created_at": entry["created_at"],
                "classes": [c.get("name") if isinstance(c, dict) else c
                            for c in entry.get("classes") or []],
                "score": _metric_summary(entry.get("metrics")),
                "label": f"{record.get('name') or record['id']} · {entry['name']}",
            })
    return jsonify(models=out)
