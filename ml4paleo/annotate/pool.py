"""A small thread-safe LRU of expensive per-key objects (the web app's per-job annotators),
bounded in count and in bytes."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["SessionPool"]


class SessionPool:
    """A small thread-safe LRU of expensive per-key objects (interactive sessions).

    ``get(key, factory)`` returns the cached object or builds it with ``factory()``
    (outside the pool lock, so one slow build does not block other keys); the least
    recently used objects beyond ``max_size``, or beyond ``max_bytes`` in total (an
    object's ``nbytes`` attribute, when it has one), are dropped (and closed). The most
    recently used object always stays. ``lock(key)`` gives a per-key lock for callers
    that mutate the object; no lock of the pool is held while they work.

    Examples
    --------
    >>> pool = SessionPool(max_size=2)
    >>> pool.get("a", lambda: 1), pool.get("a", lambda: 2)
    (1, 1)
    """

    def __init__(self, max_size: int = 3, max_bytes: int | None = None) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, key: str) -> threading.RLock:
        """The lock serialising work on ``key``'s object."""
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def peek(self, key: str) -> Any:
        """The cached object or None (does not build, does not refresh recency)."""
        with self._guard:
            return self._items.get(key)

    def get(self, key: str, factory: Callable[[], Any]) -> Any:
        """The object for ``key``, built by ``factory`` when not cached."""
        with self._guard:
            if key in self._items:
                self._items.move_to_end(key)
                obj = self._items[key]
                dropped = self._over_budget()
            else:
                obj = None
        if obj is not None:
            self._close(dropped)
            return obj
        with self.lock(key):
            with self._guard:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            obj = factory()
            with self._guard:
                self._items[key] = obj
                self._items.move_to_end(key)
                dropped = self._over_budget()
        self._close(dropped)
        return obj

    @staticmethod
    def _size(obj: Any) -> int:
        try:
            return int(getattr(obj, "nbytes", 0) or 0)
        except Exception:  # a size is advisory; a failing property must not break get()
            return 0

    @property
    def nbytes(self) -> int:
        """Total ``nbytes`` of the pooled objects."""
        with self._guard:
            items = list(self._items.values())
        return sum(self._size(o) for o in items)

    def _over_budget(self) -> list[tuple[str, Any]]:
        """Pop (under the guard) the least recently used objects beyond the budgets."""
        out = []
        while len(self._items) > self.max_size:
            out.append(self._items.popitem(last=False))
        if self.max_bytes is not None:
            total = sum(self._size(o) for o in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                key, obj = self._items.popitem(last=False)
                total -= self._size(obj)
                out.append((key, obj))
        return out

    @staticmethod
    def _close(dropped: list[tuple[str, Any]]) -> None:
        for old, old_obj in dropped:
            log.info("dropped interactive session %s (LRU)", old)
            if callable(getattr(old_obj, "close", None)):
                old_obj.close()

    def trim(self) -> None:
        """Drop the least recently used objects beyond the budgets now (objects grow)."""
        with self._guard:
            dropped = self._over_budget()
        self._close(dropped)

    def drop(self, key: str) -> None:
        """Forget ``key``'s object (e.g. after its job was deleted)."""
        with self._guard:
            obj = self._items.pop(key, None)
        if callable(getattr(obj, "close", None)):
            obj.close()

    def __contains__(self, key: str) -> bool:
        with self._guard:
            return key in self._items

    def __len__(self) -> int:
        with self._guard:
            return len(self._items)
