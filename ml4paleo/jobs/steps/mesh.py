"""The mesh step: mesh every label of a segmentation into its ``meshes/`` folder and
write its statistics."""

from __future__ import annotations

import logging
import shutil

from ml4paleo.formats import attach_labels
from ml4paleo.jobs.context import JobContext, StepError
from ml4paleo.jobs.statuses import Status
from ml4paleo.jobs.steps.common import executor, jsonable, library
from ml4paleo.workspace.segmentations import SegmentationRegistry, record_meshes
from ml4paleo.world import ZARR_WORLD_KEY

KIND = "mesh"

log = logging.getLogger(__name__)


def labels_with_world(ctx: JobContext, path, labels):
    """Labels of an older version (no world of their own) get the image's world and classes
    in their metadata first, so their meshes land on the scan too."""
    if ZARR_WORLD_KEY in (labels.attrs.get("ml4paleo") or {}) or not ctx.paths.image.exists():
        return labels
    try:
        return attach_labels(path, image=ctx.paths.image, register=False)
    except ValueError as exc:
        log.warning("%s: kept as it is (%s)", path, exc)
        return labels


def _cache_zip(ctx: JobContext, seg_id: str) -> None:
    """Pack the meshes' download zip now (it is small next to the meshing), so the
    downloads list shows its real size instead of the size before compression."""
    export = library("ml4paleo.export", "export", "exports")
    ctx.message("packing the meshes for download")
    try:
        export("meshes", ctx.paths.meshes(seg_id), ctx.paths.meshes_export(seg_id))
    except (OSError, ValueError) as exc:  # the download packs it on request instead
        log.warning("job %s: meshes zip not cached: %s", ctx.job_id, exc)


def run(ctx: JobContext) -> dict:
    """Mesh the requested (default: the current) segmentation."""
    from ml4paleo.formats import open_image

    mesh = library("ml4paleo.meshing", "mesh", "meshing")
    request = ctx.record.get("request") or {}
    seg_id = request.get("segmentation_id") or ctx.record.get("segmentation_id")
    if not seg_id or seg_id not in ctx.record.get("segmentations", []):
        raise StepError(f"job {ctx.job_id} has no segmentation {seg_id!r} to mesh")
    labels_path = ctx.paths.labels(seg_id)
    if not labels_path.exists():
        raise StepError(f"the labels of segmentation {seg_id} are missing")
    labels = labels_with_world(ctx, labels_path, open_image(labels_path))
    formats = tuple(request.get("formats") or ("stl",))
    # the surface asked for (none / light / strong); absent: the meshing default
    smooth = {"smooth": request["smooth"]} if request.get("smooth") else {}
    segs = SegmentationRegistry(ctx.paths)
    workdir = segs.mesh_workdir(seg_id)
    ctx.message(f"meshing {segs.name(seg_id)}")
    try:
        summary = mesh(labels, workdir, chunk_size=ctx.settings.chunk_size, formats=formats,
                       simplify=request.get("simplify"), executor=executor(ctx.settings),
                       workers=ctx.settings.workers, progress=ctx.progress, **smooth)
        ctx.check()
        if not segs.has_stats(workdir):
            label_stats = library("ml4paleo.meshing", "label_stats", "label statistics")
            segs.write_stats(seg_id, label_stats(labels, voxel_size=labels.voxel_size,
                                                 **smooth))
        files = segs.install_meshes(seg_id, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    _cache_zip(ctx, seg_id)
    record_meshes(ctx.owned_update, seg_id, {
        "formats": list(formats), "files": files,
        "summary": jsonable(summary) if isinstance(summary, dict) else None})
    n = sum(1 for f in files if not f.endswith(".csv"))
    return {"status": Status.MESHED.value,
            "message": f"{n} mesh file(s) written for {segs.name(seg_id)}"}
