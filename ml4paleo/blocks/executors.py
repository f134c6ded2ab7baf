"""Where blocks run: in this process, on its threads, on local processes, or on Dask.

Every backend offers the same four operations to the scheduler in
:mod:`ml4paleo.blocks.run` (submit, wait for any, outcome, cancel), so the scheduler's
rules (done-markers, retries, chaining) are written once, whatever runs the blocks.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.popen_spawn_posix
import multiprocessing.spawn
import os
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .worker import init_worker

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "Backend", "default_workers", "is_dask", "main_free_context",
           "open_backend"]

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


# -- spawning workers without re-running the user's script ---------------------------------
# ``spawn`` starts a fresh interpreter and, to find functions defined in the parent's
# ``__main__``, first runs the parent's script again (as ``__mp_main__``). A script
# without an ``if __name__ == "__main__":`` guard (the README's example saved as a file)
# then calls ml4paleo again inside every worker, which refuses to start processes while
# bootstrapping: the pool breaks. Our block functions live in ml4paleo's modules, so the
# workers need nothing from ``__main__``: like joblib's loky workers, ours are started
# without it (the preparation data sent to the child loses ``init_main_from_*``).
_without_main = threading.local()
_patch_lock = threading.Lock()
_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def _install_preparation_filter() -> None:
    """Wrap :func:`multiprocessing.spawn.get_preparation_data` once: on the thread that
    starts one of our main-free workers (and only there) the main-module keys are left out."""
    with _patch_lock:
        current = multiprocessing.spawn.get_preparation_data
        if getattr(current, "_ml4paleo_filter", False):
            return

        @functools.wraps(current)
        def get_preparation_data(name):
            data = current(name)
            if getattr(_without_main, "on", False):
                for key in _MAIN_KEYS:
                    data.pop(key, None)
            return data

        get_preparation_data._ml4paleo_filter = True  # type: ignore[attr-defined]
        multiprocessing.spawn.get_preparation_data = get_preparation_data


class _MainFreePopen(multiprocessing.popen_spawn_posix.Popen):
    """``spawn`` that does not run the parent's ``__main__`` in the child."""

    def _launch(self, process_obj):
        _without_main.on = True
        try:
            super()._launch(process_obj)
        finally:
            _without_main.on = False


class _MainFreeProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):  # noqa: N802 - multiprocessing's name
        return _MainFreePopen(process_obj)


class _MainFreeContext(multiprocessing.context.SpawnContext):
    """The spawn context, with workers that start without the parent's ``__main__``."""

    Process = _MainFreeProcess


def _from_main(obj: Any) -> bool:
    """True when ``obj`` (a function, a partial of one, or one of the partial's arguments)
    is defined in ``__main__``: a worker then needs the parent's script."""
    if isinstance(obj, functools.partial):
        return any(_from_main(o) for o in (obj.func, *obj.args, *obj.keywords.values()))
    module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
    return module in ("__main__", "__mp_main__")


def main_free_context() -> multiprocessing.context.BaseContext:
    """A ``spawn`` context whose workers do not re-run the parent's script (on POSIX;
    elsewhere the plain ``spawn`` context)."""
    if sys.platform == "win32":  # pragma: no cover - spawn's Windows Popen differs
        return multiprocessing.get_context("spawn")
    _install_preparation_filter()
    return _MainFreeContext()


class ProcessBackend(_FuturesBackend):
    """Spawned local worker processes that die with this process.

    ``spawn``, not ``fork``: forking a process that runs zarr's event-loop thread can
    deadlock. Workers start without re-running the caller's script
    (:func:`main_free_context`), so a script that calls ml4paleo at its top level works
    without a ``__main__`` guard; only a block function defined in the script itself
    needs the script, and gets workers that import it (that script needs the guard). A
    pool broken by a dying worker (e.g. killed for memory) is replaced on the next
    submit, so the scheduler can retry the blocks it lost.
    """

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self._contexts = {False: main_free_context(), True: multiprocessing.get_context("spawn")}
        self._pools: dict[bool, cf.ProcessPoolExecutor] = {}

    @property
    def pool(self) -> cf.ProcessPoolExecutor:
        """The main-free pool (made on first use)."""
        return self._pool_for(False)

    def _pool_for(self, needs_main: bool) -> cf.ProcessPoolExecutor:
        if needs_main not in self._pools:
            self._pools[needs_main] = cf.ProcessPoolExecutor(
                max_workers=self.slots, mp_context=self._contexts[needs_main],
                initializer=init_worker, initargs=(os.getpid(),))
        return self._pools[needs_main]

    def submit(self, fn, block, key):
        needs_main = _from_main(fn)
        try:
            return self._pool_for(needs_main).submit(fn, block)
        except BrokenProcessPool:
            log.warning("a worker process died; starting new workers%s",
                        " (a block function defined in the script needs an "
                        "'if __name__ == \"__main__\":' guard there)" if needs_main else "")
            self._pools.pop(needs_main).shutdown(wait=False, cancel_futures=True)
            return self._pool_for(needs_main).submit(fn, block)

    def close(self):
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()


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
