"""Jobs: the JSON job store, statuses and their transition table, the runner loop, steps.

>>> from ml4paleo.jobs import JobStore, Status
>>> Status.CONVERTED.value
'converted'

Modules: :mod:`.statuses` (Status, the transition table, :func:`describe` of a status
for user interfaces), :mod:`.store` (JobStore), :mod:`.context` (what a step sees),
:mod:`.steps` (one module per job kind: convert, segment, mesh), :mod:`.runner` (claim /
heartbeat / retry loop, ``run_runner``), :mod:`.serve` (a server plus the runners as
child processes).
"""

from __future__ import annotations

from ml4paleo.jobs.runner import run_runner
from ml4paleo.jobs.statuses import (
    BUSY,
    FINAL,
    PIPELINE_ORDER,
    RUNNING,
    STAGES,
    TRANSITIONS,
    Stage,
    Status,
    annotation_effect,
    check_transition,
    describe,
    parse_status,
    reached,
    status_table,
)
from ml4paleo.jobs.store import (
    InvalidTransition,
    JobNotFound,
    JobStore,
    LeaseLost,
    clean_name,
    load_record,
    normalize_source_type,
)

__all__ = [
    "BUSY", "FINAL", "PIPELINE_ORDER", "RUNNING", "STAGES", "TRANSITIONS", "InvalidTransition",
    "JobNotFound", "JobStore", "LeaseLost", "Stage", "Status", "annotation_effect",
    "check_transition", "clean_name", "describe", "load_record", "normalize_source_type",
    "parse_status", "reached", "run_runner", "status_table",
]
