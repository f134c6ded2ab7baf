"""Python client for a remote ml4paleo server: the whole pipeline from a notebook.

Examples
--------
>>> from ml4paleo.client import Client                       # doctest: +SKIP
>>> c = Client("http://lab-server:5000", api_key="...")      # doctest: +SKIP
>>> job = c.create_job("skull 42", "image_stack")            # doctest: +SKIP
>>> c.upload(job, "scans/skull42/")                          # doctest: +SKIP
>>> for rec in c.wait(job, until="converted"):              # doctest: +SKIP
...     print(rec["status"], rec["progress"])
>>> c.submit_labels(job, {40: slice40_labels, 80: slice80_labels})  # doctest: +SKIP
>>> c.segment(job); c.wait_for(job, "segmented")            # doctest: +SKIP
>>> c.mesh(job); c.wait_for(job, "meshed")                  # doctest: +SKIP
>>> c.download(job, "meshes", "out/")                        # doctest: +SKIP
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import requests

from ml4paleo._fs import atomic_writer
from ml4paleo.jobs.statuses import PIPELINE_ORDER, describe, reached

log = logging.getLogger(__name__)

#: default upload chunk, bytes (Dropzone's default is 1 MB; we go bigger over fast links)
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024

#: tries per upload chunk (lost connections and 5xx answers are retried, except
#: :data:`NOT_RETRIED`)
UPLOAD_ATTEMPTS = 4
#: server answers that sending again cannot fix: 507 (the data disk is full / the job's
#: quota is used up: an answer, not a hiccup) and 501 (not implemented)
NOT_RETRIED = frozenset({501, 507})
#: seconds a download may wait for its first byte (the server builds an export first)
DOWNLOAD_BUILD_TIMEOUT = 3600.0

#: the pipeline's statuses in the order a job normally passes them (the status rules'
#: own order, :data:`ml4paleo.jobs.statuses.PIPELINE_ORDER`)
STATUS_ORDER = tuple(s.value for s in PIPELINE_ORDER)

#: download kinds -> route template under the server URL
DOWNLOAD_ROUTES = {
    "zarr": "/api/job/{job}/segmentation/{seg}/download/zarr",
    "png": "/api/job/{job}/segmentation/{seg}/download/png",
    "tiff": "/api/job/{job}/segmentation/{seg}/download/tiff",
    "nifti": "/api/job/{job}/segmentation/{seg}/download/nifti",
    "stats": "/api/job/{job}/segmentation/{seg}/download/stats",
    "meshes": "/api/job/{job}/meshes/{seg}/download",
    "report.html": "/api/job/{job}/segmentation/{seg}/report.html",
    "report.pdf": "/api/job/{job}/segmentation/{seg}/report.pdf",
    "image-zarr": "/api/job/{job}/image/download/zarr",
    "image-png": "/api/job/{job}/image/download/png",
    "image-tiff": "/api/job/{job}/image/download/tiff",
    "image-nifti": "/api/job/{job}/image/download/nifti",
    "model": "/api/job/{job}/models/{model}/download",
    "model.json": "/api/job/{job}/models/{model}/download/json",
}


_PALETTE = ("#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
            "#f032e6", "#bfef45", "#fabed4")


class ClientError(Exception):
    """An HTTP request to the server failed.

    Attributes
    ----------
    status_code : int or None
        HTTP status (None when the server could not be reached).
    message : str
        The server's ``{"error": ...}`` message, or the response text.
    url : str
        The requested URL.
    """

    def __init__(self, status_code: int | None, message: str, url: str, method: str = "GET"):
        self.status_code = status_code
        self.message = message
        self.url = url
        self.method = method
        code = f"HTTP {status_code}" if status_code is not None else "connection failed"
        super().__init__(f"{method} {url}: {code}: {message}")


class JobFailed(RuntimeError):
    """The job went to an error status while we waited for it.

    Attributes
    ----------
    record : dict
        The job record as last seen (``status``, ``error``, ``history``, ...).
    """

    def __init__(self, record: dict):
        self.record = record
        self.status = record.get("status")
        self.error = record.get("error") or record.get("message") or "no reason given"
        super().__init__(f"job {record.get('job_id') or record.get('id')} {self.status}: {self.error}")


class Client:
    """Talk to an ml4paleo server over HTTP.

    Parameters
    ----------
    url : str
        Server address, e.g. ``"http://127.0.0.1:5000"``.
    api_key : str, optional
        Sent as ``Authorization: Bearer <key>`` and ``X-API-Key`` when the server needs one.
    timeout : float
        Seconds to wait for the server on each request (not the total of a download).
    session : requests.Session, optional
        Reuse an existing session (proxies, certificates, ...).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ):
        if not re.match(r"^https?://", url):
            raise ValueError(f"server url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "ml4paleo-client")
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
            self.session.headers["X-API-Key"] = api_key

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, *, expect_json: bool = True, **kwargs) -> Any:
        """Send one request; return the decoded JSON (or the response), raise :class:`ClientError`.

        Parameters
        ----------
        method, path : str
            HTTP method and a path under the server URL (``/api/...``).
        expect_json : bool
            Decode the body as JSON; otherwise return the :class:`requests.Response`.
        **kwargs
            Passed to :meth:`requests.Session.request`.
        """
        url = self.url + path
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(None, str(exc), url, method) from exc
        if response.status_code >= 400:
            message = _error_message(response)
            response.close()
            raise ClientError(response.status_code, message, url, method)
        if not expect_json:
            return response
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(
                response.status_code, f"expected JSON, got {response.text[:200]!r}", url, method
            ) from exc

    def _get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs)

    def _post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs)

    # ------------------------------------------------------------------ jobs
    def create_job(self, name: str | None = None, source_type: str = "image_stack") -> str:
        """Create a job and return its id.

        Parameters
        ----------
        name : str, optional
            Display name.
        source_type : str
            ``"image_stack"``, ``"dicom"``, ``"tiff"``, ``"nifti"``, ``"npy"``, ``"zarr"``.
        """
        body = {"source_type": source_type}
        if name is not None:
            body["name"] = name
        answer = self._post("/api/job/new", json=body)
        job_id = answer.get("job_id") or answer.get("id")
        if not job_id:
            raise ClientError(200, f"server returned no job id: {answer!r}", self.url, "POST")
        return job_id

    def status(self, job_id: str) -> dict:
        """The job's current record (``status``, ``progress``, ``message``, ``error``, ...)."""
        record = self._get(f"/api/job/{_q(job_id)}/status")
        record.setdefault("job_id", job_id)
        return record

    def record(self, job_id: str) -> dict:
        """The whole job record (metadata, history, models, segmentations, ``available``)."""
        return self._get(f"/api/job/{_q(job_id)}")

    def rename(self, job_id: str, name: str) -> dict:
        """Rename a job."""
        return self._post(f"/api/job/{_q(job_id)}/rename", json={"name": name})

    def jobs(self, **filters) -> list[dict]:
        """The job catalogue, filtered (``GET /api/jobs``).

        Parameters
        ----------
        **filters
            Query parameters, e.g. ``status="meshed"``, ``name="skull"``,
            ``modality="CT"``, ``sort="-created_at"``, ``page=2``, ``per_page=50``.
            With ``all_pages=True`` every page is fetched.
        """
        fetch_all = filters.pop("all_pages", False)
        params = {k: v for k, v in filters.items() if v is not None}
        answer = self._get("/api/jobs", params=params)
        items = _job_list(answer)
        if not fetch_all or not isinstance(answer, dict):
            return items
        page = int(answer.get("page", 1))
        pages = answer.get("pages")
        if pages is None and answer.get("total") is not None and answer.get("per_page"):
            pages = math.ceil(int(answer["total"]) / int(answer["per_page"]))
        while pages is not None and page < int(pages):
            page += 1
            items += _job_list(self._get("/api/jobs", params={**params, "page": page}))
        return items

    def jobs_csv(self, dest: str | os.PathLike, **filters) -> Path:
        """Save the catalogue (every job matching ``filters``, see :meth:`jobs`) as CSV."""
        params = {k: v for k, v in filters.items() if v is not None}
        query = requests.compat.urlencode(params)
        return self.download_url("/api/jobs.csv" + (f"?{query}" if query else ""), dest,
                                 fallback_name="ml4paleo-jobs.csv")

    def delete(self, job_id: str) -> dict:
        """Delete a job and its data."""
        return self.request("DELETE", f"/api/job/{_q(job_id)}")

    # ------------------------------------------------------------------ upload
    def upload(
        self,
        job_id: str,
        source: str | os.PathLike | np.ndarray,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        complete: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Upload a file, every file of a folder, or a numpy array, then mark the upload complete.

        Files are sent in Dropzone-style chunks to ``/api/upload`` (header ``X-Job-ID``,
        form ``dzchunkindex`` / ``dzchunkbyteoffset`` / ``dztotalchunkcount`` /
        ``dztotalfilesize``), so large scans go through in pieces. Arrays are saved as
        ``volume.npy`` first.

        Parameters
        ----------
        job_id : str
            The job (status ``uploading``).
        source : path or ndarray
            A file, a folder (its files, sorted, hidden files skipped), or a (z, y, x) array.
        chunk_size : int
            Bytes per request.
        complete : bool
            Call ``/api/job/status/upload-complete`` at the end (starts conversion).
        progress : callable, optional
            ``progress(bytes_done, bytes_total)``.

        Returns
        -------
        dict
            The server's answer to upload-complete (or ``{"files": [...]}`` when
            ``complete=False``).
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        with tempfile.TemporaryDirectory(prefix="ml4paleo-upload-") as tmp:
            files = _upload_files(source, Path(tmp))
            total = sum(size for _, _, size in files)
            done = 0
            for path, name, size in files:
                for sent in self._upload_file(job_id, path, name, size, chunk_size):
                    done += sent
                    if progress:
                        progress(done, total)
        if not complete:
            return {"files": [name for _, name, _ in files]}
        return self.upload_complete(job_id)

    def upload_complete(self, job_id: str) -> dict:
        """Tell the server every file is uploaded; the conversion runner takes it from here."""
        return self._post("/api/job/status/upload-complete", json={"job_id": job_id})

    def _upload_file(
        self, job_id: str, path: Path, name: str, size: int, chunk_size: int
    ) -> Iterator[int]:
        count = max(1, math.ceil(size / chunk_size))
        file_uuid = str(uuid.uuid4())
        with open(path, "rb") as handle:
            for index in range(count):
                offset = index * chunk_size
                data = handle.read(chunk_size)
                form = {
                    "dzuuid": file_uuid,
                    "dzchunkindex": str(index),
                    "dzchunkbyteoffset": str(offset),
                    "dztotalchunkcount": str(count),
                    "dztotalfilesize": str(size),
                    "dzchunksize": str(chunk_size),
                    "job_id": job_id,
                }
                self._send_chunk(job_id, form, name, data)
                yield len(data)

    def _send_chunk(self, job_id: str, form: dict, name: str, data: bytes) -> None:
        """POST one chunk; retried on a lost connection or a 5xx (the server writes each chunk
        at its byte offset, so sending it again is safe) - never on a full disk (507)."""
        delay = 0.5
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                self._post("/api/upload", data=form,
                           files={"file": (name, data, "application/octet-stream")},
                           headers={"X-Job-ID": job_id})
                return
            except ClientError as exc:
                transient = exc.status_code is None or (
                    exc.status_code >= 500 and exc.status_code not in NOT_RETRIED)
                if not transient or attempt == UPLOAD_ATTEMPTS:
                    raise
                log.warning("upload chunk %s of %s failed (%s); retrying in %.1f s",
                            form["dzchunkindex"], name, exc.message, delay)
                time.sleep(delay)
                delay *= 2

    # ------------------------------------------------------------------ waiting
    def wait(
        self,
        job_id: str,
        until: str | Iterable[str] = ("converted",),
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> Iterator[dict]:
        """Poll the job, yielding its record whenever status, progress or message change.

        Stops (after yielding the final record) once the job has reached one of ``until``
        or a status after it in the pipeline order (:data:`STATUS_ORDER`), so a short
        status between two polls is not missed.

        Parameters
        ----------
        job_id : str
            The job.
        until : str or iterable of str
            Target status(es), e.g. ``"converted"`` or ``("segmented", "meshed")``.
        timeout : float, optional
            Seconds; :class:`TimeoutError` after that. None waits forever.
        poll : float
            Seconds between polls.

        Yields
        ------
        dict
            Job records (``status``, ``progress``, ``message``, ...).

        Raises
        ------
        JobFailed
            The job went to an ``*_error`` status.
        TimeoutError
            ``timeout`` passed first.
        """
        targets = {until} if isinstance(until, str) else set(until)
        if not targets:
            raise ValueError("until needs at least one status")
        deadline = None if timeout is None else time.monotonic() + timeout
        last_key = None
        while True:
            record = self.status(job_id)
            key = (record.get("status"), record.get("progress"), record.get("message"))
            status = str(record.get("status"))
            if _failed(status):
                yield record
                raise JobFailed(record)
            if key != last_key:
                last_key = key
                yield record
            if reached(status, targets):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {status!r} after {timeout:.0f} s "
                    f"(waiting for {', '.join(sorted(targets))})"
                )
            time.sleep(poll)

    def wait_for(
        self,
        job_id: str,
        until: str | Iterable[str] = ("converted",),
        timeout: float | None = None,
        poll: float = 1.0,
        progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """Like :meth:`wait` but return only the final record (``progress`` sees each one)."""
        record: dict = {}
        for record in self.wait(job_id, until=until, timeout=timeout, poll=poll):
            if progress:
                progress(record)
        return record

    # ------------------------------------------------------------------ labels + pipeline
    def classes(self, job_id: str) -> list[dict]:
        """The job's classes (``[{"name", "color"}, ...]``; class 0 is background)."""
        return self._get(f"/api/job/{_q(job_id)}/annotate/classes")["classes"]

    def set_classes(self, job_id: str, classes: list[dict] | list[str]) -> list[dict]:
        """Set the job's classes: names or ``{"name", "color"}`` dicts, background first."""
        items = [dict(c) if isinstance(c, dict) else {"name": str(c)} for c in classes]
        current = self.classes(job_id)
        for k, item in enumerate(items):
            if "color" not in item:
                item["color"] = current[k]["color"] if k < len(current) else _PALETTE[k % 10]
        answer = self._post(f"/api/job/{_q(job_id)}/annotate/classes", json={"classes": items})
        return answer["classes"]

    def submit_labels(
        self,
        job_id: str,
        labels: np.ndarray | Mapping[int, np.ndarray],
        *,
        axis: int | str = 0,
        classes: list[dict] | list[str] | None = None,
    ) -> list[dict]:
        """Send labelled slices to the job's label store (replacing those slices' labels).

        Label values follow the label-store convention: 0 = unlabelled, ``k + 1`` = class
        ``k`` (class 0 is background). Classes missing on the server are added (named
        ``"class k"``) unless ``classes`` is given.

        Parameters
        ----------
        job_id : str
            A converted job.
        labels : ndarray or mapping
            Either a full (z, y, x) label volume (every slice across ``axis`` holding at
            least one labelled voxel is sent) or ``{slice_index: 2-D array}``.
        axis : int or str
            0 / ``"z"``, 1 / ``"y"`` or 2 / ``"x"``: the axis the slices are cut across.
        classes : list, optional
            Class names (or ``{"name", "color"}`` dicts) to set first.

        Returns
        -------
        list of dict
            The server's answer for each slice (``saved``, ``counts``).
        """
        axis = {"z": 0, "y": 1, "x": 2}.get(axis, axis) if isinstance(axis, str) else axis
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1, 2 or z, y, x, got {axis!r}")
        planes = list(_label_slices(labels, axis))
        if not planes:
            raise ValueError("labels hold no labelled voxel (all zero)")
        top = max(int(plane.max()) for _, plane in planes)
        if classes is not None:
            self.set_classes(job_id, classes)
        else:
            current = self.classes(job_id)
            if top > len(current):
                names = [c["name"] for c in current]
                names += [f"class {k}" for k in range(len(current), top)]
                self.set_classes(job_id, current + [{"name": n} for n in names[len(current):]])
        answers = []
        for index, plane in planes:
            body = {"axis": axis, "index": int(index), "mask": encode_label_mask(plane),
                    "preview": False}
            answers.append(self._post(f"/api/job/{_q(job_id)}/annotate/labels", json=body))
        return answers

    def train(self, job_id: str, *, choose: bool = True) -> dict:
        """Train a model on the submitted labels now and keep it as a model version.

        The server trains from features cached at the labelled voxels (seconds), saves
        the model under ``models/<model_id>`` and, with ``choose``, makes it the model
        the next :meth:`segment` uses (without retraining).

        Returns
        -------
        dict
            ``{"model_id", "seconds", "model_version"}``.
        """
        trained = self._post(f"/api/job/{_q(job_id)}/retrain", json={})
        saved = self._post(f"/api/job/{_q(job_id)}/models/save-preview", json={})
        model_id = saved["model_id"]
        if choose:
            self._post(f"/api/job/{_q(job_id)}/models/{_q(model_id)}/choose", json={})
        return {"model_id": model_id, "seconds": trained.get("seconds"),
                "model_version": trained.get("model_version")}

    def models(self, job_id: str) -> list[dict]:
        """The job's model versions with their metadata and metrics, oldest first."""
        return self._get(f"/api/job/{_q(job_id)}/models")["models"]

    def segment(
        self, job_id: str, *, model_id: str | None = None, train: bool | None = None
    ) -> dict:
        """Queue segmentation of the whole volume on the segment runner.

        By default the chosen model (see :meth:`train`) segments; without one a new model
        is trained from the annotations on the runner first. ``train=True`` forces that.
        """
        body: dict[str, Any] = {}
        if model_id is not None:
            body["model_id"] = model_id
        if train is not None:
            body["train"] = train
        return self._post(f"/api/job/{_q(job_id)}/segment", json=body)

    def mesh(
        self,
        job_id: str,
        *,
        segmentation_id: str | None = None,
        formats: Iterable[str] = ("stl",),
        smooth: str | None = None,
    ) -> dict:
        """Queue meshing of a segmentation (default: the latest) on the mesh runner.

        ``smooth``: ``"none"``, ``"light"`` or ``"strong"`` (default: the server's, light).
        """
        body: dict[str, Any] = {"formats": list(formats)}
        if segmentation_id is not None:
            body["segmentation_id"] = segmentation_id
        if smooth is not None:
            body["smooth"] = smooth
        return self._post(f"/api/job/{_q(job_id)}/mesh", json=body)

    def retry(self, job_id: str) -> dict:
        """Queue a failed step again."""
        return self._post(f"/api/job/{_q(job_id)}/retry", json={})

    def cancel(self, job_id: str) -> dict:
        """Stop the job's queued or running step."""
        return self._post(f"/api/job/{_q(job_id)}/cancel", json={})

    # ------------------------------------------------------------------ downloads
    def download(
        self,
        job_id: str,
        kind: str,
        dest: str | os.PathLike,
        *,
        segmentation_id: str | None = None,
        model_id: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Stream one output to disk.

        Parameters
        ----------
        job_id : str
            The job.
        kind : str
            One of :data:`DOWNLOAD_ROUTES`. Segmentation: ``"zarr"``, ``"png"``,
            ``"tiff"``, ``"nifti"``, ``"stats"``, ``"meshes"``, ``"report.html"``,
            ``"report.pdf"``; converted image: ``"image-zarr"``, ``"image-png"``,
            ``"image-tiff"``, ``"image-nifti"``; model: ``"model"`` (zip), ``"model.json"``.
        dest : path
            A folder (existing, ending in ``/`` or without a file extension: the
            server's file name is used) or a file path.
        segmentation_id, model_id : str, optional
            Default: the job's current segmentation / model.
        progress : callable, optional
            ``progress(bytes_done, bytes_total_or_0)``.

        Returns
        -------
        Path
            The written file (complete: written to a temp name, then renamed).
        """
        if kind not in DOWNLOAD_ROUTES:
            raise ValueError(
                f"unknown download kind {kind!r}; choose from {', '.join(DOWNLOAD_ROUTES)}"
            )
        template = DOWNLOAD_ROUTES[kind]
        record: dict | None = None
        if "{seg}" in template and segmentation_id is None:
            record = self.record(job_id)
            segmentation_id = record.get("segmentation_id")
            if not segmentation_id:
                raise ClientError(409, "the job has no segmentation yet", self.url)
        if "{model}" in template and model_id is None:
            record = record or self.record(job_id)
            model_id = record.get("model_id")
            if not model_id:
                raise ClientError(409, "the job has no model yet", self.url)
        path = template.format(
            job=_q(job_id), seg=_q(segmentation_id or ""), model=_q(model_id or "")
        )
        fallback = f"{job_id}-{kind.replace('.', '-')}"
        return self.download_url(path, dest, progress=progress, fallback_name=fallback)

    def downloads(self, job_id: str) -> list[dict]:
        """What the server offers for the job (``group``, ``kind``, ``url``, ``bytes``, ...)."""
        return self._get(f"/api/job/{_q(job_id)}/downloads")["downloads"]

    def download_all(self, job_id: str, dest: str | os.PathLike) -> list[Path]:
        """Download every output the server lists for the job, plus the model and reports."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        paths = [self.download_url(item["url"], dest) for item in self.downloads(job_id)]
        record = self.record(job_id)
        if record.get("model_id"):
            paths.append(self.download(job_id, "model", dest))
        if record.get("segmentation_id"):
            for kind in ("report.html", "report.pdf"):
                paths.append(self.download(job_id, kind, dest))
        return paths

    def download_url(
        self,
        path: str,
        dest: str | os.PathLike,
        progress: Callable[[int, int], None] | None = None,
        fallback_name: str = "download",
    ) -> Path:
        """Stream the server path ``path`` (e.g. from :meth:`downloads`) to ``dest``.

        The first download of an export waits while the server builds it completely (up to
        :data:`DOWNLOAD_BUILD_TIMEOUT` seconds), so what arrives is never cut short; a
        body shorter than its ``Content-Length`` raises :class:`ClientError` and leaves
        no file.
        """
        response = self.request("GET", path, expect_json=False, stream=True,
                                timeout=(self.timeout, max(self.timeout, DOWNLOAD_BUILD_TIMEOUT)))
        with response:
            dest = Path(dest)
            if dest.is_dir() or str(dest).endswith(("/", os.sep)) or not dest.suffix:
                dest.mkdir(parents=True, exist_ok=True)
                target = dest / _filename(response, fallback_name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                target = dest
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            # a temp file renamed when complete (never half a file); the user's umask
            with atomic_writer(target, fsync=False) as out:
                for block in response.iter_content(chunk_size=1024 * 1024):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
                if total and done != total and "gzip" not in response.headers.get(
                        "Content-Encoding", ""):
                    raise ClientError(response.status_code,
                                      f"download ended after {done} of {total} bytes",
                                      self.url + path)
        return target


# ---------------------------------------------------------------------- helpers
def encode_label_mask(plane: np.ndarray) -> dict:
    """A 2-D label slice as the annotate API's ``{"encoding": "zlib", "shape", "data"}``.

    Examples
    --------
    >>> encode_label_mask(np.zeros((4, 5), np.uint8))["shape"]
    [4, 5]
    """
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"a label slice must be 2-D, got shape {plane.shape}")
    if plane.size and (plane.min() < 0 or plane.max() > 255):
        raise ValueError("label values must be within 0..255")
    data = zlib.compress(np.ascontiguousarray(plane, dtype=np.uint8).tobytes(), 6)
    return {"encoding": "zlib", "shape": [int(plane.shape[0]), int(plane.shape[1])],
            "data": base64.b64encode(data).decode("ascii")}


def _label_slices(labels, axis: int) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(labels, Mapping):
        for index in sorted(labels):
            yield int(index), np.asarray(labels[index])
        return
    volume = np.asarray(labels)
    if volume.ndim != 3:
        raise ValueError(
            f"labels must be a (z, y, x) volume or a {{index: 2-D slice}} mapping, "
            f"got an array of shape {volume.shape}"
        )
    other = tuple(a for a in range(3) if a != axis)
    for index in np.flatnonzero(volume.any(axis=other)):
        yield int(index), np.take(volume, index, axis=axis)


def _upload_files(source, tmp: Path) -> list[tuple[Path, str, int]]:
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise ValueError(f"an uploaded array must be 2-D or 3-D, got shape {source.shape}")
        path = tmp / "volume.npy"
        np.save(path, source)
        return [(path, path.name, path.stat().st_size)]
    path = Path(source)
    if path.is_file():
        return [(path, path.name, path.stat().st_size)]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise ValueError(f"{path}: folder holds no files to upload")
        names = [p.relative_to(path).as_posix().replace("/", "__") for p in files]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: two files would get the same upload name")
        return [(p, n, p.stat().st_size) for p, n in zip(files, names, strict=True)]
    raise FileNotFoundError(f"{path}: no such file or folder")


def _failed(status: str) -> bool:
    """A failed stage (``*_error``, or the legacy ``error``) per the status rules; a status
    this client does not know (a newer server) counts as failed only by its name."""
    try:
        return describe(status)["failed"]
    except ValueError:
        return status.endswith("error")


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or response.reason or "no message"
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return str(body)[:300]


def _job_list(answer) -> list[dict]:
    if isinstance(answer, list):
        return answer
    for key in ("jobs", "items", "results"):
        if isinstance(answer.get(key), list):
            return answer[key]
    raise ClientError(200, f"unexpected /api/jobs answer: {str(answer)[:200]}", "/api/jobs")


def _filename(response: requests.Response, fallback: str) -> str:
    disposition = response.headers.get("Content-Disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", disposition)
    name = Path(match.group(1)).name if match else ""
    return name or fallback


def _q(part: str) -> str:
    return requests.utils.quote(str(part), safe="")
