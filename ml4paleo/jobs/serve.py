"""A server plus the runners (one per stage) in one process tree: :func:`serve_with_runners`.

The runners are child processes (``python -m ml4paleo.jobs KIND``), restarted when they
crash and stopped with the server. Nothing a runner started outlives it: each runner
leads its own process group (its block workers, multiprocessing's resource tracker and
any other helper join it), and when a runner exits - stopped, crashed or killed - what is
left of its group is killed before a new runner starts. A runner gets SIGTERM when the
server dies (``PR_SET_PDEATHSIG``), and its own workers die with it the same way. The web app itself lives in ``webapp`` (its ``serve``
command, used by ``python main.py`` and ``ml4paleo serve``, hands its server to
:func:`serve_with_runners`), so this package never imports Flask.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ml4paleo.config import Settings
from ml4paleo.jobs.statuses import STAGES

log = logging.getLogger(__name__)

RUNNER_KINDS = tuple(STAGES)
#: seconds a runner gets to hand its job back before it is killed
STOP_TIMEOUT = 15.0


class _Shutdown(BaseException):  # noqa: N818 - raised by the signal handler to leave run()
    pass


def runner_command(kind: str, settings: Settings) -> list[str]:
    """The command line that starts one runner child process."""
    return [sys.executable, "-m", "ml4paleo.jobs", kind,
            "--data", str(Path(settings.data_dir).resolve()),
            "--poll-interval", str(settings.poll_interval)]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so no runner is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RunnerProcesses:
    """The runner child processes of :func:`serve`; restarts a runner that crashed."""

    def __init__(self, settings: Settings, kinds: Sequence[str] = RUNNER_KINDS) -> None:
        self.settings = settings
        self.kinds = tuple(kinds)
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _spawn(self, kind: str) -> subprocess.Popen:
        # its own process group (pgid = pid): whatever it starts can be killed with it
        proc = subprocess.Popen(runner_command(kind, self.settings), preexec_fn=_die_with_parent,
                                process_group=0)
        log.info("started %s runner (pid %d)", kind, proc.pid)
        return proc

    @staticmethod
    def _exited(proc: subprocess.Popen) -> bool:
        """True when the runner has exited. It is left unreaped (a zombie) until
        :meth:`_reap`, so its pid - its process group's id - cannot be reused meanwhile."""
        if proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll() is not None
        return info is not None

    @staticmethod
    def _reap(proc: subprocess.Popen) -> None:
        """Kill what is left of an exited runner's process group (workers and helpers that
        outlived it), then reap the runner."""
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                log.warning("killed processes left behind by runner pid %d", proc.pid)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left
        proc.wait()

    def start(self) -> None:
        for kind in self.kinds:
            self.procs[kind] = self._spawn(kind)
        self._watch = threading.Thread(target=self._watchdog, name="runner-watchdog", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        restarts: dict[str, list[float]] = {k: [] for k in self.kinds}
        while not self._stop.wait(1.0):
            for kind, proc in list(self.procs.items()):
                if self._stop.is_set() or not self._exited(proc):
                    continue
                self._reap(proc)  # at once, even when it is not restarted yet
                recent = [t for t in restarts[kind] if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    continue  # crashing in a loop: leave it down a while, the log says why
                log.warning("%s runner exited with %s; restarting", kind, proc.returncode)
                restarts[kind] = [*recent, time.monotonic()]
                self.procs[kind] = self._spawn(kind)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every runner, wait for them, SIGKILL what is left (each runner's whole
        process group)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join()
        for proc in self.procs.values():
            if not self._exited(proc):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for kind, proc in self.procs.items():
            while not self._exited(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._exited(proc):
                log.warning("%s runner did not stop in time; killing it", kind)
                proc.kill()
            self._reap(proc)
        log.info("runners stopped")


class Server(Protocol):
    """What :func:`serve_with_runners` runs: a WSGI server such as waitress's."""

    def run(self) -> None: ...

    def close(self) -> None: ...


def serve_with_runners(settings: Settings, server: Server, url: str, *, runners: bool = True,
                       on_ready: Callable[[str], None] | None = None) -> None:
    """Run ``server`` (and the runners as child processes) until SIGTERM / Ctrl-C;
    then stop everything.

    Parameters
    ----------
    settings : Settings
        ``data_dir`` and ``poll_interval`` are handed to the runners.
    server : Server
        A server that was created listening (``run()`` blocks, ``close()`` stops it).
    url : str
        Where it listens (logged, passed to ``on_ready``).
    runners : bool
        Start the convert, segment and mesh runners as child processes.
    on_ready : callable, optional
        Called with ``url`` once everything runs.
    """
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    children = RunnerProcesses(settings) if runners else None

    def _on_signal(signum, _frame):
        raise _Shutdown(signum)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if children:
            children.start()
        log.info("serving %s on %s%s (Ctrl-C stops)", Path(settings.data_dir).resolve(), url,
                 " with the convert, segment and mesh runners" if children else "")
        if on_ready:
            on_ready(url)
        server.run()
    except (_Shutdown, KeyboardInterrupt):
        log.info("shutting down")
    finally:
        # further signals during shutdown are ignored; the runners get their SIGTERM
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.close()
        if children:
            children.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
