"""The job catalogue: ``GET /api/jobs`` with filters, sorting, paging and CSV export.

Filters (query parameters, all optional, combined with AND):

- ``q`` or ``name``: case-insensitive substring of the job name (``q`` also matches the id);
- ``status``: one or more statuses, comma-separated;
- ``source_type``, ``modality``, ``manufacturer``, ``model`` (scanner model),
  ``series_uid``: exact match (case-insensitive) on the DICOM / source fields kept
  from conversion;
- ``voxel_size_min`` / ``voxel_size_max``: the smallest voxel edge lies in this range;
- ``created_after`` / ``created_before``: ISO-8601 dates.

``sort`` names a column (``-`` prefix = descending, default ``-created_at``); ``page``
(from 1) and ``per_page`` (1..500, default 50) page the result. ``format=csv`` (or
``/api/jobs.csv``) returns every matching job as CSV.

Rows come from the job index (:mod:`ml4paleo.jobs.index`): filtering, sorting and paging
run there, so a page costs the same at 10,000 jobs as at 10. ``bytes`` is the job
folder's size as its runner last measured it (the upload's size before that).
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime

from flask import Blueprint, Response, abort, jsonify, request

from ml4paleo.jobs.index import EXACT_FILTERS, SORTABLE

from .common import int_arg, job_state, store

bp = Blueprint("catalogue", __name__)

COLUMNS = (
    "id", "name", "status", "progress", "source_type", "created_at", "updated_at", "bytes",
    "shape", "dtype", "voxel_size", "unit", "modality", "manufacturer", "manufacturer_model",
    "series_uid", "study_uid", "series_description", "error",
)
MAX_PER_PAGE = 500
MAX_PAGE = 10**6


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be a number, got {raw[:40]!r}")
    if not math.isfinite(value):
        abort(400, f"query parameter {name!r} must be a finite number, got {raw[:40]!r}")
    return value


def _date_arg(name: str) -> str | None:
    """An ISO-8601 date / date-time query argument (compared as text with created_at)."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        datetime.fromisoformat(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be an ISO-8601 date, got {raw[:40]!r}")
    return raw


def _query(paged: bool) -> tuple[list[dict], int, int, int]:
    """Rows of the jobs matching the request's filters (one page when ``paged``), the
    number matching, and the page / page size."""
    args = request.args
    sort = args.get("sort") or "-created_at"
    if sort.lstrip("-+") not in SORTABLE:
        abort(400, f"cannot sort by {sort.lstrip('-+')!r}; choose from {', '.join(sorted(SORTABLE))}")
    per_page = int_arg("per_page", 50, 1, MAX_PER_PAGE)
    page = int_arg("page", 1, 1, MAX_PAGE)
    filters = dict(
        q=args.get("q"), name=args.get("name"),
        statuses=[s for s in (args.get("status") or "").split(",") if s.strip()],
        exact={k: args.get(k) for k in EXACT_FILTERS if args.get(k)},
        voxel_size_min=_float_arg("voxel_size_min"), voxel_size_max=_float_arg("voxel_size_max"),
        created_after=_date_arg("created_after"), created_before=_date_arg("created_before"),
        sort=sort)
    if paged:
        filters.update(offset=(page - 1) * per_page, limit=per_page)
    rows, total = store().query(**filters)
    for row in rows:
        row["state"] = job_state(row.get("status"))  # what the status means (not a CSV column)
    return rows, total, page, per_page


def _csv(rows: list[dict]) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if isinstance(v, list | tuple):
                v = "x".join(str(x) for x in v)
            text = "" if v is None else str(v)
            # keep spreadsheet programs from running a formula stored in a job name
            if text[:1] in ("=", "+", "-", "@", "\t", "\r") and c in ("name", "error"):
                text = "'" + text
            cells.append(text)
        writer.writerow(cells)
    return Response(buf.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="ml4paleo-jobs.csv"'})


@bp.get("/api/jobs")
def list_jobs():
    """The job catalogue (see the module docstring for filters, sorting and paging)."""
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        abort(400, f"format must be json or csv, got {fmt[:40]!r}")
    if fmt == "csv":
        return _csv(_query(paged=False)[0])
    rows, total, page, per_page = _query(paged=True)
    return jsonify(jobs=rows, total=total, page=page, per_page=per_page,
                   pages=max(1, -(-total // per_page)))


@bp.get("/api/jobs.csv")
def list_jobs_csv():
    """Every job matching the filters of ``GET /api/jobs`` as CSV."""
    return _csv(_query(paged=False)[0])
