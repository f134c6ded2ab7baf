"""Morphometry routes: queue a measure run, read its results, download its files.

Thin: the options are checked by :func:`ml4paleo.morphometry.options.measure_options`
(through :meth:`JobStore.request_measure`), the results are the files the measure step
wrote (names from :class:`ml4paleo.workspace.paths.SegmentationPaths`).
"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify, request, send_file

from ml4paleo.workspace import SegmentationRegistry

from .common import get_job, job_paths, segmentation_dir, store, with_state

bp = Blueprint("measure", __name__)

#: downloadable files of a run: name -> (SegmentationPaths attribute, mimetype)
FILES = {
    "morphometry.json": ("morphometry_summary", "application/json"),
    "morphometry.csv": ("morphometry_table", "text/csv"),
    "objects.csv": ("morphometry_objects", "text/csv"),
}
_OPTIONS = ("measures", "values", "max_thickness", "roi_box", "thickness_map", "profile_axis")


@bp.post("/api/job/<job_id>/measure")
def start_measure(job_id: str):
    """Queue morphometry of a segmentation (409 when there is none or work runs).

    Body (optional): ``{segmentation_id, measures, values, max_thickness, roi_box,
    thickness_map, profile_axis}`` (see ``ml4paleo measure --help``); 400 names a bad field.
    """
    from ml4paleo.jobs import InvalidTransition

    get_job(job_id)
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        abort(400, "request body must be a JSON object")
    seg = body.get("segmentation_id")
    if seg is not None and not isinstance(seg, str):
        abort(400, "segmentation_id must be a string")
    unknown = sorted(set(body) - {"segmentation_id", *_OPTIONS})
    if unknown:
        abort(400, f"unknown field(s) {', '.join(unknown)}")
    try:
        record = store().request_measure(job_id, segmentation_id=seg,
                                         **{k: body[k] for k in _OPTIONS if k in body})
    except InvalidTransition as exc:  # (a ValueError too: caught first)
        abort(409, str(exc))
    except ValueError as exc:
        abort(400, str(exc))
    status = getattr(record.get("status"), "value", record.get("status"))
    return jsonify(with_state({"status": "success", "job_id": record.get("id"),
                               "job_status": status, "request": record.get("request")}, status))


def _segmentation(job_id: str, record: dict) -> str:
    seg = request.args.get("segmentation_id") or record.get("segmentation_id")
    if not seg:
        abort(404, f"job {job_id!r} has no segmentation")
    segmentation_dir(job_id, seg)
    return seg


@bp.get("/api/job/<job_id>/measure")
def measure_results(job_id: str):
    """The morphometry of a segmentation: per-class table, units, histograms, legend.

    Query ``segmentation_id`` (default: the current one). 404 until it was measured.
    The per-object rows are in ``objects.csv`` (see ``files``).
    """
    from ml4paleo.morphometry import class_table, column_units
    from ml4paleo.morphometry.colours import legend

    record = get_job(job_id)
    seg = _segmentation(job_id, record)
    summary = SegmentationRegistry(job_paths(job_id)).morphometry(seg)
    if summary is None:
        abort(404, f"segmentation {seg!r} is not measured yet")
    base = f"/api/job/{job_id}/measure/{seg}"
    files = job_paths(job_id).segmentation_files(seg)
    unit = summary.get("unit")
    histograms = {
        str(c["value"]): {k: (c.get(k) or {}).get("histogram") for k in ("thickness", "spacing")
                          if isinstance(c.get(k), dict)}
        for c in summary.get("classes") or []
    }
    sizes: dict[str, list] = {}
    for row in summary.get("objects") or []:
        sizes.setdefault(str(row.get("class_value")), []).append(row.get("volume"))
    answer = {
        "segmentation_id": seg,
        "created_at": summary.get("created_at"),
        "unit": unit,
        "voxel_size": summary.get("voxel_size"),
        "box": summary.get("box"),
        "max_thickness": summary.get("max_thickness"),
        "clipped": summary.get("clipped"),
        "measures": summary.get("measures"),
        "table": class_table(summary),
        "column_units": column_units(unit),
        "histograms": histograms,
        "object_volumes": sizes,
        "objects": len(summary.get("objects") or []),
        "legend": legend(summary["max_thickness"], unit) if summary.get("max_thickness") else None,
        "thickness_map": files.thickness_map.exists(),
        "files": {name: f"{base}/{name}" for name, (attr, _) in FILES.items()
                  if getattr(files, attr).is_file()},
    }
    if answer["thickness_map"]:
        answer["thickness_slice"] = f"/api/job/{job_id}/segmentation/{seg}/thickness/slice"
    answer["meshes"] = [
        {"file": m.name, "label": m.stem, "format": m.suffix[1:], "url": f"{base}/meshes/{m.name}"}
        for m in sorted(files.thickness_meshes.glob("*"))
        if m.is_file() and m.suffix in (".ply", ".glb") and m.stem.isdigit()
    ] if files.thickness_meshes.is_dir() else []
    return jsonify(answer)


@bp.get("/api/job/<job_id>/measure/<seg_id>/meshes/<filename>")
def measure_mesh(job_id: str, seg_id: str, filename: str):
    """A mesh coloured by local thickness (``<label>.ply`` or ``<label>.glb``)."""
    get_job(job_id)
    segmentation_dir(job_id, seg_id)
    stem, _, ext = filename.rpartition(".")
    if not stem.isdigit() or ext not in ("ply", "glb"):
        abort(404, f"no thickness-coloured mesh {filename!r}")
    path = job_paths(job_id).segmentation_files(seg_id).thickness_meshes / f"{int(stem)}.{ext}"
    if not path.is_file():
        abort(404, f"segmentation {seg_id!r} has no thickness-coloured mesh {filename!r}")
    mimetype = "model/gltf-binary" if ext == "glb" else "application/octet-stream"
    return send_file(path, mimetype=mimetype, conditional=True, max_age=60)


@bp.get("/api/job/<job_id>/measure/<seg_id>/<filename>")
def measure_file(job_id: str, seg_id: str, filename: str):
    """Download a morphometry file: ``morphometry.json``, ``morphometry.csv``, ``objects.csv``."""
    record = get_job(job_id)
    segmentation_dir(job_id, seg_id)
    if filename not in FILES:
        abort(404, f"no morphometry file {filename!r} (use {', '.join(FILES)})")
    attr, mimetype = FILES[filename]
    path = getattr(job_paths(job_id).segmentation_files(seg_id), attr)
    if not path.is_file():
        abort(404, f"segmentation {seg_id!r} has no {filename} (measure it first)")
    name = f"{record.get('name') or job_id}-{seg_id}-{filename}".replace("/", "_")
    return send_file(path, mimetype=mimetype, as_attachment=True, download_name=name,
                     conditional=True, max_age=0)
