"""DICOM receive: a C-STORE SCP that turns every received series into an ml4paleo job.

Scanners and PACS send instances with C-STORE (``storescu``, a modality's "send to
node"). :class:`DicomReceiver` writes each instance, as sent, under
``<data_dir>/dicom_staging/<series>/``; a series is *complete* when

- the expected number of instances (``NumberOfSlices`` or ``ImagesInAcquisition``, when
  the instances carry one) has arrived and the sending association was released, or
- no new instance of the series arrived for ``idle_seconds``.

A complete series becomes a job (source type ``dicom``, named after the series
description): the files move into the job's ``upload/`` folder and the job goes to
``uploaded``, so the conversion runner picks it up. Staged series survive a restart and
are finished after ``idle_seconds`` once the receiver runs again.

Examples
--------
>>> receiver = DicomReceiver("data", port=11112, ae_title="ML4PALEO")   # doctest: +SKIP
>>> receiver.serve_forever()                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ml4paleo._fs import atomic_write, atomic_write_json, sweep_temps
from ml4paleo.config import Settings

log = logging.getLogger(__name__)

STAGING_DIR = "dicom_staging"
_STATE_FILE = "series.json"
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")

# DIMSE C-STORE status codes
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


@dataclass
class _Series:
    uid: str
    folder: Path
    description: str = ""
    modality: str = ""
    patient_id: str = ""
    calling_ae: str = ""
    expected: int | None = None
    instances: set[str] = field(default_factory=set)
    last_received: float = field(default_factory=time.monotonic)
    associations: set[int] = field(default_factory=set)

    def name(self) -> str:
        if self.description.strip():
            return self.description.strip()
        parts = [p for p in (self.modality, self.patient_id) if p]
        short = self.uid[-12:]
        return " ".join(parts + [f"series {short}"]) if parts else f"DICOM series {short}"

    def state(self) -> dict:
        return {
            "series_uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "patient_id": self.patient_id,
            "calling_ae": self.calling_ae,
            "expected": self.expected,
            "received": len(self.instances),
        }


class DicomReceiver:
    """A DICOM Storage SCP that creates one job per received series.

    Parameters
    ----------
    settings : Settings or path
        The settings (their ``data_dir`` holds the jobs) or the data directory itself.
    port : int
        TCP port to listen on (DICOM's registered port is 104; 11112 needs no root).
    ae_title : str
        Our Application Entity title (callers must address it; 1..16 characters).
    host : str
        Interface to bind; ``"0.0.0.0"`` for every interface.
    idle_seconds : float
        A series with no new instance for this long is complete.
    require_called_ae : bool
        Reject associations addressed to another AE title.

    Attributes
    ----------
    jobs : list of str
        Ids of the jobs created so far (in order).
    """

    def __init__(
        self,
        settings: Settings | str | os.PathLike,
        *,
        port: int = 11112,
        ae_title: str = "ML4PALEO",
        host: str = "0.0.0.0",
        idle_seconds: float = 30.0,
        require_called_ae: bool = True,
    ) -> None:
        if not isinstance(settings, Settings):
            settings = Settings(data_dir=Path(settings))
        if not 1 <= len(ae_title) <= 16 or not ae_title.isascii() or "\\" in ae_title:
            raise ValueError(f"AE title must be 1..16 ASCII characters, got {ae_title!r}")
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        from ml4paleo.jobs import JobStore

        self.settings = settings
        self.store = JobStore(settings.data_dir, settings=settings)
        self.staging = Path(settings.data_dir) / STAGING_DIR
        self.staging.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.host = host
        self.ae_title = ae_title
        self.idle_seconds = float(idle_seconds)
        self.require_called_ae = require_called_ae
        self.jobs: list[str] = []
        self._series: dict[str, _Series] = {}
        self._finished: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server = None
        self._watcher: threading.Thread | None = None
        self._job_created = threading.Condition(self._lock)
        self._recover_staged()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start listening in background threads (returns at once)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_ae
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_association_end),
            (evt.EVT_ABORTED, self._handle_association_end),
        ]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="dicom-idle-watch", daemon=True)
        self._watcher.start()
        log.info("DICOM receiver %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        """Stop listening. Staged, unfinished series stay on disk for the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def serve_forever(self) -> None:
        """Start and block until interrupted (Ctrl-C)."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping DICOM receiver")
        finally:
            self.stop()

    def __enter__(self) -> DicomReceiver:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for_jobs(self, count: int, timeout: float = 30.0) -> list[str]:
        """Block until at least ``count`` jobs were created (or ``timeout``); return their ids."""
        deadline = time.monotonic() + timeout
        with self._job_created:
            while len(self.jobs) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._job_created.wait(remaining)
            return list(self.jobs)

    def pending_series(self) -> list[dict]:
        """The series being received (uid, description, expected and received counts)."""
        with self._lock:
            return [s.state() for s in self._series.values()]

    # ------------------------------------------------------------------ events
    def _handle_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            sop_uid = str(dataset.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - a broken instance must not kill the SCP
            log.warning("could not decode a received instance: %s", exc)
            return _CANNOT_UNDERSTAND
        if not series_uid or not sop_uid:
            log.warning("refusing an instance without SeriesInstanceUID / SOPInstanceUID")
            return _CANNOT_UNDERSTAND
        try:
            with self._lock:
                series = self._series.get(series_uid)
                if series is None:
                    series = self._new_series(series_uid, dataset)
                    series.calling_ae = _calling_ae(event)
                    if series_uid in self._finished:
                        log.warning(
                            "series %s was already turned into a job; more instances arrive, "
                            "they will make a new job", series_uid,
                        )
                target = series.folder / f"{_safe(sop_uid)}.dcm"
                # no fsync per instance: hundreds arrive per series, each renamed when whole
                atomic_write(target, event.encoded_dataset(), fsync=False)
                series.instances.add(sop_uid)
                series.last_received = time.monotonic()
                series.associations.add(id(event.assoc))
                if series.expected is None:
                    series.expected = _expected_count(dataset)
                    if series.expected is not None:
                        self._save_state(series)
        except OSError as exc:
            log.error("could not store instance %s of series %s: %s", sop_uid, series_uid, exc)
            return _OUT_OF_RESOURCES
        return _SUCCESS

    def _handle_association_end(self, event) -> None:
        assoc = id(event.assoc)
        with self._lock:
            for series in list(self._series.values()):
                series.associations.discard(assoc)
                if (
                    series.expected is not None
                    and len(series.instances) >= series.expected
                    and not series.associations
                ):
                    self._finish(series)

    def _watch(self) -> None:
        step = min(1.0, self.idle_seconds / 4)
        while not self._stop.wait(step):
            self.finish_idle()

    def finish_idle(self, now: float | None = None) -> list[str]:
        """Turn every series idle for ``idle_seconds`` into a job; return the new job ids."""
        now = time.monotonic() if now is None else now
        created = []
        with self._lock:
            for series in list(self._series.values()):
                if now - series.last_received >= self.idle_seconds and series.instances:
                    job_id = self._finish(series)
                    if job_id:
                        created.append(job_id)
        return created

    # ------------------------------------------------------------------ series -> job
    def _new_series(self, uid: str, dataset) -> _Series:
        folder = self.staging / _safe(uid)
        folder.mkdir(parents=True, exist_ok=True)
        series = _Series(
            uid=uid,
            folder=folder,
            description=str(dataset.get("SeriesDescription", "") or ""),
            modality=str(dataset.get("Modality", "") or ""),
            patient_id=str(dataset.get("PatientID", "") or ""),
            expected=_expected_count(dataset),
        )
        self._series[uid] = series
        self._save_state(series)
        log.info("receiving series %s (%s)", uid, series.name())
        return series

    def _finish(self, series: _Series) -> str | None:
        """Create the job for a complete series (caller holds the lock)."""
        self._series.pop(series.uid, None)
        files = sorted(series.folder.glob("*.dcm"))
        if not files:
            shutil.rmtree(series.folder, ignore_errors=True)
            return None
        if series.expected is not None and len(files) < series.expected:
            log.warning(
                "series %s: %d of %d expected instances received; creating the job anyway",
                series.uid, len(files), series.expected,
            )
        try:
            record = self.store.create(
                series.name()[:200],
                "dicom",
                dicom_receive={
                    **series.state(),
                    "received": len(files),
                    "received_by": self.ae_title,
                },
            )
            upload = self.store.paths(record["id"]).upload
            upload.mkdir(exist_ok=True)
            for path in files:
                shutil.move(str(path), upload / path.name)
            self.store.mark_uploaded(record["id"])
        except Exception:  # noqa: BLE001 - keep the files staged and retry later
            log.exception("could not create a job for series %s; kept in staging", series.uid)
            series.last_received = time.monotonic()
            self._series[series.uid] = series
            return None
        shutil.rmtree(series.folder, ignore_errors=True)
        log.info("series %s -> job %s (%d instances)", series.uid, record["id"], len(files))
        self.jobs.append(record["id"])
        self._finished.add(series.uid)
        self._job_created.notify_all()
        return record["id"]

    def _save_state(self, series: _Series) -> None:
        atomic_write_json(series.folder / _STATE_FILE, series.state())

    def _recover_staged(self) -> None:
        """Pick up series staged by an earlier run (finished after ``idle_seconds``)."""
        for folder in sorted(p for p in self.staging.iterdir() if p.is_dir()):
            files = list(folder.glob("*.dcm"))
            sweep_temps(folder)  # instances half-written by a receiver that died
            if not files:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                state = json.loads((folder / _STATE_FILE).read_text())
            except (OSError, ValueError):
                state = {}
            uid = state.get("series_uid") or folder.name
            series = _Series(
                uid=uid,
                folder=folder,
                description=state.get("description", ""),
                modality=state.get("modality", ""),
                patient_id=state.get("patient_id", ""),
                calling_ae=state.get("calling_ae", ""),
                expected=state.get("expected"),
                instances={p.stem for p in files},
            )
            self._series[uid] = series
            log.info("found %d staged instance(s) of series %s", len(files), uid)


def _expected_count(dataset) -> int | None:
    for keyword in ("NumberOfSlices", "ImagesInAcquisition"):
        value = dataset.get(keyword)
        try:
            count = int(value) if value not in (None, "") else 0
        except (TypeError, ValueError):
            count = 0
        if count > 0:
            return count
    return None


def _calling_ae(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return ""


def _safe(text: str) -> str:
    return _SAFE_RE.sub("_", text)[:128] or "unknown"
