"""Access keys for the HTTP API: salted hashes in ``<data_dir>/keys.json``.

A key is shown once when created and never stored in clear. When at least one key
exists, the web app requires one (header ``X-API-Key``) on every ``/api`` route.

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

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from pathlib import Path

from ml4paleo._fs import atomic_write_json, now_iso

KEYS_FILE = "keys.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_ITERATIONS = 100_000
_lock = threading.Lock()
# (path, mtime_ns, size) -> parsed keys; verification runs on every request
_cache: dict[str, tuple[int, int, list[dict]]] = {}


def keys_path(data_dir: str | os.PathLike) -> Path:
    """Path of the key file inside ``data_dir``."""
    return Path(data_dir) / KEYS_FILE


def _load(data_dir) -> list[dict]:
    path = keys_path(data_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    cached = _cache.get(str(path))
    if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
        return cached[2]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable key file ({exc})") from exc
    keys = data.get("keys", []) if isinstance(data, dict) else []
    _cache[str(path)] = (st.st_mtime_ns, st.st_size, keys)
    return keys


def _save(data_dir, keys: list[dict]) -> None:
    path = keys_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"keys": keys}, permissions=0o600)  # never readable by others


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, _ITERATIONS).hex()


def has_keys(data_dir: str | os.PathLike) -> bool:
    """True when at least one key exists (the API then requires one)."""
    return bool(_load(data_dir))


def add_key(data_dir: str | os.PathLike, name: str) -> tuple[dict, str]:
    """Create a key called ``name``.

    Returns
    -------
    info : dict
        ``{name, prefix, created_at}`` as listed by :func:`list_keys`.
    secret : str
        The key itself; shown once, only its salted hash is stored.

    Raises
    ------
    ValueError
        When ``name`` is not 1-64 of ``A-Z a-z 0-9 _ . @ -`` or already exists.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"key name must be 1-64 letters, digits or _.@-, got {name!r}")
    with _lock:
        keys = list(_load(data_dir))
        if any(k["name"] == name for k in keys):
            raise ValueError(f"a key named {name!r} already exists")
        secret = "m4p_" + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        record = {
            "name": name,
            "prefix": secret[:8],
            "salt": salt.hex(),
            "hash": _hash(secret, salt),
            "created_at": now_iso(),
        }
        keys.append(record)
        _save(data_dir, keys)
    return _public(record), secret


def _public(record: dict) -> dict:
    return {k: record[k] for k in ("name", "prefix", "created_at")}


def list_keys(data_dir: str | os.PathLike) -> list[dict]:
    """Keys as ``{name, prefix, created_at}`` (never the secret or its hash)."""
    return [_public(k) for k in _load(data_dir)]


def revoke_key(data_dir: str | os.PathLike, name: str) -> bool:
    """Delete the key ``name``; returns False when there is none by that name."""
    with _lock:
        keys = list(_load(data_dir))
        kept = [k for k in keys if k["name"] != name]
        if len(kept) == len(keys):
            return False
        _save(data_dir, kept)
    return True


def verify_key(data_dir: str | os.PathLike, secret: str | None) -> dict | None:
    """Return the matching key's public info, or None when ``secret`` matches no key."""
    if not secret or not isinstance(secret, str) or len(secret) > 200:
        return None
    found = None
    for record in _load(data_dir):
        if not secret.startswith(record.get("prefix", "\0")):
            continue
        digest = _hash(secret, bytes.fromhex(record["salt"]))
        if hmac.compare_digest(digest, record["hash"]):
            found = _public(record)
    return found
