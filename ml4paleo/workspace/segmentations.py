"""A job's segmentations: ``segmentations/<seg_id>/`` with the label image, meshes,
statistics and ``segmentation.json``; and what exists on disk for a job (:func:`job_outputs`).

The one segmentation registry: the segment runner creates a segmentation here, the mesh
runner installs its meshes and statistics here, and the web app, the report and the
client listing read them from here. What the UI offers (viewers, downloads) follows from
what exists, not from the latest status.

Examples
--------
>>> import tempfile
>>> segs = SegmentationRegistry(tempfile.mkdtemp())
>>> seg_id = segs.create()
>>> _ = segs.write_meta(seg_id, model_id="m1")
>>> segs.meta(seg_id)["model_id"], segs.ids() == [seg_id]
('m1', True)
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

from ml4paleo._fs import (
    atomic_write_json,
    atomic_writer,
    iso_of_timestamp,
    now_iso,
    parse_iso,
    replace_dir,
    temp_path,
)
from ml4paleo.classes import ClassError, default_color, hex_to_rgb, validate_classes
from ml4paleo.io import is_zarr_store
from ml4paleo.workspace.ids import new_id
from ml4paleo.workspace.models import ModelRegistry, RecordUpdate, read_meta
from ml4paleo.workspace.names import assign_numbers, clean_name, default_name
from ml4paleo.workspace.paths import ARTIFACT_NAME_RE, ID_RE, JobPaths

__all__ = [
    "GEOMETRY_CHANGED",
    "MESH_EXTENSIONS",
    "SegmentationNotFound",
    "SegmentationRegistry",
    "dir_size",
    "job_outputs",
    "read_class_list",
    "record_meshes",
    "record_morphometry",
    "record_segmentation",
]

log = logging.getLogger(__name__)

#: mesh file formats a segmentation's ``meshes/`` folder may hold
MESH_EXTENSIONS = ("glb", "stl", "obj", "ply")
#: key of ``segmentation.json``: when the job's voxel size changed after it was measured
GEOMETRY_CHANGED = "geometry_changed_at"


class SegmentationNotFound(KeyError):
    """No segmentation with this id in the job (or the id is malformed)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "segmentation not found"


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


def _folder_time(path: Path) -> str:
    """A folder's modification time in the :func:`~ml4paleo._fs.now_iso` format."""
    try:
        return iso_of_timestamp(path.stat().st_mtime)
    except OSError:
        return ""


def read_class_list(raw: object) -> list[dict]:
    """Class names and colours from a stored class list (``classes.json``, a model's
    ``meta.json``): validated by :mod:`ml4paleo.classes`; a list older versions wrote that
    breaks today's rules (bare names, bad colours, repeated names) is still shown, with
    palette colours where a colour is missing or invalid."""
    classes = raw.get("classes") if isinstance(raw, dict) else raw
    if not isinstance(classes, list) or not classes:
        return []
    try:
        return validate_classes(classes)
    except ClassError:
        pass
    out = []
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            c = {"name": str(c)}
        color = c.get("color")
        try:
            hex_to_rgb(color)
        except ClassError:
            color = default_color(i)
        out.append({"name": str(c.get("name") or f"class {i}"), "color": color.lower()})
    return out


class SegmentationRegistry:
    """The segmentations of one job folder.

    Parameters
    ----------
    paths : JobPaths or path
        The job's paths (or its folder).
    """

    def __init__(self, paths: JobPaths | str | os.PathLike) -> None:
        self.paths = paths if isinstance(paths, JobPaths) else JobPaths(paths)

    # -- reading --------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of the segmentation folders, oldest first (by folder time)."""
        root = self.paths.segmentations
        if not root.is_dir():
            return []
        folders = [p for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and ID_RE.match(p.name)]
        folders.sort(key=lambda p: p.stat().st_mtime)
        return [p.name for p in folders]

    def exists(self, seg_id: str) -> bool:
        """True when ``seg_id`` is a well-formed id of a segmentation folder of this job."""
        try:
            return self.paths.segmentation(seg_id).is_dir()
        except ValueError:
            return False

    def folder(self, seg_id: str) -> Path:
        """The folder of segmentation ``seg_id``.

        Raises
        ------
        SegmentationNotFound
            When the id is malformed or no such segmentation exists.
        """
        if not self.exists(seg_id):
            raise SegmentationNotFound(
                f"no segmentation {str(seg_id)[:80]!r} in job {self.paths.job_id!r}")
        return self.paths.segmentation(seg_id)

    def meta(self, seg_id: str) -> dict:
        """The segmentation's ``segmentation.json`` ({} when missing or unreadable)."""
        return read_meta(self.paths.segmentation_meta(seg_id))

    def classes(self, seg_id: str) -> list[dict]:
        """Class names + colours of a segmentation: its ``segmentation.json``, else a class
        list kept beside it, else its model's ``meta.json``, else the annotations'."""
        meta = self.meta(seg_id)
        if isinstance(meta.get("classes"), list) and meta["classes"]:
            return read_class_list(meta["classes"])
        candidates = list(self.paths.segmentation_class_files(seg_id))
        model_id = meta.get("model_id")
        if isinstance(model_id, str) and ID_RE.match(model_id) and ".." not in model_id:
            candidates.append(self.paths.model_meta(model_id))
        candidates.append(self.paths.classes)
        for path in candidates:
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            classes = read_class_list(data)
            if classes:
                return classes
        return []

    def stats_file(self, seg_id: str) -> Path | None:
        """The segmentation's statistics CSV (beside it, or inside ``meshes/``), if any."""
        for path in (self.paths.stats(seg_id), self.paths.mesh_stats(seg_id)):
            if path.is_file():
                return path
        return None

    def mesh_files(self, seg_id: str) -> list[dict]:
        """Mesh files of a segmentation: ``{file, label, format, bytes}`` by file name."""
        folder = self.paths.meshes(seg_id)
        if not folder.is_dir():
            return []
        out = []
        for m in sorted(folder.iterdir()):
            ext = m.suffix.lower().lstrip(".")
            if m.is_file() and ext in MESH_EXTENSIONS and ARTIFACT_NAME_RE.match(m.name):
                out.append({"file": m.name, "label": m.stem, "format": ext,
                            "bytes": m.stat().st_size})
        return out

    def measurements_outdated(self, seg_id: str) -> bool:
        """True when the job's voxel size changed after the segmentation's meshes or
        statistics were made (they are in the old size until it is meshed again)."""
        changed = self.meta(seg_id).get(GEOMETRY_CHANGED)
        if not changed:
            return False
        try:
            when = parse_iso(changed).timestamp()
        except (TypeError, ValueError):
            return False
        made = [p for p in (self.stats_file(seg_id), self.paths.meshes(seg_id))
                if p is not None and p.exists()]
        return bool(made) and min(p.stat().st_mtime for p in made) < when

    def numbers(self) -> dict[str, int]:
        """The number (from 1) of every segmentation in the job, in the order they were made
        (kept in ``segmentation.json``; older ones are numbered by their time)."""
        items = []
        for s in self.ids():
            meta = self.meta(s)
            if not meta.get("created_at"):  # an older version's (or one being written)
                meta = {**meta, "created_at": _folder_time(self.paths.segmentation(s))}
            items.append((s, meta))
        return assign_numbers(items)

    def name(self, seg_id: str, number: int | None = None) -> str:
        """What people read: the name it was given, else
        ``Segmentation <n> · <classes> · <when>`` (:func:`~ml4paleo.workspace.names.default_name`)."""
        meta = self.meta(seg_id)
        given = meta.get("name")
        if isinstance(given, str) and given.strip():
            return given
        if number is None:
            number = self.numbers().get(seg_id)
        return default_name("Segmentation", number, self.classes(seg_id),
                            meta.get("created_at") or meta.get("finished_at"))

    def names(self) -> dict[str, str]:
        """:meth:`name` of every segmentation of the job."""
        numbers = self.numbers()
        return {s: self.name(s, numbers.get(s)) for s in self.ids()}

    def rename(self, seg_id: str, name: str | None) -> dict:
        """Give segmentation ``seg_id`` a name (None or ``""``: back to the default name);
        written into its ``segmentation.json`` atomically. Returns the new metadata.

        Raises
        ------
        SegmentationNotFound
            For an unknown id; ValueError for an invalid name.
        """
        self.folder(seg_id)
        clean = None if name is None or (isinstance(name, str) and not name.strip()) \
            else clean_name(name)
        meta = self.meta(seg_id)
        meta.setdefault("id", seg_id)
        meta.setdefault("number", self.numbers().get(seg_id))
        if clean is None:
            meta.pop("name", None)
        else:
            meta["name"] = clean
        atomic_write_json(self.paths.segmentation_meta(seg_id), meta)
        return meta

    def describe(self, seg_id: str, number: int | None = None) -> dict:
        """What exists of a segmentation: labels (and their size), meshes, stats, classes,
        its number, name and when it was made."""
        labels = self.paths.labels(seg_id)
        meta = self.meta(seg_id)
        if number is None:
            number = self.numbers().get(seg_id)
        return {
            "id": seg_id,
            "number": number,
            "name": self.name(seg_id, number),
            "named": isinstance(meta.get("name"), str) and bool(meta["name"].strip()),
            "created_at": meta.get("created_at"),
            "model_id": meta.get("model_id"),
            "cleanup": meta.get("cleanup"),
            "measurements_outdated": self.measurements_outdated(seg_id),
            "labels": is_zarr_store(labels),
            "labels_bytes": dir_size(labels) if labels.is_dir() else 0,
            "meshes": self.mesh_files(seg_id),
            "stats": self.stats_file(seg_id) is not None,
            "classes": self.classes(seg_id),
            "morphometry": self.paths.segmentation_files(seg_id).morphometry_summary.is_file(),
        }

    def morphometry(self, seg_id: str) -> dict | None:
        """The segmentation's ``morphometry.json`` (None when it was not measured)."""
        path = self.paths.segmentation_files(seg_id).morphometry_summary
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s)", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def list(self) -> list[dict]:
        """:meth:`describe` of every segmentation, oldest first."""
        numbers = self.numbers()
        return sorted((self.describe(s, numbers.get(s)) for s in self.ids()),
                      key=lambda d: (d["number"] or 0, d["id"]))

    # -- writing --------------------------------------------------------------------------
    def create(self, seg_id: str | None = None) -> str:
        """Make the folder of segmentation ``seg_id`` (a new id when None; an existing
        folder is kept, so a retried attempt resumes from its done-markers)."""
        seg_id = seg_id or new_id()
        self.paths.segmentation(seg_id).mkdir(parents=True, exist_ok=True)
        return seg_id

    def write_meta(self, seg_id: str, **fields) -> dict:
        """Write ``segmentation.json`` (id, job id, ``created_at``, its ``number`` in the job
        and ``fields``, e.g. ``model_id``) atomically; returns what was written. A name it
        was given is kept."""
        old = self.meta(seg_id)
        meta = {"id": seg_id, "job_id": self.paths.job_id, **fields}
        meta.setdefault("created_at", now_iso())
        if "number" not in meta:
            others = {k: v for k, v in self.numbers().items() if k != seg_id}
            number = old.get("number")
            if not isinstance(number, int) or number in others.values():
                number = max(others.values(), default=0) + 1
            meta["number"] = number
        if "name" not in meta and old.get("name"):
            meta["name"] = old["name"]
        atomic_write_json(self.paths.segmentation_meta(seg_id), meta)
        return meta

    def mesh_workdir(self, seg_id: str) -> Path:
        """A fresh temp folder beside ``meshes/`` to write meshes into (see
        :meth:`install_meshes`); remove it yourself when the meshing fails."""
        tmp = temp_path(self.paths.meshes(seg_id))
        tmp.mkdir(parents=True)
        return tmp

    @staticmethod
    def has_stats(workdir: Path) -> bool:
        """True when the meshes written into ``workdir`` came with a ``stats.csv``."""
        return (Path(workdir) / "stats.csv").is_file()

    def install_meshes(self, seg_id: str, workdir: Path) -> list[str]:
        """Move finished meshes (from :meth:`mesh_workdir`) into ``meshes/``, replacing
        older ones; a ``stats.csv`` among them becomes the segmentation's statistics.
        Returns the file names now in ``meshes/``."""
        stats = Path(workdir) / "stats.csv"
        if stats.is_file():
            with atomic_writer(self.paths.stats(seg_id)) as out, open(stats, "rb") as src:
                shutil.copyfileobj(src, out)
        dest = self.paths.meshes(seg_id)
        replace_dir(workdir, dest)
        return sorted(p.name for p in dest.iterdir() if p.is_file())

    def write_stats(self, seg_id: str, rows: list[dict]) -> Path:
        """Write per-label statistics rows as the segmentation's ``stats.csv``.

        Rows of :func:`ml4paleo.meshing.label_stats` are written as meshing writes them
        (headers with units, class names); other rows with their own keys.
        """
        from ml4paleo.meshing.stats import STATS_COLUMNS, stats_csv_text

        dest = self.paths.stats(seg_id)
        if rows and all(set(STATS_COLUMNS) <= set(r) for r in rows):
            with atomic_writer(dest, "w") as fh:
                fh.write(stats_csv_text(rows))
            return dest
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        with atomic_writer(dest, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        return dest


def record_segmentation(update: RecordUpdate, seg_id: str) -> dict:
    """List a finished segmentation on the job record and make it the current one."""

    def apply(record: dict) -> None:
        segs = list(record.get("segmentations") or [])
        if seg_id not in segs:
            segs.append(seg_id)
        record["segmentations"] = segs
        record["segmentation_id"] = seg_id
        record["pending_segmentation_id"] = None

    return update(apply)


def record_meshes(update: RecordUpdate, seg_id: str, info: dict) -> dict:
    """Store what meshing wrote for ``seg_id`` (formats, files, created_at, summary)."""
    info = {**info}
    info.setdefault("created_at", now_iso())
    return update(lambda r: r.setdefault("meshes", {}).__setitem__(seg_id, info))


def record_morphometry(update: RecordUpdate, seg_id: str, info: dict) -> dict:
    """Store what measuring wrote for ``seg_id`` (table, unit, files, created_at)."""
    info = {**info}
    info.setdefault("created_at", now_iso())
    return update(lambda r: r.setdefault("morphometry", {}).__setitem__(seg_id, info))


def job_outputs(paths: JobPaths | str | os.PathLike) -> dict:
    """What exists on disk for a job: upload, image, annotations, models, segmentations
    (labels, meshes, stats, classes) and cached exports.

    The UI offers viewers and downloads from this, not from the latest status, so a new
    annotation never hides an existing segmentation's results.
    """
    paths = paths if isinstance(paths, JobPaths) else JobPaths(paths)
    image = paths.image
    exports = []
    if paths.exports.is_dir():
        for f in sorted(paths.exports.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                exports.append({"file": f.name, "bytes": f.stat().st_size})
    return {
        "upload": {"exists": paths.upload.is_dir(), "bytes": dir_size(paths.upload)},
        "image": {"exists": is_zarr_store(image),
                  "bytes": dir_size(image) if image.is_dir() else 0},
        "annotations": {"exists": paths.annotations.is_dir()},
        "models": sorted(ModelRegistry(paths).ids()),
        "segmentations": SegmentationRegistry(paths).list(),
        "exports": exports,
    }
