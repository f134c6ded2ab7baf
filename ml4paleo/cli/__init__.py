"""The ``ml4paleo`` command line: one click group, sub-commands grouped by area.

Each area module (``convert_commands``, ``jobs_commands``, ...) exposes a ``commands``
list; they are thin wrappers over the library functions.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

_AREAS = (
    "convert_commands",
    "segment_commands",
    "mesh_commands",
    "jobs_commands",
    "web_commands",
    "extra_commands",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="ml4paleo")
def main(verbose: int) -> None:
    """ml4paleo: turn CT / synchrotron scans into segmentations and 3D meshes."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    for area in _AREAS:
        module = importlib.import_module(f"{__name__}.{area}")
        for command in getattr(module, "commands", []):
            main.add_command(command)


def fail(message: str) -> None:
    """Print one clean error line and exit non-zero (no traceback)."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


_register()
