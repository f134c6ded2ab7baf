"""Access keys for the HTTP API: keyed hashes in ``<data_dir>/keys.json``.

A key is shown once when created and never stored in clear. When at least one key
exists, the web app requires one (header ``X-API-Key``) on every route that reads or
writes job data.

Keys are 256 random bits, so they need no slow password hash: a key is stored as
``HMAC-SHA-256(server secret, key)``, where the server secret (``keys.secret``, 32
random bytes, mode 0600) is made once per data folder. Checking a key costs one HMAC
and a constant-time comparison with every stored digest (microseconds), whatever the
key looks like. Records written by older versions (salted PBKDF2) are still accepted:
the first time such a key is used it is checked the slow way once and its record is
rewritten in the new form.

:class:`AttemptLimiter` bounds failed attempts per client (a token bucket per address).

Examples
--------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> info, secret = add_key(d, "laptop")
>>> verify_key(d, secret)["name"]
'laptop'
>>> verify_key(d, "wrong") is None
True
>>> revoke_key(d, "laptop")
True
>>> list_keys(d)
[]
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path

from ml4paleo._fs import atomic_write_json, create_once, now_iso

__all__ = [
    "KEYS_FILE",
    "SCHEME",
    "SECRET_FILE",
    "AttemptLimiter",
    "add_key",
    "has_keys",
    "keys_path",
    "list_keys",
    "load_keys",
    "revoke_key",
    "secret_path",
    "verify_key",
]

KEYS_FILE = "keys.json"
SECRET_FILE = "keys.secret"
#: how a key record's digest is made
SCHEME = "hmac-sha256"
MAX_KEY_LENGTH = 200
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_LEGACY_ITERATIONS = 100_000
_lock = threading.Lock()
# path -> (mtime_ns, size, parsed keys); consulted on every request
_cache: dict[str, tuple[int, int, list[dict]]] = {}
# path -> server secret (never changes once made)
_secrets: dict[str, bytes] = {}


def keys_path(data_dir: str | os.PathLike) -> Path:
    """Path of the key file inside ``data_dir``."""
    return Path(data_dir) / KEYS_FILE


def secret_path(data_dir: str | os.PathLike) -> Path:
    """Path of the server secret the key digests are made with."""
    return Path(data_dir) / SECRET_FILE


def _server_secret(data_dir, create: bool) -> bytes | None:
    """The data folder's server secret; made (atomically, 0600) when ``create``."""
    cached = _secrets.get(os.fspath(data_dir))
    if cached is not None:  # no path built, no system call: this runs on every request
        return cached
    path = secret_path(data_dir)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_once(path, secrets.token_hex(32) + "\n", permissions=0o600)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if len(text) < 32:
        raise ValueError(f"{SECRET_FILE}: the server secret is damaged; restore it or "
                         "delete it and the keys and make new keys")
    value = text.encode()
    _secrets[os.fspath(data_dir)] = value
    return value


@contextlib.contextmanager
def _locked(data_dir):
    """Hold the key file's lock (threads of this process and other processes)."""
    path = Path(data_dir) / ".keys.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _load(data_dir) -> list[dict]:
    # one stat per call and no pathlib on the cached path: this runs on every request
    name = os.path.join(os.fspath(data_dir), KEYS_FILE)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return []
    cached = _cache.get(name)
    if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
        return cached[2]
    path = Path(name)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{KEYS_FILE}: unreadable key file ({exc})") from exc
    keys = data.get("keys", []) if isinstance(data, dict) else []
    _cache[name] = (st.st_mtime_ns, st.st_size, keys)
    return keys


def _save(data_dir, keys: list[dict]) -> None:
    path = keys_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"keys": keys}, permissions=0o600)  # never readable by others


def _digest(server_secret: bytes, key: str) -> str:
    return hmac.new(server_secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _legacy_hash(key: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode("utf-8", "surrogatepass"), salt,
                               _LEGACY_ITERATIONS).hex()


def has_keys(data_dir: str | os.PathLike) -> bool:
    """True when at least one key exists (the API then requires one)."""
    return bool(_load(data_dir))


def load_keys(data_dir: str | os.PathLike) -> list[dict]:
    """The stored key records as they are now (read-only; empty when there are none).

    One ``stat`` of the key file (parsed again only when it changed). A request that
    asks :func:`has_keys`-like questions and then checks a key passes this list to
    :func:`verify_key` so the file is looked at once.
    """
    return _load(data_dir)


def add_key(data_dir: str | os.PathLike, name: str) -> tuple[dict, str]:
    """Create a key called ``name``.

    Returns
    -------
    info : dict
        ``{name, prefix, created_at}`` as listed by :func:`list_keys`.
    secret : str
        The key itself; shown once, only its keyed digest is stored.

    Raises
    ------
    ValueError
        When ``name`` is not 1-64 of ``A-Z a-z 0-9 _ . @ -`` or already exists.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"key name must be 1-64 letters, digits or _.@-, got {name!r}")
    server_secret = _server_secret(data_dir, create=True)
    with _locked(data_dir):
        keys = list(_load(data_dir))
        if any(k["name"] == name for k in keys):
            raise ValueError(f"a key named {name!r} already exists")
        secret = "m4p_" + secrets.token_urlsafe(32)
        record = {
            "name": name,
            "prefix": secret[:8],
            "scheme": SCHEME,
            "digest": _digest(server_secret, secret),
            "created_at": now_iso(),
        }
        keys.append(record)
        _save(data_dir, keys)
    return _public(record), secret


def _public(record: dict) -> dict:
    return {k: record.get(k) for k in ("name", "prefix", "created_at")}


def list_keys(data_dir: str | os.PathLike) -> list[dict]:
    """Keys as ``{name, prefix, created_at}`` (never the secret or its digest)."""
    return [_public(k) for k in _load(data_dir)]


def revoke_key(data_dir: str | os.PathLike, name: str) -> bool:
    """Delete the key ``name``; returns False when there is none by that name."""
    with _locked(data_dir):
        keys = list(_load(data_dir))
        kept = [k for k in keys if k["name"] != name]
        if len(kept) == len(keys):
            return False
        _save(data_dir, kept)
    return True


def _migrate(data_dir, name: str, digest: str) -> None:
    """Rewrite the legacy (PBKDF2) record of key ``name`` with its HMAC digest."""
    with _locked(data_dir):
        keys = [dict(k) for k in _load(data_dir)]
        for k in keys:
            if k.get("name") == name and "digest" not in k:
                k.pop("salt", None)
                k.pop("hash", None)
                k.update(scheme=SCHEME, digest=digest)
        _save(data_dir, keys)


def verify_key(data_dir: str | os.PathLike, secret: str | None, *,
               keys: list[dict] | None = None) -> dict | None:
    """Return the matching key's public info, or None when ``secret`` matches no key.

    One HMAC and a constant-time comparison with every stored digest; a legacy record
    whose prefix the key shares is checked with its salted hash once and migrated.
    ``keys``: the records from :func:`load_keys` of this request (default: read now).
    """
    if not secret or not isinstance(secret, str) or len(secret) > MAX_KEY_LENGTH:
        return None
    if keys is None:
        keys = _load(data_dir)
    if not keys:
        return None
    legacy = [k for k in keys if "digest" not in k]
    server_secret = _server_secret(data_dir, create=bool(legacy))
    digest = _digest(server_secret, secret) if server_secret is not None else ""
    found = None
    for record in keys:
        stored = record.get("digest")
        if stored is not None and hmac.compare_digest(digest.encode(), str(stored).encode()):
            found = record
    if found is None:
        for record in legacy:
            if not secret.startswith(str(record.get("prefix", "\0"))):
                continue
            try:
                salt = bytes.fromhex(record["salt"])
            except (KeyError, ValueError, TypeError):
                continue
            if hmac.compare_digest(_legacy_hash(secret, salt).encode(),
                                   str(record.get("hash")).encode()):
                found = record
                _migrate(data_dir, record["name"], digest)
                break
    return _public(found) if found is not None else None


class AttemptLimiter:
    """Failed attempts per client: a token bucket per client address.

    Each client may fail ``burst`` times at once; the bucket refills at ``per_minute``
    tokens a minute. While a client's bucket is empty, :meth:`blocked` says how many
    seconds until its next attempt is allowed.

    Parameters
    ----------
    burst : int
        Failed attempts a client may make in a row.
    per_minute : float
        Tokens added per minute.
    max_clients : int
        Buckets kept (the fullest are dropped first when there are more).

    Examples
    --------
    >>> lim = AttemptLimiter(burst=2, per_minute=60)
    >>> lim.blocked("1.2.3.4"), lim.failed("1.2.3.4")
    (0.0, 0.0)
    >>> lim.failed("1.2.3.4") > 0, lim.blocked("1.2.3.4") > 0, lim.blocked("5.6.7.8")
    (True, True, 0.0)
    """

    def __init__(self, burst: int = 20, per_minute: float = 30.0,
                 max_clients: int = 10_000) -> None:
        if burst < 1 or per_minute <= 0:
            raise ValueError("burst must be >= 1 and per_minute > 0")
        self.burst = int(burst)
        self.rate = float(per_minute) / 60.0
        self.max_clients = int(max_clients)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def blocked(self, client: str) -> float:
        """Seconds until ``client`` may try again (0.0: it may now)."""
        now = time.monotonic()
        with self._lock:
            level = self._level(client, now)
        return 0.0 if level >= 1.0 else max(0.001, (1.0 - level) / self.rate)

    def failed(self, client: str) -> float:
        """Count a failed attempt of ``client``; returns :meth:`blocked` after it."""
        now = time.monotonic()
        with self._lock:
            level = max(0.0, self._level(client, now) - 1.0)
            self._buckets[client] = (level, now)
            if len(self._buckets) > self.max_clients:
                # forget the clients that are closest to a full bucket
                for name, _ in sorted(self._buckets.items(), key=lambda kv: -kv[1][0])[
                        : len(self._buckets) - self.max_clients]:
                    del self._buckets[name]
        return 0.0 if level >= 1.0 else max(0.001, (1.0 - level) / self.rate)

    @staticmethod
    def retry_after(seconds: float) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(seconds))
