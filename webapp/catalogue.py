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
"""

from __future__ import annotations

import csv
import io
import math
import os
import threading
import time
from datetime import datetime

from flask import Blueprint, Response, abort, jsonify, request

from .common import int_arg, job_state, store

bp = Blueprint("catalogue", __name__)

COLUMNS = (
    "id", "name", "status", "progress", "source_type", "created_at", "updated_at", "bytes",
    "shape", "dtype", "voxel_size", "unit", "modality", "manufacturer", "manufacturer_model",
    "series_uid", "study_uid", "series_description", "error",
)
SORTABLE = {"name", "status", "progress", "source_type", "created_at", "updated_at", "bytes",
            "modality", "manufacturer", "manufacturer_model", "voxel_size"}
_SIZE_TTL = 30.0
_size_lock = threading.Lock()
_size_cache: dict[str, tuple[float, str, int]] = {}


def _folder_bytes(path: str) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _job_bytes(job_id: str, updated_at: str) -> int:
    """Disk use of a job folder, cached for a while (a scan of a 50 GB job is not free)."""
    now = time.monotonic()
    with _size_lock:
        hit = _size_cache.get(job_id)
        if hit and hit[1] == updated_at and now - hit[0] < _SIZE_TTL:
            return hit[2]
    size = _folder_bytes(str(store().job_dir(job_id)))
    with _size_lock:
        _size_cache[job_id] = (now, updated_at, size)
    return size


def _field(meta: dict, *names: str):
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    for name in names:
        for d in (meta, source):
            value = d.get(name)
            if value not in (None, ""):
                return value
    return None


def summarize(record: dict) -> dict:
    """One catalogue row of a job record (plus ``state``: its status described)."""
    meta = record.get("metadata") or {}
    if not isinstance(meta, dict):
        meta = {}
    status = record.get("status")
    return {
        "id": record.get("id"),
        "name": record.get("name"),
        "status": getattr(status, "value", status),
        "progress": record.get("progress"),
        "source_type": record.get("source_type"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
        "bytes": _job_bytes(record["id"], str(record.get("updated_at"))),
        "shape": meta.get("shape"),
        "dtype": meta.get("dtype"),
        "voxel_size": meta.get("voxel_size"),
        "unit": meta.get("unit"),
        "modality": _field(meta, "modality", "Modality"),
        "manufacturer": _field(meta, "manufacturer", "Manufacturer"),
        "manufacturer_model": _field(meta, "manufacturer_model", "model",
                                     "ManufacturerModelName"),
        "series_uid": _field(meta, "series_uid", "SeriesInstanceUID"),
        "study_uid": _field(meta, "study_uid", "StudyInstanceUID"),
        "series_description": _field(meta, "series_description", "SeriesDescription"),
        "error": record.get("error"),
        "state": job_state(status),  # what the status means (not a CSV column)
    }


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be a number, got {raw!r}")
    if not math.isfinite(value):
        abort(400, f"query parameter {name!r} must be a finite number, got {raw!r}")
    return value


def _date_arg(name: str) -> str | None:
    """An ISO-8601 date / date-time query argument (compared as text with created_at)."""
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        datetime.fromisoformat(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be an ISO-8601 date, got {raw[:40]!r}")
    return raw


def _check_filters() -> None:
    """Malformed filters are a 400 even when no job would reach them (checked once)."""
    for name in ("voxel_size_min", "voxel_size_max"):
        _float_arg(name)
    for name in ("created_after", "created_before"):
        _date_arg(name)


def _matches(row: dict, args) -> bool:
    q = (args.get("q") or "").strip().lower()
    if q and q not in str(row["name"] or "").lower() and q not in str(row["id"]).lower():
        return False
    name = (args.get("name") or "").strip().lower()
    if name and name not in str(row["name"] or "").lower():
        return False
    statuses = {s.strip().lower() for s in (args.get("status") or "").split(",") if s.strip()}
    if statuses and str(row["status"]).lower() not in statuses:
        return False
    for param, column in (("source_type", "source_type"), ("modality", "modality"),
                          ("manufacturer", "manufacturer"), ("model", "manufacturer_model"),
                          ("series_uid", "series_uid")):
        wanted = (args.get(param) or "").strip().lower()
        if wanted and str(row[column] or "").strip().lower() != wanted:
            return False
    lo, hi = _float_arg("voxel_size_min"), _float_arg("voxel_size_max")
    if lo is not None or hi is not None:
        vs = row["voxel_size"]
        try:
            smallest = min(float(v) for v in vs) if vs else None
        except (TypeError, ValueError):
            smallest = None
        if smallest is None or (lo is not None and smallest < lo) or (
                hi is not None and smallest > hi):
            return False
    after, before = args.get("created_after"), args.get("created_before")
    created = str(row["created_at"] or "")
    if after and created < after:
        return False
    if before and created > before:
        return False
    return True


def _sort_key(column: str):
    def key(row):
        value = row.get(column)
        if column == "voxel_size":
            try:
                value = min(float(v) for v in value) if value else None
            except (TypeError, ValueError):
                value = None
        if value is None:
            return (1, 0, "")
        if isinstance(value, int | float):
            return (0, value, "")
        return (0, 0, str(value).lower())
    return key


def _rows() -> list[dict]:
    _check_filters()
    rows = []
    for record in store().list():
        if not isinstance(record, dict) or not record.get("id"):
            continue
        try:
            rows.append(summarize(record))
        except (KeyError, OSError):
            continue
    rows = [r for r in rows if _matches(r, request.args)]
    sort = request.args.get("sort") or "-created_at"
    desc = sort.startswith("-")
    column = sort.lstrip("-+")
    if column not in SORTABLE:
        abort(400, f"cannot sort by {column!r}; choose from {', '.join(sorted(SORTABLE))}")
    # None values last in either direction
    present = [r for r in rows if r.get(column) not in (None, "")]
    missing = [r for r in rows if r.get(column) in (None, "")]
    present.sort(key=_sort_key(column), reverse=desc)
    return present + missing


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
    rows = _rows()
    if request.args.get("format") == "csv":
        return _csv(rows)
    per_page = int_arg("per_page", 50, 1, 500)
    page = int_arg("page", 1, 1, 10**6)
    start = (page - 1) * per_page
    return jsonify(jobs=rows[start:start + per_page], total=len(rows), page=page,
                   per_page=per_page, pages=max(1, -(-len(rows) // per_page)))


@bp.get("/api/jobs.csv")
def list_jobs_csv():
    """Every job matching the filters of ``GET /api/jobs`` as CSV."""
    return _csv(_rows())
