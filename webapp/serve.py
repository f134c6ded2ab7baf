"""``ml4paleo serve`` / ``python main.py``: the web app on waitress plus the runners.

The command joins the ``ml4paleo`` CLI through the ``ml4paleo.commands`` entry point
group (see ``pyproject.toml``), so the library never imports the web app; the runner
child processes and their shutdown are :func:`ml4paleo.jobs.serve.serve_with_runners`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import click

from ml4paleo.config import Settings
from ml4paleo.jobs.serve import serve_with_runners

log = logging.getLogger(__name__)


def serve(settings: Settings, *, runners: bool = True, threads: int = 8,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the web app on waitress (and the runners as child processes) until
    SIGTERM / Ctrl-C; then stop everything.

    Parameters
    ----------
    settings : Settings
        ``host``, ``port`` (0 = any free port) and ``data_dir`` are used.
    runners : bool
        Start the convert, segment, mesh and measure runners as child processes.
    threads : int
        Waitress worker threads.
    on_ready : callable, optional
        Called with the server's URL once it listens.
    """
    from waitress import create_server

    from webapp import create_app

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    server = create_server(app, host=settings.host, port=settings.port, threads=threads)
    url = f"http://{settings.host}:{server.effective_port}"
    serve_with_runners(settings, server, url, runners=runners, on_ready=on_ready)


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 5000).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Data directory (default: ML4PALEO_DATA or ./data).")
@click.option("--no-runners", is_flag=True, help="Start the web app only.")
@click.option("--threads", type=int, default=8, show_default=True, help="Web server threads.")
@click.option("-v", "--verbose", count=True, help="More log output.")
def serve_command(host, port, data_dir, no_runners, threads, verbose) -> None:
    """Web app (waitress) + convert, segment, mesh and measure runners; Ctrl-C stops all."""
    # standalone (main.py) this logs at INFO; under ``ml4paleo`` the group set it already
    logging.basicConfig(level=logging.INFO - 10 * min(verbose, 1),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(data_dir=data_dir, host=host, port=port)
    os.environ.setdefault("ML4PALEO_DATA", str(settings.data_dir))
    serve(settings, runners=not no_runners, threads=threads,
          on_ready=lambda url: click.echo(f"ml4paleo on {url} (data: {settings.data_dir}); "
                                          "Ctrl-C stops"))


def main(argv: list[str] | None = None) -> int:
    """``python main.py [--host] [--port] [--data] [--no-runners] [--threads] [-v]``."""
    serve_command.main(args=argv, prog_name="main.py")
    return 0
