"""Helpers shared by the blueprints: store access, id checks, safe paths, outputs on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask import abort, current_app, request

from ml4paleo.config import Settings

#: segmentation / model ids and mesh file names: no separators, no dots at the start
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MESH_EXTENSIONS = ("glb", "stl", "obj", "ply")
#: longest file name / relative path :func:`safe_join` looks up (Linux NAME_MAX; well
#: below PATH_MAX once joined onto the data directory)
MAX_NAME = 255
MAX_REL_PATH = 1024


def settings() -> Settings:
    return current_app.config["ML4PALEO_SETTINGS"]


def store():
    """The app's :class:`ml4paleo.jobs.JobStore`."""
    return current_app.extensions["ml4paleo_store"]


def get_job(job_id: str) -> dict:
    """The job record, or a 404 JSON error for a malformed or unknown id."""
    from ml4paleo.jobs import JobNotFound, JobStore

    if not JobStore.is_valid_id(job_id):
        abort(404, f"no job {job_id!r}")
    try:
        return store().get(job_id)
    except JobNotFound:
        abort(404, f"no job {job_id!r}")
    except ValueError:
        abort(404, f"no job {job_id!r}")


def job_dir(job_id: str) -> Path:
    """Folder of an existing job (404 when unknown)."""
    get_job(job_id)
    return Path(store().job_dir(job_id))


def check_name(value: str, what: str) -> str:
    """A segmentation id / file name safe to join onto a path, else 404."""
    if not isinstance(value, str) or not SAFE_NAME_RE.match(value) or ".." in value:
        abort(404, f"no {what} {value!r}")
    return value


def safe_join(base: Path, rel: str) -> Path:
    """``base / rel`` resolved, refusing anything that leaves ``base`` (404)."""
    if not isinstance(rel, str) or "\\" in rel or "\0" in rel:
        abort(404, "no such file")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith("..") for p in parts):
        abort(404, "no such file")
    # names the file system cannot hold (ENAMETOOLONG) cannot exist: 404, not an OSError
    if len(rel.encode("utf-8", "surrogateescape")) > MAX_REL_PATH or any(
        len(p.encode("utf-8", "surrogateescape")) > MAX_NAME for p in parts
    ):
        abort(404, "no such file")
    base_resolved = base.resolve()
    try:
        target = base_resolved.joinpath(*parts).resolve() if parts else base_resolved
    except (OSError, RuntimeError):  # a symlink loop, or a path the OS refuses
        abort(404, "no such file")
    if target != base_resolved and base_resolved not in target.parents:
        abort(404, "no such file")
    return target


def json_body() -> dict:
    """The request's JSON object, or a 400 JSON error."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "request body must be a JSON object")
    return data


def int_arg(name: str, default: int | None = None, lo: int | None = None, hi: int | None = None):
    """Integer query argument with bounds, 400 when malformed or out of range."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        if default is None:
            abort(400, f"query parameter {name!r} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"query parameter {name!r} must be an integer, got {raw!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        abort(400, f"query parameter {name!r} must be in {lo}..{hi}, got {value}")
    return value


def is_zarr_image(path: Path) -> bool:
    """A finished OME-Zarr group (conversion renames into place only when complete)."""
    return (path / ".zattrs").is_file() or (path / "zarr.json").is_file()


def image_path(job_id: str) -> Path:
    return job_dir(job_id) / "image.ome.zarr"


def segmentation_dir(job_id: str, seg_id: str) -> Path:
    check_name(seg_id, "segmentation")
    path = job_dir(job_id) / "segmentations" / seg_id
    if not path.is_dir():
        abort(404, f"no segmentation {seg_id!r} in job {job_id!r}")
    return path


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path`` (0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    if path.is_dir():
        for p in path.rglob("*"):
            try:
                if p.is_file():
                    total += p.stat().st_size
            except OSError:
                continue
    return total


def read_classes(seg_path: Path, job_path: Path) -> list[dict]:
    """Class names + colours of a segmentation (its model's meta, else the annotations')."""
    candidates = [seg_path / "classes.json", seg_path / "meta.json"]
    meta_file = seg_path / "segmentation.json"
    model_id = None
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
            model_id = meta.get("model_id")
            if isinstance(meta.get("classes"), list):
                return _clean_classes(meta["classes"])
        except (OSError, json.JSONDecodeError):
            pass
    if model_id and SAFE_NAME_RE.match(str(model_id)):
        candidates.append(job_path / "models" / str(model_id) / "meta.json")
    candidates.append(job_path / "annotations" / "classes.json")
    for c in candidates:
        if not c.is_file():
            continue
        try:
            data = json.loads(c.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        classes = data.get("classes") if isinstance(data, dict) else data
        if isinstance(classes, list) and classes:
            return _clean_classes(classes)
    return []


def _clean_classes(classes: list) -> list[dict]:
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, dict):
            out.append({"name": str(c.get("name", f"class {i}")), "color": str(c.get("color", ""))})
        else:
            out.append({"name": str(c), "color": ""})
    return out


def outputs(job_id: str) -> dict:
    """What exists on disk for a job: the image, segmentations, meshes, stats, exports.

    The UI offers viewers and downloads from this, not from the latest status, so a
    new annotation never hides an existing segmentation's results.
    """
    root = job_dir(job_id)
    image = root / "image.ome.zarr"
    result: dict = {
        "upload": {"exists": (root / "upload").is_dir(), "bytes": dir_size(root / "upload")},
        "image": {"exists": is_zarr_image(image), "bytes": dir_size(image) if image.is_dir() else 0},
        "annotations": {"exists": (root / "annotations").is_dir()},
        "models": sorted(p.name for p in (root / "models").glob("*") if p.is_dir())
        if (root / "models").is_dir()
        else [],
        "segmentations": [],
        "exports": [],
    }
    seg_root = root / "segmentations"
    if seg_root.is_dir():
        segs = sorted((p for p in seg_root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for seg in segs:
            if not SAFE_NAME_RE.match(seg.name):
                continue
            labels = seg / "labels.ome.zarr"
            mesh_dir = seg / "meshes"
            meshes = []
            if mesh_dir.is_dir():
                for m in sorted(mesh_dir.iterdir()):
                    ext = m.suffix.lower().lstrip(".")
                    if m.is_file() and ext in MESH_EXTENSIONS and SAFE_NAME_RE.match(m.name):
                        meshes.append({"file": m.name, "label": m.stem, "format": ext,
                                       "bytes": m.stat().st_size})
            result["segmentations"].append(
                {
                    "id": seg.name,
                    "labels": is_zarr_image(labels),
                    "labels_bytes": dir_size(labels) if labels.is_dir() else 0,
                    "meshes": meshes,
                    "stats": (seg / "stats.csv").is_file() or (mesh_dir / "stats.csv").is_file(),
                    "classes": read_classes(seg, root),
                }
            )
    exports = root / "exports"
    if exports.is_dir():
        for f in sorted(exports.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                result["exports"].append({"file": f.name, "bytes": f.stat().st_size})
    return result
