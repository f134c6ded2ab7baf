"""Values a block function needs that workers should open once, not once per block.

A volume pickles as a path reference (:func:`ml4paleo.io.open_any`), so a worker reopens
it for every block it is sent: cheap for Zarr, but a folder of 2000 slices or a DICOM
series re-reads every header each time. :class:`Shared` wraps such a value: in this
process :meth:`Shared.get` returns it as is; sent to a worker, it unpickles once per
worker process and run, and later blocks get the same opened object.
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import uuid
from collections import OrderedDict
from typing import Any, Generic, TypeVar

__all__ = ["Shared"]

T = TypeVar("T")

_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_CACHE_SIZE = 8
_LOCK = threading.Lock()


class Shared(Generic[T]):
    """A value opened once per worker process (see the module docs).

    Parameters
    ----------
    value : picklable
        What the block functions need (a Volume, a model, ...).

    Examples
    --------
    >>> import pickle
    >>> s = Shared([1, 2, 3])
    >>> a, b = pickle.loads(pickle.dumps(s)), pickle.loads(pickle.dumps(s))
    >>> a.get() == [1, 2, 3], a.get() is b.get()
    (True, True)
    """

    def __init__(self, value: T) -> None:
        self._value = value
        self._payload: bytes | None = None
        # one run's value is never confused with another's of the same content
        self._token = uuid.uuid4().bytes

    def get(self) -> T:
        """The value (opened in this process once)."""
        return self._value

    def __reduce__(self):
        if self._payload is None:
            self._payload = pickle.dumps(self._value, protocol=pickle.HIGHEST_PROTOCOL)
        return (_shared_from, (self._token, self._payload))


def _shared_from(token: bytes, payload: bytes) -> Shared:
    key = hashlib.sha1(token + payload).digest()
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            value = _CACHE[key]
        else:
            value = pickle.loads(payload)
            _CACHE[key] = value
            while len(_CACHE) > _CACHE_SIZE:
                _, old = _CACHE.popitem(last=False)
                close = getattr(old, "close", None)
                if callable(close):
                    close()
    shared = Shared.__new__(Shared)
    shared._value, shared._payload, shared._token = value, payload, token
    return shared
