"""Job routes of the original API: create, resumable chunked upload, upload-complete,
status and rename. Thin over :class:`ml4paleo.jobs.JobStore`.

Uploads are Dropzone-style chunks (multipart ``file`` + ``dzuuid``, ``dzchunkindex``,
``dzchunkbyteoffset``, ``dztotalchunkcount``, ``dztotalfilesize``). Each chunk is written
at its byte offset, so a retried or resumed chunk is harmless, and the byte ranges
received are recorded per file so ``GET /api/upload/status`` tells a client where to
resume (:mod:`ml4paleo.workspace.uploads` holds those rules). Chunk writes and
``upload-complete`` exclude each other (a per-job upload lock), so conversion never
starts on a half-written file.

``GET /api/statuses`` serves the status table (:func:`ml4paleo.jobs.status_table`): the
pages' scripts read what a status means from it, and every job answer carries its
status's description as ``state``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os

from flask import Blueprint, abort, current_app, jsonify, request

from ml4paleo.jobs import InvalidTransition, JobNotFound, JobStore, Status, status_table
from ml4paleo.jobs.store import clean_name, normalize_source_type
from ml4paleo.workspace import JobPaths
from ml4paleo.workspace.space import check_free, check_quota
from ml4paleo.workspace.uploads import (
    UploadError,
    all_states,
    check_manifest,
    contiguous,
    file_state,
    incomplete_files,
    sanitize_upload_path,
    upload_lock,
    upload_progress,
    write_chunk,
    write_manifest,
)

from .common import with_state

log = logging.getLogger(__name__)
bp = Blueprint("jobs_api", __name__)
#: most bytes of a file ``POST /api/probe`` reads
PROBE_BYTES = 16 * 1024**2

__all__ = ["bp", "public_status", "sanitize_upload_path"]


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
        "morphometry": record.get("morphometry", {}),
        "annotations_pending": bool(record.get("annotations_pending")),
        "upload_bytes": record.get("upload_bytes", 0),
        "attempts": lease.get("attempts") or record.get("attempts") or 0,
        "last_error": record.get("last_error"),
        "history": record.get("history", []),
        "warnings": record.get("warnings") or [],
        "convert_options": record.get("convert_options"),
    }
    return with_state(out, out["status"], record)


@bp.get("/api/statuses")
def statuses():
    """Every job status with what it means for a user interface (busy, queued, running,
    failed, retryable, done, phase, label, badge tone), the pipeline order and the runner
    stages."""
    return jsonify(status_table())


# --------------------------------------------------------------------------- jobs
def _convert_options(data: dict) -> dict | None:
    """``voxel_size`` + ``unit`` of a new job's body (both or neither), checked."""
    from ml4paleo.convert import parse_voxel_size

    raw_size, raw_unit = data.get("voxel_size"), data.get("unit")
    if raw_size in (None, "", []) and raw_unit in (None, ""):
        return None
    if raw_size in (None, "", []) or raw_unit in (None, ""):
        abort(400, "give both voxel_size (z, y, x) and unit, or neither")
    if isinstance(raw_size, str):  # a form field: "20, 10, 10" or "20 10 10"
        raw_size = [v for v in raw_size.replace(",", " ").split() if v]
    try:
        size, unit = parse_voxel_size(raw_size, raw_unit)
    except ValueError as exc:
        abort(400, str(exc))
    return {"voxel_size": list(size), "unit": unit}


@bp.post("/api/job/new")
def new_job():
    """Create a job: ``{name?, source_type?, voxel_size?, unit?, files?}`` -> 201.

    ``voxel_size`` ((z, y, x), with its ``unit``) replaces what the files say when they
    are converted. ``files`` (``[{path, size, last_modified}]``) lists what the upload
    will send, so an upload left unfinished (tab closed) can be shown and resumed.
    """
    data = _body()
    raw_type = data.get("source_type")
    if raw_type is not None and not isinstance(raw_type, str):
        abort(400, "source_type must be a string")
    try:
        name = clean_name(data.get("name"), default="Untitled job")
        source_type = normalize_source_type(raw_type or "auto")
    except (TypeError, ValueError, AttributeError) as exc:
        abort(400, str(exc))
    options = _convert_options(data)
    manifest = None
    if data.get("files") is not None:
        try:
            manifest = check_manifest(data["files"])
        except ValueError as exc:
            abort(400, str(exc))
    extra = {"convert_options": options} if options else {}
    if manifest is not None:
        extra["upload_total"] = sum(f["size"] for f in manifest)
    check_free(_settings().data_dir, _settings().min_free_mb)
    record = _store().create(name, source_type, **extra)
    if manifest is not None:
        write_manifest(_paths(record["id"]), manifest)
    return jsonify(with_state({"job_id": record["id"], "name": record["name"],
                               "status": record["status"],
                               "source_type": record["source_type"],
                               "convert_options": options}, record["status"])), 201


@bp.post("/api/probe")
def probe():
    """What the first file of an upload says about the voxel size: a multipart ``file``
    (the file, or its first megabytes: at most 16 MB) -> ``{voxel_size, unit, assumed,
    source_type, readable}``, so the upload form can be filled in before the upload."""
    import tempfile
    from pathlib import Path

    from ml4paleo.io import probe_voxel_size

    upload = request.files.get("file")
    if upload is None:
        abort(400, "multipart field 'file' is required")
    raw_name = request.form.get("filename") or upload.filename
    try:
        name = sanitize_upload_path(raw_name).rsplit("/", 1)[-1]
    except ValueError as exc:
        abort(400, str(exc))
    data = upload.stream.read(PROBE_BYTES + 1)
    if len(data) > PROBE_BYTES:
        abort(413, f"send at most the first {PROBE_BYTES} bytes of the file")
    with tempfile.TemporaryDirectory(prefix="ml4paleo-probe-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        answer = probe_voxel_size(path)
    return jsonify(filename=name, **answer)


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
    paths = _paths(job_id)
    with _upload_lock(paths, job_id):
        for name, got, total in incomplete_files(paths):
            abort(400, f"file {name!r} is incomplete: {got} of {total} bytes received")
        missing = [f["path"] for f in upload_progress(paths)["files"] if not f["complete"]]
        if missing:
            abort(400, f"{len(missing)} announced file(s) not uploaded yet, e.g. "
                       f"{missing[0]!r}")
        try:
            record = store.mark_uploaded(job_id)
        except InvalidTransition as exc:
            abort(400, str(exc))
        except JobNotFound:
            abort(404, f"no job {job_id!r}")
    return jsonify(with_state({"job_id": job_id, "status": record["status"],
                               "upload_bytes": record.get("upload_bytes"),
                               "upload_files": record.get("upload_files")}, record["status"]))


# --------------------------------------------------------------------------- upload
def _paths(job_id: str) -> JobPaths:
    return JobPaths(_store().job_dir(job_id))


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
def _upload_lock(paths: JobPaths, job_id: str):
    try:
        with upload_lock(paths):
            yield
    except FileNotFoundError:
        abort(404, f"no job {job_id!r}")


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
    paths = _paths(job_id)
    with _upload_lock(paths, job_id):
        record = _job(job_id)  # re-read under the upload lock: upload-complete may have won
        if record["status"] != Status.UPLOADING.value:
            abort(409, f"uploads are only accepted while the job is uploading (it is "
                       f"{record['status']})")
        # 507 before a byte is written: the chunk must fit with the free space kept, and
        # within the job's quota
        check_free(paths.root, _settings().min_free_mb, need=length)
        check_quota(int(record.get("upload_bytes") or 0), length, _settings().max_job_bytes)
        try:
            state, added = write_chunk(paths, rel, stream, length, offset, total)
        except UploadError as exc:
            abort(400, str(exc))
    if added:
        def count(r: dict) -> None:
            r["upload_bytes"] = max(0, int(r.get("upload_bytes") or 0) + added)
            total_all = r.get("upload_total")
            if total_all:  # what the upload list and the job table show
                r["progress"] = round(min(1.0, r["upload_bytes"] / total_all), 4)

        try:
            store.update(job_id, count)
        except JobNotFound:
            abort(404, f"no job {job_id!r}")
    got = contiguous(state)
    return jsonify(job_id=job_id, filename=rel, received_bytes=got, total_bytes=total,
                   complete=got >= total, chunk_index=index)


@bp.get("/api/uploads")
def unfinished_uploads():
    """Uploads not finished yet (jobs still uploading), newest first, each with its files
    and bytes received, so a page can offer to resume them (choose the same files again:
    the bytes already on the server are kept) or to cancel them (delete the job)."""
    out = []
    for record in _store().list():
        if not isinstance(record, dict) or record.get("status") != Status.UPLOADING.value:
            continue
        progress = upload_progress(_paths(record["id"]))
        out.append(with_state({
            "job_id": record["id"], "name": record.get("name"),
            "created_at": record.get("created_at"), "updated_at": record.get("updated_at"),
            "status": record["status"], "source_type": record.get("source_type"),
            "convert_options": record.get("convert_options"), **progress,
        }, record["status"]))
    out.sort(key=lambda u: str(u.get("created_at") or ""), reverse=True)
    return jsonify(uploads=out)


@bp.get("/api/upload/status")
def upload_status():
    """``?job_id=..&filename=..`` -> bytes received so far (resume from ``received_bytes``)."""
    job_id = request.args.get("job_id") or request.headers.get("X-Job-ID")
    _job(job_id)
    paths = _paths(job_id)
    name = request.args.get("filename")
    if not name:
        return jsonify(job_id=job_id, files=[
            {"filename": s["name"], "received_bytes": contiguous(s), "total_bytes": s["total"],
             "complete": contiguous(s) >= s["total"]} for s in all_states(paths)])
    try:
        rel = sanitize_upload_path(name)
    except ValueError as exc:
        abort(400, str(exc))
    state = file_state(paths, rel)
    got = contiguous(state)
    total = state.get("total")
    return jsonify(job_id=job_id, filename=rel, received_bytes=got, total_bytes=total,
                   ranges=state.get("ranges", []),
                   complete=total is not None and got >= total)
