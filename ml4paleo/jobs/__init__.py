"""Jobs: the JSON job store, statuses and their transition table, the runner loop, steps.

>>> from ml4paleo.jobs import JobStore, Status
>>> Status.CONVERTED.value
'converted'

Modules: :mod:`.statuses` (Status, the transition table), :mod:`.store` (JobStore),
:mod:`.runner` (claim / heartbeat / retry loop, ``run_runner``), :mod:`.steps` (the
convert, segment and mesh steps), :mod:`.serve` (web app + runners in one command).
"""

from __future__ import annotations

from ml4paleo.jobs.statuses import (
    BUSY,
    FINAL,
    RUNNING,
    STAGES,
    TRANSITIONS,
    Stage,
    Status,
    annotation_effect,
    check_transition,
    parse_status,
)
from ml4paleo.jobs.store import (
    InvalidTransition,
    JobNotFound,
    JobStore,
    LeaseLost,
    clean_name,
    normalize_source_type,
)


def run_runner(kind, settings=None, once=False, stop_event=None):
    """See :func:`ml4paleo.jobs.runner.run_runner` (imported lazily)."""
    from ml4paleo.jobs.runner import run_runner as _run

    return _run(kind, settings, once=once, stop_event=stop_event)


__all__ = [
    "BUSY", "FINAL", "RUNNING", "STAGES", "TRANSITIONS", "InvalidTransition", "JobNotFound",
    "JobStore", "LeaseLost", "Stage", "Status", "annotation_effect", "check_transition",
    "clean_name", "normalize_source_type", "parse_status", "run_runner",
]
