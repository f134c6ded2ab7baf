"""``ml4paleo convert``, ``ml4paleo info`` and ``ml4paleo set-voxel-size``: thin wrappers over
ml4paleo.convert / ml4paleo.io."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ml4paleo.blocks import tqdm_progress


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--voxel-size", nargs=3, type=float, metavar="Z Y X", default=None,
              help="Physical voxel size (overrides the source's).")
@click.option("--unit", default=None, metavar="UNIT",
              help="Unit of the voxel size, e.g. micrometer or millimeter (default: the source's).")
@click.option("--chunks", default=128, show_default=True, type=click.IntRange(8, 1024),
              help="Chunk edge of the output.")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Threads for decoding and compression (default: CPUs).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler address, e.g. tcp://host:8786 (default: this machine).")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def convert_command(source, dest, voxel_size, unit, chunks, workers, scheduler, force, quiet):
    """Convert SOURCE (slice folder, zip, TIFF, DICOM, NIfTI, .npy, Zarr) to an OME-Zarr DEST.

    The image is written bit-exact in the source's dtype with a 2x pyramid, to a temporary
    name renamed into place when complete.
    """
    from ml4paleo.cli import fail
    from ml4paleo.convert import convert
    from ml4paleo.io import InputError

    if dest.exists() and not force:
        fail(f"{dest}: already exists (use --force to replace it)")
    if voxel_size is not None and any(v <= 0 for v in voxel_size):
        fail(f"--voxel-size must be positive, got {' '.join(map(str, voxel_size))}")
    try:
        image = convert(
            source, dest, voxel_size=voxel_size or None, unit=unit, chunks=chunks, workers=workers,
            executor=scheduler,
            progress=tqdm_progress("convert", disable=True if quiet else None),  # None: no bar off a TTY
        )
    except InputError as exc:
        fail(str(exc))
    except (OSError, ValueError) as exc:
        fail(f"{source}: {exc}")
    vs = " x ".join(f"{v:g}" for v in image.voxel_size)
    if image.unit:
        vs += f" {image.unit}"
    if image.attrs.get("ml4paleo", {}).get("voxel_size_from") == "default":
        vs += " (not recorded in the source; set it with --voxel-size)"
    click.echo(
        f"Wrote {dest}: shape {image.shape}, {image.dtype}, voxel size {vs}, "
        f"{len(image.levels)} pyramid levels"
    )


@click.command("info")
@click.argument("source", type=click.Path(path_type=Path))
def info_command(source):
    """Print what ml4paleo sees in SOURCE (type, shape, dtype, voxel size, metadata) as JSON."""
    from ml4paleo.cli import fail
    from ml4paleo.io import InputError, open_volume

    try:
        with open_volume(source) as volume:
            info = volume.info()
    except InputError as exc:
        fail(str(exc))
    click.echo(json.dumps(info, indent=2, default=str))


@click.command("set-voxel-size")
@click.argument("image", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--voxel-size", nargs=3, type=float, metavar="Z Y X", required=True,
              help="Physical voxel size (z, y, x).")
@click.option("--unit", required=True, metavar="UNIT",
              help="Its unit, e.g. micrometer, um, millimeter, mm.")
def set_voxel_size_command(image, voxel_size, unit):
    """Give the OME-Zarr IMAGE a voxel size after conversion (metadata only: every pyramid
    level's scale and translation and the world transform are rewritten, no voxel is)."""
    from ml4paleo.cli import fail
    from ml4paleo.convert import set_voxel_size

    try:
        world = set_voxel_size(image, voxel_size, unit)
    except ValueError as exc:
        fail(str(exc))
    vs = " x ".join(f"{v:g}" for v in world.voxel_size)
    click.echo(f"{image}: voxel size {vs} {world.unit}")


commands: list = [convert_command, info_command, set_voxel_size_command]
