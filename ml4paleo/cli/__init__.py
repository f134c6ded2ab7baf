"""The ``ml4paleo`` command line: one click group, sub-commands grouped by area.

Each area module (``convert_commands``, ``jobs_commands``, ...) exposes a ``commands``
list; they are thin wrappers over the library functions. Commands of other installed
packages join through the ``ml4paleo.commands`` entry point group (each entry point
names a click command): that is how the web app adds ``ml4paleo serve`` without the
library importing it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import click

#: entry point group whose click commands are added to ``ml4paleo``
COMMANDS_GROUP = "ml4paleo.commands"

log = logging.getLogger(__name__)

_AREAS = (
    "convert_commands",
    "segment_commands",
    "mesh_commands",
    "measure_commands",
    "jobs_commands",
    "web_commands",
    "extra_commands",
)


class PluginGroup(click.Group):
    """A click group that also offers commands of entry points, loaded only when used
    (so ``ml4paleo convert`` never imports the web app behind ``ml4paleo serve``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plugins: dict[str, EntryPoint] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.plugins})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.plugins:
            return command
        point = self.plugins[cmd_name]
        try:
            command = point.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the CLI
            log.warning("ml4paleo command %r (%s) cannot be loaded: %s", cmd_name,
                        point.value, exc)
            return None
        if not isinstance(command, click.Command):
            log.warning("entry point %r (%s) is not a click command", cmd_name, point.value)
            return None
        self.add_command(command, cmd_name)
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="ml4paleo")
def main(verbose: int) -> None:
    """ml4paleo: turn CT / synchrotron scans into segmentations and 3D meshes."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def load_plugin_commands(group: PluginGroup,
                         points: Iterable[EntryPoint] | None = None) -> list[str]:
    """Offer the click command of every entry point of :data:`COMMANDS_GROUP` in ``group``.

    Parameters
    ----------
    group : PluginGroup
        Where the commands go (loaded when first asked for).
    points : iterable of EntryPoint, optional
        The entry points (default: the installed ones).

    Returns
    -------
    list of str
        Names of the commands offered. A command of the group's own is never replaced.
    """
    added = []
    for point in entry_points(group=COMMANDS_GROUP) if points is None else points:
        if point.name in group.commands or point.name in group.plugins:
            continue
        group.plugins[point.name] = point
        added.append(point.name)
    return added


def _register() -> None:
    for area in _AREAS:
        module = importlib.import_module(f"{__name__}.{area}")
        for command in getattr(module, "commands", []):
            main.add_command(command)
    load_plugin_commands(main)


def fail(message: str) -> None:
    """Print one clean error line and exit non-zero (no traceback)."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


_register()
