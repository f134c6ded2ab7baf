"""``ml4paleo mesh`` (closed per-label meshes + stats) and ``ml4paleo export`` (downloads)."""

from __future__ import annotations

from pathlib import Path

import click

from ml4paleo.blocks import tqdm_progress
from ml4paleo.meshing.smooth import DEFAULT_SMOOTH, SMOOTH_LEVELS


def _int_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _voxel_size(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected numbers, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise click.BadParameter(f"give one number or three (z,y,x), got {text!r}")
    return values


@click.command("mesh")
@click.argument("labels", type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for <label>.<ext> meshes and stats.csv.")
@click.option("--chunk-size", type=int, default=256, show_default=True,
              help="Block edge in voxels (the result does not depend on it).")
@click.option("--formats", default="stl", show_default=True,
              help="Comma-separated: stl (binary), obj, ply, glb.")
@click.option("--simplify", type=float, default=None,
              help="Fraction of faces to remove, e.g. 0.9 keeps ~10 % (meshes stay closed).")
@click.option("--smooth", type=click.Choice(SMOOTH_LEVELS, case_sensitive=False),
              default=DEFAULT_SMOOTH, show_default=True,
              help="Surface: none = stair-stepped marching cubes; light/strong = smoothed "
                   "(vertices move at most a quarter voxel; still closed and seam-free).")
@click.option("--shared-boundaries", is_flag=True,
              help="Touching labels share identical vertices on their common interface.")
@click.option("--labels", "label_list", default=None, help="Only these labels, e.g. 1,2.")
@click.option("--voxel-size", default=None,
              help="Voxel size z,y,x (or one number) when LABELS has none, e.g. 0.02,0.01,0.01.")
@click.option("--unit", default=None, help="Unit of the voxel size, e.g. micrometer.")
@click.option("--space", type=click.Choice(["world", "voxel"]), default="world",
              show_default=True,
              help="world: the scan's coordinates (its affine, frame and unit: meshes overlay "
                   "the NIfTI/DICOM/OME-Zarr); voxel: the voxel grid times the voxel size.")
@click.option("--workers", type=int, default=None, help="Local worker processes (default: CPUs).")
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def mesh_command(labels, out_dir, chunk_size, formats, simplify, smooth, shared_boundaries,
                 label_list, voxel_size, unit, space, workers, scheduler, quiet) -> None:
    """Mesh every label of LABELS (OME-Zarr label image, .npy, ...) into closed surfaces.

    Writes one mesh per label, <label>.<ext>, in the scan's world coordinates (x, y, z;
    --space voxel for the scaled voxel grid) with the unit and frame in each file's
    header, and stats.csv (class, voxel count, volume, surface area, components,
    bounding box; headers with the unit).
    """
    from ml4paleo.cli import fail
    from ml4paleo.meshing import mesh

    try:
        summary = mesh(
            labels, out_dir, chunk_size=chunk_size, formats=formats, simplify=simplify,
            labels_to_mesh=_int_list(label_list), executor=scheduler, workers=workers,
            voxel_size=_voxel_size(voxel_size), unit=unit, space=space, smooth=smooth,
            shared_boundaries=shared_boundaries, progress=tqdm_progress("meshing", disable=quiet),
        )
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
        return
    unit = summary["unit"] or "voxel"
    frame = f", frame {summary['frame']}" if summary.get("frame") else ""
    click.echo(f"coordinates: {summary['space']} ({unit}{frame})")
    if not summary["stats"]:
        click.echo("no labels found: nothing meshed")
    for row in summary["stats"]:
        value = row["label"]
        names = ", ".join(p.name for p in summary["files"].get(value, []))
        name = f" ({row['class']})" if row.get("class") else ""
        click.echo(
            f"label {value}{name}: {row['voxel_count']} voxels, volume {row['volume']:.6g} {unit}^3, "
            f"area {row['surface_area']:.6g} {unit}^2, {row['components']} object(s), "
            f"{summary['faces'].get(value, 0)} faces -> {names}"
        )
    click.echo(f"stats: {summary['stats_csv']} (surface: {summary['surface']})")


@click.command("export")
@click.argument("kind", type=click.Choice(["zarr", "png", "tiff", "meshes", "nifti", "stats"]))
@click.argument("source", type=click.Path(exists=True))
@click.argument("dest", type=click.Path())
@click.option("--label/--image", "label", default=None,
              help="Treat SOURCE as a label image or an intensity image "
                   "(default: from its OME-Zarr metadata).")
@click.option("--level", type=int, default=0, show_default=True,
              help="Pyramid level to export (png, tiff, nifti).")
@click.option("--window", default=None,
              help="LO,HI intensity window for 8-bit PNG of an image (default: 1-99.5 percentiles).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler address for the slab work, e.g. tcp://host:8786.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def export_command(kind, source, dest, label, level, window, scheduler, quiet) -> None:
    """Export SOURCE as KIND to DEST (a file, or a folder to put it in: existing, or ending in /).

    \b
    zarr    zip of an OME-Zarr folder (the store at the zip's root: a ZipStore)
    png     zip of PNG slices (8-bit windowed image, or label values)
    tiff    zip of TIFF slices (8-bit for 8-bit sources, else 16-bit)
    meshes  zip of a meshes folder (or a segmentation folder holding meshes/) + stats.csv
    nifti   .nii.gz on the source's world (sform/qform), labels with intent LABEL
    stats   per-label statistics CSV (copied, or computed from a label image)
    """
    from ml4paleo.cli import fail
    from ml4paleo.export import export

    options: dict = {"progress": tqdm_progress(f"export {kind}", disable=quiet)}
    if scheduler:
        options["executor"] = scheduler
    if kind in ("png", "tiff", "nifti"):
        options.update(label=label, level=level)
    if window:
        parts = [p for p in window.replace(" ", "").split(",") if p]
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise click.BadParameter(f"expected LO,HI, got {window!r}") from None
        options["window"] = (lo, hi)
    try:
        path = export(kind, Path(source), dest, **options)  # str: a trailing / means a folder
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
        return
    click.echo(f"{kind}: {path} ({path.stat().st_size} bytes)")


commands: list = [mesh_command, export_command]
