"""The runner loop: poll the store, claim a job with a lease, run its step, finish it.

One loop serves the runners (``kind`` = ``"convert"``, ``"segment"``, ``"mesh"``, ``"measure"``)
and any number of copies of each may run at once:

- **Claim** = compare-and-set under the job's lock: a job in the stage's queued status
  (or in a running status whose lease expired: its runner died) gets a lease
  ``{owner, expires_at, attempts}`` and moves to the running status. Only one runner
  can win, because the check and the write happen inside one locked read-modify-write.
- **Heartbeat**: a thread renews the lease every ``lease_seconds / 3`` and writes the
  step's real progress. A runner whose job was cancelled, deleted or reclaimed gets
  :class:`~ml4paleo.jobs.store.LeaseLost` at its next write and drops the job.
- **Failures**: an attempt that raises is released back to the queue with a short
  backoff; after ``settings.max_attempts`` attempts (a crashed runner counts too) the
  job goes to the stage's ``*_error`` status with the reason. Bad input
  (:class:`ml4paleo.io.InputError`), missing library functions and a full data disk fail
  at once (retrying cannot help); reasons name files relative to the job folder.
- **Space**: a step starts only while the data disk keeps ``settings.min_free_mb`` free
  and the job is within ``settings.max_job_bytes``; a finished step records the job
  folder's size (``disk_bytes``).
- **Shutdown**: SIGTERM / SIGINT finish at the next progress tick, hand the job back to
  the queue (the attempt is not counted) and exit.
- **Retention**: when ``settings.retention_days`` is set, old jobs are purged at start
  and then hourly.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from ml4paleo.config import Settings
from ml4paleo.jobs import steps
from ml4paleo.jobs.context import JobContext, StepError, Stopping, ensure_owner
from ml4paleo.jobs.statuses import (
    ERROR_FAILED,
    ERROR_INPUT,
    RUNNER,
    STAGES,
    Stage,
    Status,
    parse_status,
)
from ml4paleo.jobs.store import (
    JobNotFound,
    JobStore,
    LeaseLost,
    isoformat,
    parse_time,
    set_status,
    utcnow,
)
from ml4paleo.workspace.paths import without_server_paths
from ml4paleo.workspace.segmentations import dir_size
from ml4paleo.workspace.space import DiskFull, check_free, check_quota, disk_full, is_disk_full

log = logging.getLogger(__name__)

#: seconds between retention purges of one runner
PURGE_INTERVAL = 3600.0
#: shortest interval between progress writes, seconds
PROGRESS_WRITE_INTERVAL = 0.5


def new_owner(kind: str) -> str:
    """A lease owner name: host, pid, kind and a random tag (unique per runner run)."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}:{secrets.token_hex(3)}"


class _Heartbeat(threading.Thread):
    """Renews the lease and writes progress while a step runs."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id[:8]}", daemon=True)
        self.ctx = ctx
        self.done = threading.Event()

    def run(self) -> None:
        renew_every = max(self.ctx.settings.lease_seconds / 3.0, 0.05)
        tick = min(PROGRESS_WRITE_INTERVAL, renew_every)
        last_renew = time.monotonic()
        while not self.done.wait(tick):
            now = time.monotonic()
            renew = now - last_renew >= renew_every
            try:
                self.ctx.flush(renew)
            except LeaseLost as exc:
                log.warning("%s", exc)
                return
            except Exception:  # noqa: BLE001 - keep beating; a full disk may clear
                log.exception("heartbeat for job %s failed", self.ctx.job_id)
                continue
            if renew:
                last_renew = now


class _NotClaimable(Exception):
    pass


def _first_running(stage: Stage, record: dict) -> Status:
    if stage.kind == "segment":
        request = record.get("request") or {}
        if request.get("train") is False:
            return Status.SEGMENTING
    return stage.running[0]


def claimable(record: dict, stage: Stage, now=None) -> bool:
    """True when a runner of ``stage`` may claim ``record`` now (lockless pre-check)."""
    now = now or utcnow()
    status = record.get("status")
    lease = record.get("lease") or None
    expires = parse_time(lease.get("expires_at")) if lease else None
    if status == stage.queued.value:
        return expires is None or expires <= now
    if status in {s.value for s in stage.running}:
        return expires is None or expires <= now
    return False


def try_claim(store: JobStore, job_id: str, stage: Stage, owner: str,
              settings: Settings) -> tuple[str, dict] | None:
    """Compare-and-set claim of one job.

    Returns
    -------
    ("claimed", record), ("gave_up", record) when the attempts are used up (the job
    was moved to the error status), or None when the job is not claimable (any more).
    """
    outcome = {}

    def apply(record: dict) -> None:
        now = utcnow()
        if not claimable(record, stage, now):
            raise _NotClaimable
        lease = record.get("lease") or {}
        attempts = int(lease.get("attempts") or 0)
        note = ""
        if record["status"] != stage.queued.value:
            # a running status with an expired lease: that runner died mid-job
            died = (f"runner {lease.get('owner')} stopped responding "
                    f"(lease expired {lease.get('expires_at')})")
            log.warning("job %s: %s", record["id"], died)
            record["last_error"] = died
            note = f" after {died}"
        if attempts >= settings.max_attempts:
            reason = (f"gave up after {attempts} attempt(s): "
                      f"{record.get('last_error') or 'unknown error'}")
            set_status(record, stage.error, reason)
            record.update(error=reason, error_kind=ERROR_FAILED, lease=None, attempts=attempts)
            outcome["result"] = "gave_up"
            return
        first = _first_running(stage, record)
        set_status(record, first, f"attempt {attempts + 1} started by {owner}{note}")
        record.update(
            lease={"owner": owner,
                   "expires_at": isoformat(now + timedelta(seconds=settings.lease_seconds)),
                   "attempts": attempts + 1,
                   "claimed_at": isoformat(now)},
            progress=0.0, error=None, error_kind=None)
        outcome["result"] = "claimed"

    try:
        record = store.update(job_id, apply)
    except (_NotClaimable, JobNotFound):
        return None
    return outcome["result"], record


def _notify(settings: Settings, record: dict) -> None:
    """Send the job's notification if :mod:`ml4paleo.notify` is available."""
    if importlib.util.find_spec("ml4paleo.notify") is None:
        log.info("ml4paleo.notify not available; no notification for job %s", record.get("id"))
        return
    try:
        notify = importlib.import_module("ml4paleo.notify")
        notify.notify_job_event(settings, record, record.get("status", ""))
    except Exception:  # noqa: BLE001 - notification must never break the runner
        log.exception("notification for job %s failed", record.get("id"))


def _is_input_error(exc: BaseException) -> bool:
    # ml4paleo.io.InputError and its kin: matched by name so io stays optional
    return any(cls.__name__ == "InputError" for cls in type(exc).__mro__)


def _is_permanent(exc: BaseException) -> bool:
    """Failures retrying cannot fix: fail the job at once with the reason. Bad input stays
    bad; a full disk stays full until someone frees space (then the user retries)."""
    return isinstance(exc, StepError) or _is_input_error(exc) or is_disk_full(exc)


def _one_line(exc: BaseException, data_dir, public: Callable[[str], str] | None = None) -> str:
    """The reason shown to users: one line, paths relative to the job folder (``public``
    first names the upload's files as the user named them)."""
    if is_disk_full(exc):
        text = str(exc) if isinstance(exc, DiskFull) else str(disk_full(data_dir))
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if not (isinstance(exc, StepError) or _is_input_error(exc)):
            text = f"{type(exc).__name__}: {text}"
    if public is not None:
        text = public(text)
    return without_server_paths(text, data_dir)


def _check_space(ctx: JobContext) -> None:
    """Before a step: the data disk keeps ``min_free_mb`` free and the job is within its
    quota (:class:`~ml4paleo.workspace.space.DiskFull` otherwise)."""
    check_free(ctx.settings.data_dir, ctx.settings.min_free_mb)
    if ctx.settings.max_job_bytes is not None:
        check_quota(dir_size(ctx.job_dir), 0, ctx.settings.max_job_bytes)


def process_job(store: JobStore, record: dict, stage: Stage, owner: str, settings: Settings,
                step: Callable[[JobContext], dict | None],
                stop_event: threading.Event) -> dict | None:
    """Run ``step`` on a claimed job and write the outcome; returns the final record
    (None when the job was lost or handed back)."""
    ctx = JobContext(store, record, stage, owner, settings, stop_event)
    beat = _Heartbeat(ctx)
    beat.start()
    attempts = int(record["lease"]["attempts"])
    log.info("job %s: %s attempt %d started", ctx.job_id, stage.kind, attempts)
    try:
        _check_space(ctx)
        result = dict(step(ctx) or {})
        if ctx.lost.is_set():
            raise LeaseLost(f"job {ctx.job_id}: lease lost while the step ran")
    except LeaseLost as exc:
        log.warning("job %s dropped: %s", ctx.job_id, exc)
        return None
    except Stopping:
        return _hand_back(ctx, attempts)
    except Exception as exc:  # noqa: BLE001 - any failure of a step is the job's error
        return _failed(ctx, exc, attempts)
    finally:
        beat.done.set()
        beat.join()

    status = parse_status(result.pop("status", stage.done[0]))
    message = result.pop("message", f"{stage.kind} finished")
    try:
        result.setdefault("disk_bytes", dir_size(ctx.job_dir))  # for the catalogue
    except OSError:
        pass

    def finish(rec: dict) -> None:
        set_status(rec, status, message)
        rec.update(result)
        rec.update(progress=1.0, error=None, error_kind=None, lease=None, last_error=None,
                   attempts=attempts)

    try:
        final = ctx.owned_update(finish)
    except LeaseLost as exc:
        log.warning("job %s: result discarded: %s", ctx.job_id, exc)
        return None
    log.info("job %s: %s -> %s", ctx.job_id, stage.kind, status.value)
    _notify(settings, final)
    return final


def _hand_back(ctx: JobContext, attempts: int) -> dict | None:
    def release(rec: dict) -> None:
        set_status(rec, ctx.stage.queued, "runner stopped; queued again")
        rec["lease"] = {"owner": None, "expires_at": None, "attempts": attempts - 1}

    try:
        record = ctx.owned_update(release)
    except LeaseLost:
        return None
    log.info("job %s handed back to the queue", ctx.job_id)
    return record


def _failed(ctx: JobContext, exc: Exception, attempts: int) -> dict | None:
    reason = _one_line(exc, ctx.settings.data_dir, ctx.public)
    permanent = _is_permanent(exc)
    if permanent:
        log.error("job %s: %s failed: %s", ctx.job_id, ctx.stage.kind, reason)
    else:
        log.exception("job %s: %s attempt %d failed", ctx.job_id, ctx.stage.kind, attempts)
    give_up = permanent or attempts >= ctx.settings.max_attempts

    def write(rec: dict) -> None:
        if give_up:
            error = reason if permanent else f"failed {attempts} time(s); last error: {reason}"
            set_status(rec, ctx.stage.error, error)
            rec.update(error=error, error_kind=ERROR_INPUT if permanent else ERROR_FAILED,
                       lease=None, last_error=reason, attempts=attempts)
        else:
            backoff = min(2.0 ** (attempts - 1), 30.0)
            set_status(rec, ctx.stage.queued, f"attempt {attempts} failed ({reason}); retrying")
            rec.update(last_error=reason, lease={
                "owner": None,
                "expires_at": isoformat(utcnow() + timedelta(seconds=backoff)),
                "attempts": attempts})

    try:
        record = ctx.owned_update(write)
    except LeaseLost:
        return None
    if give_up:
        _notify(ctx.settings, record)
    return record


def get_step(kind: str) -> Callable[[JobContext], dict | None]:
    """The step function for ``kind`` (see :data:`ml4paleo.jobs.steps.STEPS`).

    ``ML4PALEO_STEPS_PLUGIN`` may name a module whose ``STEPS`` dict overrides steps
    (used by the test suite to slow a step down; production uses :mod:`.steps`).
    """
    plugin = os.environ.get("ML4PALEO_STEPS_PLUGIN")
    if plugin:
        overrides = getattr(importlib.import_module(plugin), "STEPS", {})
        if kind in overrides:
            return overrides[kind]
    return steps.get_step(kind)


class Runner:
    """A runner of one ``kind``; :meth:`run` is the poll loop.

    Parameters
    ----------
    kind : {"convert", "segment", "mesh"}
    settings : Settings
    stop_event : threading.Event, optional
        Set it to stop the loop (signal handlers set it too).
    """

    def __init__(self, kind: str, settings: Settings,
                 stop_event: threading.Event | None = None) -> None:
        if kind not in STAGES:
            raise ValueError(f"unknown runner kind {kind!r}; use one of {', '.join(STAGES)}")
        self.kind = kind
        self.stage = STAGES[kind]
        self.settings = settings
        self.store = JobStore(settings.data_dir, settings=settings)
        self.owner = new_owner(kind)
        self.stop_event = stop_event or threading.Event()
        self.step = get_step(kind)
        self._last_purge = float("-inf")
        self.processed = 0

    def purge_if_due(self) -> list[str]:
        """Purge jobs older than ``settings.retention_days`` (at most hourly)."""
        days = self.settings.retention_days
        if days is None or time.monotonic() - self._last_purge < PURGE_INTERVAL:
            return []
        self._last_purge = time.monotonic()
        try:
            return self.store.purge(timedelta(days=float(days)))
        except Exception:  # noqa: BLE001 - retention must not stop the runner
            log.exception("retention purge failed")
            return []

    def _stage_statuses(self) -> list[str]:
        return [self.stage.queued.value, *(s.value for s in self.stage.running)]

    def candidates(self) -> list[dict]:
        """Claimable jobs of this stage, oldest update first (lockless read). The job index
        names the jobs in this stage's statuses; only their records are read."""
        now = utcnow()
        jobs = []
        for row in self.store.index.with_status(self._stage_statuses()):
            try:
                record = self.store.get(row["id"])
            except (JobNotFound, OSError, ValueError):
                continue
            if claimable(record, self.stage, now):
                jobs.append(record)
        jobs.sort(key=lambda r: r.get("updated_at") or "")
        return jobs

    def next_retry_in(self) -> float | None:
        """Seconds until a queued job in back-off becomes claimable (None: none waiting)."""
        now = utcnow()
        waits = []
        for row in self.store.index.with_status([self.stage.queued.value]):
            if row["lease_expires"]:
                waits.append((parse_time(row["lease_expires"]) - now).total_seconds())
        return max(0.0, min(waits)) if waits else None

    def run_once(self) -> bool:
        """Claim and process one job; False when nothing was claimable."""
        for record in self.candidates():
            if self.stop_event.is_set():
                return False
            claim = try_claim(self.store, record["id"], self.stage, self.owner, self.settings)
            if claim is None:
                continue  # another runner was faster
            outcome, claimed = claim
            if outcome == "gave_up":
                log.error("job %s: %s", claimed["id"], claimed.get("error"))
                _notify(self.settings, claimed)
                return True
            process_job(self.store, claimed, self.stage, self.owner, self.settings,
                        self.step, self.stop_event)
            self.processed += 1
            return True
        return False

    def run(self, once: bool = False) -> int:
        """Poll until stopped (or, with ``once``, until the queue is drained).

        Returns the number of jobs processed.
        """
        log.info("%s runner %s started on %s", self.kind, self.owner, self.store.data_dir)
        poll = max(float(self.settings.poll_interval), 0.01)
        while not self.stop_event.is_set():
            self.purge_if_due()
            if self.run_once():
                continue
            if once:
                wait = self.next_retry_in()
                if wait is None:
                    break
                self.stop_event.wait(min(wait + 0.05, poll))
                continue
            self.stop_event.wait(poll)
        log.info("%s runner %s stopped after %d job(s)", self.kind, self.owner, self.processed)
        _wait_for_notifications()
        return self.processed


def _wait_for_notifications() -> None:
    if importlib.util.find_spec("ml4paleo.notify") is None:
        return
    try:
        importlib.import_module("ml4paleo.notify").wait_for_pending(timeout=30)
    except Exception:  # noqa: BLE001
        log.exception("waiting for notifications failed")


def run_runner(kind: str, settings: Settings | None = None, once: bool = False,
               stop_event: threading.Event | None = None) -> int:
    """Run a ``kind`` runner until SIGTERM / Ctrl-C (or the queue is drained with ``once``).

    Parameters
    ----------
    kind : {"convert", "segment", "mesh"}
    settings : Settings, optional
        Defaults to :meth:`Settings.from_env`.
    once : bool
        Process every claimable job, then return.
    stop_event : threading.Event, optional
        Set it to stop the runner from another thread.

    Returns
    -------
    int
        Jobs processed.
    """
    settings = settings or Settings.from_env()
    runner = Runner(kind, settings, stop_event)
    previous = {}
    first_signal: list[float] = []
    if threading.current_thread() is threading.main_thread():
        def _stop(signum, _frame):
            # a second signal soon after the first is the same Ctrl-C reaching the whole
            # process group (SIGINT) plus the parent's SIGTERM: keep stopping gracefully
            if first_signal and time.monotonic() - first_signal[0] > 2.0:
                raise KeyboardInterrupt  # asked again later: leave now
            if not first_signal:
                first_signal.append(time.monotonic())
                log.info("%s runner: signal %d, stopping", kind, signum)
            runner.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stop)
    try:
        return runner.run(once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["JobContext", "LeaseLost", "Runner", "StepError", "Stopping", "claimable",
           "ensure_owner", "get_step", "process_job", "run_runner", "try_claim", "RUNNER"]
