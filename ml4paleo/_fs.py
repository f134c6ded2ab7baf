"""File-system rules written once: atomic writes, directory swaps, temp names, timestamps.

Every file ml4paleo writes goes through here, so a crash mid-write never leaves a half
file under a real name, and every temp file carries a name that :func:`sweep_temps` can
recognise and clean up once its writer is gone.

Temp names look like ``.<name>.<kind>-<host>-<pid>-<token>`` beside their destination:
hidden (readers and listings skip dot files), unique per writer, and traceable to the
process that made them (a sweep removes only those whose process is dead, or that are
older than a limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TEMP_KINDS",
    "atomic_dir",
    "atomic_write",
    "atomic_write_json",
    "atomic_writer",
    "create_once",
    "is_temp_name",
    "iso_of_timestamp",
    "now_iso",
    "parse_iso",
    "pid_alive",
    "replace_dir",
    "sweep_temps",
    "temp_path",
]

#: The kinds of temp sibling ml4paleo makes (``tmp`` files/folders being written,
#: ``old`` copies being replaced, ``staging`` areas of a conversion).
TEMP_KINDS = ("tmp", "old", "staging")
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now_iso() -> str:
    """The current UTC time as ISO-8601 with microseconds and ``Z``: the one timestamp format.

    Examples
    --------
    >>> now_iso()[-1]
    'Z'
    """
    return datetime.now(UTC).strftime(_ISO_FORMAT)


def iso_of_timestamp(timestamp: float) -> str:
    """A POSIX timestamp (e.g. a file's ``st_mtime``) in the :func:`now_iso` format.

    Examples
    --------
    >>> iso_of_timestamp(0)
    '1970-01-01T00:00:00.000000Z'
    """
    return datetime.fromtimestamp(timestamp, UTC).strftime(_ISO_FORMAT)


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by :func:`now_iso` (or any ISO-8601 form) as aware UTC."""
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def temp_path(dest: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh hidden sibling name for ``dest``: ``.<name>.<kind>-<host>-<pid>-<token>``.

    Parameters
    ----------
    dest : path
        The final name the temp file or folder will be renamed to (or replaces).
    kind : str
        One of :data:`TEMP_KINDS`.
    """
    if kind not in TEMP_KINDS:
        raise ValueError(f"kind must be one of {TEMP_KINDS}, got {kind!r}")
    dest = Path(dest)
    host = socket.gethostname().replace("/", "_") or "host"
    return dest.with_name(f".{dest.name}.{kind}-{host}-{os.getpid()}-{secrets.token_hex(4)}")


def _temp_owner(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a temp name made by :func:`temp_path`, else None."""
    if not name.startswith("."):
        return None
    for kind in TEMP_KINDS:
        marker = f".{kind}-"
        i = name.rfind(marker)
        if i <= 0:
            continue
        parts = name[i + len(marker):].rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2]:
            return parts[0], int(parts[1])
    return None


def is_temp_name(name: str) -> bool:
    """True when ``name`` is a temp sibling made by :func:`temp_path`."""
    return _temp_owner(name) is not None


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True,
                  encoding: str | None = None, permissions: int | None = None
                  ) -> Iterator[IO[Any]]:
    """Open a temp sibling of ``path`` for writing; rename it over ``path`` on success.

    On an exception the temp file is removed and ``path`` is untouched. Files get the
    process's umask (``0o666 & ~umask``), like any file the user makes, unless
    ``permissions`` says otherwise.

    Parameters
    ----------
    path : path
        Final file name.
    mode : {"wb", "w"}
        Binary or text.
    fsync : bool
        Flush to disk before the rename (and the folder after), so a power cut leaves
        either the old or the new file.
    encoding : str, optional
        Text encoding for ``mode="w"`` (default UTF-8).
    permissions : int, optional
        Exact mode bits of the file (e.g. ``0o600`` for secrets), set on the temp file
        before it gets its name, so the file is never readable by others, not even briefly.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_writer(p, "w") as fh:
    ...     _ = fh.write("hello")
    >>> p.read_text()
    'hello'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o666 if permissions is None else permissions)
    try:
        if permissions is not None:
            os.fchmod(fd, permissions)  # exactly these bits, whatever the umask
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            fh = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True,
                 permissions: int | None = None) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through a temp file + rename
    (``permissions``: see :func:`atomic_writer`).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_writer(path, "wb", fsync=fsync, permissions=permissions) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      fsync: bool = True, permissions: int | None = None) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (NaN/Infinity refused: strict JSON)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return atomic_write(path, text + "\n", fsync=fsync, permissions=permissions)


def create_once(path: str | os.PathLike, data: bytes | str, *,
                permissions: int | None = None) -> bool:
    """Create the file ``path`` holding ``data`` unless it exists; never replace it.

    The file is written completely under a temp name (``permissions`` set before it gets
    its name) and then hard-linked to ``path``, so of several processes creating it at
    once exactly one wins and nobody ever sees a partial file.

    Returns
    -------
    bool
        True when this call created the file, False when it existed already.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "secret"
    >>> create_once(p, "a"), create_once(p, "b"), p.read_text()
    (True, False, 'a')
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o666 if permissions is None else permissions)
    try:
        try:
            if permissions is not None:
                os.fchmod(fd, permissions)
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``dest``, replacing an old ``dest``.

    The old copy is first renamed aside (a hidden ``old`` temp name) and removed only
    after the new one is in place, so ``dest`` is never missing for longer than between
    two renames and never half-written.
    """
    tmp, dest = Path(tmp), Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = temp_path(dest, "old")
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if old is not None and not dest.exists():
            os.replace(old, dest)  # put the old copy back
        raise
    _fsync_dir(dest.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside ``dest`` to fill; swapped in with :func:`replace_dir` on success.

    On an exception the temp folder is removed and ``dest`` is untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_dir(d) as tmp:
    ...     _ = (tmp / "x.txt").write_text("1")
    >>> sorted(p.name for p in d.iterdir())
    ['x.txt']
    """
    dest = Path(dest)
    tmp = temp_path(dest)
    tmp.mkdir(parents=False)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)


def sweep_temps(folder: str | os.PathLike, *, max_age: float | None = 24 * 3600,
                recursive: bool = False) -> int:
    """Remove temp siblings under ``folder`` whose writer is gone.

    A temp made on this host is removed when its process no longer exists; one made on
    another host (a shared data folder) only when older than ``max_age`` seconds.

    Parameters
    ----------
    folder : path
        Where to look.
    max_age : float or None
        Age in seconds after which a temp of another host (or an unparseable owner) is
        debris; None keeps them.
    recursive : bool
        Also look in sub-folders (temp folders themselves are not entered).

    Returns
    -------
    int
        How many temp files/folders were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host = socket.gethostname().replace("/", "_") or "host"
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        owner = _temp_owner(entry.name)
        if owner is None:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed += sweep_temps(entry.path, max_age=max_age, recursive=True)
            continue
        owner_host, pid = owner
        if owner_host == host:
            dead = pid != os.getpid() and not pid_alive(pid)
        else:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            dead = max_age is not None and age > max_age
        if not dead:
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
