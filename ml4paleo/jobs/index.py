"""The job index: one summary row per job beside the records, for listing and claiming.

Reading every ``job.json`` to list, filter or page the jobs costs time in proportion to
the number of jobs (seconds at 10,000). The index keeps one row per job - what a
catalogue shows and filters on, and what a runner needs to find work - in a SQLite file
beside the records (``<data>/jobs/.index/jobs.sqlite``, in a folder of its own so its
journal never changes the jobs folder), so a page of the catalogue or a runner's poll
reads a few rows whatever the number of jobs. SQLite's rollback journal (not WAL) keeps it
usable wherever the records' file locks work.

Rules:

- the records stay the truth; the index is derived from them. :class:`JobStore` writes a
  job's row right after its record, **under the job's lock**, so rows follow records in
  order; a row carries the record's ``version`` and an older version never replaces a
  newer one;
- **rebuilt when missing or stale**: a missing, unreadable or old-schema index file is
  rebuilt from the records; when a row could not be written (the index file was locked
  too long, the disk was full) a ``.index-stale`` marker makes the next reader rebuild
  it; job folders that appeared or vanished without the store (copied in, removed by
  hand) are found by the folder's modification time and synced;
- filters, sorting and paging run in SQL on precomputed lower-case columns (Python's
  case folding, so non-ASCII names compare as they did).

Examples
--------
>>> import tempfile
>>> from ml4paleo.jobs import JobStore
>>> store = JobStore(tempfile.mkdtemp())
>>> job = store.create("ammonite")
>>> rows, total = store.index.query(q="ammo")
>>> total, rows[0]["name"], rows[0]["status"]
(1, 'ammonite', 'uploading')
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["INDEX_DIR", "INDEX_FILE", "SORTABLE", "JobIndex", "summarize"]

log = logging.getLogger(__name__)

INDEX_DIR = ".index"
INDEX_FILE = "jobs.sqlite"
STALE_FILE = "stale"
LOCK_FILE = "rebuild.lock"
SCHEMA_VERSION = "1"
#: seconds between two checks of the jobs folder for changes made without the store
SYNC_INTERVAL = 1.0
#: columns a listing may be sorted by
SORTABLE = ("name", "status", "progress", "source_type", "created_at", "updated_at", "bytes",
            "modality", "manufacturer", "manufacturer_model", "voxel_size")
_TEXT_SORT = {"name": "name_lc", "status": "status_lc", "source_type": "source_type_lc",
              "created_at": "created_at", "updated_at": "updated_at",
              "modality": "modality_lc", "manufacturer": "manufacturer_lc",
              "manufacturer_model": "manufacturer_model_lc"}
_NUM_SORT = {"progress": "progress", "bytes": "bytes", "voxel_size": "voxel_size"}
#: filter parameter -> column compared exactly (lower case, trimmed)
EXACT_FILTERS = {"source_type": "source_type_lc", "modality": "modality_lc",
                 "manufacturer": "manufacturer_lc", "model": "manufacturer_model_lc",
                 "series_uid": "series_uid_lc"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT, status_lc TEXT,
    name_lc TEXT, id_lc TEXT,
    source_type_lc TEXT, modality_lc TEXT, manufacturer_lc TEXT,
    manufacturer_model_lc TEXT, series_uid_lc TEXT,
    created_at TEXT, updated_at TEXT,
    progress REAL, bytes INTEGER, voxel_size REAL,
    lease_expires TEXT
);
-- the rows as shown, apart: filters and sorts scan the narrow table above only
CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, version INTEGER NOT NULL, row TEXT NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (
    (created_at IS NULL OR created_at = ''), created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs ((name_lc IS NULL OR name_lc = ''), name_lc, id);
CREATE INDEX IF NOT EXISTS jobs_name_desc ON jobs (
    (name_lc IS NULL OR name_lc = ''), name_lc DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (
    status_lc, (created_at IS NULL OR created_at = ''), created_at DESC, id DESC);
"""
_COLUMNS = ("id", "version", "status", "status_lc", "name_lc", "id_lc", "source_type_lc",
            "modality_lc", "manufacturer_lc", "manufacturer_model_lc", "series_uid_lc",
            "created_at", "updated_at", "progress", "bytes", "voxel_size", "lease_expires")
_UPSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    + " WHERE excluded.version >= jobs.version"
)
_UPSERT_ROW = ("INSERT INTO rows (id, version, row) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
               "SET version = excluded.version, row = excluded.row "
               "WHERE excluded.version >= rows.version")
_DELETE = ("DELETE FROM jobs WHERE id = ?", "DELETE FROM rows WHERE id = ?")


def _field(meta: dict, *names: str):
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    for name in names:
        for d in (meta, source):
            value = d.get(name)
            if value not in (None, ""):
                return value
    return None


def summarize(record: dict) -> dict:
    """The catalogue row of a job record: id, name, status, progress, source type, dates,
    size on disk (``disk_bytes`` a runner measured, else the upload's bytes), image shape,
    dtype, voxel size and unit, and the scanner fields kept from conversion."""
    meta = record.get("metadata") or {}
    if not isinstance(meta, dict):
        meta = {}
    status = record.get("status")
    size = record.get("disk_bytes")
    if not isinstance(size, int | float):
        size = record.get("upload_bytes") or 0
    return {
        "id": record.get("id"),
        "name": record.get("name"),
        "status": getattr(status, "value", status),
        "progress": record.get("progress"),
        "source_type": record.get("source_type"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
        "bytes": int(size) if isinstance(size, int | float) and math.isfinite(size) else 0,
        "shape": meta.get("shape"),
        "dtype": meta.get("dtype"),
        "voxel_size": meta.get("voxel_size"),
        "unit": meta.get("unit"),
        "modality": _field(meta, "modality", "Modality"),
        "manufacturer": _field(meta, "manufacturer", "Manufacturer"),
        "manufacturer_model": _field(meta, "manufacturer_model", "model",
                                     "ManufacturerModelName"),
        "series_uid": _field(meta, "series_uid", "SeriesInstanceUID"),
        "study_uid": _field(meta, "study_uid", "StudyInstanceUID"),
        "series_description": _field(meta, "series_description", "SeriesDescription"),
        "error": record.get("error"),
    }


def _lc(value) -> str | None:
    return None if value in (None, "") else str(value).strip().lower()


def _smallest(voxel_size) -> float | None:
    try:
        value = min(float(v) for v in voxel_size) if voxel_size else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _values(record: dict) -> tuple[tuple, tuple]:
    """(the ``jobs`` columns, the ``rows`` entry) of a record."""
    row = summarize(record)
    lease = record.get("lease") if isinstance(record.get("lease"), dict) else {}
    job_id, version = str(record["id"]), int(record.get("version") or 0)
    return (
        (job_id, version, row["status"], _lc(row["status"]),
         str(row["name"] or "").lower(), str(row["id"]).lower(), _lc(row["source_type"]),
         _lc(row["modality"]), _lc(row["manufacturer"]), _lc(row["manufacturer_model"]),
         _lc(row["series_uid"]), row["created_at"], row["updated_at"], _number(row["progress"]),
         row["bytes"], _smallest(row["voxel_size"]), lease.get("expires_at")),
        (job_id, version, json.dumps(row, allow_nan=False, default=str)),
    )


def _upsert(conn: sqlite3.Connection, records: Iterable[dict]) -> None:
    pairs = [_values(r) for r in records]
    conn.executemany(_UPSERT, [p[0] for p in pairs])
    conn.executemany(_UPSERT_ROW, [p[1] for p in pairs])


def _delete(conn: sqlite3.Connection, ids: Iterable[str]) -> None:
    ids = [(i,) for i in ids]
    for statement in _DELETE:
        conn.executemany(statement, ids)


class JobIndex:
    """The index of the jobs under ``jobs_dir`` (see the module docstring).

    Parameters
    ----------
    jobs_dir : path
        The store's ``<data>/jobs`` folder.
    job_ids : callable
        ``job_ids()`` -> the ids of the job folders that have a record (for rebuilds and
        syncs).
    read : callable
        ``read(job_id)`` -> the job's record, or None when it has none (any more).
    """

    def __init__(self, jobs_dir: str | os.PathLike, job_ids: Callable[[], Iterable[str]],
                 read: Callable[[str], dict | None]) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.folder = self.jobs_dir / INDEX_DIR
        self.path = self.folder / INDEX_FILE
        self.stale_marker = self.folder / STALE_FILE
        self._job_ids = job_ids
        self._read = read
        self._local = threading.local()
        self._checked = 0.0
        self._check_lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.folder.mkdir(exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local.conn = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _meta(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _folder_stamp(self) -> str:
        return str(os.stat(self.jobs_dir).st_mtime_ns)

    # -- writes (by the store, under the job's lock) --------------------------------------
    def put(self, record: dict, *, created: bool = False) -> None:
        """Write ``record``'s row (an older version never replaces a newer one); with
        ``created`` also note the jobs folder's new modification time (so this creation
        does not look like a change made without the store)."""
        self._guarded(self._put, record, created)

    def _put(self, record: dict, created: bool) -> None:
        with self._write() as conn:
            _upsert(conn, [record])
            if created:
                self._stamp(conn)

    def remove(self, job_id: str) -> None:
        """Drop a deleted job's row."""
        def drop():
            with self._write() as conn:
                _delete(conn, [job_id])
                self._stamp(conn)

        self._guarded(drop)

    def _stamp(self, conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('folder_mtime', ?)",
                     (self._folder_stamp(),))

    def _guarded(self, fn, *args) -> None:
        """Run an index write; a failure never fails the record write before it: the
        index is marked stale (rebuilt by the next reader) instead."""
        try:
            fn(*args)
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.warning("job index %s: update failed (%s); it will be rebuilt", self.path, exc)
            self._drop_connection()
            self.mark_stale()

    def mark_stale(self) -> None:
        """Make the next reader rebuild the index."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(exist_ok=True)
            self.stale_marker.touch()
        self._checked = 0.0

    # -- keeping it complete --------------------------------------------------------------
    def ensure(self) -> None:
        """Rebuild the index when it is missing, unreadable, of another schema or marked
        stale; sync it when job folders changed without the store (checked at most every
        :data:`SYNC_INTERVAL` seconds per process)."""
        now = time.monotonic()
        if now - self._checked < SYNC_INTERVAL:
            return
        with self._check_lock:
            if time.monotonic() - self._checked < SYNC_INTERVAL:
                return
            self._check()
            self._checked = time.monotonic()

    def _check(self) -> None:
        stale = self.stale_marker.exists()
        try:
            conn = self._conn()
            version = self._meta(conn, "schema")
            stamp = self._meta(conn, "folder_mtime")
        except sqlite3.DatabaseError as exc:  # a damaged file
            log.warning("job index %s unreadable (%s); rebuilding", self.path, exc)
            self._drop_connection()
            self._discard()
            stale, version, stamp = True, None, None
        if version is not None and version != SCHEMA_VERSION:
            self._reset()
        if stale or version != SCHEMA_VERSION:
            self.rebuild()
        elif stamp != self._folder_stamp():
            self.sync()

    def _reset(self) -> None:
        """Drop the tables of another schema version (rebuilt next)."""
        with self._rebuild_lock():
            conn = self._conn()
            if self._meta(conn, "schema") in (None, SCHEMA_VERSION):
                return
            log.info("job index of schema %s: recreating it", self._meta(conn, "schema"))
            conn.executescript("DROP TABLE IF EXISTS jobs; DROP TABLE IF EXISTS rows; "
                               "DROP TABLE IF EXISTS meta;" + _SCHEMA)

    def _discard(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)

    @contextlib.contextmanager
    def _rebuild_lock(self) -> Iterator[None]:
        self.folder.mkdir(exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def rebuild(self) -> int:
        """Rebuild every row from the records (one process at a time); returns the rows."""
        with self._rebuild_lock():
            marker = self.stale_marker
            conn = self._conn()
            if not marker.exists() and self._meta(conn, "schema") == SCHEMA_VERSION \
                    and self._meta(conn, "folder_mtime") == self._folder_stamp():
                return self.count()  # another process rebuilt it while we waited
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()  # updates from now on are seen by the next check
            t0 = time.perf_counter()
            stamp = self._folder_stamp()
            records = [r for r in (self._read(i) for i in self._job_ids()) if r]
            seen = {str(r["id"]) for r in records}
            with self._write() as conn:
                _upsert(conn, records)
                stored = [row[0] for row in conn.execute("SELECT id FROM jobs")]
                _delete(conn, [i for i in stored if i not in seen and self._read(i) is None])
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                             (SCHEMA_VERSION,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('folder_mtime', ?)", (stamp,))
            log.info("job index rebuilt: %d job(s) in %.2f s", len(records),
                     time.perf_counter() - t0)
            return len(records)

    def sync(self) -> int:
        """Add rows for job folders the index lacks and drop rows of vanished ones (job
        folders copied in or removed without the store); returns the rows changed."""
        stamp = self._folder_stamp()
        ids = set(self._job_ids())
        conn = self._conn()
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        added = [r for r in (self._read(i) for i in ids - stored) if r]
        gone = [i for i in stored - ids if self._read(i) is None]
        with self._write() as conn:
            _upsert(conn, added)
            _delete(conn, gone)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('folder_mtime', ?)", (stamp,))
        if added or gone:
            log.info("job index synced: %d added, %d removed", len(added), len(gone))
        return len(added) + len(gone)

    # -- reading --------------------------------------------------------------------------
    def count(self) -> int:
        """Rows in the index."""
        return int(self._conn().execute("SELECT count(*) FROM jobs").fetchone()[0])

    def query(self, *, q: str | None = None, name: str | None = None,
              statuses: Iterable[str] | None = None, exact: dict[str, str] | None = None,
              voxel_size_min: float | None = None, voxel_size_max: float | None = None,
              created_after: str | None = None, created_before: str | None = None,
              sort: str = "-created_at", offset: int = 0, limit: int | None = None
              ) -> tuple[list[dict], int]:
        """Catalogue rows matching every filter given, sorted and paged.

        Parameters
        ----------
        q : str, optional
            Substring of the name or the id (case-insensitive).
        name : str, optional
            Substring of the name (case-insensitive).
        statuses : iterable of str, optional
            Any of these statuses.
        exact : dict, optional
            ``{parameter: value}`` of :data:`EXACT_FILTERS` (``source_type``,
            ``modality``, ``manufacturer``, ``model``, ``series_uid``), case-insensitive.
        voxel_size_min, voxel_size_max : float, optional
            The smallest voxel edge lies in this range.
        created_after, created_before : str, optional
            ISO-8601 bounds of ``created_at`` (compared as text).
        sort : str
            A column of :data:`SORTABLE`, ``-`` prefix for descending; rows without a
            value come last either way.
        offset, limit : int
            The page (``limit`` None: all rows).

        Returns
        -------
        (rows, total)
            The page's rows (:func:`summarize` dicts) and how many rows match.

        Raises
        ------
        ValueError
            For a column that cannot be sorted by or an unknown exact filter.
        """
        self.ensure()
        where, args = [], []
        if q and q.strip():
            where.append("(instr(name_lc, ?) > 0 OR instr(id_lc, ?) > 0)")
            args += [q.strip().lower()] * 2
        if name and name.strip():
            where.append("instr(name_lc, ?) > 0")
            args.append(name.strip().lower())
        wanted = sorted({s.strip().lower() for s in (statuses or ()) if s.strip()})
        if wanted:
            where.append(f"status_lc IN ({', '.join('?' * len(wanted))})")
            args += wanted
        for param, value in (exact or {}).items():
            if param not in EXACT_FILTERS:
                raise ValueError(f"unknown filter {param!r}")
            if value and str(value).strip():
                where.append(f"{EXACT_FILTERS[param]} = ?")
                args.append(str(value).strip().lower())
        if voxel_size_min is not None or voxel_size_max is not None:
            where.append("voxel_size IS NOT NULL")
            if voxel_size_min is not None:
                where.append("voxel_size >= ?")
                args.append(float(voxel_size_min))
            if voxel_size_max is not None:
                where.append("voxel_size <= ?")
                args.append(float(voxel_size_max))
        if created_after:
            where.append("coalesce(created_at, '') >= ?")
            args.append(created_after)
        if created_before:
            where.append("coalesce(created_at, '') <= ?")
            args.append(created_before)
        desc = sort.startswith("-")
        column = sort.lstrip("-+")
        if column not in SORTABLE:
            raise ValueError(f"cannot sort by {column!r}; choose from {', '.join(sorted(SORTABLE))}")
        key = _TEXT_SORT.get(column) or _NUM_SORT[column]
        missing = f"({key} IS NULL OR {key} = '')" if column in _TEXT_SORT else f"({key} IS NULL)"
        direction = "DESC" if desc else "ASC"
        order = f"{missing}, {key} {direction}, id {direction}"  # as the indexes are
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        conn = self._conn()
        total = int(conn.execute(f"SELECT count(*) FROM jobs{clause}", args).fetchone()[0])
        page = f" LIMIT {int(limit)} OFFSET {max(0, int(offset))}" if limit is not None else ""
        # sort and page on the narrow table, then fetch the page's rows
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM jobs{clause} ORDER BY {order}{page}", args)]
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            found.update(conn.execute(
                f"SELECT id, row FROM rows WHERE id IN ({', '.join('?' * len(part))})",
                part).fetchall())
        return [json.loads(found[i]) for i in ids if i in found], total

    def with_status(self, statuses: Iterable[str]) -> list[dict]:
        """``{id, status, updated_at, lease_expires}`` of the jobs in any of ``statuses``
        (what a runner polls for)."""
        self.ensure()
        wanted = sorted(set(statuses))
        if not wanted:
            return []
        cur = self._conn().execute(
            f"SELECT id, status, updated_at, lease_expires FROM jobs WHERE status IN "
            f"({', '.join('?' * len(wanted))}) ORDER BY updated_at", wanted)
        return [{"id": r[0], "status": r[1], "updated_at": r[2], "lease_expires": r[3]}
                for r in cur]
