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
    """Shape, dtype, voxel size, unit and source details of a converted OME-Zarr image."""
    from ml4paleo.omezarr import open_image

    image = open_image(path)
    extra = image.attrs.get("ml4paleo") or {}
    return jsonable({
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "voxel_size": list(image.voxel_size) if image.voxel_size else None,
        "unit": image.unit,
        "levels": len(image.levels),
        "source_type": extra.get("source_type"),
        "source": extra.get("source") or {},
    })


def run(ctx: JobContext) -> dict:
    """Convert the upload into the job's image and store the image's metadata."""
    convert = library("ml4paleo.convert", "convert", "conversion")
    upload = ctx.paths.upload
    if not upload.is_dir() or not any(p.is_file() for p in upload.rglob("*")):
        raise StepError("upload: no uploaded files to convert")
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
                workers=ctx.settings.workers, overwrite=True)
    finally:
        volume.close()
    metadata = image_metadata(dest)
    fields: dict = {"metadata": metadata,
                    "message": f"converted: {' x '.join(map(str, metadata['shape']))} "
                               f"{metadata['dtype']}"}
    if ctx.record.get("source_type") in (None, "auto") and metadata.get("source_type"):
        fields["source_type"] = metadata["source_type"]
    return fields
