"""The JSON job store: one ``job.json`` per job, locked read-modify-write, atomic writes.

Layout: ``<data_dir>/jobs/<job_id>/`` holds the record (``JobPaths.record``) plus the
job's files beside it (:class:`ml4paleo.workspace.JobPaths` names them all). Every
change is a read-modify-write done while holding an exclusive ``fcntl.flock`` on the
job's lock file, written atomically (:func:`ml4paleo._fs.atomic_write`: temp file,
fsync, rename) over the record, so several processes (web app, runners, CLI) can update
one job at once without losing an update, and a SIGKILL at any instant leaves a readable
record. Reads need no lock: a reader sees the old or the new file, never half of one
(:func:`load_record` takes the lock shared, for readers outside the store).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ml4paleo._fs import atomic_write, is_temp_name, parse_iso, sweep_temps
from ml4paleo.config import Settings
from ml4paleo.jobs.index import JobIndex
from ml4paleo.jobs.statuses import (
    BUSY,
    ERROR_CANCELLED,
    USER,
    Status,
    annotation_effect,
    cancel_target,
    check_transition,
    parse_status,
    retry_target,
)
from ml4paleo.workspace.ids import new_id
from ml4paleo.workspace.names import clean_name
from ml4paleo.workspace.paths import JobPaths

log = logging.getLogger(__name__)

_TRASH_PREFIX = ".trash-"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
MAX_HISTORY = 500
#: largest island size the segmentation clean-up removes (voxels)
MAX_CLEANUP_VOXELS = 10**9
#: a job folder without job.json older than this is debris (default of
#: ``Settings.orphan_seconds``)
ORPHAN_SECONDS = 3600.0

#: accepted ``source_type`` values and aliases -> canonical source type
SOURCE_TYPES: dict[str, str] = {
    "auto": "auto", "": "auto", "zip": "auto", "any": "auto", "unknown": "auto",
    "image_stack": "image_stack", "images": "image_stack", "image": "image_stack",
    "stack": "image_stack", "png": "image_stack", "jpg": "image_stack", "jpeg": "image_stack",
    "tif_stack": "image_stack", "tiff_stack": "image_stack",
    "tiff": "tiff", "tif": "tiff", "multipage_tiff": "tiff", "bigtiff": "tiff",
    "dicom": "dicom", "dcm": "dicom", "dicom_zip": "dicom",
    "nifti": "nifti", "nii": "nifti", "nii.gz": "nifti",
    "npy": "npy", "numpy": "npy",
    "zarr": "zarr", "ome_zarr": "zarr", "ome-zarr": "zarr", "omezarr": "zarr",
}


class JobNotFound(KeyError):
    """No job with this id (or the id is malformed)."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else "job not found"


class InvalidTransition(ValueError):
    """A status change the transition table refuses; the message says why."""


class LeaseLost(RuntimeError):
    """A runner tried to write to a job whose lease it no longer holds."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(when: datetime) -> str:
    """ISO-8601 UTC with a ``Z``: ``2026-11-21T22:00:00.123456Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """Parse a timestamp written by :func:`isoformat` (None passes through)."""
    if not text:
        return None
    return parse_iso(text)


def normalize_source_type(value: str | None) -> str:
    """Canonical source type for a name or alias (``"dcm"`` -> ``"dicom"``).

    Raises
    ------
    ValueError
        For an unknown source type.
    """
    key = (value or "").strip().lower().replace(" ", "_")
    if key not in SOURCE_TYPES:
        known = sorted({v for v in SOURCE_TYPES.values()})
        raise ValueError(f"unknown source_type {value!r}; use one of {', '.join(known)}")
    return SOURCE_TYPES[key]


def _record_temp_prefix(paths: JobPaths) -> str:
    """Start of the temp names :func:`ml4paleo._fs.temp_path` gives a record being written."""
    return f".{paths.record.name}.tmp-"


@contextlib.contextmanager
def _locked_fd(lock_path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def load_record(job_dir: str | os.PathLike) -> dict | None:
    """Read the record of the job folder ``job_dir`` (None when it has none), holding the
    job's lock shared, so no writer of the store is between its steps.

    For readers that have a job folder rather than a store (the report, tools); a folder
    whose lock cannot be taken (read-only copy) is read without it.
    """
    paths = JobPaths(job_dir)
    if not paths.record.is_file():
        return None
    try:
        with _locked_fd(paths.lock, fcntl.LOCK_SH):
            return JobStore.read_record_file(paths.record)
    except FileNotFoundError:
        return None  # deleted meanwhile
    except OSError:  # no lock file can be made here (read-only copy): atomic files anyway
        return JobStore.read_record_file(paths.record)


class JobStore:
    """File-backed job records under ``<data_dir>/jobs``.

    Parameters
    ----------
    data_dir : str or Path
        The data directory (``./data`` by default in the apps).
    settings : Settings, optional
        Used for lease length and retention; defaults are used when None.

    Examples
    --------
    >>> import tempfile
    >>> store = JobStore(tempfile.mkdtemp())
    >>> job = store.create("ammonite", "dcm")
    >>> job["status"], job["source_type"]
    ('uploading', 'dicom')
    >>> store.rename(job["id"], "ammonite 2")["name"]
    'ammonite 2'
    """

    def __init__(self, data_dir: str | os.PathLike, settings: Settings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(data_dir=self.data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._jobs_root = self.jobs_dir.resolve()
        #: summaries of every job for listing and polling (:mod:`ml4paleo.jobs.index`)
        self.index = JobIndex(self.jobs_dir, self._record_ids, self._read_or_none)
        self.sweep()

    # ---------------------------------------------------------------- ids, paths
    @staticmethod
    def is_valid_id(text: object) -> bool:
        """True when ``text`` looks like a job id (URL-safe, 22..64 characters)."""
        return isinstance(text, str) and bool(_ID_RE.match(text))

    def job_dir(self, job_id: str) -> Path:
        """The folder of job ``job_id`` (not checked for existence).

        Raises
        ------
        JobNotFound
            When ``job_id`` is not a valid id (so no id can point outside the data dir).
        """
        if not self.is_valid_id(job_id):
            raise JobNotFound(f"no job {str(job_id)[:80]!r}: malformed job id")
        path = self.jobs_dir / job_id
        if path.resolve().parent != self._jobs_root:
            raise JobNotFound(f"no job {job_id!r}: path escapes the data directory")
        return path

    def paths(self, job_id: str) -> JobPaths:
        """The :class:`~ml4paleo.workspace.JobPaths` of job ``job_id`` (id checked)."""
        return JobPaths(self.job_dir(job_id))

    def _record_ids(self) -> list[str]:
        """Ids of the job folders that hold a record."""
        out = []
        with os.scandir(self.jobs_dir) as it:
            for entry in it:
                if self.is_valid_id(entry.name) and os.path.isfile(
                        os.path.join(entry.path, JobPaths(entry.path).record.name)):
                    out.append(entry.name)
        return out

    def _read_or_none(self, job_id: str) -> dict | None:
        try:
            return self.get(job_id)
        except JobNotFound:
            return None
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable job record of %s: %s", job_id, exc)
            return None

    def record_path(self, job_id: str) -> Path:
        return self.paths(job_id).record

    def exists(self, job_id: str) -> bool:
        try:
            return self.record_path(job_id).is_file()
        except JobNotFound:
            return False

    # ---------------------------------------------------------------- locking, io
    @contextlib.contextmanager
    def lock(self, job_id: str) -> Iterator[Path]:
        """Hold the job's exclusive lock; yields the job folder.

        Raises
        ------
        JobNotFound
            When the job does not exist (or was deleted while waiting for the lock).
        """
        paths = self.paths(job_id)
        folder, lock_path = paths.root, paths.lock
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except (FileNotFoundError, NotADirectoryError):
                raise JobNotFound(f"no job {job_id!r}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # deleted (folder renamed away) while we waited: our lock is on a stale file
                try:
                    same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
                except FileNotFoundError:
                    raise JobNotFound(f"no job {job_id!r}") from None
                if not same:
                    continue
                if not paths.record.is_file():
                    raise JobNotFound(f"no job {job_id!r}")
                yield folder
                return
            finally:
                os.close(fd)  # closing releases the flock

    @staticmethod
    def read_record_file(path: Path) -> dict:
        """Parse a record file (no lock: records are replaced atomically)."""
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    @staticmethod
    def _write(path: Path, record: dict) -> None:
        atomic_write(path, json.dumps(record, indent=1, sort_keys=False), fsync=True)

    def sweep(self) -> int:
        """Remove what killed writers left: temp files and folders of every kind (record,
        image and staging, upload state, exports, models, meshes, annotations; see
        :meth:`JobPaths.temp_homes`) whose writing process is gone, half-deleted jobs, and
        job folders without a record older than ``settings.orphan_seconds``.

        Record temps are removed only while holding the job's lock, other temps only when
        the process named in them is dead (or, made on another host, older than a day), so
        a writer that is alive right now is never disturbed. Returns the number of paths
        removed.
        """
        removed = sweep_temps(self.data_dir) + sweep_temps(self.jobs_dir)
        with os.scandir(self.jobs_dir) as it:
            entries = list(it)
        for entry in entries:
            if entry.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
                continue
            if not self.is_valid_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            paths = JobPaths(entry.path)
            try:
                names = os.listdir(entry.path)
            except OSError:
                continue
            if paths.record.name not in names:
                # a folder re-created by a step still writing into a job deleted under it
                try:
                    orphan = time.time() - entry.stat().st_mtime > float(
                        self.settings.orphan_seconds)
                except FileNotFoundError:
                    continue
                if orphan:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
                continue
            for home in paths.temp_homes(names)[1:]:
                removed += sweep_temps(home)
            if any(is_temp_name(n) for n in names):
                removed += sweep_temps(entry.path)
            prefix = _record_temp_prefix(paths)
            if not any(n.startswith(prefix) for n in os.listdir(entry.path)):
                continue
            try:
                fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # someone is writing right now; their temp file is not stray
                for name in os.listdir(entry.path):
                    if name.startswith(prefix):
                        Path(entry.path, name).unlink(missing_ok=True)
                        removed += 1
            finally:
                os.close(fd)
        if removed:
            log.info("swept %d stray temp file(s) / deleted job folder(s)", removed)
        return removed

    # ---------------------------------------------------------------- create, read
    def create(self, name: str | None = None, source_type: str | None = None, **fields) -> dict:
        """Create a job in status ``uploading`` and return its record.

        Raises
        ------
        ValueError
            For an invalid name or unknown source type.
        """
        name = clean_name(name, default="Untitled job")
        source = normalize_source_type(source_type)
        now = isoformat(utcnow())
        job_id = new_id()
        record = {
            "id": job_id,
            "name": name,
            "source_type": source,
            "status": Status.UPLOADING.value,
            "progress": 0.0,
            "message": "waiting for upload",
            "error": None,
            "created_at": now,
            "updated_at": now,
            "history": [{"status": Status.UPLOADING.value, "at": now, "message": "job created"}],
            "metadata": {},
            "upload_bytes": 0,
            "model_id": None,
            "models": [],
            "segmentation_id": None,
            "segmentations": [],
            "meshes": {},
            "request": None,
            "annotations_pending": False,
            "annotations_updated_at": None,
            "lease": None,
            "version": 1,
        }
        record.update(fields)
        paths = self.paths(job_id)
        paths.root.mkdir(parents=True)
        try:
            paths.upload.mkdir()
            self._write(paths.record, record)
        except BaseException:
            # e.g. a full disk: no folder without a record is left behind
            shutil.rmtree(paths.root, ignore_errors=True)
            raise
        self.index.put(record, created=True)
        log.info("created job %s (%s, %s)", job_id, name, source)
        return record

    def get(self, job_id: str) -> dict:
        """The job's record.

        Raises
        ------
        JobNotFound
            Unknown or malformed id.
        """
        path = self.record_path(job_id)
        try:
            return self.read_record_file(path)
        except (FileNotFoundError, NotADirectoryError):
            raise JobNotFound(f"no job {job_id!r}") from None

    def query(self, **filters) -> tuple[list[dict], int]:
        """Catalogue rows of the jobs matching ``filters``, sorted and paged, from the index
        (see :meth:`ml4paleo.jobs.index.JobIndex.query`): costs the same at 10,000 jobs as
        at 10."""
        return self.index.query(**filters)

    def rebuild_index(self) -> int:
        """Rebuild the job index from the records (after editing records by hand)."""
        self.index.mark_stale()
        return self.index.rebuild()

    def list(self) -> list[dict]:
        """All readable job records, newest first (reads every record; use :meth:`query`
        to list many jobs)."""
        records = []
        for entry in self.jobs_dir.iterdir():
            if not self.is_valid_id(entry.name):
                continue
            try:
                records.append(self.read_record_file(JobPaths(entry).record))
            except FileNotFoundError:
                continue  # created or deleted right now
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable job record %s: %s", JobPaths(entry).record,
                            exc)
        records.sort(key=lambda r: r.get("created_at") or "", reverse=True)
        return records

    # ---------------------------------------------------------------- updates
    def update(self, job_id: str, fn: Callable[[dict], object]) -> dict:
        """Read-modify-write the record under the job's lock.

        ``fn(record)`` mutates the dict in place (its return value is ignored); when it
        raises, nothing is written. ``updated_at`` and ``version`` are set here.

        Returns
        -------
        dict
            The record as written.
        """
        with self.lock(job_id) as folder:
            path = JobPaths(folder).record
            record = self.read_record_file(path)
            fn(record)
            record["id"] = job_id
            record["updated_at"] = isoformat(utcnow())
            record["version"] = int(record.get("version", 0)) + 1
            if len(record.get("history", [])) > MAX_HISTORY:
                record["history"] = record["history"][-MAX_HISTORY:]
            self._write(path, record)
            self.index.put(record)  # under the same lock: rows follow records in order
            return record

    def set_fields(self, job_id: str, **fields) -> dict:
        """Set top-level fields (``status`` excluded: use :meth:`transition`)."""
        if "status" in fields:
            raise ValueError("set the status with transition(), not set_fields()")
        return self.update(job_id, lambda r: r.update(fields))

    def transition(self, job_id: str, new_status: Status | str, *, actor: str = USER,
                   message: str | None = None, **fields) -> dict:
        """Move the job to ``new_status`` if the transition table allows it.

        Parameters
        ----------
        job_id : str
        new_status : Status or str
        actor : {"user", "runner"}
            Who asks; runner-only moves are refused to users.
        message : str, optional
            Stored as the record's ``message`` and in the history entry.
        **fields
            Other fields set in the same write.

        Raises
        ------
        InvalidTransition
            With the reason, when the move is not allowed from the current status.
        """
        new = parse_status(new_status)

        def apply(record: dict) -> None:
            reason = check_transition(record, new, actor)
            if reason:
                raise InvalidTransition(reason)
            set_status(record, new, message)
            record.update(fields)

        return self.update(job_id, apply)

    def rename(self, job_id: str, name: str) -> dict:
        """Change the job's name (validated with :func:`clean_name`)."""
        name = clean_name(name)
        return self.update(job_id, lambda r: r.__setitem__("name", name))

    # ---------------------------------------------------------------- user actions
    def mark_uploaded(self, job_id: str) -> dict:
        """Upload finished: ``uploading`` -> ``uploaded`` (queues the conversion).

        The files in the job's ``upload/`` folder are counted under the lock (so files
        placed there by other means than ``/api/upload`` count too).

        Raises
        ------
        InvalidTransition
            When the job is not uploading or nothing was uploaded.
        """

        def apply(record: dict) -> None:
            files, size = upload_size(self.paths(job_id).upload)
            record.update(upload_bytes=size, upload_files=files)
            reason = check_transition(record, Status.UPLOADED, USER)
            if reason:
                raise InvalidTransition(reason)
            set_status(record, Status.UPLOADED, "queued for conversion")
            record.update(progress=0.0, error=None, error_kind=None, lease=None)

        return self.update(job_id, apply)

    def annotation_refusal(self, job_id: str) -> str | None:
        """Why annotations may not be written to job ``job_id`` now (None: they may).

        Raises
        ------
        JobNotFound
            Unknown or malformed id.
        """
        return annotation_effect(self.get(job_id)["status"])[1]

    @contextlib.contextmanager
    def annotating(self, job_id: str, **fields) -> Iterator[None]:
        """Write annotations inside this block; the job records them only after it.

        Checks first that the job can take annotations (else :class:`InvalidTransition`,
        nothing written), runs the block (the label write), and only when the block
        succeeded calls :meth:`record_annotation` with ``fields``. A label write that
        fails therefore never marks the job ``annotated``.

        Examples
        --------
        >>> import tempfile
        >>> store = JobStore(tempfile.mkdtemp())
        >>> job = store.create("a")
        >>> with store.annotating(job["id"]):
        ...     pass
        Traceback (most recent call last):
        ...
        ml4paleo.jobs.store.InvalidTransition: annotations need a converted image (the job is uploading)
        """
        refusal = self.annotation_refusal(job_id)
        if refusal:
            raise InvalidTransition(refusal)
        yield
        self.record_annotation(job_id, **fields)

    def record_annotation(self, job_id: str, **fields) -> dict:
        """Note that annotations changed. Moves a resting job to ``annotated``; a job with
        queued or running work keeps its status (and its queued work) and only gets
        ``annotations_pending = True``.

        Raises
        ------
        InvalidTransition
            When the job has no converted image yet.
        """

        def apply(record: dict) -> None:
            new, refusal = annotation_effect(record["status"])
            if refusal:
                raise InvalidTransition(refusal)
            if new is not None and new.value != record["status"]:
                set_status(record, new, "annotations updated")
            record["annotations_pending"] = True
            record["annotations_updated_at"] = isoformat(utcnow())
            record.update(fields)

        return self.update(job_id, apply)

    def request_segmentation(self, job_id: str, *, model_id: str | None = None,
                             train: bool | None = None, segment: bool = True,
                             min_size: int = 0, fill_holes: bool = False) -> dict:
        """Queue training and/or segmentation for the segment runner.

        Parameters
        ----------
        model_id : str, optional
            Segment with this existing model of the job instead of training a new one.
        train : bool, optional
            Train a new model first (default: True unless ``model_id`` is given).
        segment : bool
            Segment the whole volume after training (False = train only -> ``trained``).
        min_size : int
            Clean-up: remove islands of a class smaller than this many voxels (0 = keep).
        fill_holes : bool
            Clean-up: fill enclosed holes of every class.
        """
        if isinstance(min_size, bool) or not isinstance(min_size, int) or not \
                0 <= min_size <= MAX_CLEANUP_VOXELS:
            raise ValueError(f"min_size must be a voxel count from 0 to {MAX_CLEANUP_VOXELS}, "
                             f"got {min_size!r}")
        if not isinstance(fill_holes, bool):
            raise ValueError("fill_holes must be true or false")
        if model_id is not None and not self.is_valid_id(model_id):
            raise ValueError(f"malformed model id {model_id!r}")
        train = model_id is None if train is None else bool(train)
        if not train and model_id is None:
            raise ValueError("segmenting without training needs a model_id")
        if not train and not segment:
            raise ValueError("nothing to do: neither train nor segment")

        def apply(record: dict) -> None:
            reason = check_transition(record, Status.TRAINING_QUEUED, USER)
            if reason:
                raise InvalidTransition(reason)
            if model_id is not None and model_id not in record.get("models", []):
                raise InvalidTransition(f"this job has no model {model_id!r}")
            if train and not record.get("annotations_updated_at"):
                raise InvalidTransition("training needs annotations; annotate a few slices first")
            set_status(record, Status.TRAINING_QUEUED,
                       "queued for training" if train else "queued for segmentation")
            record.update(request={"kind": "segment", "train": train, "segment": bool(segment),
                                   "model_id": model_id, "min_size": min_size,
                                   "fill_holes": fill_holes},
                          progress=0.0, error=None, error_kind=None, lease=None,
                          pending_segmentation_id=None, pending_model_id=None)

        return self.update(job_id, apply)

    def request_mesh(self, job_id: str, *, segmentation_id: str | None = None,
                     formats: tuple[str, ...] | list[str] = ("stl",),
                     simplify: float | None = None, smooth: str | None = None) -> dict:
        """Queue meshing of a segmentation (default: the job's current one).

        ``smooth`` is ``"none"``, ``"light"`` or ``"strong"`` (None: the meshing default).
        """

        def apply(record: dict) -> None:
            reason = check_transition(record, Status.MESHING_QUEUED, USER)
            if reason:
                raise InvalidTransition(reason)
            seg = segmentation_id or record.get("segmentation_id")
            if seg not in record.get("segmentations", []):
                raise InvalidTransition(f"this job has no segmentation {seg!r}")
            set_status(record, Status.MESHING_QUEUED, "queued for meshing")
            record.update(request={"kind": "mesh", "segmentation_id": seg,
                                   "formats": list(formats), "simplify": simplify,
                                   "smooth": smooth},
                          progress=0.0, error=None, error_kind=None, lease=None)

        return self.update(job_id, apply)

    def request_measure(self, job_id: str, *, segmentation_id: str | None = None,
                        measures: object = None, values: object = None,
                        max_thickness: object = None, roi_box: object = None,
                        thickness_map: bool = True, profile_axis: object = "z") -> dict:
        """Queue morphometry of a segmentation (default: the job's current one).

        Parameters are those of :func:`ml4paleo.morphometry.measure`, checked here
        (:func:`ml4paleo.morphometry.options.measure_options`) so a bad request is refused before it is queued.

        Raises
        ------
        ValueError
            A bad parameter (the message names the field).
        InvalidTransition
            The job cannot be measured now (busy, no such segmentation).
        """
        from ml4paleo.morphometry.options import measure_options

        fields = measure_options(measures=measures, values=values, max_thickness=max_thickness,
                                 roi_box=roi_box, thickness_map=thickness_map,
                                 profile_axis=profile_axis)

        def apply(record: dict) -> None:
            reason = check_transition(record, Status.MEASURING_QUEUED, USER)
            if reason:
                raise InvalidTransition(reason)
            seg = segmentation_id or record.get("segmentation_id")
            if seg not in record.get("segmentations", []):
                raise InvalidTransition(f"this job has no segmentation {seg!r}")
            set_status(record, Status.MEASURING_QUEUED, "queued for measuring")
            record.update(request={"kind": "measure", "segmentation_id": seg, **fields},
                          progress=0.0, error=None, lease=None)

        return self.update(job_id, apply)

    def retry(self, job_id: str) -> dict:
        """Queue a failed stage again (``*_error`` -> its queued status, attempts reset)."""

        def apply(record: dict) -> None:
            target = retry_target(record["status"])
            if target is None:
                raise InvalidTransition(
                    f"only a failed job can be retried (the job is {record['status']})")
            reason = check_transition(record, target, USER)
            if reason:
                raise InvalidTransition(reason)
            set_status(record, target, "queued again (retry)")
            record.update(progress=0.0, error=None, error_kind=None, lease=None)

        return self.update(job_id, apply)

    def set_voxel_size(self, job_id: str, voxel_size, unit: str) -> dict:
        """Set the converted job's voxel size and unit (metadata only, no reconversion:
        :func:`ml4paleo.workspace.geometry.set_job_voxel_size`), under the job's lock and
        only while no runner works on it, so no runner reads half of the change.

        Returns
        -------
        dict
            The record as written: ``metadata`` carries the new ``voxel_size``, ``unit``
            and ``voxel_size_from="user"``; ``warnings`` lose those about the voxel size.

        Raises
        ------
        InvalidTransition
            While work is queued or running on the job.
        ValueError
            For a bad voxel size or unit, or a job without a converted image.
        """
        from ml4paleo.convert import SIZE_WARNINGS
        from ml4paleo.workspace.geometry import set_job_voxel_size

        paths = self.paths(job_id)

        def apply(record: dict) -> None:
            status = parse_status(record["status"])
            if status in BUSY:
                raise InvalidTransition(f"the job is {status.value}: wait for it to finish "
                                        "(or cancel it) before changing the voxel size")
            done = set_job_voxel_size(paths, voxel_size, unit)
            meta = dict(record.get("metadata") or {})
            meta.update(voxel_size=done["voxel_size"], unit=done["unit"],
                        voxel_size_from="user")
            keep = [w for w in record.get("warnings") or []
                    if not (isinstance(w, dict) and w.get("code") in SIZE_WARNINGS)]
            meta["warnings"] = keep
            size = " x ".join(f"{v:g}" for v in done["voxel_size"])
            record.update(metadata=meta, warnings=keep)
            record.setdefault("history", []).append(
                {"status": status.value, "at": isoformat(utcnow()),
                 "message": f"voxel size set to {size} {done['unit']}"})

        return self.update(job_id, apply)

    def cancel(self, job_id: str) -> dict:
        """Stop queued or running work: the stage goes to its ``*_error`` status.

        A runner working on the job notices at its next write (it no longer owns the job)
        and stops.
        """

        def apply(record: dict) -> None:
            target = cancel_target(record["status"])
            if target is None:
                raise InvalidTransition(
                    f"nothing to cancel: no work is queued or running (the job is {record['status']})")
            set_status(record, target, "cancelled by user")
            record.update(error="cancelled by user", error_kind=ERROR_CANCELLED, lease=None)

        return self.update(job_id, apply)

    # ---------------------------------------------------------------- delete, purge
    def delete(self, job_id: str) -> None:
        """Delete the job and all its files.

        The folder is renamed away under the lock (atomic: the job vanishes at once for
        every process) and then removed.
        """
        with self.lock(job_id) as folder:
            trash = self.jobs_dir / f"{_TRASH_PREFIX}{job_id}-{secrets.token_hex(4)}"
            os.rename(folder, trash)
            self.index.remove(job_id)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted job %s", job_id)

    def purge(self, older_than: float | timedelta, *, now: datetime | None = None,
              dry_run: bool = False) -> list[str]:
        """Delete jobs not updated for ``older_than`` (seconds or timedelta).

        Jobs with work queued or running are kept. Returns the deleted ids.
        """
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        cutoff = (now or utcnow()) - age
        deleted = []
        for record in self.list():
            updated = parse_time(record.get("updated_at")) or parse_time(record.get("created_at"))
            if updated is None or updated > cutoff:
                continue
            try:
                status = parse_status(record.get("status", ""))
            except ValueError:
                status = None
            if status in BUSY:
                continue
            if not dry_run:
                try:
                    self.delete(record["id"])
                except JobNotFound:
                    continue
            deleted.append(record["id"])
        if deleted:
            log.info("purged %d job(s) older than %s", len(deleted), age)
        return deleted


def upload_size(folder: Path) -> tuple[int, int]:
    """(number of files, total bytes) under an upload folder (hidden partial files excluded)."""
    files = size = 0
    if folder.is_dir():
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                files += 1
                size += path.stat().st_size
    return files, size


def set_status(record: dict, status: Status, message: str | None = None) -> None:
    """Set ``status`` on a record (no checks) and append the history entry."""
    now = isoformat(utcnow())
    record["status"] = status.value
    if message is not None:
        record["message"] = message
    record.setdefault("history", []).append(
        {"status": status.value, "at": now, "message": message or ""})


def wait_for(store: JobStore, job_id: str, predicate: Callable[[dict], bool],
             timeout: float = 60.0, interval: float = 0.1) -> dict:
    """Poll a job until ``predicate(record)`` holds; return the record.

    Raises
    ------
    TimeoutError
        With the last status seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(job_id)
        if predicate(record):
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {record['status']} after {timeout:.0f} s")
        time.sleep(interval)
