"""A small thread-safe LRU of expensive per-key objects (the web app's per-job annotators)."""

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
    recently used object beyond ``max_size`` is dropped. ``lock(key)`` gives a
    per-key lock for callers that mutate the object.

    Examples
    --------
    >>> pool = SessionPool(max_size=2)
    >>> pool.get("a", lambda: 1), pool.get("a", lambda: 2)
    (1, 1)
    """

    def __init__(self, max_size: int = 3) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
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
                return self._items[key]
        with self.lock(key):
            with self._guard:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            obj = factory()
            with self._guard:
                self._items[key] = obj
                self._items.move_to_end(key)
                while len(self._items) > self.max_size:
                    old, old_obj = self._items.popitem(last=False)
                    log.info("dropped interactive session %s (LRU)", old)
                    if callable(getattr(old_obj, "close", None)):
                        old_obj.close()
            return obj

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
