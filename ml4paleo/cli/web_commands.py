"""``ml4paleo keys add NAME / list / revoke NAME``: access keys for the web API."""

from __future__ import annotations

import click

from ml4paleo import keys as keylib
from ml4paleo.config import Settings

_data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Data directory (default: ML4PALEO_DATA or ./data).",
)


def _data_dir(data_dir: str | None):
    return Settings.from_env(data_dir=data_dir).data_dir


@click.group("keys")
def keys() -> None:
    """Access keys: when any key exists, the web API requires one (header X-API-Key)."""


@keys.command("add")
@click.argument("name")
@_data_option
def add(name: str, data_dir: str | None) -> None:
    """Create a key called NAME and print it (shown once)."""
    from ml4paleo.cli import fail

    try:
        info, secret = keylib.add_key(_data_dir(data_dir), name)
    except ValueError as exc:
        fail(str(exc))
        return
    click.echo(f"Created key {info['name']!r}. Store it now, it is not shown again:")
    click.echo(secret)


@keys.command("list")
@_data_option
def list_(data_dir: str | None) -> None:
    """List keys (names and prefixes, never the secrets)."""
    items = keylib.list_keys(_data_dir(data_dir))
    if not items:
        click.echo("No keys: the web API is open to anyone who can reach it.")
        return
    for k in items:
        click.echo(f"{k['name']}\t{k['prefix']}…\t{k['created_at']}")


@keys.command("revoke")
@click.argument("name")
@_data_option
def revoke(name: str, data_dir: str | None) -> None:
    """Delete the key NAME."""
    from ml4paleo.cli import fail

    if not keylib.revoke_key(_data_dir(data_dir), name):
        fail(f"no key named {name!r}")
        return
    click.echo(f"Revoked key {name!r}.")


commands: list = [keys]
