"""A job's upload: files written chunk by chunk at their byte offsets, resumable.

Each uploaded file ``upload/<rel>`` has a state record (``.uploads/<hash>.json``:
name, total size, byte ranges received) so a client can ask where to resume and the
upload is complete only when every file is received from byte 0 to its end. Chunk
writes and "upload complete" exclude each other through :func:`upload_lock`, so
conversion never starts on a half-written file.

Examples
--------
>>> import io, tempfile
>>> from ml4paleo.workspace import JobPaths
>>> paths = JobPaths(tempfile.mkdtemp())
>>> state, added = write_chunk(paths, "scan.npy", io.BytesIO(b"abcd"), 4, 2, 6)
>>> state["ranges"], contiguous(state), added
([[2, 6]], 0, 4)
>>> state, added = write_chunk(paths, "scan.npy", io.BytesIO(b"xy"), 2, 0, 6)
>>> contiguous(state), incomplete_files(paths)
(6, [])
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ml4paleo._fs import atomic_write_json
from ml4paleo.workspace.paths import JobPaths

__all__ = [
    "COPY_BLOCK",
    "MAX_PART_LENGTH",
    "MAX_PATH_DEPTH",
    "ZARR_METADATA_NAMES",
    "UploadError",
    "MAX_MANIFEST_FILES",
    "all_states",
    "check_manifest",
    "contiguous",
    "file_state",
    "incomplete_files",
    "merge_ranges",
    "read_manifest",
    "read_state",
    "received",
    "sanitize_upload_path",
    "upload_lock",
    "upload_progress",
    "write_chunk",
    "write_manifest",
]

MAX_PATH_DEPTH = 16
MAX_PART_LENGTH = 200
COPY_BLOCK = 8 * 1024 * 1024
#: most files one upload manifest may list (a stack of slices: one file each)
MAX_MANIFEST_FILES = 100_000
#: the only dot-file names an upload keeps (Zarr v2 metadata); any other leading dot is cut
ZARR_METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ ()+,=@~-]")


class UploadError(ValueError):
    """A chunk that cannot be stored (bad name, clash, short body); the message says why."""


def sanitize_upload_path(name: object) -> str:
    """A safe relative path for an uploaded file: no ``..``, no absolute paths, no hidden
    or special names; folders kept (``scan/slice_001.tif``).

    Raises
    ------
    ValueError
        When nothing usable is left of the name, or it is nested too deeply.

    Examples
    --------
    >>> sanitize_upload_path("../../etc/pass wd")
    'etc/pass wd'
    """
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


@contextlib.contextmanager
def upload_lock(paths: JobPaths) -> Iterator[None]:
    """Hold the job's upload lock (chunk writes vs. upload-complete).

    Raises
    ------
    FileNotFoundError
        When the job folder does not exist.
    """
    fd = os.open(paths.upload_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_state(path: Path) -> dict | None:
    """One file's upload state, None when there is none (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def all_states(paths: JobPaths) -> list[dict]:
    """The upload states of every file of the job."""
    folder = paths.upload_state
    states = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            state = read_state(p)
            if state:
                states.append(state)
    return states


def file_state(paths: JobPaths, rel: str) -> dict:
    """The state of uploaded file ``rel`` (``{"total": None, "ranges": []}`` when unknown)."""
    return read_state(paths.upload_state_file(rel)) or {"total": None, "ranges": []}


def merge_ranges(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """``ranges`` with ``[start, end)`` added, overlapping / touching ranges merged.

    Examples
    --------
    >>> merge_ranges([[0, 4], [8, 9]], 4, 8)
    [[0, 9]]
    """
    merged: list[list[int]] = []
    for s, e in sorted([*ranges, [start, end]]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def contiguous(state: dict) -> int:
    """Bytes received from offset 0 without a gap (where a client resumes)."""
    ranges = state.get("ranges") or []
    return ranges[0][1] if ranges and ranges[0][0] == 0 else 0


def received(state: dict) -> int:
    """Bytes received in all ranges."""
    return sum(e - s for s, e in state.get("ranges") or [])


def incomplete_files(paths: JobPaths) -> list[tuple[str, int, int]]:
    """``(name, bytes received from 0, total)`` of every file not completely received."""
    out = []
    for state in all_states(paths):
        got = contiguous(state)
        if got < state["total"]:
            out.append((state["name"], got, state["total"]))
    return out


def write_chunk(paths: JobPaths, rel: str, stream: BinaryIO, length: int, offset: int,
                total: int) -> tuple[dict, int]:
    """Write ``length`` bytes of ``stream`` at ``offset`` of uploaded file ``rel`` (whose
    size is ``total``) and record the range. Call it holding :func:`upload_lock`.

    A chunk that arrives twice is harmless; a chunk announcing another total size than
    the file had restarts the file.

    Returns
    -------
    (state, added) : tuple
        The file's state after the write, and how many bytes it adds to the job's
        ``upload_bytes`` (negative when a restarted file gives its old bytes back).

    Raises
    ------
    UploadError
        When the name leaves the upload folder or clashes with a file or folder, or the
        stream is shorter than announced.
    """
    folder = paths.upload
    target = paths.upload_file(rel)
    root = folder.resolve()
    if root not in target.resolve().parents:
        raise UploadError(f"file name {rel!r} leaves the upload folder")
    state_path = paths.upload_state_file(rel)
    state_path.parent.mkdir(exist_ok=True)
    state = read_state(state_path)
    fresh = state is None or state.get("total") != total or not target.is_file()
    # bytes already counted in the record's upload_bytes; a restarted file gives them back
    counted = received(state) if state else 0
    if fresh:
        state = {"name": rel, "total": total, "ranges": []}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UploadError(f"file name {rel!r} clashes with an uploaded file") from None
    if target.is_dir():
        raise UploadError(f"file name {rel!r} clashes with an uploaded folder")
    # written in place at the offset (not a temp + rename): chunks of one file arrive
    # separately, and the state record says which bytes are real
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o666)
    try:
        if os.fstat(fd).st_size != total:
            os.ftruncate(fd, total)
        pos, end = offset, offset + length
        while pos < end:
            block = stream.read(min(COPY_BLOCK, end - pos))
            if not block:
                raise UploadError("the uploaded chunk is shorter than announced")
            view = memoryview(block)
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        os.fsync(fd)
    finally:
        os.close(fd)
    if length or total == 0:
        state["ranges"] = merge_ranges(state["ranges"], offset, offset + length)
    atomic_write_json(state_path, state, indent=None, fsync=False)
    return state, received(state) - counted


def check_manifest(files: object) -> list[dict]:
    """What a client says it will upload, checked: ``[{path, size, last_modified}]``
    (``path`` sanitised like an uploaded file's name, ``size`` in bytes,
    ``last_modified`` in milliseconds since 1970 or None). The path as the client gave it
    is kept as ``given`` (so the client can recognise its files again).

    Raises
    ------
    ValueError
        Naming the first bad entry.
    """
    if not isinstance(files, list) or not files:
        raise ValueError("files must be a non-empty list of {path, size, last_modified}")
    if len(files) > MAX_MANIFEST_FILES:
        raise ValueError(f"files lists {len(files)} files; at most {MAX_MANIFEST_FILES}")
    out, seen = [], set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise ValueError(f"files[{i}] must be an object")
        path = sanitize_upload_path(f.get("path"))
        size = f.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"files[{i}].size must be a byte count")
        modified = f.get("last_modified")
        if modified is not None and (not isinstance(modified, int | float)
                                     or isinstance(modified, bool)):
            raise ValueError(f"files[{i}].last_modified must be a number or null")
        if path in seen:
            raise ValueError(f"files[{i}]: {path!r} is listed twice")
        seen.add(path)
        out.append({"path": path, "given": str(f.get("path"))[:MAX_PART_LENGTH * MAX_PATH_DEPTH],
                    "size": size, "last_modified": None if modified is None else int(modified)})
    return out


def write_manifest(paths: JobPaths, files: list[dict]) -> Path:
    """Store the checked manifest (:func:`check_manifest`) of the job's upload."""
    return atomic_write_json(paths.upload_manifest, {"files": files}, indent=None)


def read_manifest(paths: JobPaths) -> list[dict] | None:
    """The job's upload manifest, None when the client sent none."""
    try:
        data = json.loads(paths.upload_manifest.read_text())
    except (FileNotFoundError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, list) else None


def upload_progress(paths: JobPaths) -> dict:
    """How far the job's upload got: per file of the manifest (or, without one, per file
    started) the bytes received from offset 0, and the totals.

    Returns
    -------
    dict
        ``files``: ``[{path, size, last_modified, received, complete}]``,
        ``total_bytes`` (None when unknown), ``received_bytes``, ``files_complete``,
        ``manifest`` (whether the totals come from the client's manifest).
    """
    states = {s["name"]: s for s in all_states(paths)}
    manifest = read_manifest(paths)
    files = []
    if manifest is not None:
        for f in manifest:
            state = states.get(f["path"])
            got = contiguous(state) if state and state.get("total") == f["size"] else 0
            files.append({**f, "received": got, "complete": got >= f["size"] and (
                state is not None or f["size"] == 0)})
    else:
        for name, state in sorted(states.items()):
            got = contiguous(state)
            files.append({"path": name, "given": name, "size": state["total"],
                          "last_modified": None, "received": got,
                          "complete": got >= state["total"]})
    return {
        "files": files,
        "total_bytes": sum(f["size"] for f in files) if manifest is not None else None,
        "received_bytes": sum(f["received"] for f in files),
        "files_complete": sum(1 for f in files if f["complete"]),
        "manifest": manifest is not None,
    }
