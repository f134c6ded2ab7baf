"""Disk space of the data folder and the per-job quota: the checks made before writing.

A full disk (``ENOSPC`` / ``EDQUOT``) or a job over its quota is reported the same way
everywhere: :class:`DiskFull` (an ``OSError`` with ``errno.ENOSPC``) whose message says
how much is free, e.g. ``the data disk is full (12 MiB free)``, never a server path.
The web app answers it with 507; the runners fail the step at once with that reason
(a retry only helps once space was freed, so the user retries).

Examples
--------
>>> import tempfile
>>> check_free(tempfile.gettempdir(), min_free_mb=0)
>>> is_disk_full(OSError(28, "No space left on device"))
True
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = [
    "MiB",
    "DiskFull",
    "QuotaExceeded",
    "check_free",
    "check_quota",
    "disk_full",
    "free_bytes",
    "human_size",
    "is_disk_full",
]

MiB = 1024 * 1024
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(OSError):
    """The data disk has not enough free space; the message says how much is free."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


class QuotaExceeded(DiskFull):
    """A job would grow beyond ``Settings.max_job_bytes``."""


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the file system holding ``path`` (its nearest
    existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def disk_full(path: str | os.PathLike) -> DiskFull:
    """A :class:`DiskFull` for the file system of ``path``, with its free space now."""
    try:
        free = free_bytes(path)
    except OSError:
        free = 0
    return DiskFull(f"the data disk is full ({free // MiB} MiB free)")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        # e.g. sqlite3.OperationalError("database or disk is full")
        if type(exc).__name__ == "OperationalError" and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_free(path: str | os.PathLike, min_free_mb: float, need: int = 0) -> None:
    """Raise :class:`DiskFull` unless ``need`` bytes can be written under ``path`` and
    ``min_free_mb`` MiB stay free afterwards."""
    free = free_bytes(path)
    if free - int(need) < float(min_free_mb) * MiB:
        raise DiskFull(f"the data disk is full ({free // MiB} MiB free)")


def check_quota(current_bytes: int, adding: int, max_job_bytes: int | None) -> None:
    """Raise :class:`QuotaExceeded` when a job of ``current_bytes`` would exceed
    ``max_job_bytes`` by ``adding`` more (no quota when None)."""
    if max_job_bytes is None:
        return
    if int(current_bytes) + int(adding) > int(max_job_bytes):
        raise QuotaExceeded(
            f"the job's quota is full: it holds {human_size(current_bytes)}, "
            f"{human_size(adding)} more would pass its limit of {human_size(max_job_bytes)}")


def human_size(n: int) -> str:
    """``n`` bytes as text: ``"512 B"``, ``"4.0 KiB"``, ``"12 MiB"``, ``"3.2 GiB"``.

    Examples
    --------
    >>> human_size(4096), human_size(12 * MiB), human_size(3 << 30)
    ('4.0 KiB', '12 MiB', '3.0 GiB')
    """
    n = int(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"
