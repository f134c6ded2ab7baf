"""``ml4paleo runner KIND``, ``ml4paleo jobs list|show|retry|cancel|delete|purge``.

(``ml4paleo serve`` comes from the web app, registered through the ``ml4paleo.commands``
entry point group; see :mod:`ml4paleo.cli`.)
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import click

from ml4paleo.config import Settings
from ml4paleo.jobs.statuses import STAGES

_data_option = click.option(
    "--data", "data_dir", type=click.Path(file_okay=False), default=None,
    help="Data directory (default: ML4PALEO_DATA or ./data).")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"``; a bare number means days.

    Raises
    ------
    ValueError
        For anything else.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"age must look like 30d, 12h, 90m, 45s or 2w, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "d"])


def _store(data_dir: str | None):
    from ml4paleo.jobs import JobStore

    settings = Settings.from_env(data_dir=data_dir)
    return JobStore(settings.data_dir, settings=settings)


def _runner_logging(verbose: int) -> None:
    """Runner scripts log at INFO (DEBUG with ``-v``); under ``ml4paleo`` the group's
    ``-v`` already configured logging and this changes nothing."""
    logging.basicConfig(level=logging.INFO - 10 * min(verbose, 1),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def make_runner_command(kind: str | None = None) -> click.Command:
    """The ``runner`` command; with ``kind`` given, one without the KIND argument (the
    top-level ``conversionrunner.py`` / ``segmentrunner.py`` / ``meshrunner.py``)."""

    @click.option("--once", is_flag=True, help="Drain the queue, then exit.")
    @click.option("--poll-interval", type=float, default=None,
                  help="Seconds between polls when idle (default 2).")
    @_data_option
    @click.option("-v", "--verbose", count=True, help="More log output.")
    def run(data_dir, poll_interval, once, verbose, kind=kind) -> None:
        from ml4paleo.jobs.runner import run_runner

        _runner_logging(verbose)
        settings = Settings.from_env(data_dir=data_dir, poll_interval=poll_interval)
        n = run_runner(kind, settings, once=once)
        if once:
            click.echo(f"{kind} runner: {n} job(s) processed")

    run.__doc__ = ("Run a job runner (several copies may run at once)." if kind is None else
                   f"The {kind} runner: process queued jobs (several copies may run at once).")
    if kind is None:
        run = click.argument("kind", type=click.Choice(list(STAGES)))(run)
    return click.command("runner", context_settings={"help_option_names": ["-h", "--help"]})(run)


runner = make_runner_command()


def runner_main(kind: str | None = None, argv: Sequence[str] | None = None) -> int:
    """``python -m ml4paleo.jobs KIND ...`` (``kind`` None) or a runner script (``kind``
    given): the ``runner`` command with the same options, as its own program."""
    prog = "python -m ml4paleo.jobs" if kind is None else Path(sys.argv[0]).name
    make_runner_command(kind).main(args=list(sys.argv[1:] if argv is None else argv),
                              prog_name=prog)
    return 0


@click.group("jobs")
def jobs() -> None:
    """List and manage the jobs in the data directory."""


@jobs.command("list")
@_data_option
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_jobs(data_dir, as_json) -> None:
    """One line per job: id, status, progress, name."""
    records = _store(data_dir).list()
    if as_json:
        click.echo(json.dumps(records, indent=1))
        return
    for r in records:
        click.echo(f"{r['id']}  {r['status']:<16} {100 * float(r.get('progress') or 0):5.1f}%  "
                   f"{r.get('updated_at', '')[:19]}  {r.get('name', '')}")
    if not records:
        click.echo("no jobs")


def _one(data_dir, job_id, action):
    from ml4paleo.cli import fail
    from ml4paleo.jobs import InvalidTransition, JobNotFound

    try:
        return action(_store(data_dir), job_id)
    except JobNotFound as exc:
        fail(str(exc))
    except InvalidTransition as exc:
        fail(f"job {job_id}: {exc}")


@jobs.command("show")
@click.argument("job_id")
@_data_option
def show(job_id, data_dir) -> None:
    """Print the job's record as JSON."""
    record = _one(data_dir, job_id, lambda s, j: s.get(j))
    click.echo(json.dumps(record, indent=1))


@jobs.command("retry")
@click.argument("job_id")
@_data_option
def retry(job_id, data_dir) -> None:
    """Queue a failed job's step again."""
    record = _one(data_dir, job_id, lambda s, j: s.retry(j))
    click.echo(f"{job_id}: {record['status']}")


@jobs.command("cancel")
@click.argument("job_id")
@_data_option
def cancel(job_id, data_dir) -> None:
    """Cancel queued or running work (the runner stops at its next write)."""
    record = _one(data_dir, job_id, lambda s, j: s.cancel(j))
    click.echo(f"{job_id}: {record['status']} ({record.get('error')})")


@jobs.command("delete")
@click.argument("job_id")
@_data_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(job_id, data_dir, yes) -> None:
    """Delete a job and all its files."""
    record = _one(data_dir, job_id, lambda s, j: s.get(j))
    if not yes:
        click.confirm(f"Delete job {job_id} ({record.get('name')}) and all its files?", abort=True)
    _one(data_dir, job_id, lambda s, j: s.delete(j))
    click.echo(f"{job_id}: deleted")


@jobs.command("purge")
@click.option("--older-than", "older_than", required=True,
              help="Age since the job's last update: 30d, 12h, 90m, 2w (bare number = days).")
@_data_option
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def purge(older_than, data_dir, dry_run) -> None:
    """Delete jobs (and their data) not updated for the given age; busy jobs are kept."""
    from ml4paleo.cli import fail

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        fail(str(exc))
        return
    ids = _store(data_dir).purge(age, dry_run=dry_run)
    for job_id in ids:
        click.echo(f"{job_id}: {'would be deleted' if dry_run else 'deleted'}")
    click.echo(f"{len(ids)} job(s) {'to purge' if dry_run else 'purged'}")


commands: list = [runner, jobs]
