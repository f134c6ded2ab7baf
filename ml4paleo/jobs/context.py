"""What a pipeline step sees while it runs: :class:`JobContext`, and the two exceptions
a step uses to stop (:class:`StepError`, :class:`Stopping`).

Shared by :mod:`ml4paleo.jobs.runner` (which makes the context) and the steps in
:mod:`ml4paleo.jobs.steps` (which use it), so steps never import the runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ml4paleo.config import Settings
from ml4paleo.jobs.statuses import Stage, Status, parse_status
from ml4paleo.jobs.store import JobNotFound, JobStore, LeaseLost, isoformat, set_status, utcnow
from ml4paleo.workspace.paths import JobPaths

__all__ = ["JobContext", "StepError", "Stopping", "ensure_owner"]


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

        return self.owned_update(apply)

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


def ensure_owner(record: dict, stage: Stage, owner: str) -> None:
    """Raise :class:`LeaseLost` unless ``owner`` holds the lease of a running ``record``."""
    lease = record.get("lease") or {}
    if lease.get("owner") != owner or record.get("status") not in {s.value for s in stage.running}:
        raise LeaseLost(
            f"job {record.get('id')}: not owned by {owner} (status {record.get('status')}, "
            f"lease owner {lease.get('owner')})")
