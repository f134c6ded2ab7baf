"""The measure step: morphometry of a segmentation into its ``morphometry/`` folder.

Writes (names from :class:`~ml4paleo.workspace.paths.SegmentationPaths`) the summary
JSON (every measure, objects, profiles, histograms), the per-class table CSV, the
per-object CSV with class names, and the local-thickness map (an OME-Zarr image in the
labels' world) and, when the segmentation has meshes, those meshes again with vertex
colours by thickness (PLY and GLB); the folder is swapped in whole, so a failed run
leaves the previous one. The job record gets the table (``morphometry[seg_id]``) and live progress.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ml4paleo.jobs.context import JobContext, StepError
from ml4paleo.jobs.statuses import Status
from ml4paleo.jobs.steps.common import executor, jsonable, library
from ml4paleo.jobs.steps.mesh import labels_with_world

KIND = "measure"

log = logging.getLogger(__name__)

#: fields of a measure request (``record["request"]``) and what they become
REQUEST_FIELDS = ("segmentation_id", "measures", "values", "max_thickness", "roi_box",
                  "thickness_map", "profile_axis")


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (the summary is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _color_meshes(ctx: JobContext, files: Any, tmp: Any, labels_path: Any, result: Any) -> None:
    """The segmentation's meshes again, coloured by the new thickness map (PLY + GLB)."""
    color_meshes = library("ml4paleo.morphometry.mesh_colours", "color_meshes",
                           "thickness-coloured meshes")
    ctx.message("colouring the meshes by local thickness")
    names = {int(c["value"]): c["name"] for c in result.classes}
    written = color_meshes(files.meshes, tmp / files.thickness_map.name, labels_path,
                           tmp / files.thickness_meshes.name, class_names=names)
    log.info("job %s: %d thickness-coloured mesh file(s)", ctx.job_id, len(written))


def run(ctx: JobContext) -> dict:
    """Measure the requested (default: the current) segmentation."""
    from ml4paleo._fs import atomic_dir, atomic_write_json, now_iso
    from ml4paleo.formats import open_image
    from ml4paleo.workspace.segmentations import record_morphometry

    measure = library("ml4paleo.morphometry", "measure", "morphometry")
    parse_measures = library("ml4paleo.morphometry", "parse_measures", "morphometry")
    class_table = library("ml4paleo.morphometry", "class_table", "the morphometry table")
    write_table_csv = library("ml4paleo.morphometry", "write_table_csv", "the morphometry table")
    request = ctx.record.get("request") or {}
    seg_id = request.get("segmentation_id") or ctx.record.get("segmentation_id")
    if not seg_id or seg_id not in ctx.record.get("segmentations", []):
        raise StepError(f"job {ctx.job_id} has no segmentation {seg_id!r} to measure")
    labels_path = ctx.paths.labels(seg_id)
    if not labels_path.exists():
        raise StepError(f"{labels_path}: the segmentation's labels are missing")
    labels_with_world(ctx, labels_path, open_image(labels_path))
    try:
        chosen = parse_measures(request.get("measures"))
    except ValueError as exc:
        raise StepError(f"request.measures: {exc}") from None
    want_map = request.get("thickness_map", True) is not False and "thickness" in chosen
    files = ctx.paths.segmentation_files(seg_id)
    ctx.message(f"measuring segmentation {seg_id}")
    ctx.set_range(0.0, 0.97)
    files.root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(files.morphometry) as tmp:
        try:
            result = measure(
                labels_path, values=request.get("values"), measures=chosen,
                roi_box=request.get("roi_box"), max_thickness=request.get("max_thickness"),
                profile_axis=request.get("profile_axis") or 0,
                objects_csv=tmp / files.morphometry_objects.name if "objects" in chosen else None,
                thickness_map=tmp / files.thickness_map.name if want_map else None,
                work_dir=tmp, chunk_size=ctx.settings.chunk_size,
                executor=executor(ctx.settings), workers=ctx.settings.workers,
                progress=ctx.progress)
        except ValueError as exc:  # a bad request (box outside the volume, ...): no retry
            raise StepError(f"measuring {seg_id} failed: {exc}") from None
        ctx.check()
        summary = _finite(jsonable(result.to_dict()))
        summary["objects_csv"] = files.morphometry_objects.name if result.objects_csv else None
        summary["thickness_map"] = files.thickness_map.name if result.thickness_map else None
        summary["segmentation_id"] = seg_id
        summary["measures"] = sorted(chosen)
        summary["created_at"] = now_iso()
        atomic_write_json(tmp / files.morphometry_summary.name, summary)
        rows = class_table(summary)
        write_table_csv(rows, tmp / files.morphometry_table.name, unit=result.unit)
        if result.thickness_map is not None and files.meshes.is_dir():
            _color_meshes(ctx, files, tmp, labels_path, result)
    written = sorted(p.name for p in files.morphometry.iterdir())
    record_morphometry(ctx.owned_update, seg_id, {
        "created_at": summary["created_at"], "measures": summary["measures"],
        "unit": result.unit, "voxel_size": list(result.voxel_size),
        "max_thickness": result.max_thickness, "clipped": result.clipped,
        "objects": len(result.objects), "table": rows, "files": written})
    n = len(result.classes)
    return {"status": Status.MEASURED.value,
            "message": f"measured {n} class(es) and {len(result.objects)} object(s) of {seg_id}"}
