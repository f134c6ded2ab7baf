"""Where blocks run: in this process, on its threads, on local processes, or on Dask.

Every backend offers the same four operations to the scheduler in
:mod:`ml4paleo.blocks.run` (submit, wait for any, outcome, cancel), so the scheduler's
rules (done-markers, retries, chaining) are written once, whatever runs the blocks.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .worker import init_worker

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "Backend", "default_workers", "is_dask", "open_backend"]

#: Executor names :func:`open_backend` knows (besides a Dask ``Client`` or address).
EXECUTORS = ("serial", "threads", "processes")


def default_workers() -> int:
    """Worker processes to use when none are given: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def is_dask(executor: Any) -> bool:
    """True for a Dask scheduler address (``tcp://...``) or a ``distributed.Client``."""
    if isinstance(executor, str):
        return "://" in executor
    return executor is not None and type(executor).__name__ == "Client" and hasattr(
        executor, "submit")


class Backend:
    """What the scheduler needs from an executor.

    Attributes
    ----------
    slots : int
        Blocks that can run at the same time (sets the default bound on blocks in flight).
    """

    slots = 1

    def submit(self, fn: Callable[[Any], Any], block: Any, key: str) -> Any:
        """Start ``fn(block)``; return a handle."""
        raise NotImplementedError

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """Block until at least one of ``handles`` finished; return the finished ones."""
        raise NotImplementedError

    def outcome(self, handle: Any) -> Any:
        """The result of a finished handle (raises the block's exception)."""
        raise NotImplementedError

    def cancel(self, handles: Sequence[Any]) -> None:
        """Drop handles not started yet (running ones finish on their own)."""

    def close(self) -> None:
        """Release pools and connections."""


class _Lazy:
    __slots__ = ("block", "error", "fn", "ran", "result")

    def __init__(self, fn, block) -> None:
        self.fn, self.block, self.ran = fn, block, False
        self.result = self.error = None


class SerialBackend(Backend):
    """In this process, one block at a time, when the scheduler waits for it."""

    def submit(self, fn, block, key):
        return _Lazy(fn, block)

    def wait(self, handles):
        task = handles[0]
        try:
            task.result = task.fn(task.block)
        except Exception as exc:  # handed to the scheduler, which decides (retry / raise)
            task.error = exc
        task.ran = True
        return [task]

    def outcome(self, handle):
        if handle.error is not None:
            raise handle.error
        return handle.result


class _FuturesBackend(Backend):
    pool: cf.Executor

    def submit(self, fn, block, key):
        return self.pool.submit(fn, block)

    def wait(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def outcome(self, handle):
        return handle.result()

    def cancel(self, handles):
        for h in handles:
            h.cancel()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class ThreadBackend(_FuturesBackend):
    """Threads of this process: for block functions that release the GIL (compression,
    file I/O, numpy) and are safe to run concurrently."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="ml4paleo-block")


class ProcessBackend(_FuturesBackend):
    """Spawned local worker processes that die with this process.

    ``spawn``, not ``fork``: forking a process that runs zarr's event-loop thread can
    deadlock. A pool broken by a dying worker (e.g. killed for memory) is replaced on
    the next submit, so the scheduler can retry the blocks it lost.
    """

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self._ctx = multiprocessing.get_context("spawn")
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.slots, mp_context=self._ctx,
                                      initializer=init_worker, initargs=(os.getpid(),))

    def submit(self, fn, block, key):
        try:
            return self.pool.submit(fn, block)
        except BrokenProcessPool:
            log.warning("a worker process died; starting new workers")
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(fn, block)


class DaskBackend(Backend):
    """A Dask cluster, through a ``distributed.Client`` (or one made from an address)."""

    def __init__(self, executor: Any) -> None:
        from dask.distributed import Client

        self._own = isinstance(executor, str)
        self.client = Client(executor) if self._own else executor
        try:
            self.slots = max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - only used to size the queue
            self.slots = 2
        self._token = uuid.uuid4().hex[:8]

    def submit(self, fn, block, key):
        return self.client.submit(fn, block, pure=False, key=f"{key}-{self._token}-{uuid.uuid4().hex[:6]}")

    def wait(self, handles):
        from dask.distributed import wait

        done, _ = wait(list(handles), return_when="FIRST_COMPLETED")
        return list(done)

    def outcome(self, handle):
        return handle.result()

    def cancel(self, handles):
        if handles:
            self.client.cancel(list(handles))

    def close(self):
        if self._own:
            self.client.close()


def open_backend(executor: Any, workers: int | None, n_blocks: int) -> Backend:
    """The backend for ``executor`` (see :func:`ml4paleo.blocks.run`).

    Raises
    ------
    ValueError
        For an unknown executor name.
    """
    if is_dask(executor):
        return DaskBackend(executor)
    if executor not in (None, *EXECUTORS):
        raise ValueError(f"unknown executor {executor!r}: use 'serial', 'threads', 'processes', "
                         "a Dask Client or a scheduler address")
    n = int(workers or default_workers())
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if executor == "serial" or n == 1 or n_blocks <= 1:
        return SerialBackend()
    if executor == "threads":
        return ThreadBackend(n)
    return ProcessBackend(n)
