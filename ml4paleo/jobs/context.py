"""What a pipeline step sees while it runs: :class:`JobContext`, and the two exceptions
a step uses to stop (:class:`StepError`, :class:`Stopping`).

Shared by :mod:`ml4paleo.jobs.runner` (which makes the context) and the steps in
:mod:`ml4paleo.jobs.steps` (which use it), so steps never import the runner.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ml4paleo.config import Settings
from ml4paleo.jobs.statuses import Stage, Status, parse_status
from ml4paleo.jobs.store import JobNotFound, JobStore, LeaseLost, isoformat, set_status, utcnow
from ml4paleo.workspace.paths import JobPaths

__all__ = ["JobContext", "StepError", "Stopping", "ensure_owner", "public_text"]


class StepError(RuntimeError):
    """A step failure that retrying cannot fix (bad input, library missing); fails at once."""


class Stopping(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a step when the runner was asked to stop."""


class JobContext:
    """What a step sees: the job, its folder, and owned writes (progress, fields, status).

    Every write checks that this runner still holds the lease (else :class:`LeaseLost`);
    :meth:`progress` also raises :class:`Stopping` when the runner is shutting down.
    """

    def __init__(self, store: JobStore, record: dict, stage: Stage, owner: str,
                 settings: Settings, stop_event: threading.Event) -> None:
        self.store = store
        self.settings = settings
        self.record = record
        self.job_id: str = record["id"]
        self.job_dir: Path = store.job_dir(self.job_id)
        self.paths = JobPaths(self.job_dir)
        self.stage = stage
        self.owner = owner
        self.stop_event = stop_event
        self.lost = threading.Event()
        self._lock = threading.Lock()
        self._progress: float = float(record.get("progress") or 0.0)
        self._message: str | None = None
        self._dirty = False
        self._range = (0.0, 1.0)

    # -- progress -------------------------------------------------------------
    def set_range(self, lo: float, hi: float) -> None:
        """Map the next ``progress(done, total)`` calls onto ``[lo, hi]`` of the job."""
        self._range = (float(lo), float(hi))

    def progress(self, done: int | float, total: int | float, message: str | None = None) -> None:
        """Progress callback for library functions: ``progress(done, total)``."""
        self.check()
        frac = min(max(float(done) / float(total), 0.0), 1.0) if total else 0.0
        lo, hi = self._range
        with self._lock:
            self._progress = lo + (hi - lo) * frac
            if message is not None:
                self._message = message
            self._dirty = True

    def message(self, text: str) -> None:
        """Set the human message shown with the progress bar."""
        with self._lock:
            self._message = text
            self._dirty = True

    def check(self) -> None:
        """Raise :class:`LeaseLost` / :class:`Stopping` when the job must be dropped."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost (cancelled, deleted or reclaimed)")
        if self.stop_event.is_set():
            raise Stopping(f"runner stopping; job {self.job_id} handed back")

    # -- owned writes ---------------------------------------------------------
    def owned_update(self, fn: Callable[[dict], object]) -> dict:
        """Read-modify-write that only happens while this runner owns the job."""
        def apply(record: dict) -> None:
            ensure_owner(record, self.stage, self.owner)
            fn(record)

        try:
            record = self.store.update(self.job_id, apply)
        except JobNotFound:
            self.lost.set()
            raise LeaseLost(f"job {self.job_id} was deleted") from None
        except LeaseLost:
            self.lost.set()
            raise
        self.record = record
        return record

    def set_fields(self, **fields) -> dict:
        """Set fields of the record (owned write)."""
        return self.owned_update(lambda r: r.update(fields))

    def set_status(self, status: Status, message: str | None = None, **fields) -> dict:
        """Move to another running status of this stage (e.g. training -> segmenting)."""
        status = parse_status(status)
        if status not in self.stage.running:
            raise ValueError(f"{status.value} is not a running status of the {self.stage.kind} stage")

        def apply(record: dict) -> None:
            set_status(record, status, message)
            record.update(fields)

        record = self.owned_update(apply)
        if message is not None:
            # the heartbeat writes the last message with the progress: the new status's,
            # not the previous one's ("training a model" while segmenting)
            with self._lock:
                self._message = message
        return record

    def public(self, text: str) -> str:
        """``text`` without this server's paths: what users of the web app and the API see
        (file names inside the upload stay, as the user named them)."""
        return public_text(text, self.paths.root, self.settings.data_dir)

    def flush(self, renew: bool) -> None:
        """Write pending progress / message and, when ``renew``, extend the lease."""
        with self._lock:
            dirty, progress, message = self._dirty, self._progress, self._message
            self._dirty = False
        if not (dirty or renew):
            return
        expires = isoformat(utcnow() + timedelta(seconds=self.settings.lease_seconds))

        def apply(record: dict) -> None:
            record["progress"] = round(progress, 4)
            if message is not None:
                record["message"] = message
            if renew:
                record["lease"]["expires_at"] = expires

        self.owned_update(apply)


def _spellings(path: Path) -> list[str]:
    out = {str(path)}
    try:
        out.add(str(path.resolve()))
    except OSError:
        pass
    return sorted(out, key=len, reverse=True)  # longest first: nested paths before parents


def public_text(text: str, job_dir: str | os.PathLike, data_dir: str | os.PathLike) -> str:
    """``text`` with the server's folders taken out: the job's upload folder disappears
    (``.../upload/scan/slice_003.png`` -> ``scan/slice_003.png``), the rest of the job
    folder and the data folder are named, not spelled out.

    Examples
    --------
    >>> public_text("/srv/d/jobs/j1/upload/a/s_3.png: slice is 9x9 pixels, expected 8x8 "
    ...             "like s_1.png", "/srv/d/jobs/j1", "/srv/d")
    'a/s_3.png: slice is 9x9 pixels, expected 8x8 like s_1.png'
    >>> public_text("/srv/d/jobs/j1/image.ome.zarr: missing", "/srv/d/jobs/j1", "/srv/d")
    'image.ome.zarr: missing'
    """
    job_dir, data_dir = Path(job_dir), Path(data_dir)
    upload = JobPaths(job_dir).upload
    for folder, name in ((upload, "the upload"), (job_dir, "the job folder"),
                         (data_dir, "the data folder")):
        for spelled in _spellings(folder):
            text = text.replace(spelled + os.sep, "").replace(spelled, name)
    return text


def ensure_owner(record: dict, stage: Stage, owner: str) -> None:
    """Raise :class:`LeaseLost` unless ``owner`` holds the lease of a running ``record``."""
    lease = record.get("lease") or {}
    if lease.get("owner") != owner or record.get("status") not in {s.value for s in stage.running}:
        raise LeaseLost(
            f"job {record.get('id')}: not owned by {owner} (status {record.get('status')}, "
            f"lease owner {lease.get('owner')})")
