"""One place for configuration: the :class:`Settings` dataclass, built from env and CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

_ENV_PREFIX = "ML4PALEO_"


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Runtime configuration shared by the library, the runners and the web app.

    Every field can be set from the environment as ``ML4PALEO_<FIELD NAME IN CAPS>``
    (``data_dir`` also as ``ML4PALEO_DATA``, ``dask_scheduler`` as
    ``ML4PALEO_DASK_SCHEDULER``) and overridden by keyword arguments (CLI options).

    ``data_dir`` is made absolute once, here, against the working directory the settings
    were read in (``~`` expanded): everything that gets the settings (the web app's
    ``send_file``, the runner child processes, the job store) sees the same absolute
    folder, whatever its own working directory is.

    Examples
    --------
    >>> s = Settings.from_env(data_dir="/tmp/ml4paleo-doc")
    >>> s.jobs_dir.name
    'jobs'
    >>> Settings.from_env({}, data_dir="data").data_dir.is_absolute()
    True
    """

    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 5000
    #: largest accepted upload, bytes (all chunks of one file together)
    max_upload_bytes: int = 64 * 1024**3
    #: runner poll interval, seconds
    poll_interval: float = 2.0
    #: runner lease, seconds: a dead runner's job is claimed again after this
    lease_seconds: float = 30.0
    #: attempts before a job goes to its *_error status
    max_attempts: int = 3
    #: Dask scheduler address (``tcp://host:8786``); None = local workers (threads when
    #: segmenting and converting, processes for meshing and measuring)
    dask_scheduler: str | None = None
    #: local workers (threads or processes); None = number of CPUs
    workers: int | None = None
    #: block edge for chunked work, voxels
    chunk_size: int = 128
    #: annotator: bytes of derived data kept for previews (feature tiles, training rows of
    #: labelled pixels, predicted tiles), one budget shared by every open annotator
    annotate_cache_bytes: int = 512 * 1024**2
    #: annotator: bytes the open annotators may hold besides (their preview forests); the
    #: least recently used annotator is closed beyond it
    annotate_session_bytes: int = 256 * 1024**2
    #: annotator: open annotators (one per job) at most
    annotate_sessions: int = 6
    #: annotator: preview tile edge, pixels (a multiple of 64)
    annotate_tile: int = 256
    #: annotator: the first overlay shows the whole plane on the finest pyramid level at
    #: most this many pixels on a side (finer tiles then refine what is in view)
    annotate_coarse_pixels: int = 512
    #: annotator: feature / prediction computations at once per job; None = CPUs
    annotate_workers: int | None = None
    #: jobs older than this many days are purged by the runners; None = keep forever
    retention_days: float | None = None
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str | None = None
    smtp_to: str | None = None
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    # -- limits (hardening) ------------------------------------------------------------
    #: free space (MiB) the data disk must keep: uploads, new jobs and steps are refused
    #: (507) below it
    min_free_mb: int = 256
    #: largest size of one job folder, bytes (upload + outputs); None = no quota
    max_job_bytes: int | None = None
    #: largest decoded slice of an uploaded scan, pixels (read from headers before decoding)
    max_slice_pixels: int = 16384 * 16384
    #: largest decoded volume of an uploaded scan, voxels
    max_volume_voxels: int = 1 << 37
    #: largest decoded / stored size ratio of an uploaded scan (decompression bombs), checked
    #: once the decoded volume exceeds ``decode_ratio_min_bytes``
    max_decode_ratio: float = 200.0
    decode_ratio_min_bytes: int = 256 * 1024**2
    #: failed access-key attempts a client may make in a row, then per minute
    auth_failures_burst: int = 20
    auth_failures_per_minute: float = 30.0
    #: a job folder without ``job.json`` older than this many seconds is debris (swept)
    orphan_seconds: float = 3600.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", absolute_path(self.data_dir))

    @property
    def jobs_dir(self) -> Path:
        """Folder holding one sub-folder per job."""
        return Path(self.data_dir) / "jobs"

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> Settings:
        """Build settings from ``ML4PALEO_*`` variables, then apply non-None ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict = {}
        aliases = {"data_dir": "DATA", "dask_scheduler": "DASK_SCHEDULER"}
        for f in fields(cls):
            if f.name == "extra":
                continue
            names = [_ENV_PREFIX + f.name.upper()]
            if f.name in aliases:
                names.insert(0, _ENV_PREFIX + aliases[f.name])
            raw = next((env[n] for n in names if n in env and env[n] != ""), None)
            if raw is None:
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides) -> Settings:
        """Return a copy with the non-None ``overrides`` applied."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **clean)


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory (symlinks
    are kept, so the folder keeps the name the user gave it).

    Examples
    --------
    >>> absolute_path("/srv/./scans/../data").as_posix()
    '/srv/data'
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _convert(name: str, type_name: str, raw: str):
    t = str(type_name)
    try:
        if "bool" in t:
            return _parse_bool(raw)
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
        if "Path" in t:
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable for {name!r} is not a valid {t}: {raw!r}") from exc
    return raw
