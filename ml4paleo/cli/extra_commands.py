"""CLI commands: ``ml4paleo dicom-listen`` (DICOM receive) and ``ml4paleo report``."""

from __future__ import annotations

from pathlib import Path

import click

from ml4paleo.config import Settings


@click.command("dicom-listen")
@click.option("--port", type=click.IntRange(1, 65535), default=11112, show_default=True,
              help="TCP port to listen on.")
@click.option("--ae-title", default="ML4PALEO", show_default=True,
              help="Our DICOM Application Entity title.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Interface to bind.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory (default: ML4PALEO_DATA or ./data).")
@click.option("--idle-seconds", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True,
              help="A series with no new instance for this long is complete.")
@click.option("--any-ae", is_flag=True, help="Accept associations addressed to any AE title.")
def dicom_listen(port: int, ae_title: str, host: str, data_dir: Path | None,
                 idle_seconds: float, any_ae: bool) -> None:
    """Receive DICOM series (C-STORE) and create one job per series.

    Each complete series becomes a job in status "uploaded"; a running conversion
    runner (``ml4paleo runner convert`` or ``main.py``) converts it.
    """
    from ml4paleo.cli import fail
    from ml4paleo.dicom_listen import DicomReceiver

    settings = Settings.from_env(data_dir=data_dir)
    try:
        receiver = DicomReceiver(settings, port=port, ae_title=ae_title, host=host,
                                 idle_seconds=idle_seconds, require_called_ae=not any_ae)
    except ValueError as exc:
        fail(str(exc))
        return
    try:
        receiver.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return
    click.echo(
        f"Listening as {ae_title} on {host}:{receiver.port}; jobs go to "
        f"{settings.jobs_dir} (Ctrl-C to stop)"
    )
    seen = 0
    try:
        while True:
            ids = receiver.wait_for_jobs(seen + 1, timeout=1.0)
            for job_id in ids[seen:]:
                record = receiver.store.get(job_id)
                click.echo(f"job {job_id}: {record['name']} (series received)")
            seen = len(ids)
    except KeyboardInterrupt:
        click.echo("Stopped.")
    finally:
        receiver.stop()


@click.command("report")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Output folder, or a file name ending in .html or .pdf.")
@click.option("--format", "formats", type=click.Choice(["html", "pdf"]), multiple=True,
              help="Formats to write (repeatable; default: html and pdf).")
@click.option("--segmentation", "segmentation_id", default=None,
              help="With a job folder: which segmentation (default: the current one).")
@click.option("--image", type=click.Path(exists=True, path_type=Path), default=None,
              help="The scan's OME-Zarr for the overlays (default: the job's image).")
@click.option("--slices", type=click.IntRange(1, 24), default=6, show_default=True,
              help="Number of z slices in the montage.")
def report(source: Path, out: Path, formats: tuple[str, ...], segmentation_id: str | None,
           image: Path | None, slices: int) -> None:
    """Write the quantification report (HTML + PDF) of a segmentation.

    SOURCE is a job folder (data/jobs/<id>), a segmentation folder
    (data/jobs/<id>/segmentations/<seg_id>) or a label OME-Zarr.
    """
    from ml4paleo.blocks import tqdm_progress
    from ml4paleo.cli import fail
    from ml4paleo.report import ReportError, build_report

    if not formats:
        formats = ("html", "pdf")
        if out.suffix.lower() in (".html", ".pdf"):
            formats = (out.suffix.lower()[1:],)
    try:
        paths = build_report(source, out, formats=formats, segmentation_id=segmentation_id,
                             image=image, slices=slices, progress=tqdm_progress("report"))
    except (ReportError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")


commands: list[click.Command] = [dicom_listen, report]
