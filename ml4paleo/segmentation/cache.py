"""A thread-safe least-recently-used cache bounded in bytes, shared by interactive sessions.

The interactive annotator keeps derived data -- feature tiles, training rows of labelled
pixels, predicted overlay tiles -- that can always be computed again. All of it goes into
one :class:`ByteCache` whose budget (bytes, a :class:`~ml4paleo.config.Settings` value)
bounds the memory they take whatever the slice size and however many annotators are open:
the least recently used entries are dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

import numpy as np

__all__ = ["ByteCache", "nbytes_of"]


def nbytes_of(value: Any) -> int:
    """Bytes held by ``value``: arrays, bytes, and tuples / lists / dicts of them (others: 64)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, tuple | list):
        return 64 + sum(nbytes_of(v) for v in value)
    if isinstance(value, dict):
        return 64 + sum(nbytes_of(v) for v in value.values())
    nb = getattr(value, "nbytes", None)
    if isinstance(nb, int | np.integer):
        return int(nb)
    return 64


class ByteCache:
    """LRU cache bounded by the total size of its values in bytes (thread-safe).

    Keys are tuples whose first element names the owner (one annotator), so an owner's
    entries can be dropped at once (:meth:`drop_owner`). A value larger than the whole
    budget is returned but not kept. :meth:`get_or_compute` computes a missing value once
    even when several threads ask for it at the same time (the others wait for it); the
    computation runs outside the cache's lock.

    Parameters
    ----------
    max_bytes : int
        The budget. 0 keeps nothing.

    Examples
    --------
    >>> c = ByteCache(max_bytes=1000)
    >>> _ = c.put(("a", 1), np.zeros(100, np.uint8)); _ = c.put(("a", 2), np.zeros(950, np.uint8))
    >>> ("a", 1) in c, ("a", 2) in c, c.nbytes
    (False, True, 950)
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The cached value (refreshing its recency) or ``default``."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return default
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> Any:
        """Store ``value`` (``nbytes``: its size, default :func:`nbytes_of`); returns it."""
        size = nbytes_of(value) if nbytes is None else int(nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if size <= self.max_bytes:
                self._items[key] = (value, size)
                self.nbytes += size
                self._evict()
        return value

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self._items:
            _, (_, size) = self._items.popitem(last=False)
            self.nbytes -= size
            self.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any],
                       nbytes: int | None = None) -> Any:
        """The cached value, else ``compute()`` (run once across threads) stored and returned."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit[0]
            self.misses += 1
            fut = self._pending.get(key)
            owner = fut is None
            if owner:
                fut = self._pending[key] = Future()
        if not owner:
            return fut.result()
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                self._pending.pop(key, None)
            fut.set_exception(exc)
            raise
        self.put(key, value, nbytes)
        with self._lock:
            self._pending.pop(key, None)
        fut.set_result(value)
        return value

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate``; returns how many."""
        with self._lock:
            keys = [k for k in self._items if predicate(k)]
            for k in keys:
                self.nbytes -= self._items.pop(k)[1]
        return len(keys)

    def drop_owner(self, owner: Hashable) -> int:
        """Drop every entry whose key is a tuple starting with ``owner``."""
        return self.drop(lambda k: isinstance(k, tuple) and bool(k) and k[0] == owner)

    def owner_bytes(self, owner: Hashable) -> int:
        """Bytes held by ``owner``'s entries."""
        with self._lock:
            return sum(size for k, (_, size) in self._items.items()
                       if isinstance(k, tuple) and k and k[0] == owner)

    def stats(self) -> dict[str, int]:
        """``{entries, nbytes, max_bytes, hits, misses, evictions}``."""
        with self._lock:
            return {"entries": len(self._items), "nbytes": self.nbytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
