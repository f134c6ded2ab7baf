"""``ml4paleo measure``: morphometry of a segmentation (thickness, porosity, connectivity, objects)."""

from __future__ import annotations

from pathlib import Path

import click

from ml4paleo.blocks import tqdm_progress

#: files ``ml4paleo measure`` writes in its output folder
SUMMARY_NAME = "morphometry.json"
TABLE_NAME = "morphometry.csv"
OBJECTS_NAME = "objects.csv"
THICKNESS_NAME = "thickness.ome.zarr"


def _numbers(text: str | None, kind: type, what: str) -> list | None:
    if not text:
        return None
    try:
        return [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {what}, got {text!r}") from None


def _voxel_size(text: str | None) -> tuple[float, ...] | None:
    values = _numbers(text, float, "numbers")
    if values is None:
        return None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise click.BadParameter(f"give one number or three (z,y,x), got {text!r}")
    return tuple(values)


def _box(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if not text:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise click.BadParameter(f"expected z0:z1,y0:y1,x0:x1, got {text!r}")
    try:
        return tuple((int(a), int(b)) for a, b in (p.split(":") for p in parts))
    except ValueError:
        raise click.BadParameter(f"expected integers in z0:z1,y0:y1,x0:x1, got {text!r}") from None


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


@click.command("measure")
@click.argument("labels", type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help=f"Folder for {SUMMARY_NAME}, {TABLE_NAME}, {OBJECTS_NAME} and {THICKNESS_NAME}.")
@click.option("--values", default=None, help="Class values to measure, e.g. 1,2 (default: all present).")
@click.option("--measures", default=None,
              help="Comma-separated subset of fractions, connectivity, anisotropy, thickness, "
                   "spacing, objects, profiles (default: all).")
@click.option("--voxel-size", default=None,
              help="Voxel size z,y,x (or one number) when LABELS has none, e.g. 0.02,0.01,0.01.")
@click.option("--unit", default=None, help="Unit of the voxel size, e.g. micrometer.")
@click.option("--box", default=None, help="Analyse only this box: z0:z1,y0:y1,x0:x1 (voxels).")
@click.option("--roi-mask", type=click.Path(exists=True), default=None,
              help="Label volume of the same shape; nonzero (or --roi-value) voxels are the ROI.")
@click.option("--roi-value", type=int, default=None, help="Label of the ROI in --roi-mask.")
@click.option("--max-thickness", type=float, default=None,
              help="Largest thickness resolved, in the voxel size's unit (default: 32 voxels).")
@click.option("--profile-axis", type=click.Choice(["z", "y", "x"]), default="z", show_default=True,
              help="Axis of the compactness profiles.")
@click.option("--thickness-map/--no-thickness-map", default=True, show_default=True,
              help=f"Write {THICKNESS_NAME} (local thickness of every voxel).")
@click.option("--chunk-size", type=int, default=128, show_default=True,
              help="Block edge in voxels (the result does not depend on it).")
@click.option("--workers", type=int, default=None, help="Local worker processes (default: CPUs).")
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def measure_command(labels, out_dir, values, measures, voxel_size, unit, box, roi_mask, roi_value,
                    max_thickness, profile_axis, thickness_map, chunk_size, workers, scheduler,
                    quiet) -> None:
    """Measure the classes of LABELS (a segmentation): BV/TV, BS/TV, local thickness and
    spacing, connectivity density, degree of anisotropy, compactness profiles, and one row
    per object (volume, surface, sphericity, centroid, axes), in the voxel size's units.
    """
    from ml4paleo._fs import atomic_write_json
    from ml4paleo.cli import fail
    from ml4paleo.morphometry import class_table, measure, parse_measures, write_table_csv

    out = Path(out_dir)
    try:
        chosen = parse_measures(measures)
        out.mkdir(parents=True, exist_ok=True)
        result = measure(
            labels, values=_numbers(values, int, "integers"), measures=chosen,
            voxel_size=_voxel_size(voxel_size), unit=unit, roi_box=_box(box), roi_mask=roi_mask,
            roi_value=roi_value, max_thickness=max_thickness, profile_axis=profile_axis,
            objects_csv=out / OBJECTS_NAME if "objects" in chosen else None,
            thickness_map=out / THICKNESS_NAME if thickness_map and "thickness" in chosen else None,
            chunk_size=chunk_size, executor=scheduler, workers=workers,
            progress=tqdm_progress("measuring", disable=quiet),
        )
        summary = atomic_write_json(out / SUMMARY_NAME, result.to_dict())
        table = write_table_csv(class_table(result.to_dict()), out / TABLE_NAME, unit=result.unit)
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
        return
    u = result.unit or "unit"
    if not result.classes:
        click.echo("no classes found: nothing measured")
    for c in result.classes:
        parts = [f"class {c['value']} ({c['name']}):"]
        if "bv_tv" in c:
            parts.append(f"BV/TV {_fmt(c['bv_tv'])}, BS/TV {_fmt(c['bs_tv'])} {u}^-1")
        if "thickness" in c:
            parts.append(f"Th {_fmt(c['thickness']['mean'])} ± {_fmt(c['thickness']['sd'])} {u}")
        if "spacing" in c:
            parts.append(f"Sp {_fmt(c['spacing']['mean'])} {u}")
        if "connectivity_density" in c:
            parts.append(f"Conn.D {_fmt(c['connectivity_density'])} {u}^-3")
        if "degree_of_anisotropy" in c:
            parts.append(f"DA {_fmt(c['degree_of_anisotropy'], 3)}")
        if "objects" in c:
            parts.append(f"{c['objects']} object(s)")
        click.echo(" ".join(parts[:1]) + " " + ", ".join(parts[1:]))
    if result.clipped:
        click.echo(f"warning: thickness reached --max-thickness {result.max_thickness:g} {u}; "
                   "thicker structures are reported as that", err=True)
    click.echo(f"summary: {summary}")
    click.echo(f"table: {table}")
    if result.objects_csv:
        click.echo(f"objects: {result.objects_csv}")
    if result.thickness_map:
        click.echo(f"thickness map: {result.thickness_map}")


commands: list = [measure_command]
