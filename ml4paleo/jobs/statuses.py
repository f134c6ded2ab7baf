"""Job statuses and the one transition table used by the web app, the CLI and the runners.

A job moves through four runner stages, each with a *queued*, a *running*, a *done*
and an *error* status::

    uploading -> uploaded -> converting -> converted              (convert runner)
    converted -> annotated -> training_queued -> training
              -> [segmenting] -> segmented | trained             (segment runner)
    segmented -> meshing_queued -> meshing -> meshed              (mesh runner)
    segmented -> measuring_queued -> measuring -> measured        (measure runner)

Meshing and measuring both start from any resting status with a segmentation (a meshed
job can be measured and a measured one meshed).

Every ``*_error`` status can be retried (back to the stage's queued status), and a
queued or running stage can be cancelled (to its ``*_error`` status with the error
"cancelled by user"). Annotations arriving while a stage is queued or running never
move the status back: they are recorded as a flag (see :func:`annotation_effect`), so
queued work is never dropped.

Examples
--------
>>> check_transition({"status": "uploading"}, Status.TRAINING_QUEUED) is not None
True
>>> check_transition({"status": "converted"}, Status.ANNOTATED) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Job status; the value is the plain lower-case name the HTTP API returns."""

    PENDING = "pending"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    CONVERTING = "converting"
    CONVERTED = "converted"
    CONVERT_ERROR = "convert_error"
    ANNOTATED = "annotated"
    TRAINING_QUEUED = "training_queued"
    TRAINING = "training"
    TRAINED = "trained"
    SEGMENTING = "segmenting"
    SEGMENTED = "segmented"
    SEGMENT_ERROR = "segment_error"
    MESHING_QUEUED = "meshing_queued"
    MESHING = "meshing"
    MESHED = "meshed"
    MESH_ERROR = "mesh_error"
    MEASURING_QUEUED = "measuring_queued"
    MEASURING = "measuring"
    MEASURED = "measured"
    MEASURE_ERROR = "measure_error"
    # kept from the original API so old records still parse; no transition leads here
    DONE = "done"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Stage:
    """One runner stage: the statuses a runner of ``kind`` reads and writes."""

    kind: str
    queued: Status
    running: tuple[Status, ...]
    done: tuple[Status, ...]
    error: Status

    @property
    def busy(self) -> tuple[Status, ...]:
        """Statuses in which the stage has work queued or under way."""
        return (self.queued, *self.running)


STAGES: dict[str, Stage] = {
    "convert": Stage("convert", Status.UPLOADED, (Status.CONVERTING,), (Status.CONVERTED,),
                     Status.CONVERT_ERROR),
    "segment": Stage("segment", Status.TRAINING_QUEUED, (Status.TRAINING, Status.SEGMENTING),
                     (Status.SEGMENTED, Status.TRAINED), Status.SEGMENT_ERROR),
    "mesh": Stage("mesh", Status.MESHING_QUEUED, (Status.MESHING,), (Status.MESHED,),
                  Status.MESH_ERROR),
    "measure": Stage("measure", Status.MEASURING_QUEUED, (Status.MEASURING,),
                     (Status.MEASURED,), Status.MEASURE_ERROR),
}

#: statuses in which a runner has work queued or under way
BUSY: frozenset[Status] = frozenset(s for st in STAGES.values() for s in st.busy)
#: statuses written only by a runner holding the job's lease
RUNNING: frozenset[Status] = frozenset(s for st in STAGES.values() for s in st.running)
#: statuses after which the job waits for the user (final for the stage, or failed)
FINAL: frozenset[Status] = frozenset(
    {s for st in STAGES.values() for s in (*st.done, st.error)}
)
#: statuses of a failed stage (the legacy ``error`` included)
FAILED: frozenset[Status] = frozenset({st.error for st in STAGES.values()} | {Status.ERROR})
#: statuses in which a stage's result was just written (the legacy ``done`` included)
DONE: frozenset[Status] = frozenset(
    {s for st in STAGES.values() for s in st.done} | {Status.DONE}
)
#: the order a job normally passes its statuses (errors left out): "at or after" checks
PIPELINE_ORDER: tuple[Status, ...] = (
    Status.PENDING, Status.UPLOADING, Status.UPLOADED, Status.CONVERTING, Status.CONVERTED,
    Status.ANNOTATED, Status.TRAINING_QUEUED, Status.TRAINING, Status.TRAINED,
    Status.SEGMENTING, Status.SEGMENTED, Status.MEASURING_QUEUED, Status.MEASURING,
    Status.MEASURED, Status.MESHING_QUEUED, Status.MESHING, Status.MESHED, Status.DONE,
)
#: an image exists and nothing runs: the user may annotate, train, segment
RESTING_WITH_IMAGE: frozenset[Status] = frozenset({
    Status.CONVERTED, Status.ANNOTATED, Status.TRAINED, Status.SEGMENTED, Status.SEGMENT_ERROR,
    Status.MESHED, Status.MESH_ERROR, Status.MEASURED, Status.MEASURE_ERROR,
})

USER, RUNNER = "user", "runner"

# requirement names checked against the record (see _REQUIREMENTS)
_NEEDS_UPLOAD = "upload"
_NEEDS_SEGMENTATION = "segmentation"

#: THE transition table: {from: {to: (who may make the move, requirement or None)}}
TRANSITIONS: dict[Status, dict[Status, tuple[str, str | None]]] = {
    Status.PENDING: {Status.UPLOADING: (USER, None)},
    Status.UPLOADING: {Status.UPLOADED: (USER, _NEEDS_UPLOAD)},
    # convert stage
    Status.UPLOADED: {
        Status.CONVERTING: (RUNNER, None),
        Status.CONVERT_ERROR: (USER, None),  # cancel, or the runner gives up
    },
    Status.CONVERTING: {
        Status.CONVERTING: (RUNNER, None),  # reclaimed after a lease expired
        Status.CONVERTED: (RUNNER, None),
        Status.CONVERT_ERROR: (USER, None),
        Status.UPLOADED: (RUNNER, None),  # released for a retry / on shutdown
    },
    Status.CONVERT_ERROR: {Status.UPLOADED: (USER, None)},  # retry
    # resting with an image: annotate, (re)train + segment, mesh an existing segmentation
    **{
        s: {
            Status.ANNOTATED: (USER, None),
            Status.TRAINING_QUEUED: (USER, None),
            Status.MESHING_QUEUED: (USER, _NEEDS_SEGMENTATION),
            Status.MEASURING_QUEUED: (USER, _NEEDS_SEGMENTATION),
        }
        for s in RESTING_WITH_IMAGE
    },
    # segment stage
    Status.TRAINING_QUEUED: {
        Status.TRAINING: (RUNNER, None),
        Status.SEGMENTING: (RUNNER, None),  # segmenting with an existing model
        Status.SEGMENT_ERROR: (USER, None),
    },
    Status.TRAINING: {
        Status.TRAINING: (RUNNER, None),
        Status.SEGMENTING: (RUNNER, None),
        Status.TRAINED: (RUNNER, None),
        Status.SEGMENT_ERROR: (USER, None),
        Status.TRAINING_QUEUED: (RUNNER, None),
    },
    Status.SEGMENTING: {
        Status.SEGMENTING: (RUNNER, None),
        Status.TRAINING: (RUNNER, None),  # reclaimed: the new attempt starts over
        Status.SEGMENTED: (RUNNER, None),
        Status.SEGMENT_ERROR: (USER, None),
        Status.TRAINING_QUEUED: (RUNNER, None),
    },
    # mesh stage
    Status.MESHING_QUEUED: {
        Status.MESHING: (RUNNER, None),
        Status.MESH_ERROR: (USER, None),
    },
    Status.MESHING: {
        Status.MESHING: (RUNNER, None),
        Status.MESHED: (RUNNER, None),
        Status.MESH_ERROR: (USER, None),
        Status.MESHING_QUEUED: (RUNNER, None),
    },
    # measure stage
    Status.MEASURING_QUEUED: {
        Status.MEASURING: (RUNNER, None),
        Status.MEASURE_ERROR: (USER, None),
    },
    Status.MEASURING: {
        Status.MEASURING: (RUNNER, None),
        Status.MEASURED: (RUNNER, None),
        Status.MEASURE_ERROR: (USER, None),
        Status.MEASURING_QUEUED: (RUNNER, None),
    },
}
# retry from the segment / mesh / measure errors is already allowed: they are resting statuses

_WHY_TARGET = {
    Status.UPLOADED: "only a job that is still uploading can be marked as uploaded",
    Status.ANNOTATED: "annotations need a converted image",
    Status.TRAINING_QUEUED: "training and segmentation need a converted image",
    Status.MESHING_QUEUED: "meshing needs a finished segmentation",
    Status.MEASURING_QUEUED: "measuring needs a finished segmentation",
}


def _status(value: Status | str) -> Status:
    try:
        return Status(str(value.value if isinstance(value, Status) else value).lower())
    except ValueError:
        raise ValueError(f"unknown job status {value!r}") from None


def parse_status(value: Status | str) -> Status:
    """Return the :class:`Status` for a value or name (``"converted"``, ``"JobStatus.CONVERTED"``).

    Raises
    ------
    ValueError
        When the text names no status.
    """
    text = value.value if isinstance(value, Status) else str(value)
    return _status(text.rsplit(".", 1)[-1])


def stage_of(status: Status | str) -> Stage | None:
    """The runner stage that has ``status`` queued, running, done or failed, if any."""
    status = parse_status(status)
    for st in STAGES.values():
        if status in (*st.busy, *st.done, st.error):
            return st
    return None


def check_transition(record: dict, new: Status | str, actor: str = USER) -> str | None:
    """Why ``record`` may not move to ``new`` (a human sentence), or None when it may.

    Parameters
    ----------
    record : dict
        The job record (``status`` and, for requirements, ``upload_bytes`` /
        ``segmentations``).
    new : Status or str
        Requested status.
    actor : {"user", "runner"}
        Who asks. Runner-only moves (claiming, finishing) are refused to users.
    """
    try:
        new = parse_status(new)
    except ValueError as exc:
        return str(exc)
    old = parse_status(record.get("status", Status.PENDING))
    rule = TRANSITIONS.get(old, {}).get(new)
    if rule is None:
        if old in BUSY and new != Status.UPLOADED:
            return (f"cannot move to {new.value}: the job is busy ({old.value}); "
                    "wait for it to finish or cancel it")
        why = _WHY_TARGET.get(new)
        if why:
            return f"cannot move to {new.value} from {old.value}: {why}"
        if new in RUNNING:
            return f"only a runner can move a job to {new.value}, and not from {old.value}"
        return f"cannot move a job from {old.value} to {new.value}"
    who, need = rule
    if who == RUNNER and actor != RUNNER:
        return f"only a runner can move a job from {old.value} to {new.value}"
    if need == _NEEDS_UPLOAD and not (record.get("upload_bytes") or record.get("upload_files")):
        return "nothing was uploaded yet"
    if need == _NEEDS_SEGMENTATION and not record.get("segmentations"):
        what = "measuring" if new == Status.MEASURING_QUEUED else "meshing"
        return f"{what} needs a finished segmentation; this job has none yet"
    return None


def retry_target(status: Status | str) -> Status | None:
    """The queued status a failed (``*_error``) job goes back to on retry, else None."""
    status = parse_status(status)
    for st in STAGES.values():
        if status == st.error:
            return st.queued
    return None


#: ``error_kind`` of a failed job's record: what kind of failure it was
ERROR_INPUT = "input"  # bad input or request: running it again fails the same way
ERROR_FAILED = "failed"  # the step crashed or its runner died (attempts used up)
ERROR_CANCELLED = "cancelled"  # stopped by a user
ERROR_KINDS = (ERROR_INPUT, ERROR_FAILED, ERROR_CANCELLED)


def retry_helps(status: Status | str, error_kind: str | None) -> bool:
    """True when a Retry can change the outcome: the status can be retried and the error
    was not bad input (a mixed-size stack fails the same way every time; a crashed
    runner, a full disk or a cancelled run may succeed).

    Examples
    --------
    >>> retry_helps("convert_error", "input"), retry_helps("convert_error", "failed")
    (False, True)
    >>> retry_helps("converted", None)
    False
    """
    try:
        return retry_target(status) is not None and error_kind != ERROR_INPUT
    except ValueError:
        return False


def cancel_target(status: Status | str) -> Status | None:
    """The error status a queued or running job goes to when cancelled, else None."""
    status = parse_status(status)
    for st in STAGES.values():
        if status in st.busy:
            return st.error
    return None


def annotation_effect(status: Status | str) -> tuple[Status | None, str | None]:
    """What a newly submitted annotation does to a job in ``status``.

    Returns
    -------
    (new_status, refusal) : tuple
        ``(Status.ANNOTATED, None)`` when the job rests with an image;
        ``(None, None)`` when work is queued or running (the status is kept, only the
        ``annotations_pending`` flag is set, so queued work is not dropped);
        ``(None, reason)`` when annotating is not possible yet.
    """
    status = parse_status(status)
    if status in RESTING_WITH_IMAGE:
        return Status.ANNOTATED, None
    if status in BUSY and status not in STAGES["convert"].busy:
        return None, None
    return None, f"annotations need a converted image (the job is {status.value})"


#: the step of the pipeline the UI shows a status under
_UI_STEP: dict[Status, str] = {
    Status.PENDING: "upload", Status.UPLOADING: "upload",
    Status.UPLOADED: "convert", Status.CONVERTING: "convert", Status.CONVERTED: "convert",
    Status.CONVERT_ERROR: "convert",
    Status.ANNOTATED: "annotate",
    Status.TRAINING_QUEUED: "train", Status.TRAINING: "train", Status.TRAINED: "train",
    Status.SEGMENTING: "segment", Status.SEGMENTED: "segment", Status.SEGMENT_ERROR: "segment",
    Status.MESHING_QUEUED: "mesh", Status.MESHING: "mesh", Status.MESHED: "mesh",
    Status.MESH_ERROR: "mesh",
    Status.MEASURING_QUEUED: "measure", Status.MEASURING: "measure", Status.MEASURED: "measure",
    Status.MEASURE_ERROR: "measure",
}


def reached(status: Status | str, targets: Status | str | tuple | list | set | frozenset) -> bool:
    """True when ``status`` is one of ``targets`` or comes after one of them in
    :data:`PIPELINE_ORDER` (so a short status between two polls is not missed).

    Examples
    --------
    >>> reached("meshed", "converted"), reached("converting", "converted")
    (True, False)
    """
    names = (targets,) if isinstance(targets, str | Status) else tuple(targets)
    if str(status) in {str(t) for t in names}:
        return True
    wanted = set()
    for name in names:
        try:
            wanted.add(parse_status(name))
        except ValueError:
            continue  # an unknown name can only match itself (checked above)
    try:
        status = parse_status(status)
    except ValueError:
        return False
    if status in wanted:
        return True
    if status not in PIPELINE_ORDER:
        return False
    ranks = [PIPELINE_ORDER.index(t) for t in wanted if t in PIPELINE_ORDER]
    return bool(ranks) and PIPELINE_ORDER.index(status) >= min(ranks)


def describe(status: Status | str) -> dict[str, Any]:
    """What a user interface needs to know about one status: the one place of these rules.

    Returns
    -------
    dict
        ``status`` (plain value), ``label`` (human words), ``phase`` (the runner stage:
        ``convert`` / ``segment`` / ``mesh`` / ``measure``, ``upload`` before it, None for the legacy
        values), ``step`` (the pipeline step the UI shows it under), ``busy`` (a runner
        has work queued or under way), ``active`` (busy, or the upload is under way: poll
        often), ``queued``, ``running``, ``failed``, ``retryable``
        (a retry queues it again), ``cancellable``, ``done`` (a stage just finished),
        ``resting`` (an image exists and nothing runs: annotate / segment / mesh are
        possible), ``tone`` (``busy`` / ``ok`` / ``bad`` / ``""`` for badges) and
        ``order`` (index in :data:`PIPELINE_ORDER`, None for errors).

    Raises
    ------
    ValueError
        When the text names no status.

    Examples
    --------
    >>> d = describe("training_queued")
    >>> d["phase"], d["busy"], d["queued"], d["running"], d["label"]
    ('segment', True, True, False, 'training queued')
    >>> describe("mesh_error")["retryable"]
    True
    """
    status = parse_status(status)
    stage = stage_of(status)
    busy = status in BUSY
    active = busy or status == Status.UPLOADING  # the user's browser is at work too
    failed = status in FAILED
    if active:
        tone = "busy"
    elif failed:
        tone = "bad"
    elif status in DONE or status == Status.ANNOTATED:
        tone = "ok"
    else:
        tone = ""
    if stage is not None:
        phase: str | None = stage.kind
    elif status in (Status.PENDING, Status.UPLOADING):
        phase = "upload"
    else:
        phase = None
    return {
        "status": status.value,
        "label": status.value.replace("_", " "),
        "phase": phase,
        "step": _UI_STEP.get(status),
        "busy": busy,
        "active": active,
        "queued": stage is not None and status == stage.queued,
        "running": status in RUNNING,
        "failed": failed,
        "retryable": retry_target(status) is not None,
        "cancellable": cancel_target(status) is not None,
        "done": status in DONE,
        "resting": status in RESTING_WITH_IMAGE,
        "tone": tone,
        "order": PIPELINE_ORDER.index(status) if status in PIPELINE_ORDER else None,
    }


#: how a list of jobs names each stage's queued + running statuses together
_BUSY_LABEL = {"convert": "converting", "segment": "training / segmenting", "mesh": "meshing",
               "measure": "measuring"}


def status_filters() -> list[dict[str, Any]]:
    """Choices for filtering a job list by status, in pipeline order: each resting status
    alone, each stage's queued + running statuses together, all failures together.

    Examples
    --------
    >>> [f["label"] for f in status_filters()][:3]
    ['uploading', 'converting', 'converted']
    >>> status_filters()[-1]["statuses"]
    ['convert_error', 'segment_error', 'mesh_error', 'measure_error']
    """
    out: list[dict[str, Any]] = []
    seen: set[Status] = set()
    for status in PIPELINE_ORDER:
        if status in (Status.PENDING, Status.DONE) or status in seen:
            continue
        stage = stage_of(status)
        group = list(stage.busy) if stage is not None and status in BUSY else [status]
        seen.update(group)
        label = _BUSY_LABEL.get(stage.kind, stage.kind) if len(group) > 1 else \
            status.value.replace("_", " ")
        out.append({"label": label, "statuses": [s.value for s in group]})
    out.append({"label": "failed", "statuses": [st.error.value for st in STAGES.values()]})
    return out


def status_table() -> dict[str, Any]:
    """Every status described (:func:`describe`), the pipeline order and the runner stages:
    served to the browser at ``GET /api/statuses`` so no script keeps its own copy."""
    return {
        "statuses": {s.value: describe(s) for s in Status},
        "order": [s.value for s in PIPELINE_ORDER],
        "filters": status_filters(),
        "stages": {
            kind: {"queued": st.queued.value, "running": [s.value for s in st.running],
                   "done": [s.value for s in st.done], "error": st.error.value}
            for kind, st in STAGES.items()
        },
    }
