"""Job routes of the original API: create, resumable chunked upload, upload-complete,
status and rename. Thin over :class:`ml4paleo.jobs.JobStore`.

Uploads are Dropzone-style chunks (multipart ``file`` + ``dzuuid``, ``dzchunkindex``,
``dzchunkbyteoffset``, ``dztotalchunkcount``, ``dztotalfilesize``). Each chunk is written
at its byte offset, so a retried or resumed chunk is harmless, and the byte ranges
received are recorded per file so ``GET /api/upload/status`` tells a client where to
resume. Chunk writes and ``upload-complete`` exclude each other (a per-job upload lock),
so conversion never starts on a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, request

from ml4paleo.jobs import InvalidTransition, JobNotFound, JobStore, Status
from ml4paleo.jobs.store import clean_name, normalize_source_type

log = logging.getLogger(__name__)
bp = Blueprint("jobs_api", __name__)

UPLOAD_STATE_DIR = ".uploads"
UPLOAD_LOCK = ".upload.lock"
MAX_PATH_DEPTH = 16
MAX_PART_LENGTH = 200
COPY_BLOCK = 8 * 1024 * 1024
#: the only dot-file names an upload keeps (Zarr v2 metadata); any other leading dot is cut
ZARR_METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ ()+,=@~-]")


def _store() -> JobStore:
    return current_app.extensions["ml4paleo_store"]


def _settings():
    return current_app.config["ML4PALEO_SETTINGS"]


def _body() -> dict:
    """The JSON object of the request (form fields accepted too; empty body = {}), else 400."""
    if request.form:
        return request.form.to_dict()
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        abort(400, "request body must be a JSON object")
    return data


def _job(job_id: object) -> dict:
    """The record of ``job_id`` or a 404 / 400 JSON error."""
    if job_id is None or job_id == "":
        abort(400, "job_id is required")
    if not isinstance(job_id, str):
        abort(400, "job_id must be a string")
    try:
        return _store().get(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id[:80]!r}")


def public_status(record: dict) -> dict:
    """The status answer: the record without runner internals, status as plain text."""
    lease = record.get("lease") or {}
    out = {
        "job_id": record["id"],
        "name": record.get("name"),
        "status": str(record.get("status")),
        "progress": record.get("progress", 0.0),
        "error": record.get("error"),
        "message": record.get("message"),
        "source_type": record.get("source_type"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
        "metadata": record.get("metadata") or {},
        "model_id": record.get("model_id"),
        "models": record.get("models", []),
        "segmentation_id": record.get("segmentation_id"),
        "segmentations": record.get("segmentations", []),
        "meshes": record.get("meshes", {}),
        "annotations_pending": bool(record.get("annotations_pending")),
        "upload_bytes": record.get("upload_bytes", 0),
        "attempts": lease.get("attempts") or record.get("attempts") or 0,
        "last_error": record.get("last_error"),
        "history": record.get("history", []),
    }
    return out


# --------------------------------------------------------------------------- jobs
@bp.post("/api/job/new")
def new_job():
    """Create a job: ``{name?, source_type?}`` -> 201 ``{job_id, ...}``."""
    data = _body()
    try:
        name = clean_name(data.get("name"), default="Untitled job")
        source_type = normalize_source_type(data.get("source_type") or "auto")
    except (TypeError, ValueError, AttributeError) as exc:
        abort(400, str(exc))
    record = _store().create(name, source_type)
    return jsonify(job_id=record["id"], name=record["name"], status=record["status"],
                   source_type=record["source_type"]), 201


@bp.get("/api/job/<job_id>/status")
def job_status(job_id: str):
    """The job's status, progress, error and message."""
    return jsonify(public_status(_job(job_id)))


@bp.post("/api/job/status")
def job_status_post():
    """Original form: ``{job_id}`` in the body."""
    return jsonify(public_status(_job(_body().get("job_id"))))


@bp.post("/api/job/<job_id>/rename")
def rename_job(job_id: str):
    """``{name}`` -> ``{status: "success", job_id, name}``; a locked read-modify-write, so a
    runner's progress written at the same moment is kept."""
    _job(job_id)
    data = _body()
    try:
        record = _store().rename(job_id, data.get("name"))
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    except ValueError as exc:
        abort(400, str(exc))
    return jsonify(status="success", job_id=job_id, name=record["name"])


@bp.post("/api/job/status/upload-complete")
def upload_complete():
    """``{job_id}``: every file is uploaded; ``uploading`` -> ``uploaded`` (queues conversion)."""
    job_id = _body().get("job_id")
    record = _job(job_id)
    if record["status"] != Status.UPLOADING.value:
        abort(409, f"the upload can only be completed while uploading (the job is "
                   f"{record['status']})")
    store = _store()
    with _upload_lock(store, job_id):
        for state in _all_upload_states(store, job_id):
            got = _contiguous(state)
            if got < state["total"]:
                abort(400, f"file {state['name']!r} is incomplete: {got} of {state['total']} "
                           "bytes received")
        try:
            record = store.mark_uploaded(job_id)
        except InvalidTransition as exc:
            abort(400, str(exc))
        except JobNotFound:
            abort(404, f"no job {job_id!r}")
    return jsonify(job_id=job_id, status=record["status"], upload_bytes=record.get("upload_bytes"),
                   upload_files=record.get("upload_files"))


# --------------------------------------------------------------------------- upload
def sanitize_upload_path(name: object) -> str:
    """A safe relative path for an uploaded file: no ``..``, no absolute paths, no hidden
    or special names; folders kept (``scan/slice_001.tif``). Raises ValueError."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the uploaded file has no name")
    parts = []
    for raw in re.split(r"[\\/]+", name):
        stripped = raw.strip()
        if stripped in ("", ".", ".."):
            continue
        part = _UNSAFE_CHARS.sub("_", stripped)
        if part not in ZARR_METADATA_NAMES:  # a Zarr v2 folder needs its dot files
            part = part.lstrip(".").strip()  # no other hidden files
        if part:
            parts.append(part[:MAX_PART_LENGTH])
    if not parts:
        raise ValueError(f"unusable file name {name[:100]!r}")
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"file path {name[:100]!r} is nested too deeply")
    return "/".join(parts)


def _int_field(name: str, default: int | None) -> int | None:
    raw = request.form.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"form field {name} must be an integer, got {raw[:40]!r}")
    if value < 0:
        abort(400, f"form field {name} must not be negative")
    return value


@contextlib.contextmanager
def _upload_lock(store: JobStore, job_id: str):
    path = store.job_dir(job_id) / UPLOAD_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        abort(404, f"no job {job_id!r}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _state_path(store: JobStore, job_id: str, rel: str) -> Path:
    digest = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:32]
    return store.job_dir(job_id) / UPLOAD_STATE_DIR / f"{digest}.json"


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _all_upload_states(store: JobStore, job_id: str) -> list[dict]:
    folder = store.job_dir(job_id) / UPLOAD_STATE_DIR
    states = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            state = _read_state(p)
            if state:
                states.append(state)
    return states


def _merge(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    merged: list[list[int]] = []
    for s, e in sorted([*ranges, [start, end]]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def _contiguous(state: dict) -> int:
    """Bytes received from offset 0 without a gap (where a client resumes)."""
    ranges = state.get("ranges") or []
    return ranges[0][1] if ranges and ranges[0][0] == 0 else 0


def _received(state: dict) -> int:
    return sum(e - s for s, e in state.get("ranges") or [])


@bp.post("/api/upload")
def upload_chunk():
    """Write one chunk of an uploaded file at its byte offset (idempotent)."""
    job_id = request.headers.get("X-Job-ID") or request.form.get("job_id")
    record = _job(job_id)
    upload = request.files.get("file")
    if upload is None:
        abort(400, "multipart field 'file' is required")
    raw_name = (request.form.get("fullPath") or request.form.get("relpath")
                or request.form.get("relativePath") or upload.filename)
    try:
        rel = sanitize_upload_path(raw_name)
    except ValueError as exc:
        abort(400, str(exc))
    stream = upload.stream  # werkzeug spools big parts to disk; copied in blocks below
    try:
        stream.seek(0, os.SEEK_END)
        length = stream.tell()
        stream.seek(0)
    except (AttributeError, OSError):
        data = upload.read()
        stream, length = io.BytesIO(data), len(data)
    index = _int_field("dzchunkindex", 0)
    chunk_size = _int_field("dzchunksize", None)
    offset = _int_field("dzchunkbyteoffset", None)
    if offset is None:
        offset = index * chunk_size if chunk_size is not None else 0
    total = _int_field("dztotalfilesize", None)
    if total is None:
        if _int_field("dztotalchunkcount", 1) > 1:
            abort(400, "dztotalfilesize is required for chunked uploads")
        total = offset + length
    limit = _settings().max_upload_bytes
    if total > limit:
        abort(413, f"file {rel!r} is {total} bytes; the limit is {limit} bytes")
    if offset + length > total:
        abort(400, f"chunk at offset {offset} with {length} bytes runs past the file size "
                   f"{total}")
    store = _store()
    if record["status"] != Status.UPLOADING.value:
        abort(409, f"uploads are only accepted while the job is uploading (it is "
                   f"{record['status']})")
    with _upload_lock(store, job_id):
        record = _job(job_id)  # re-read under the upload lock: upload-complete may have won
        if record["status"] != Status.UPLOADING.value:
            abort(409, f"uploads are only accepted while the job is uploading (it is "
                       f"{record['status']})")
        state, added = _write_chunk(store, job_id, rel, stream, length, offset, total)
    if added:
        try:
            store.update(job_id, lambda r: r.__setitem__(
                "upload_bytes", max(0, int(r.get("upload_bytes") or 0) + added)))
        except JobNotFound:
            abort(404, f"no job {job_id!r}")
    got = _contiguous(state)
    return jsonify(job_id=job_id, filename=rel, received_bytes=got, total_bytes=total,
                   complete=got >= total, chunk_index=index)


def _write_chunk(store: JobStore, job_id: str, rel: str, stream, length: int, offset: int,
                 total: int) -> tuple[dict, int]:
    folder = store.job_dir(job_id) / "upload"
    target = folder.joinpath(*rel.split("/"))
    root = folder.resolve()
    if root not in target.resolve().parents:
        abort(400, f"file name {rel!r} leaves the upload folder")
    state_path = _state_path(store, job_id, rel)
    state_path.parent.mkdir(exist_ok=True)
    state = _read_state(state_path)
    fresh = state is None or state.get("total") != total or not target.is_file()
    # bytes already counted in the record's upload_bytes; a restarted file gives them back
    counted = _received(state) if state else 0
    if fresh:
        state = {"name": rel, "total": total, "ranges": []}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        abort(400, f"file name {rel!r} clashes with an uploaded file")
    if target.is_dir():
        abort(400, f"file name {rel!r} clashes with an uploaded folder")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o644)
    try:
        if os.fstat(fd).st_size != total:
            os.ftruncate(fd, total)
        pos, end = offset, offset + length
        while pos < end:
            block = stream.read(min(COPY_BLOCK, end - pos))
            if not block:
                abort(400, "the uploaded chunk is shorter than announced")
            view = memoryview(block)
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        os.fsync(fd)
    finally:
        os.close(fd)
    if length or total == 0:
        state["ranges"] = _merge(state["ranges"], offset, offset + length)
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_path)
    return state, _received(state) - counted


@bp.get("/api/upload/status")
def upload_status():
    """``?job_id=..&filename=..`` -> bytes received so far (resume from ``received_bytes``)."""
    job_id = request.args.get("job_id") or request.headers.get("X-Job-ID")
    _job(job_id)
    store = _store()
    name = request.args.get("filename")
    if not name:
        states = _all_upload_states(store, job_id)
        return jsonify(job_id=job_id, files=[
            {"filename": s["name"], "received_bytes": _contiguous(s), "total_bytes": s["total"],
             "complete": _contiguous(s) >= s["total"]} for s in states])
    try:
        rel = sanitize_upload_path(name)
    except ValueError as exc:
        abort(400, str(exc))
    state = _read_state(_state_path(store, job_id, rel)) or {"total": None, "ranges": []}
    got = _contiguous(state)
    total = state.get("total")
    return jsonify(job_id=job_id, filename=rel, received_bytes=got, total_bytes=total,
                   ranges=state.get("ranges", []),
                   complete=total is not None and got >= total)
