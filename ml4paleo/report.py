"""Quantification report of a segmentation: an HTML page and a PDF.

One report per segmentation holds

- the per-class table: voxels, volume, surface area, connected components, bounding box,
  in physical units (from the segmentation's ``stats.csv`` written by meshing, or computed
  block by block with :func:`ml4paleo.meshing.label_stats`);
- slice montages of the image with the labels overlaid (evenly spaced slices through the
  labelled range, plus the three orthogonal central planes);
- a 3D snapshot of the meshes (decimated, rendered with matplotlib's mplot3d);
- the model's metrics and settings (its ``meta.json``);
- when the segmentation was measured, a morphometry section (the table, histograms of
  thickness and object size, a thickness-coloured snapshot: :mod:`ml4paleo.report_morphometry`).

Slices are read one at a time from a pyramid level of at most ~512 pixels, and meshes
are decimated before rendering, so a report of a 50 GB scan needs little memory.

Examples
--------
>>> paths = build_report("data/jobs/<job_id>", "report/")        # doctest: +SKIP
>>> sorted(paths)                                                 # doctest: +SKIP
['html', 'pdf']
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo._fs import atomic_write
from ml4paleo.classes import default_color
from ml4paleo.jobs.store import load_record
from ml4paleo.report_morphometry import (
    MorphometrySection,
    load_section,
    render_histograms,
    render_section_html,
    render_thickness_snapshot,
    table_cells,
)
from ml4paleo.workspace import (
    JobPaths,
    ModelRegistry,
    SegmentationPaths,
    SegmentationRegistry,
    model_meta_file,
)
from ml4paleo.workspace.models import read_meta
from ml4paleo.workspace.segmentations import read_class_list

log = logging.getLogger(__name__)

#: mesh formats in the order the 3D snapshot prefers them (binary formats load fastest)
MESH_EXTENSIONS = ("ply", "stl", "glb", "obj")
#: longest side of a montage panel, pixels (a pyramid level at most this big is read)
PANEL_PIXELS = 512
#: faces kept over all meshes of the 3D snapshot
SNAPSHOT_FACES = 20_000
_UNIT_SYMBOLS = {
    "angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "micron": "µm", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "nm": "nm", "um": "µm", "µm": "µm", "mm": "mm",
    "cm": "cm", "m": "m",
}


class ReportError(ValueError):
    """The report cannot be built (missing segmentation, unreadable files); one line."""


@dataclass
class ReportData:
    """Everything a report shows, gathered from a job folder or a segmentation folder."""

    title: str
    labels_path: Path
    image_path: Path | None
    segmentation_id: str | None
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    unit: str | None
    classes: list[dict]
    stats: list[dict]
    job: dict | None = None
    model_id: str | None = None
    model: dict | None = None
    mesh_files: dict[int, Path] = field(default_factory=dict)
    #: what people call the segmentation and the model (``Segmentation 2 · ... · date``)
    segmentation_name: str | None = None
    model_name: str | None = None
    morphometry: MorphometrySection | None = None
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    )

    @property
    def unit_symbol(self) -> str:
        """Short unit (``"µm"``); ``"voxel"`` when unknown."""
        if not self.unit:
            return "voxel"
        return _UNIT_SYMBOLS.get(self.unit.lower(), self.unit)

    def class_name(self, label: int) -> str:
        if 0 <= label < len(self.classes):
            return str(self.classes[label].get("name") or f"class {label}")
        return f"label {label}"

    def class_color(self, label: int) -> str:
        if 0 <= label < len(self.classes) and self.classes[label].get("color"):
            return str(self.classes[label]["color"])
        return default_color(label)


# ----------------------------------------------------------------------------- collect
def collect(
    source: str | os.PathLike,
    *,
    segmentation_id: str | None = None,
    image: str | os.PathLike | None = None,
    model: Any = None,
    title: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReportData:
    """Gather the report's data.

    Parameters
    ----------
    source : path
        A job folder (its current segmentation, or ``segmentation_id``), a segmentation
        folder (``segmentations/<id>/`` holding ``labels.ome.zarr``) or a label OME-Zarr.
    segmentation_id : str, optional
        With a job folder: which segmentation (default: the job's current one).
    image : path, optional
        The scan's OME-Zarr, for the overlays (default: the job's ``image.ome.zarr``).
    model : Model or path, optional
        The model that segmented (a :class:`ml4paleo.segmentation.Model` or its saved
        folder), for class names and metrics (default: the job's model).
    title : str, optional
        Report title (default: the job's name or the folder's name).
    progress : callable, optional
        ``progress(done, total)`` while statistics are computed (when no ``stats.csv``).

    Raises
    ------
    ReportError
        When no segmentation is found.
    """
    from ml4paleo.formats import open_image

    source = Path(source)
    if not source.exists():
        raise ReportError(f"{source}: no such job, segmentation folder or label image")
    job = load_record(source)  # through the store's lock, never half a write
    job_paths: JobPaths | None = None
    seg: SegmentationPaths | None = None
    if job is not None:
        job_paths = JobPaths(source)
        seg_id = segmentation_id or job.get("segmentation_id")
        if not seg_id:
            raise ReportError(f"{source}: the job has no segmentation yet")
        try:
            seg = job_paths.segmentation_files(seg_id)
            labels_path = job_paths.labels(seg_id)  # a label of the job's image (or older)
        except ValueError as exc:
            raise ReportError(f"{source}: {exc}") from None
    elif SegmentationPaths(source).labels.exists() or _job_segmentation(source):
        seg = SegmentationPaths(source)
        labels_path = seg.labels
        parent = JobPaths(source.parent.parent)
        if parent.segmentations == source.parent:
            job = load_record(parent.root)
            job_paths = parent if job is not None else None
            if job_paths is not None:  # a label of the job's image (or an older version's)
                labels_path = job_paths.labels(source.name)
    else:
        labels_path = source
    if not labels_path.exists():
        raise ReportError(f"{labels_path}: the segmentation's label image does not exist")
    try:
        labels = open_image(labels_path)
    except ValueError as exc:
        raise ReportError(str(exc)) from exc
    if len(labels.shape) != 3:
        raise ReportError(f"{labels_path}: labels must be 3-D (z, y, x), got {labels.shape}")

    seg_meta = read_meta(seg.meta) if seg else {}
    seg_id = seg_meta.get("id") or (seg.root.name if seg else None)
    image_path = Path(image) if image is not None else None
    if image_path is not None and not image_path.exists():
        raise ReportError(f"{image_path}: no such image")
    if image_path is None and job_paths is not None and job_paths.image.exists():
        image_path = job_paths.image
    model_id = seg_meta.get("model_id") or (job or {}).get("model_id")
    model_meta = None
    if model is not None:
        if isinstance(model, str | os.PathLike):
            model_meta = read_meta(model_meta_file(model)) or None
            model_id = Path(model).name
        else:
            model_meta = dict(getattr(model, "meta", None) or {})
            model_id = model_meta.get("id", model_id)
    elif job_paths is not None and model_id:
        try:
            model_meta = read_meta(job_paths.model_meta(str(model_id))) or None
        except ValueError:
            model_meta = None  # a malformed id in an old record names no model

    classes = _classes(model_meta, job_paths, seg_id if seg is not None else None, labels)
    stats = _stats(seg, labels, progress)
    mesh_files = _mesh_files(seg.meshes) if seg else {}
    title = title or (job or {}).get("name") or (seg.root.name if seg else labels_path.stem)
    seg_name = model_name = None
    if job_paths is not None:
        if seg_id and SegmentationRegistry(job_paths).exists(seg_id):
            seg_name = SegmentationRegistry(job_paths).name(seg_id)
        if model_id and ModelRegistry(job_paths).exists(str(model_id)):
            model_name = ModelRegistry(job_paths).name(str(model_id))
    return ReportData(
        title=str(title),
        labels_path=labels_path,
        image_path=image_path,
        segmentation_id=seg_id,
        shape=tuple(int(s) for s in labels.shape),
        voxel_size=tuple(float(v) for v in labels.voxel_size),
        unit=labels.unit,
        classes=classes,
        stats=stats,
        job=job,
        model_id=model_id,
        model=model_meta,
        mesh_files=mesh_files,
        segmentation_name=seg_name,
        model_name=model_name,
        morphometry=load_section(seg),
    )


def _job_segmentation(folder: Path) -> bool:
    """True when ``folder`` is a segmentation folder of a job whose labels exist."""
    parent = JobPaths(folder.parent.parent)
    try:
        return parent.segmentations == folder.parent and parent.labels(folder.name).exists()
    except ValueError:
        return False


def _classes(model: dict | None, job_paths: JobPaths | None, seg_id: str | None,
             labels=None) -> list[dict]:
    """The label image's classes (its NGFF ``image-label``), else the model's class list,
    else the segmentation's (its registry's rule), else the annotations'; colours from
    :mod:`ml4paleo.classes` where none is stored."""
    if labels is not None:
        from ml4paleo.formats import label_classes

        try:
            named = label_classes(labels.attrs)
        except ValueError:
            named = None
        if named:
            return named
    classes = read_class_list((model or {}).get("classes"))
    if classes or job_paths is None:
        return classes
    if seg_id is not None:
        try:
            return SegmentationRegistry(job_paths).classes(seg_id)
        except ValueError:
            pass
    return read_class_list(read_meta(job_paths.classes) or _read_list(job_paths.classes))


def _read_list(path: Path) -> list:
    """A JSON list file (older class files were bare lists), [] otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _stats(seg: SegmentationPaths | None, labels, progress) -> list[dict]:
    from ml4paleo.meshing import label_stats, read_stats_csv

    for candidate in ((seg.stats, seg.mesh_stats) if seg else ()):
        if candidate.is_file():
            return read_stats_csv(candidate, typed=True)
    return label_stats(labels, voxel_size=labels.voxel_size, progress=progress)


def _mesh_files(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for ext in MESH_EXTENSIONS:  # preference order: binary formats load fastest
        for path in sorted(folder.glob(f"*.{ext}")):
            try:
                label = int(path.stem.split("_")[-1]) if not path.stem.isdigit() else int(path.stem)
            except ValueError:
                continue
            found.setdefault(label, path)
    return found


# ----------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _level_for(image, max_pixels: int) -> int:
    for i in range(len(image.levels)):
        if max(image.level(i).shape[1:]) <= max_pixels:
            return i
    return len(image.levels) - 1


def _plane(image, axis: int, index: int, max_pixels: int) -> np.ndarray:
    from ml4paleo.formats import read_slice

    level = _level_for(image, max_pixels)
    plane = read_slice(image, axis, index, level)
    step = max(1, int(np.ceil(max(plane.shape) / max_pixels)))
    return plane[::step, ::step]


def _resize_nearest(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if plane.shape == shape:
        return plane
    rows = np.minimum((np.arange(shape[0]) * plane.shape[0]) // shape[0], plane.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * plane.shape[1]) // shape[1], plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]


def _rgba(data: ReportData, labels2d: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    from matplotlib.colors import to_rgba

    top = max(int(labels2d.max()) if labels2d.size else 0, len(data.classes) - 1, 1)
    lut = np.zeros((top + 1, 4), np.float32)
    for k in range(1, top + 1):
        lut[k] = to_rgba(data.class_color(k), alpha)
    return lut[np.clip(labels2d.astype(np.int64), 0, top)]


def montage_slices(data: ReportData, count: int) -> list[int]:
    """``count`` evenly spaced z indices through the labelled range (from the stats)."""
    lo = [r.get("min_z_vox") for r in data.stats if r.get("min_z_vox") is not None]
    hi = [r.get("max_z_vox") for r in data.stats if r.get("max_z_vox") is not None]
    z0, z1 = (int(min(lo)), int(max(hi))) if lo and hi else (0, data.shape[0] - 1)
    count = max(1, min(count, z1 - z0 + 1))
    return sorted({int(round(v)) for v in np.linspace(z0, z1, count + 2)[1:-1]} or {z0})


def render_montage(data: ReportData, slices: Sequence[int] | int = 6,
                   max_pixels: int = PANEL_PIXELS) -> bytes:
    """PNG: z slices with the labels overlaid, then the three orthogonal central planes."""
    from ml4paleo.formats import open_image

    labels = open_image(data.labels_path)
    image = open_image(data.image_path) if data.image_path else None
    zs = montage_slices(data, slices) if isinstance(slices, int) else list(slices)
    centre = [s // 2 for s in data.shape]
    panels = [(0, z) for z in zs] + [(0, centre[0]), (1, centre[1]), (2, centre[2])]
    ncols = 3 if len(zs) <= 6 else 4
    zrows = -(-len(zs) // ncols)
    fig = _figure(2.6 * ncols, 2.8 * (zrows + 1) + 0.4)
    grid = fig.add_gridspec(zrows + 1, ncols)
    vz, vy, vx = data.voxel_size
    aspects = {0: vy / vx, 1: vz / vx, 2: vz / vy}
    names = {0: "z", 1: "y", 2: "x"}
    planes = []
    for axis, index in panels:
        lab = _plane(labels, axis, index, max_pixels)
        img = _plane(image, axis, index, max_pixels) if image is not None else None
        planes.append((axis, index, img, lab))
    window = _window([p[2] for p in planes if p[2] is not None])
    for i, (axis, index, img, lab) in enumerate(planes):
        if i < len(zs):
            ax = fig.add_subplot(grid[i // ncols, i % ncols])
        else:
            ax = fig.add_subplot(grid[zrows, i - len(zs)])
        if img is not None:
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[axis],
                      interpolation="nearest")
            lab = _resize_nearest(lab, img.shape)
        else:
            ax.imshow(np.zeros(lab.shape), cmap="gray", vmin=0, vmax=1, aspect=aspects[axis])
        ax.imshow(_rgba(data, lab), aspect=aspects[axis], interpolation="nearest")
        title = f"{names[axis]} = {index}"
        if i >= len(zs):
            title += " (centre)"
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    _legend(fig, data)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _png(fig)


def _window(planes: list[np.ndarray]) -> tuple[float, float]:
    if not planes:
        return 0.0, 1.0
    values = np.concatenate([p.ravel()[:: max(1, p.size // 20000)] for p in planes])
    lo, hi = np.percentile(values.astype(np.float64), (1, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


def _legend(fig, data: ReportData) -> None:
    from matplotlib.patches import Patch

    labels = sorted({int(r["label"]) for r in data.stats if r.get("label") is not None})
    if not labels:
        return
    handles = [Patch(color=data.class_color(k), label=data.class_name(k)) for k in labels]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False,
               fontsize=9)


def render_meshes(data: ReportData, max_faces: int = SNAPSHOT_FACES) -> bytes | None:
    """PNG of the meshes from two viewpoints, or None when there are no meshes."""
    if not data.mesh_files:
        return None
    import trimesh
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    budget = max(200, max_faces // len(data.mesh_files))
    meshes = []
    for label, path in sorted(data.mesh_files.items()):
        try:
            loaded = trimesh.load(path, force="mesh", process=False)
        except Exception as exc:  # noqa: BLE001 - a broken file is reported, not fatal
            log.warning("cannot read mesh %s: %s", path, exc)
            continue
        if len(loaded.faces) == 0:
            continue
        meshes.append((label, _decimate(loaded, budget)))
    if not meshes:
        return None
    allv = np.concatenate([m.vertices for _, m in meshes])
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    fig = _figure(10, 5.2)
    light = np.array([0.4, -0.5, 0.77])
    light /= np.linalg.norm(light)
    from matplotlib.colors import to_rgb

    tris_all, colors_all = [], []
    for label, m in meshes:
        tris = m.vertices[m.faces]
        normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.abs(normals @ light)
        base = np.array(to_rgb(data.class_color(label)))
        tris_all.append(tris)
        colors_all.append(np.clip(base[None, :] * shade[:, None], 0, 1))
    tris = np.concatenate(tris_all)
    colors = np.concatenate(colors_all)
    for col, (elev, azim) in enumerate(((22, -60), (22, 120))):
        ax = fig.add_subplot(1, 2, col + 1, projection="3d")
        # one collection: faces of every label are depth-sorted together
        ax.add_collection3d(Poly3DCollection(tris, facecolors=colors, edgecolors="none",
                                             linewidths=0))
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(tuple(span / span.max()), zoom=0.88)
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel(f"x ({data.unit_symbol})", fontsize=8)
        ax.set_ylabel(f"y ({data.unit_symbol})", fontsize=8)
        ax.set_zlabel(f"z ({data.unit_symbol})", fontsize=8)
        ax.tick_params(labelsize=7)
    _legend(fig, data)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _png(fig)


def _decimate(mesh, faces: int):
    if len(mesh.faces) <= faces:
        return mesh
    try:
        smaller = mesh.simplify_quadric_decimation(face_count=faces)
        if len(smaller.faces):
            return smaller
    except Exception as exc:  # noqa: BLE001 - fall back to a face subsample
        log.info("quadric decimation failed (%s); sampling faces instead", exc)
    import trimesh

    keep = np.random.default_rng(0).choice(len(mesh.faces), faces, replace=False)
    return trimesh.Trimesh(mesh.vertices, mesh.faces[np.sort(keep)], process=False)


# ----------------------------------------------------------------------------- tables
def class_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-class table, formatted for display."""
    u = data.unit_symbol
    total = float(np.prod(data.shape)) * float(np.prod(data.voxel_size))
    surfaces = sorted({str(r["surface"]) for r in data.stats if r.get("surface")})
    kind = f", {', '.join(surfaces)}" if surfaces else ""  # which mesh was measured
    header = ["Class", "Label", "Voxels", f"Volume ({u}³)", "% of scan",
              f"Mesh volume ({u}³{kind})", f"Surface ({u}²{kind})", "Components",
              f"Extent z×y×x ({u})"]
    rows = []
    for r in sorted(data.stats, key=lambda r: int(r.get("label") or 0)):
        label = int(r.get("label") or 0)
        volume = r.get("volume")
        extent = "–"
        if all(r.get(k) is not None for k in ("min_z_vox", "max_z_vox", "min_y_vox",
                                               "max_y_vox", "min_x_vox", "max_x_vox")):
            sizes = [(r[f"max_{a}_vox"] - r[f"min_{a}_vox"] + 1) * v
                     for a, v in zip("zyx", data.voxel_size, strict=True)]
            extent = " × ".join(_num(s) for s in sizes)
        rows.append([
            data.class_name(label),
            str(label),
            _num(r.get("voxel_count")),
            _num(volume),
            _num(100.0 * float(volume) / total, digits=3) if volume is not None and total else "–",
            _num(r.get("mesh_volume")),
            _num(r.get("surface_area")),
            _num(r.get("components")),
            extent,
        ])
    return header, rows


def model_rows(data: ReportData) -> list[tuple[str, str]]:
    """(key, value) rows describing the model: metrics first, then settings."""
    meta = data.model or {}
    rows: list[tuple[str, str]] = []
    if data.model_name:
        rows.append(("model", data.model_name))
    if data.model_id:
        rows.append(("model id", str(data.model_id)))
    for key in ("created_at", "format", "kind", "voxel_size"):
        if meta.get(key) is not None:
            rows.append((key.replace("_", " "), _value(meta[key])))
    metrics = meta.get("metrics") or {}
    if meta.get("preview"):
        rows.append(("kind", "fast preview model from the annotator"))
    if meta and not metrics:
        rows.append(("metrics", "none recorded (train on the runner for held-out metrics)"))
    rows += [(f"metric: {k}", v) for k, v in _flatten(metrics)]
    for key in ("label_counts", "training_voxels", "train_settings", "feature_settings"):
        if key == "training_voxels" and meta.get(key) == meta.get("label_counts"):
            continue
        if meta.get(key):
            name = key.replace("_", " ")
            rows += [(f"{name}: {k}" if k else name, v) for k, v in _flatten(meta[key])]
    seconds = (meta.get("seconds") or {}).get("total") if isinstance(meta.get("seconds"), dict) \
        else None
    if seconds is not None:
        rows.append(("training time (s)", _num(seconds)))
    return rows


def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, _value(value)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list | tuple):
        if len(value) and all(isinstance(v, list | tuple) for v in value):  # a matrix
            return "; ".join("[" + ", ".join(_value(x) for x in row) + "]" for row in value)
        return ", ".join(_value(v) for v in value)
    return str(value)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}".replace(",", " ")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != 0 and (abs(number) >= 1e7 or abs(number) < 1e-3):
        return f"{number:.{digits - 1}e}"
    if number.is_integer() and abs(number) >= 10**digits:
        return f"{int(number):,}".replace(",", " ")
    return f"{number:.{digits}g}"


# ----------------------------------------------------------------------------- output
def build_report(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    formats: Sequence[str] = ("html", "pdf"),
    segmentation_id: str | None = None,
    image: str | os.PathLike | None = None,
    model: Any = None,
    title: str | None = None,
    slices: int = 6,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Write the report of a segmentation as HTML and/or PDF.

    Parameters
    ----------
    source : path
        Job folder, segmentation folder or label OME-Zarr (see :func:`collect`).
    out : path
        Output folder (files ``<name>-report.html`` / ``.pdf``), or a file path ending in
        ``.html`` or ``.pdf`` (the other format goes beside it with the same stem).
    formats : sequence of {"html", "pdf"}
        What to write.
    segmentation_id : str, optional
        Which segmentation of a job (default: the current one).
    image : path, optional
        The scan's OME-Zarr for the overlays (default: the job's image).
    model : Model or path, optional
        The model that segmented, for class names and metrics (default: the job's).
    title : str, optional
        Report title (default: the job's name).
    slices : int
        Number of z slices in the montage.
    progress : callable, optional
        ``progress(done, total)`` over the report's steps.

    Returns
    -------
    dict
        ``{"html": Path, "pdf": Path}`` for the formats written (written atomically).
    """
    formats = tuple(formats)
    unknown = set(formats) - {"html", "pdf"}
    if unknown or not formats:
        raise ValueError(f"formats must be html and/or pdf, got {formats}")
    total = 4 + len(formats)
    step = 0

    def advance() -> None:
        nonlocal step
        step += 1
        if progress:
            progress(step, total)

    data = collect(source, segmentation_id=segmentation_id, image=image, model=model,
                   title=title)
    advance()
    montage = render_montage(data, slices)
    advance()
    snapshot = render_meshes(data)
    advance()
    if data.morphometry is not None:
        colors = {int(c["value"]): data.class_color(int(c["value"]))
                  for c in data.morphometry.summary.get("classes") or []}
        data.morphometry.histograms = render_histograms(data.morphometry, data.unit_symbol, colors)
        data.morphometry.snapshot = render_thickness_snapshot(data.morphometry, data.unit_symbol)
    advance()
    out = Path(out)
    if out.suffix.lower() in (".html", ".pdf"):
        folder, stem = out.parent, out.stem
    else:
        folder, stem = out, _safe_stem(data.title) + "-report"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "html" in formats:
        target = folder / f"{stem}.html"
        atomic_write(target, render_html(data, montage, snapshot))
        written["html"] = target
        advance()
    if "pdf" in formats:
        target = folder / f"{stem}.pdf"
        atomic_write(target, render_pdf(data, montage, snapshot))
        written["pdf"] = target
        advance()
    return written


def render_html(data: ReportData, montage: bytes, snapshot: bytes | None) -> str:
    """A self-contained HTML page (images embedded as data URLs)."""
    e = html.escape
    header, rows = class_table(data)
    table = "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>"
    table += "<tbody>"
    for row in rows:
        label = int(row[1])
        swatch = f'<span class="sw" style="background:{e(data.class_color(label))}"></span>'
        table += "<tr><td>" + swatch + e(row[0]) + "</td>"
        table += "".join(f'<td class="n">{e(c)}</td>' for c in row[1:]) + "</tr>"
    if not rows:
        table += f'<tr><td colspan="{len(header)}">No labelled voxels.</td></tr>'
    table += "</tbody></table>"
    model = model_rows(data)
    model_html = (
        "<table class='kv'>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in model)
        + "</table>" if model else "<p>No model information (segmentation made elsewhere).</p>"
    )
    snapshot_html = (
        f'<img alt="3D view of the meshes" src="data:image/png;base64,{_b64(snapshot)}">'
        if snapshot else "<p>No meshes yet: run meshing to see the 3D view.</p>"
    )
    morpho_html = ""
    if data.morphometry is not None:
        colors = {int(c["value"]): data.class_color(int(c["value"]))
                  for c in data.morphometry.summary.get("classes") or []}
        morpho_html = render_section_html(data.morphometry, data.unit_symbol, colors)
    facts = _facts(data)
    facts_html = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(data.title)} – segmentation report</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}}
h1{{font-size:1.6rem;margin-bottom:.2rem}} h2{{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}}
table{{border-collapse:collapse;font-size:.9rem}} th,td{{padding:.3rem .6rem;
border-bottom:1px solid #eee;text-align:left}} td.n{{text-align:right;
font-variant-numeric:tabular-nums}}
table.kv th{{font-weight:500;color:#555}} .sw{{display:inline-block;width:.9em;height:.9em;
margin-right:.4em;border-radius:2px;vertical-align:-1px}}
img{{max-width:100%;height:auto;border:1px solid #eee}} .muted{{color:#777}}
</style></head><body>
<h1>{e(data.title)}</h1>
<p class="muted">Segmentation report · generated {e(data.created_at)} by ml4paleo</p>
<table class="kv">{facts_html}</table>
<h2>Per-class quantification</h2>
{table}
<p class="muted">Volume = voxel count × voxel volume; mesh volume and surface from the
marching-cubes surface; components are face-connected objects.</p>
<h2>Slices with the segmentation overlaid</h2>
<img alt="slice montage" src="data:image/png;base64,{_b64(montage)}">
<h2>3D view</h2>
{snapshot_html}
{morpho_html}
<h2>Model</h2>
{model_html}
</body></html>
"""


def _facts(data: ReportData) -> list[tuple[str, str]]:
    u = data.unit_symbol
    facts = []
    if data.job:
        facts.append(("job", str(data.job.get("id"))))
    if data.segmentation_name:
        facts.append(("segmentation", data.segmentation_name))
    if data.segmentation_id:
        facts.append(("segmentation id", str(data.segmentation_id)))
    facts.append(("shape (z, y, x)", " × ".join(str(s) for s in data.shape)))
    facts.append(("voxel size (z, y, x)", " × ".join(_num(v) for v in data.voxel_size) + f" {u}"))
    physical = [s * v for s, v in zip(data.shape, data.voxel_size, strict=True)]
    facts.append(("physical size", " × ".join(_num(p) for p in physical) + f" {u}"))
    meta = (data.job or {}).get("metadata") or {}
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    for key in ("modality", "manufacturer", "manufacturer_model", "series_description"):
        if source.get(key):
            facts.append((key.replace("_", " "), str(source[key])))
    return facts


def render_pdf(data: ReportData, montage: bytes, snapshot: bytes | None) -> bytes:
    """The report as PDF bytes (A4, reportlab)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    body = styles["BodyText"]
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    buffer = io.BytesIO()
    page = landscape(A4)
    doc = SimpleDocTemplate(buffer, pagesize=page, leftMargin=15 * mm, rightMargin=15 * mm,
                            topMargin=14 * mm, bottomMargin=14 * mm,
                            title=f"{data.title} – segmentation report", author="ml4paleo")
    width = page[0] - 30 * mm
    height = page[1] - 28 * mm

    def esc(text: str) -> str:
        return html.escape(str(text))

    def kv_table(rows: list[tuple[str, str]]) -> Table:
        t = Table([[Paragraph(esc(k), small), Paragraph(esc(v), small)] for k, v in rows],
                  colWidths=[60 * mm, width - 60 * mm], hAlign="LEFT")
        t.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        return t

    def image(png: bytes, max_height: float) -> Image:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(png)) as im:
            w, h = im.size
        scale = min(width / w, max_height / h)
        return Image(io.BytesIO(png), width=w * scale, height=h * scale)

    story: list = [
        Paragraph(esc(data.title), styles["Title"]),
        Paragraph(f"Segmentation report · generated {esc(data.created_at)} by ml4paleo", small),
        Spacer(1, 4 * mm),
        kv_table(_facts(data)),
        Spacer(1, 5 * mm),
        Paragraph("Per-class quantification", styles["Heading2"]),
    ]
    header, rows = class_table(data)
    cells = [[Paragraph(f"<b>{esc(h)}</b>", small) for h in header]]
    for row in rows:
        cells.append([Paragraph(esc(c), small) for c in row])
    if not rows:
        cells.append([Paragraph("No labelled voxels.", small)] + [""] * (len(header) - 1))
    table = Table(cells, repeatRows=1, hAlign="LEFT",
                  colWidths=[width * f for f in (.14, .06, .11, .12, .08, .13, .12, .09, .15)])
    style = [("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
             ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey),
             ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]
    for i, row in enumerate(rows, start=1):
        style.append(("BACKGROUND", (0, i), (0, i),
                      colors.HexColor(data.class_color(int(row[1]))).clone(alpha=0.35)))
    table.setStyle(TableStyle(style))
    story += [table, Spacer(1, 2 * mm), Paragraph(
        "Volume = voxel count × voxel volume; mesh volume and surface from the marching-cubes "
        "surface; components are face-connected objects.", small)]
    if data.morphometry is not None:
        m_header, m_rows = table_cells(data.morphometry, data.unit_symbol)
        m_cells = [[Paragraph(f"<b>{esc(h)}</b>", small) for h in m_header]]
        m_cells += [[Paragraph(esc(c), small) for c in row] for row in m_rows]
        m_table = Table(m_cells, repeatRows=1, hAlign="LEFT",
                        colWidths=[width * 0.12] + [width * 0.88 / (len(m_header) - 1)]
                        * (len(m_header) - 1))
        m_table.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
                                     ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey)]))
        story += [PageBreak(), Paragraph("Morphometry", styles["Heading2"]), m_table]
        for png in (data.morphometry.histograms, data.morphometry.snapshot):
            if png:
                story += [Spacer(1, 3 * mm), image(png, (height - 40 * mm) / 2)]
    model = model_rows(data)
    story += [Spacer(1, 5 * mm), Paragraph("Model", styles["Heading2"])]
    story += [kv_table(model)] if model else [
        Paragraph("No model information (segmentation made elsewhere).", body)]
    story += [PageBreak(), Paragraph("Slices with the segmentation overlaid", styles["Heading2"]),
              image(montage, height - 15 * mm)]
    story += [PageBreak(), Paragraph("3D view", styles["Heading2"])]
    story += [image(snapshot, height - 15 * mm)] if snapshot else [
        Paragraph("No meshes yet: run meshing to see the 3D view.", body)]

    def footer(canvas, doc_):
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawRightString(page[0] - 15 * mm, 8 * mm, f"{data.title} · page {doc_.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def _b64(png: bytes | None) -> str:
    return base64.b64encode(png or b"").decode("ascii")


def _safe_stem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_")
    return stem[:60] or "segmentation"
