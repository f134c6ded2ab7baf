"""A job's voxel size, set by its owner after conversion: the image, every label image and
what depends on them.

:func:`set_job_voxel_size` rewrites the metadata of the job's image and of each
segmentation's labels (:func:`ml4paleo.convert.set_voxel_size`: no voxel is touched),
drops the cached exports (previews, zips, NIfTI, reports carry the old size) and marks
the segmentations whose meshes and statistics were measured with the old size, so the
user is told to mesh them again. Call it while no runner works on the job (the job
store does, under the job's lock).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ml4paleo._fs import atomic_write_json, now_iso
from ml4paleo.convert import parse_voxel_size, set_voxel_size
from ml4paleo.io import is_zarr_store
from ml4paleo.workspace.paths import JobPaths
from ml4paleo.workspace.segmentations import GEOMETRY_CHANGED, SegmentationRegistry

__all__ = ["set_job_voxel_size"]

log = logging.getLogger(__name__)


def set_job_voxel_size(paths: JobPaths, voxel_size: Sequence[float], unit: str) -> dict:
    """Set the voxel size of the job's image and label images (metadata only).

    Returns
    -------
    dict
        ``voxel_size`` (z, y, x floats), ``unit`` (NGFF name), ``world`` (the image's new
        transform as JSON), ``segmentations`` (ids updated) and ``remesh`` (ids whose
        meshes / statistics now need making again).

    Raises
    ------
    ValueError
        For a bad voxel size or unit, or a job without a converted image.
    """
    vs, unit = parse_voxel_size(voxel_size, unit)
    if not is_zarr_store(paths.image):
        raise ValueError("the job has no converted image yet")
    world = set_voxel_size(paths.image, vs, unit)
    segs = SegmentationRegistry(paths)
    updated, remesh = [], []
    for seg_id in segs.ids():
        if is_zarr_store(paths.labels(seg_id)):
            set_voxel_size(paths.labels(seg_id), vs, unit)
            updated.append(seg_id)
        if segs.stats_file(seg_id) is not None or segs.mesh_files(seg_id):
            meta = segs.meta(seg_id)
            meta[GEOMETRY_CHANGED] = now_iso()
            atomic_write_json(paths.segmentation_meta(seg_id), meta)
            remesh.append(seg_id)
    removed = 0
    if paths.exports.is_dir():
        for f in paths.exports.iterdir():
            if f.is_file() and not f.name.startswith("."):
                f.unlink(missing_ok=True)
                removed += 1
    log.info("job %s: voxel size set to %s %s (%d label image(s), %d cached export(s) "
             "dropped)", paths.job_id, vs, unit, len(updated), removed)
    return {"voxel_size": list(vs), "unit": unit, "world": world.to_json(),
            "segmentations": updated, "remesh": remesh}
