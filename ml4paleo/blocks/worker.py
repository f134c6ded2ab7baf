"""Local worker processes die with their parent.

A worker process of :func:`ml4paleo.blocks.run` must not outlive the process that
started it: a runner killed with SIGKILL (out of memory, ``kill -9``, a container stop)
would otherwise leave workers computing blocks nobody waits for, holding memory and
writing into files a restarted run rewrites. Two guards, both set up by
:func:`init_worker` (the pool's initializer):

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment
  its parent dies;
- everywhere, a daemon thread that exits the worker once its parent pid changes (the
  worker was re-parented), within a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

__all__ = ["init_worker", "set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    Returns
    -------
    bool
        True when set (False on other systems or when ``prctl`` is unavailable).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:  # no libc / no prctl
        log.warning("cannot set a parent-death signal: %s", exc)
        return False
    return True


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent is gone: nobody waits for this worker's results
        time.sleep(_WATCH_SECONDS)


def init_worker(parent_pid: int) -> None:
    """Initializer of a local worker process: die when ``parent_pid`` dies."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="ml4paleo-parent-watch",
                     daemon=True).start()
