"""The convert step: ``upload/`` -> the job's OME-Zarr image, and the image's metadata.

The upload is opened from its headers and checked against the decoded-size limits of the
settings (:func:`ml4paleo.io.check_decode_limits`) before a pixel is decoded.
"""

from __future__ import annotations

from pathlib import Path

from ml4paleo.jobs.context import JobContext, StepError
from ml4paleo.jobs.steps.common import jsonable, library

KIND = "convert"


def image_metadata(path: Path) -> dict:
    """Shape, dtype, voxel size, unit, where the voxel size came from, warnings and source
    details of a converted OME-Zarr image."""
    from ml4paleo.formats import open_image

    image = open_image(path)
    extra = image.attrs.get("ml4paleo") or {}
    return jsonable({
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "voxel_size": list(image.voxel_size) if image.voxel_size else None,
        "unit": image.unit,
        "voxel_size_from": extra.get("voxel_size_from"),
        "levels": len(image.levels),
        "source_type": extra.get("source_type"),
        "source": extra.get("source") or {},
        "warnings": extra.get("warnings") or [],
    })


def convert_options(record: dict) -> dict:
    """``voxel_size`` / ``unit`` the user gave for the conversion (at upload), if any."""
    options = record.get("convert_options") or {}
    out = {}
    if options.get("voxel_size") is not None:
        out["voxel_size"] = tuple(float(v) for v in options["voxel_size"])
    if options.get("unit"):
        out["unit"] = str(options["unit"])
    return out


def run(ctx: JobContext) -> dict:
    """Convert the upload into the job's image and store the image's metadata and the
    warnings of the conversion (shown by the web app)."""
    convert = library("ml4paleo.convert", "convert", "conversion")
    upload = ctx.paths.upload
    if not upload.is_dir() or not any(p.is_file() for p in upload.rglob("*")):
        raise StepError("nothing was uploaded: there are no files to convert")
    dest = ctx.paths.image
    from ml4paleo.io import DecodeLimits, check_decode_limits, open_any

    # headers only: a scan too large (or a decompression bomb) is refused before decoding
    volume = open_any(upload)
    try:
        check_decode_limits(volume, DecodeLimits.from_settings(ctx.settings))
        if ctx.settings.workers:
            volume.workers = int(ctx.settings.workers)
        ctx.message("converting the upload to OME-Zarr")
        # written under a temp name and renamed when complete, replacing an earlier attempt's
        convert(volume, dest, chunks=ctx.settings.chunk_size, progress=ctx.progress,
                workers=ctx.settings.workers, overwrite=True, **convert_options(ctx.record))
    finally:
        volume.close()
    metadata = image_metadata(dest)
    warnings = [{**w, "message": ctx.public(str(w.get("message", "")))}
                for w in metadata["warnings"]]
    metadata["warnings"] = warnings
    message = f"converted: {' x '.join(map(str, metadata['shape']))} {metadata['dtype']}"
    if warnings:
        message += f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})"
    fields: dict = {"metadata": metadata, "warnings": warnings, "message": message}
    if ctx.record.get("source_type") in (None, "auto") and metadata.get("source_type"):
        fields["source_type"] = metadata["source_type"]
    return fields
