"""``ml4paleo serve``, ``ml4paleo runner KIND``, ``ml4paleo jobs list|show|retry|cancel|delete|purge``."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import click

from ml4paleo.config import Settings

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


@click.command("serve")
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 5000).")
@_data_option
@click.option("--no-runners", is_flag=True, help="Start the web app only.")
@click.option("--threads", type=int, default=8, show_default=True, help="Web server threads.")
def serve(host, port, data_dir, no_runners, threads) -> None:
    """Web app (waitress) + convert, segment and mesh runners; Ctrl-C stops all."""
    from ml4paleo.jobs.serve import serve as run

    settings = Settings.from_env(data_dir=data_dir, host=host, port=port)
    run(settings, runners=not no_runners, threads=threads,
        on_ready=lambda url: click.echo(f"ml4paleo on {url} (data: {settings.data_dir}); "
                                        "Ctrl-C stops"))


@click.command("runner")
@click.argument("kind", type=click.Choice(["convert", "segment", "mesh"]))
@_data_option
@click.option("--poll-interval", type=float, default=None,
              help="Seconds between polls when idle (default 2).")
@click.option("--once", is_flag=True, help="Drain the queue, then exit.")
def runner(kind, data_dir, poll_interval, once) -> None:
    """Run a job runner (several copies may run at once)."""
    from ml4paleo.jobs.runner import run_runner

    settings = Settings.from_env(data_dir=data_dir, poll_interval=poll_interval)
    n = run_runner(kind, settings, once=once)
    if once:
        click.echo(f"{kind} runner: {n} job(s) processed")


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


commands: list = [serve, runner, jobs]
