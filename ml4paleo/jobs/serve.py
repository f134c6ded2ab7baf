"""One command for everything: the web app on waitress plus the three runners.

``python main.py`` and ``ml4paleo serve`` call :func:`serve`; the top-level runner
scripts and ``python -m ml4paleo.jobs KIND`` call :func:`runner_main`. Flask and the
web app are imported only inside :func:`serve`, so ``ml4paleo`` stays Flask-free.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
        proc = subprocess.Popen(runner_command(kind, self.settings), preexec_fn=_die_with_parent)
        log.info("started %s runner (pid %d)", kind, proc.pid)
        return proc

    def start(self) -> None:
        for kind in self.kinds:
            self.procs[kind] = self._spawn(kind)
        self._watch = threading.Thread(target=self._watchdog, name="runner-watchdog", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        restarts: dict[str, list[float]] = {k: [] for k in self.kinds}
        while not self._stop.wait(1.0):
            for kind, proc in list(self.procs.items()):
                if proc.poll() is None or self._stop.is_set():
                    continue
                recent = [t for t in restarts[kind] if time.monotonic() - t < 60]
                if len(recent) >= 5:
                    continue  # crashing in a loop: leave it down, the log says why
                log.warning("%s runner exited with %s; restarting", kind, proc.returncode)
                restarts[kind] = [*recent, time.monotonic()]
                self.procs[kind] = self._spawn(kind)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every runner, wait for them, SIGKILL what is left."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for kind, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s runner did not stop in time; killing it", kind)
                proc.kill()
                proc.wait()
        log.info("runners stopped")


def serve(settings: Settings, *, runners: bool = True, threads: int = 8,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the web app on waitress (and the three runners as child processes) until
    SIGTERM / Ctrl-C; then stop everything.

    Parameters
    ----------
    settings : Settings
        ``host``, ``port`` (0 = any free port) and ``data_dir`` are used.
    runners : bool
        Start the convert, segment and mesh runners as child processes.
    threads : int
        Waitress worker threads.
    on_ready : callable, optional
        Called with the server's URL once it listens.
    """
    from waitress import create_server  # web stack imported only here

    from webapp import create_app

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    server = create_server(app, host=settings.host, port=settings.port, threads=threads)
    url = f"http://{settings.host}:{server.effective_port}"
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


def _common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=None,
                        help="data directory (default: ML4PALEO_DATA or ./data)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _logging(verbose: int) -> None:
    logging.basicConfig(level=logging.INFO - 10 * min(verbose, 1),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def runner_main(kind: str | None = None, argv: Sequence[str] | None = None) -> int:
    """``conversionrunner.py`` / ``python -m ml4paleo.jobs KIND``: parse args, run a runner."""
    from ml4paleo.jobs.runner import run_runner

    parser = _common_parser(f"ml4paleo {kind or ''} runner: process queued jobs".replace("  ", " "))
    if kind is None:
        parser.add_argument("kind", choices=RUNNER_KINDS)
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="seconds between polls when idle (default 2)")
    parser.add_argument("--once", action="store_true", help="drain the queue, then exit")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    settings = Settings.from_env(data_dir=args.data, poll_interval=args.poll_interval)
    run_runner(kind or args.kind, settings, once=args.once)
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``python main.py [--host] [--port] [--data] [--no-runners]``."""
    parser = _common_parser("ml4paleo: web app + the three runners")
    parser.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 5000)")
    parser.add_argument("--no-runners", action="store_true", help="web app only")
    parser.add_argument("--threads", type=int, default=8, help="web server threads")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    settings = Settings.from_env(data_dir=args.data, host=args.host, port=args.port)
    os.environ.setdefault("ML4PALEO_DATA", str(settings.data_dir))
    serve(settings, runners=not args.no_runners, threads=args.threads)
    return 0
