"""Voxel classification from a few labelled slices: label store, training, prediction.

Labels are one volume: 0 = unlabelled, value ``k + 1`` = class ``k`` (class 0 is the
background). Brush strokes, polygons and whole painted slices all end up in it
(:class:`LabelStore`).

The classifier is a random forest on the filter-bank features (:mod:`ml4paleo.features`),
trained on a class-balanced sample (capped per class, voxels next to another class's label
preferred), in two *auto-context* stages: stage 2 sees the same features plus the stage-1
class probabilities smoothed at a few scales ("a bright spot inside bone is bone, the same
spot in rock is a mineral grain"). The stage-1 probabilities for the context are evaluated on
a 2x coarser global grid (every other voxel), smoothed there and interpolated back, so the
second stage costs little more than one forest evaluation. ``TrainSettings(two_stage=False)``
trains one stage; ``node_budget`` caps the forest size by prediction cost.

Everything is computed per block with the halo it needs (features:
:func:`ml4paleo.features.halo_for`; context: :func:`context_halo`), so a blockwise
segmentation equals a whole-volume one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ml4paleo import blocks as _blocks
from ml4paleo import omezarr
from ml4paleo.features import FeatureSettings, halo_for, iter_features, kernel_radius as _radius, n_features
from ml4paleo.model_io import Forest, load_forests, save_forests

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

DEFAULT_COLORS = ("#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                  "#f032e6", "#bcf60c", "#fabebe")
#: value of ``labels2d`` in :meth:`LabelStore.write_slice` (``merge=True``) that erases
ERASE = 255
MODEL_FORMAT = "ml4paleo-forest-1"


# --------------------------------------------------------------------------- inputs


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _open_array(source: Any) -> tuple[Any, tuple[float, float, float] | None, str | None]:
    """(array-like, voxel size, unit) for an OmeImage, zarr array, ndarray, Volume or path."""
    if isinstance(source, omezarr.OmeImage):
        return source.array, source.voxel_size, source.unit
    if isinstance(source, np.ndarray):
        if source.ndim != 3:
            raise ValueError(f"image must be 3D (z, y, x), got shape {source.shape}")
        return source, None, None
    if isinstance(source, str | os.PathLike):
        return _open_path(Path(source))
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        vs = getattr(source, "voxel_size", None)
        return source, (tuple(vs) if vs else None), getattr(source, "unit", None)
    raise TypeError(f"cannot read an image from {type(source).__name__}")


def _open_path(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 3:
            raise ValueError(f"{path}: expected a 3D array, got shape {arr.shape}")
        return arr, None, None
    if path.is_dir() and any((path / n).exists() for n in (".zgroup", "zarr.json", ".zattrs")):
        try:
            img = omezarr.open_image(path)
            return img.array, img.voxel_size, img.unit
        except ValueError:
            import zarr

            arr = zarr.open_array(str(path), mode="r")
            return arr, None, None
    try:
        from ml4paleo.io import open_volume
    except ImportError as exc:  # readers not installed in this build
        raise ValueError(f"{path}: unsupported image (need .npy or OME-Zarr)") from exc
    vol = open_volume(path)
    return vol, (tuple(vol.voxel_size) if vol.voxel_size else None), vol.unit


def _source_ref(source: Any):
    """Something picklable a worker can reopen cheaply (a path), or the array itself."""
    if isinstance(source, omezarr.OmeImage):
        return str(source.path)
    if isinstance(source, str | os.PathLike):
        return str(source)
    return source


# --------------------------------------------------------------------------- label store


class LabelStore:
    """The annotations of one volume: a label volume, a log of edits and the class list.

    Layout of ``folder``: ``labels.zarr`` (uint8 zarr array, 0 = unlabelled, ``k + 1`` =
    class ``k``, chunks of 64^3 so any slice reads fast), ``log.jsonl`` (append-only, one
    JSON object per edit), ``classes.json`` (``[{"name", "color"}, ...]``, class 0 first =
    background) and ``slices.json`` (index of annotated slices with per-class counts).

    Parameters
    ----------
    folder : path
        An existing store (made by :meth:`create`).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        import zarr

        self.folder = Path(folder)
        if not (self.folder / "labels.zarr").exists():
            raise FileNotFoundError(f"{self.folder}: no label store (labels.zarr missing)")
        self.labels = zarr.open_array(str(self.folder / "labels.zarr"), mode="r+")
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        shape: Sequence[int],
        classes: Sequence[dict | str] | None = None,
        chunks: int = 64,
    ) -> LabelStore:
        """Create an empty store for a volume of ``shape``.

        ``classes``: names or ``{"name", "color"}`` dicts; default background + bone.
        An existing store in ``folder`` is opened as it is (never wiped).
        """
        import zarr

        folder = Path(folder)
        if (folder / "labels.zarr").exists():
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"shape must be three positive sizes, got {shape}")
        zarr.create_array(
            str(folder / "labels.zarr"),
            shape=shape,
            chunks=tuple(min(chunks, s) for s in shape),
            dtype=np.uint8,
            fill_value=0,
            zarr_format=2,
            compressors=omezarr.default_compressor(),
        )
        store = cls(folder)
        store.set_classes(classes or ["background", "bone"])
        omezarr.write_json_atomic(folder / "slices.json", {})
        return store

    # -- classes
    @property
    def classes(self) -> list[dict]:
        """``[{"name", "color"}, ...]``; list position = class index."""
        p = self.folder / "classes.json"
        if not p.exists():
            return [{"name": "background", "color": DEFAULT_COLORS[0]}]
        return json.loads(p.read_text())

    def set_classes(self, classes: Sequence[dict | str]) -> list[dict]:
        """Replace the class list (names and colours; at most 254 classes)."""
        out = []
        for i, c in enumerate(classes):
            if isinstance(c, str):
                c = {"name": c}
            name = str(c.get("name", "")).strip()
            if not name:
                raise ValueError(f"class {i} has no name")
            color = str(c.get("color") or DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
            out.append({"name": name, "color": color})
        if not 1 <= len(out) <= 254:
            raise ValueError(f"need 1..254 classes, got {len(out)}")
        omezarr.write_json_atomic(self.folder / "classes.json", out)
        self._log({"action": "set_classes", "classes": out})
        return out

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)

    # -- slices
    def _plane(self, axis: int, index: int) -> tuple:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        n = self.shape[axis]
        if not 0 <= int(index) < n:
            raise IndexError(f"slice {index} outside 0..{n - 1} along axis {axis}")
        sl: list[Any] = [slice(None)] * 3
        sl[axis] = int(index)
        return tuple(sl)

    def read_slice(self, axis: int, index: int) -> np.ndarray:
        """Labels of one slice (uint8, 0 = unlabelled, k + 1 = class k)."""
        return np.asarray(self.labels[self._plane(axis, index)])

    def write_slice(
        self, axis: int, index: int, labels2d: np.ndarray, *, merge: bool = False, source: str = "mask"
    ) -> dict:
        """Store the labels of one slice.

        Parameters
        ----------
        labels2d : ndarray (uint8)
            0 = unlabelled, ``k + 1`` = class ``k``.
        merge : bool
            False (default): the slice becomes exactly ``labels2d`` (0 erases).
            True: only non-zero pixels are written; 0 keeps what is there and
            :data:`ERASE` (255) erases.
        source : str
            Recorded in the log (``"mask"``, ``"strokes"``, ``"polygons"``, ...).

        Returns
        -------
        dict
            The slice's entry of :meth:`annotated_slices`.
        """
        sl = self._plane(axis, index)
        want = tuple(s for i, s in enumerate(self.shape) if i != axis)
        lab = np.asarray(labels2d)
        if lab.shape != want:
            raise ValueError(f"labels for axis {axis} must have shape {want}, got {lab.shape}")
        if lab.size and (lab.min() < 0 or (lab.max() > len(self.classes) and lab.max() != ERASE)):
            raise ValueError(f"label values must be 0..{len(self.classes)} (or {ERASE} to erase)")
        lab = lab.astype(np.uint8)
        with self._lock:
            if merge:
                cur = np.asarray(self.labels[sl])
                cur = np.where(lab == ERASE, 0, np.where(lab > 0, lab, cur)).astype(np.uint8)
            else:
                cur = np.where(lab == ERASE, 0, lab).astype(np.uint8)
            self.labels[sl] = cur
            entry = self._index_slice(axis, index, cur)
            self._log({"action": "write_slice", "axis": axis, "index": int(index), "merge": merge,
                       "source": source, "counts": entry["counts"]})
        return entry

    def add_polygons(self, axis: int, index: int, polygons: Sequence[dict]) -> dict:
        """Fill polygons on one slice (merged into the existing labels).

        ``polygons``: ``[{"label": k, "points": [[row, col], ...]}, ...]`` with class index
        ``k`` (0 = background), coordinates in slice pixels.
        """
        from skimage.draw import polygon as draw_polygon

        shape = tuple(s for i, s in enumerate(self.shape) if i != axis)
        lab = np.zeros(shape, np.uint8)
        for p in polygons:
            k = int(p["label"])
            if not 0 <= k < len(self.classes):
                raise ValueError(f"polygon class {k} outside 0..{len(self.classes) - 1}")
            pts = np.asarray(p["points"], float)
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
                raise ValueError("a polygon needs at least 3 [row, col] points")
            rr, cc = draw_polygon(pts[:, 0], pts[:, 1], shape)
            lab[rr, cc] = k + 1
        return self.write_slice(axis, index, lab, merge=True, source="polygons")

    def clear_slice(self, axis: int, index: int) -> None:
        """Erase every label on one slice."""
        sl = self._plane(axis, index)
        with self._lock:
            self.labels[sl] = 0
            self._index_slice(axis, index, None)
            self._log({"action": "clear_slice", "axis": axis, "index": int(index)})

    def annotated_slices(self) -> list[dict]:
        """Slices holding labels: ``[{"axis", "index", "counts": {class name: n}, "updated_at"}]``."""
        idx = self._read_index()
        out = []
        for key, v in sorted(idx.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("/"))):
            axis, index = (int(x) for x in key.split("/"))
            out.append({"axis": axis, "index": index, **v})
        return out

    def count_by_class(self) -> dict[str, int]:
        """Labelled voxels per class name (summed over annotated slices)."""
        names = [c["name"] for c in self.classes]
        total = dict.fromkeys(names, 0)
        for s in self.annotated_slices():
            for k, n in s["counts"].items():
                total[k] = total.get(k, 0) + n
        return total

    @property
    def version(self) -> int:
        """Number of edits so far (changes whenever the labels change)."""
        return self._edit_count()

    def _edit_count(self) -> int:
        p = self.folder / "log.jsonl"
        if not p.exists():
            return 0
        with open(p, "rb") as fh:
            return sum(1 for _ in fh)

    def _read_index_raw(self) -> dict:
        p = self.folder / "slices.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def _read_index(self) -> dict:
        return self._read_index_raw()

    def _index_slice(self, axis: int, index: int, lab: np.ndarray | None) -> dict:
        idx = self._read_index_raw()
        key = f"{axis}/{int(index)}"
        entry = {"counts": {}, "updated_at": _now()}
        if lab is not None:
            names = [c["name"] for c in self.classes]
            counts = np.bincount(lab.ravel(), minlength=len(names) + 1)
            entry["counts"] = {names[k]: int(counts[k + 1]) for k in range(len(names)) if counts[k + 1]}
        if entry["counts"]:
            idx[key] = entry
        else:
            idx.pop(key, None)
        omezarr.write_json_atomic(self.folder / "slices.json", idx)
        return {"axis": axis, "index": int(index), **entry}

    def _log(self, record: dict) -> None:
        record = {"at": _now(), **record}
        with open(self.folder / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def log_entries(self) -> list[dict]:
        """All log records, oldest first."""
        p = self.folder / "log.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ContextSettings:
    """Auto-context (second stage) settings.

    Attributes
    ----------
    sigmas : tuple of float
        Smoothing scales of the stage-1 probabilities, in coarse-grid voxels (0 = none).
    step : int
        Coarse grid step: stage 1 is evaluated at every ``step``-th voxel per axis.
    """

    sigmas: tuple[float, ...] = (0.0, 1.0)
    step: int = 2

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "step": self.step}

    @classmethod
    def from_dict(cls, d: dict) -> ContextSettings:
        return cls(tuple(float(s) for s in d["sigmas"]), int(d["step"]))


def _steps(ctx: ContextSettings, fs: FeatureSettings) -> tuple[int, int, int]:
    return (1 if fs.mode == "2d" else ctx.step, ctx.step, ctx.step)


def context_halo(ctx: ContextSettings, fs: FeatureSettings) -> tuple[int, int, int]:
    """Extra full-resolution halo the second stage needs around a block."""
    rc = _radius(max(ctx.sigmas)) if max(ctx.sigmas) > 0 else 0
    out = []
    for a, s in enumerate(_steps(ctx, fs)):
        if fs.mode == "2d" and a == 0:
            out.append(0)
        else:
            out.append(s * (rc + 1))
    return tuple(out)


@dataclass
class Model:
    """A trained classifier (one or two stages) with what it needs to run and its metadata.

    Attributes
    ----------
    forests : list of Forest
        Stage 1 (image features) and optionally stage 2 (features + context).
    feature_settings : FeatureSettings
    context : ContextSettings or None
        None for a one-stage model.
    classes : list of dict
        ``{"name", "color"}`` per class; position = class index.
    voxel_size : tuple of float or None
        Voxel size the features were computed with.
    meta : dict
        Metadata: metrics, label counts, timings, created_at, ...
    """

    forests: list
    feature_settings: FeatureSettings
    context: ContextSettings | None
    classes: list
    voxel_size: tuple | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def halo(self) -> tuple[int, int, int]:
        """Full halo a block needs (features + context)."""
        h1 = halo_for(self.feature_settings, self.voxel_size)
        if self.context is None:
            return h1
        h2 = context_halo(self.context, self.feature_settings)
        return tuple(a + b for a, b in zip(h1, h2, strict=True))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``forest.npz`` + ``meta.json`` into ``folder`` (no pickled objects)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_forests(folder / "forest.npz", self.forests)
        meta = dict(self.meta)
        meta.update(
            {
                "format": MODEL_FORMAT,
                "classes": self.classes,
                "feature_settings": self.feature_settings.to_dict(),
                "context": self.context.to_dict() if self.context else None,
                "voxel_size": list(self.voxel_size) if self.voxel_size else None,
                "stages": [{"n_features": f.n_features, "n_classes": f.n_classes,
                            "n_trees": f.n_trees} for f in self.forests],
            }
        )
        meta.setdefault("created_at", _now())
        omezarr.write_json_atomic(folder / "meta.json", meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Model:
        """Read a model written by :meth:`save`.

        Raises
        ------
        ValueError
            When the folder does not hold a valid model (message names the file).
        """
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.exists() or not (folder / "forest.npz").exists():
            raise FileNotFoundError(f"{folder}: not a model folder (needs meta.json and forest.npz)")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError(f"unknown model format {meta.get('format')!r}")
            fs = FeatureSettings.from_dict(meta["feature_settings"])
            ctx = ContextSettings.from_dict(meta["context"]) if meta.get("context") else None
            shapes = [(int(s["n_features"]), int(s["n_classes"])) for s in meta["stages"]]
            forests = load_forests(folder / "forest.npz", shapes)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ValueError(f"{folder}: invalid model ({exc})") from exc
        vs = tuple(meta["voxel_size"]) if meta.get("voxel_size") else None
        nf = n_features(fs)
        if shapes[0][0] != nf or (ctx and shapes[1][0] != nf + len(meta["classes"]) * len(ctx.sigmas)):
            raise ValueError(f"{folder}: invalid model (feature count does not match settings)")
        return cls(forests, fs, ctx, meta["classes"], vs, meta)


# --------------------------------------------------------------------------- block pipeline


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Training frees hundreds of MB of feature and fitting buffers, spread over the fitting
    threads' malloc arenas; glibc keeps them mapped, so without this a process that trains
    and then segments (the benchmark, a runner) carries them through the whole segmentation.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _box_block(box: tuple[slice, ...], halo: Sequence[int], shape: Sequence[int]) -> _blocks.Block:
    read = tuple(
        slice(max(b.start - h, 0), min(b.stop + h, n)) for b, h, n in zip(box, halo, shape, strict=True)
    )
    return _blocks.Block((0, 0, 0), tuple(box), read, tuple(int(h) for h in halo))


def _features_for_box(array, box, model_fs, voxel_size, coarse_sel=None, inner=None,
                      extra_rows: int = 0):
    """Features of ``box``: (F + extra_rows, N) for the ``inner`` part of the box (default: all)
    and, optionally, (F, M) at the coarse voxels ``coarse_sel`` of the box.

    Only the needed voxels are kept per channel, so memory stays at one block of features.
    """
    shape = array.shape
    h1 = halo_for(model_fs, voxel_size)
    data = _blocks.read_with_halo(array, _box_block(box, h1, shape))
    F = n_features(model_fs)
    bshape = tuple(b.stop - b.start for b in box)
    inner = inner or tuple(slice(0, n) for n in bshape)
    ishape = tuple(i.stop - i.start for i in inner)
    full = np.empty((F + extra_rows, int(np.prod(ishape))), np.float32)
    coarse = None
    if coarse_sel is not None:
        cshape = tuple(len(range(*s.indices(n))) for s, n in zip(coarse_sel, bshape, strict=True))
        coarse = np.empty((F, int(np.prod(cshape))), np.float32)
    for k, ch in enumerate(iter_features(data, model_fs, voxel_size, h1)):
        full[k] = ch[inner].reshape(-1)
        if coarse is not None:
            coarse[k] = ch[coarse_sel].reshape(-1)
    return full, coarse


def _context_plan(write, shape, ctx: ContextSettings, fs: FeatureSettings):
    """Coarse-grid ranges for the context of a write box.

    Returns (region box (full-res, inside the volume), coarse slices into that region,
    coarse index range per axis (c0, c1) clipped to the volume, wanted coarse range
    (w0, w1) before clipping (for mirror padding)).
    """
    steps = _steps(ctx, fs)
    rc = _radius(max(ctx.sigmas)) if max(ctx.sigmas) > 0 else 0
    region, csel, crange, want = [], [], [], []
    for a, (w, n, s) in enumerate(zip(write, shape, steps, strict=True)):
        if fs.mode == "2d" and a == 0:
            region.append(w)
            csel.append(slice(None))
            crange.append((w.start, w.stop))
            want.append((w.start, w.stop))
            continue
        nc = (n + s - 1) // s
        w0 = w.start // s - rc
        w1 = (w.stop - 1) // s + 2 + rc
        c0, c1 = max(w0, 0), min(w1, nc)
        r0 = min(c0 * s, w.start)
        r1 = max((c1 - 1) * s + 1, w.stop)
        region.append(slice(r0, r1))
        csel.append(slice(c0 * s - r0, (c1 - 1) * s - r0 + 1, s))
        crange.append((c0, c1))
        want.append((w0, w1))
    return tuple(region), tuple(csel), crange, want


def _context_features(p1c: np.ndarray, write, crange, want, ctx, fs) -> np.ndarray:
    """Smooth the coarse stage-1 probabilities and interpolate them onto ``write``.

    p1c: (C, coarse shape) over the clipped coarse range. Returns (C * len(sigmas), N).
    """
    steps = _steps(ctx, fs)
    pads = [(c0 - w0, w1 - c1) for (c0, c1), (w0, w1) in zip(crange, want, strict=True)]
    C = p1c.shape[0]
    pad_full = [(0, 0)] + pads
    if any(p != (0, 0) for p in pads):
        p1c = _blocks._pad_reflect(p1c, pad_full, "symmetric")
    wshape = tuple(w.stop - w.start for w in write)
    out = np.empty((C * len(ctx.sigmas), int(np.prod(wshape))), np.float32)
    k = 0
    for sigma in ctx.sigmas:
        for c in range(C):
            sm = p1c[c]
            if sigma > 0:
                sig = [0.0 if (fs.mode == "2d" and a == 0) else sigma for a in range(3)]
                sm = ndi.gaussian_filter(sm, sig, mode="reflect", truncate=4.0, output=np.float32)
            out[k] = _interp_to(sm, write, want, steps).reshape(-1)
            k += 1
    return out


def _interp_to(coarse: np.ndarray, write, want, steps) -> np.ndarray:
    """Linear interpolation of a coarse-grid array (covering ``want``) at the write voxels."""
    arr = coarse
    for a, (w, (w0, _), s) in enumerate(zip(write, want, steps, strict=True)):
        coords = np.arange(w.start, w.stop)
        if s == 1:
            idx = coords - w0
            arr = np.take(arr, idx, axis=a)
            continue
        lo = coords // s
        frac = ((coords - lo * s) / s).astype(np.float32)
        i0 = lo - w0
        a0 = np.take(arr, i0, axis=a)
        a1 = np.take(arr, i0 + 1, axis=a)
        shp = [1] * arr.ndim
        shp[a] = -1
        f = frac.reshape(shp)
        arr = a0 * (1 - f) + a1 * f
    return arr.astype(np.float32, copy=False)


CASCADE = (8, 16, 32)  # early-exit checkpoints (trees) of each forest at prediction
CONFIDENCE = 0.97  # mean class fraction that ends a voxel early


def predict_box(array, box: tuple[slice, ...], model: Model, voxel_size=None,
                threads: int = 1, cascade: Sequence[int] = CASCADE,
                confidence: float = CONFIDENCE) -> np.ndarray:
    """Class probabilities (C, *box shape) float32 for one box of the volume.

    Reads exactly the halo the model needs; the result does not depend on how the volume is
    cut into boxes. ``cascade`` / ``confidence``: early exit per voxel (see
    :meth:`ml4paleo.model_io.Forest.predict_proba`; default :data:`CASCADE`, what
    :func:`segment` uses); ``cascade=()`` runs every tree (exact forest means).
    """
    kw = {"threads": threads, "cascade": cascade, "confidence": confidence}
    fs = model.feature_settings
    vs = model.voxel_size if model.voxel_size is not None else voxel_size
    shape = tuple(array.shape)
    bshape = tuple(b.stop - b.start for b in box)
    if model.context is None:
        X, _ = _features_for_box(array, box, fs, vs)
        return model.forests[0].predict_proba(X.T, **kw).T.reshape(model.n_classes, *bshape)
    region, csel, crange, want = _context_plan(box, shape, model.context, fs)
    inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region, strict=True))
    F = n_features(fs)
    n_ctx = model.n_classes * len(model.context.sigmas)
    X, Xc = _features_for_box(array, region, fs, vs, csel, inner, extra_rows=n_ctx)
    cshape = tuple(c1 - c0 for c0, c1 in crange)
    p1c = model.forests[0].predict_proba(Xc.T, **kw).T.reshape(model.n_classes, *cshape)
    del Xc
    X[F:] = _context_features(p1c, box, crange, want, model.context, fs)
    return model.forests[1].predict_proba(X.T, **kw).T.reshape(model.n_classes, *bshape)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    """Forest sizes and sampling.

    Attributes
    ----------
    n_trees : tuple of int
        Trees of stage 1 and stage 2 (at most; see ``node_budget``).
    node_budget : float or None
        Prediction cost cap: tree nodes a voxel visits on average in the full-resolution
        stage (stage 2, or stage 1 of a one-stage model); trees beyond it are dropped.
        None (default) keeps every tree; 480 roughly doubles segmentation speed for deep
        (painted-slice) forests at a small cost in Dice.
    min_trees : int
        Never fewer trees than this.
    max_depth : int or None
    min_samples_leaf : int
    max_per_class : int
        Cap on training voxels per class (balanced sampling).
    border_weight : float
        How much more likely a labelled voxel next to another class's label is sampled.
    two_stage : bool
        Train the auto-context second stage.
    cross_fit : bool
        Train the second stage on out-of-fold stage-1 probabilities (folds = annotated
        planes) when there are at least two annotated planes.
    class_balance : float
        Reweight the sampled voxels by (balanced weight) ** this: 0 = as sampled, 1 = every
        class weighs the same, 0.5 = in between (rare classes after the cap).
    context_sigmas : tuple of float
        Smoothing scales (coarse voxels) of the stage-1 probabilities fed to stage 2.
    n_jobs : int
        Threads for fitting.
    seed : int
    """

    n_trees: tuple[int, int] = (64, 64)
    node_budget: float | None = None
    min_trees: int = 16
    max_depth: int | None = None
    min_samples_leaf: int = 1
    max_per_class: int = 100000
    border_weight: float = 4.0
    two_stage: bool = True
    cross_fit: bool = False
    class_balance: float = 0.5
    context_sigmas: tuple[float, ...] = (0.0, 1.0)
    n_jobs: int = -1
    seed: int = 0


PREVIEW = TrainSettings(n_trees=(24, 0), node_budget=None, max_depth=14, max_per_class=6000,
                        two_stage=False)


def _labelled_coords(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates (N, 3), values (N,) and border flags of labelled voxels, read slab by slab."""
    shape = tuple(labels.shape)
    step = 64
    chunks = getattr(labels, "chunks", None)
    if chunks:
        step = max(int(chunks[0]), 16)
    coords, vals, border = [], [], []
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        a0, a1 = max(z0 - 1, 0), min(z1 + 1, shape[0])
        slab = np.asarray(labels[a0:a1])
        if not slab.any():
            continue
        mx = ndi.maximum_filter(slab, size=3, mode="nearest")
        low = np.where(slab == 0, 255, slab).astype(np.uint8)
        mn = ndi.minimum_filter(low, size=3, mode="nearest")
        core = slice(z0 - a0, z0 - a0 + (z1 - z0))
        s, mx, mn = slab[core], mx[core], mn[core]
        nz = np.nonzero(s)
        if not len(nz[0]):
            continue
        v = s[nz]
        coords.append(np.stack([nz[0] + z0, nz[1], nz[2]], axis=1))
        vals.append(v)
        border.append((mx[nz] != v) | (mn[nz] != v))
    if not coords:
        raise ValueError("no labelled voxels: annotate at least one voxel of two classes")
    return np.concatenate(coords), np.concatenate(vals), np.concatenate(border)


def _sample(vals: np.ndarray, border: np.ndarray, cap: int, border_weight: float, seed: int):
    """Indices of a class-balanced sample (at most ``cap`` per class, borders preferred)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for v in np.unique(vals):
        idx = np.flatnonzero(vals == v)
        if len(idx) <= cap:
            chosen.append(idx)
            continue
        w = np.where(border[idx], border_weight, 1.0)
        chosen.append(rng.choice(idx, size=cap, replace=False, p=w / w.sum()))
    return np.sort(np.concatenate(chosen))


def _group_boxes(coords: np.ndarray, shape) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """Group voxel coordinates into thin boxes (planes along the axis with fewest planes)."""
    n_planes = [len(np.unique(coords[:, a])) for a in range(3)]
    axis = int(np.argmin(n_planes))
    order = np.argsort(coords[:, axis], kind="stable")
    planes = coords[order, axis]
    cuts = np.flatnonzero(np.diff(planes) > 1) + 1  # runs of adjacent planes
    out = []
    for part in np.split(order, cuts):
        c = coords[part]
        lo, hi = c.min(axis=0), c.max(axis=0) + 1
        out.append((tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), part))
    return out


def _fit_forest(X, y, n_trees, ts: TrainSettings, n_classes: int, seed: int,
                budget: float | None = None) -> Forest:
    """Fit a random forest; with ``budget``, keep only as many trees as fit in it.

    ``budget`` is the number of tree nodes a voxel may visit on average (the expected root-leaf
    path length, summed over trees, under the training distribution): prediction time is
    proportional to it. A few strokes give shallow trees, so many of them fit; whole painted
    slices give deep trees, so fewer do.
    """
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(
        n_estimators=int(n_trees),
        max_depth=ts.max_depth,
        min_samples_leaf=ts.min_samples_leaf,
        max_features="sqrt",
        n_jobs=ts.n_jobs,
        random_state=seed,
    )
    weight = None
    if ts.class_balance > 0:
        counts = np.bincount(y)
        per_class = (len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1))) ** ts.class_balance
        weight = per_class[y]
    rf.fit(X, y, sample_weight=weight)
    if budget:
        paths = np.array([_expected_path(e.tree_) for e in rf.estimators_])
        keep = max(ts.min_trees, int(np.searchsorted(np.cumsum(paths), budget, side="right")))
        rf.estimators_ = rf.estimators_[:keep]
    return Forest.from_sklearn(rf, [int(c) for c in rf.classes_], n_classes)


def _expected_path(tree) -> float:
    left, right = tree.children_left, tree.children_right
    depth = np.zeros(tree.node_count, np.int64)
    for i in range(tree.node_count):
        if left[i] != -1:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    leaf = left == -1
    w = tree.weighted_n_node_samples[leaf]
    return float((depth[leaf] * w).sum() / max(w.sum(), 1e-12)) + 1.0


def _dice_scores(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float | None]:
    out = []
    for c in range(n_classes):
        t, p = truth == c, pred == c
        denom = t.sum() + p.sum()
        out.append(float(2 * (t & p).sum() / denom) if denom else None)
    return out


def _held_out_metrics(X, y, groups, ts: TrainSettings, classes):
    """2-fold metrics with folds split by annotated box (stage-1 features only).

    Returns (metrics dict, fold forests or None, fold membership of each row). The fold
    forests also provide out-of-fold stage-1 probabilities for training the second stage.
    """
    ug = np.unique(groups)
    if len(ug) < 2:
        return {"method": "none (one annotated plane)"}, None, None
    fold = np.isin(groups, ug[::2])
    pred = np.empty_like(y)
    forests = []
    for test in (fold, ~fold):
        train = ~test
        if len(np.unique(y[train])) < 2:
            return {"method": "none (a fold lacks classes)"}, None, None
        f = _fit_forest(X[train], y[train], max(ts.n_trees[0] // 2, 8), ts, len(classes), ts.seed + 7)
        forests.append(f)
        pred[test] = np.argmax(f.predict_proba(X[test]), axis=1)
    dice = _dice_scores(y, pred, len(classes))
    metrics = {
        "method": "2-fold cross-validation by annotated plane, stage-1 features",
        "accuracy": float((pred == y).mean()),
        "dice": {c["name"]: d for c, d in zip(classes, dice, strict=True)},
        "n_voxels": int(len(y)),
    }
    return metrics, forests, fold


def train(
    image: Any,
    labels: Any,
    *,
    classes: Sequence[dict | str] | None = None,
    feature_settings: FeatureSettings | None = None,
    preview: bool = False,
    settings: TrainSettings | None = None,
    progress: ProgressCallback | None = None,
) -> Model:
    """Train a voxel classifier from a label volume.

    Parameters
    ----------
    image : OmeImage, zarr array, ndarray, path
        The scan (z, y, x).
    labels : LabelStore, OmeImage, zarr array, ndarray, path
        Same shape; 0 = unlabelled, ``k + 1`` = class ``k``.
    classes : list of str or dict, optional
        Class names (class 0 = background); default from the LabelStore or
        ``class 0..K-1``.
    feature_settings : FeatureSettings, optional
    preview : bool
        A small one-stage forest (fast; what the annotator uses).
    settings : TrainSettings, optional
        Forest sizes and sampling (overrides ``preview``).
    progress : callable, optional
        ``progress(done, total)`` over feature boxes.

    Returns
    -------
    Model

    Raises
    ------
    ValueError
        When shapes differ or fewer than two classes are labelled.
    """
    t0 = time.perf_counter()
    arr, vs, _ = _open_array(image)
    if isinstance(labels, LabelStore):
        classes = classes or labels.classes
        lab_arr = labels.labels
    else:
        lab_arr, _, _ = _open_array(labels)
    if tuple(lab_arr.shape) != tuple(arr.shape):
        raise ValueError(f"labels shape {tuple(lab_arr.shape)} differs from image shape {tuple(arr.shape)}")
    fs = feature_settings or FeatureSettings()
    ts = settings or (PREVIEW if preview else TrainSettings())
    if ts.n_trees[0] < 1 or (ts.two_stage and ts.n_trees[1] < 1):
        raise ValueError(f"n_trees must be >= 1 for every stage trained, got {ts.n_trees}")
    if not np.issubdtype(np.dtype(lab_arr.dtype), np.integer):
        raise ValueError(f"labels must be integers (0 = unlabelled, k + 1 = class k), got {lab_arr.dtype}")
    coords, vals, border = _labelled_coords(lab_arr)
    if int(vals.max()) > 254:
        raise ValueError(f"labels hold value {int(vals.max())}: expected 0 (unlabelled) or k + 1 for "
                         "class k, at most 254 classes (is this the image instead of the labels?)")
    n_classes = max(int(vals.max()), len(classes) if classes else 0)
    cls_list = _class_list(classes, n_classes)
    if len(np.unique(vals)) < 2:
        raise ValueError("labels hold only one class: annotate at least two classes")
    pick = _sample(vals, border, ts.max_per_class, ts.border_weight, ts.seed)
    coords, y = coords[pick], (vals[pick] - 1).astype(np.int64)
    ctx = ContextSettings(tuple(ts.context_sigmas)) if ts.two_stage else None
    boxes = _group_boxes(coords, arr.shape)
    F = n_features(fs)
    X1 = np.empty((len(y), F), np.float32)
    ctx_items = []
    for i, (box, members) in enumerate(boxes):
        if ctx is None:
            Xb, _ = _features_for_box(arr, box, fs, vs)
        else:
            region, csel, crange, want = _context_plan(box, arr.shape, ctx, fs)
            inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region, strict=True))
            Xb, Xc = _features_for_box(arr, region, fs, vs, csel, inner)
            ctx_items.append((box, members, Xc, crange, want))
        local = coords[members] - np.array([b.start for b in box])
        bshape = tuple(b.stop - b.start for b in box)
        flat = np.ravel_multi_index(local.T, bshape)
        X1[members] = Xb[:, flat].T
        if progress is not None:
            progress(i + 1, len(boxes) + (1 if ctx else 0))
    t_feat = time.perf_counter() - t0
    groups = np.empty(len(y), np.int64)
    for i, (_, members) in enumerate(boxes):
        groups[members] = i
    metrics, fold_forests, fold = ({}, None, None)
    if not preview:
        metrics, fold_forests, fold = _held_out_metrics(X1, y, groups, ts, cls_list)
    forest1 = _fit_forest(X1, y, ts.n_trees[0], ts, n_classes, ts.seed,
                          budget=None if ctx is not None else ts.node_budget)
    forests = [forest1]
    if ctx is not None:
        Xctx = np.empty((len(y), n_classes * len(ctx.sigmas)), np.float32)
        for box, members, Xc, crange, want in ctx_items:
            cshape = tuple(c1 - c0 for c0, c1 in crange)
            # out-of-fold stage 1 (stacking): stage 2 learns from realistic stage-1 errors
            f1 = forest1
            if fold_forests is not None and ts.cross_fit:
                f1 = fold_forests[0] if fold[members[0]] else fold_forests[1]
            p1c = f1.predict_proba(Xc.T).T.reshape(n_classes, *cshape)
            cf = _context_features(p1c, box, crange, want, ctx, fs)
            local = coords[members] - np.array([b.start for b in box])
            flat = np.ravel_multi_index(local.T, tuple(b.stop - b.start for b in box))
            Xctx[members] = cf[:, flat].T
        ctx_items.clear()
        forests.append(_fit_forest(np.concatenate([X1, Xctx], axis=1), y, ts.n_trees[1], ts,
                                   n_classes, ts.seed + 1, budget=ts.node_budget))
        if progress is not None:
            progress(len(boxes) + 1, len(boxes) + 1)
    counts = np.bincount(y, minlength=n_classes)
    meta = {
        "created_at": _now(),
        "metrics": metrics,
        "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, np.bincount(vals - 1, minlength=n_classes), strict=True)},
        "training_voxels": {c["name"]: int(n) for c, n in zip(cls_list, counts, strict=True)},
        "train_settings": {"n_trees": [f.n_trees for f in forests], "max_depth": ts.max_depth,
                           "node_budget": ts.node_budget, "cross_fit": ts.cross_fit,
                           "max_per_class": ts.max_per_class, "two_stage": ts.two_stage},
        "seconds": {"features": round(t_feat, 3), "total": round(time.perf_counter() - t0, 3)},
        "shape": list(arr.shape),
        "classes": cls_list,
        "feature_settings": fs.to_dict(),
        "voxel_size": list(vs) if vs else None,
    }
    del X1, ctx_items, coords, vals, border
    _release_free_memory()
    return Model(forests, fs, ctx, cls_list, vs, meta)


def _class_list(classes, n_classes: int) -> list[dict]:
    out = []
    given = list(classes or [])
    for i in range(max(n_classes, len(given))):
        c = given[i] if i < len(given) else {"name": "background" if i == 0 else f"class {i}"}
        if isinstance(c, str):
            c = {"name": c}
        out.append({"name": c["name"], "color": c.get("color") or DEFAULT_COLORS[i % len(DEFAULT_COLORS)]})
    return out


# --------------------------------------------------------------------------- prediction


def predict_slice(model: Model, image: Any, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities of one slice (for the browser preview).

    Returns
    -------
    labels2d : ndarray uint8
        Class index per pixel (0 = background).
    probabilities : ndarray float32 (C, H, W)
    """
    arr, vs, _ = _open_array(image)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < arr.shape[axis]:
        raise IndexError(f"slice {index} outside 0..{arr.shape[axis] - 1} along axis {axis}")
    box = [slice(0, n) for n in arr.shape]
    box[axis] = slice(index, index + 1)
    # every tree: exact probabilities for the preview (one slice is cheap)
    p = predict_box(arr, tuple(box), model, vs, threads=_blocks.default_workers(), cascade=())
    p = np.take(p, 0, axis=axis + 1)
    return np.argmax(p, axis=0).astype(np.uint8), p


_MODEL_CACHE: dict[str, Model] = {}
_PIECE = 32  # z-thickness predicted at once inside a block


def _cached_model(folder: str) -> Model:
    m = _MODEL_CACHE.get(folder)
    if m is None:
        _MODEL_CACHE.clear()
        m = _MODEL_CACHE[folder] = Model.load(folder)
    return m


_ARRAY_CACHE: dict[str, Any] = {}


def _reopen(ref) -> Any:
    if not isinstance(ref, str):
        return ref
    a = _ARRAY_CACHE.get(ref)
    if a is None:
        a, _, _ = _open_array(ref)
        _ARRAY_CACHE[ref] = a
    return a


def _segment_block(block: _blocks.Block, *, source, model_dir, out_path, prob_path, markers_dir,
                   level: str) -> None:
    import zarr

    markers = _blocks.DoneMarkers(markers_dir)
    if markers.is_done(block):
        return
    model = _cached_model(model_dir)
    arr = _reopen(source)
    out = zarr.open_array(os.path.join(out_path, level), mode="r+")
    lab = np.empty(block.shape, out.dtype)
    probs = np.empty((model.n_classes, *block.shape), np.uint8) if prob_path else None
    # thinner pieces keep a worker's feature memory near 300 MB for 128^3 blocks
    w = block.write
    for z0 in range(w[0].start, w[0].stop, _PIECE):
        z1 = min(z0 + _PIECE, w[0].stop)
        p = predict_box(arr, (slice(z0, z1), w[1], w[2]), model, cascade=CASCADE)
        lab[z0 - w[0].start : z1 - w[0].start] = np.argmax(p, axis=0)
        if probs is not None:
            probs[:, z0 - w[0].start : z1 - w[0].start] = np.clip(np.rint(p * 255), 0, 255)
        del p
        _release_free_memory()  # else freed feature buffers pile up: +70 MB per worker over a run
    out[w] = lab
    if prob_path:
        pa = zarr.open_array(os.path.join(prob_path, "0"), mode="r+")
        pa[(slice(None), *w)] = probs
    markers.mark(block)


def _postprocess_block(block: _blocks.Block, *, raw_path, out_path, min_size, fill_holes,
                       markers_dir) -> None:
    import zarr

    markers = _blocks.DoneMarkers(markers_dir)
    if markers.is_done(block):
        return
    raw = zarr.open_array(raw_path, mode="r")
    data = np.asarray(raw[block.read])
    res = postprocess_labels(data, min_size=min_size, fill_holes=fill_holes)
    out = zarr.open_array(os.path.join(out_path, "0"), mode="r+")
    out[block.write] = res[block.crop_from_read()]
    markers.mark(block)


def postprocess_labels(labels: np.ndarray, *, min_size: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Remove small objects and fill holes in a label array, window-consistently.

    Only objects (and holes) that do not touch the border of ``labels`` are changed, so
    running this on overlapping windows (block + halo) gives the same answer in every
    window that sees the whole object: blockwise clean-up is seam-free for objects whose
    extent fits in the halo; larger objects crossing a window border are left as they are.

    A removed object (or a filled hole) takes the most frequent label around it.
    """
    out = labels.copy()
    if not min_size and not fill_holes:
        return out
    border = np.zeros(labels.shape, bool)
    for a in range(labels.ndim):
        sl = [slice(None)] * labels.ndim
        sl[a] = 0
        border[tuple(sl)] = True
        sl[a] = -1
        border[tuple(sl)] = True
    for c in np.unique(labels):
        if c == 0 and not fill_holes:
            continue
        mask = labels == c
        cc, n = ndi.label(mask)
        if n == 0:
            continue
        sizes = np.bincount(cc.ravel())
        touching = np.unique(cc[border & mask])
        small = sizes < (min_size if c != 0 else 0)
        if c == 0 and fill_holes:
            small = np.ones_like(small)  # every enclosed background pocket is a hole
        small[0] = False
        small[touching] = False
        if c != 0 and not min_size:
            continue
        if not small.any():
            continue
        remove = small[cc]
        # fill with the surrounding label (most frequent in a 1-voxel shell)
        shell = ndi.binary_dilation(remove) & ~remove
        around = out[shell]
        around = around[around != c]
        if around.size:
            out[remove] = np.bincount(around).argmax()
    return out


def segment(
    image: Any,
    model: Model | str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunk_size: int = 128,
    executor: Any = None,
    workers: int | None = None,
    probabilities: bool = False,
    min_size: int = 0,
    fill_holes: bool = False,
    progress: ProgressCallback | None = None,
    resume: bool = True,
) -> omezarr.OmeImage:
    """Segment a whole volume block by block into an OME-Zarr label image.

    Parameters
    ----------
    image : OmeImage, path, zarr array or ndarray
        The scan. Local processes / Dask need something they can reopen (an OME-Zarr
        path); an in-memory array is processed in this process.
    model : Model or path of a saved model
    out : path
        Output OME-Zarr label image (0 = background, k = class k; uint8, uint16 for more
        than 255 classes), same voxel size as the image. With ``probabilities``, a uint8
        probabilities image (c, z, y, x; 255 = 1.0) is written next to it as
        ``<out>_probabilities``.
    chunk_size : int
        Block and chunk edge (even).
    executor : None, "serial", "processes", Dask Client or scheduler address
        See :func:`ml4paleo.blocks.run_blocks`.
    min_size : int
        Remove objects smaller than this (voxels) whose extent fits in a 16-voxel halo.
    fill_holes : bool
        Fill enclosed background pockets (within the same halo limit).
    progress : callable, optional
        ``progress(done, total)`` over blocks.
    resume : bool
        Reuse finished blocks of an interrupted run into the same ``out``.

    Returns
    -------
    OmeImage
        The label image.
    """
    chunk_size = int(chunk_size)
    if chunk_size < 8 or chunk_size % 2:
        raise ValueError(f"chunk_size must be an even number >= 8, got {chunk_size}")
    out = Path(out)
    work = out.parent / f".{out.name}.work"
    if not isinstance(model, Model):
        model_dir = str(Path(model))
        model = Model.load(model_dir)
    else:
        model_dir = None
    arr, vs, unit = _open_array(image)
    shape = tuple(int(s) for s in arr.shape)
    if isinstance(executor, str | type(None)) and not isinstance(_source_ref(image), str):
        executor = "serial" if not (isinstance(executor, str) and "://" in executor) else executor
    fingerprint = {"shape": list(shape), "model": model.meta.get("created_at"), "chunk": chunk_size,
                   "probabilities": bool(probabilities), "min_size": int(min_size),
                   "fill_holes": bool(fill_holes)}
    state_path = work / "state.json"
    resuming = (resume and out.exists() and state_path.exists()
                and json.loads(state_path.read_text()) == fingerprint)
    if not resuming:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        omezarr.write_json_atomic(state_path, fingerprint)
    if model_dir is None:
        model_dir = str(work / "model")
        if not resuming or not (work / "model" / "meta.json").exists():
            model.save(model_dir)
    dtype = np.uint8 if model.n_classes <= 255 else np.uint16
    post = bool(min_size) or bool(fill_holes)
    extra = {"model_classes": model.classes, "model_created_at": model.meta.get("created_at")}
    if resuming:
        img = omezarr.open_image(out, mode="r+")
    else:
        img = omezarr.create_image(out, shape, dtype, chunks=chunk_size, voxel_size=vs, unit=unit,
                                   name="labels", label=True, extra_attrs=extra)
    prob_path = None
    if probabilities:
        prob_path = str(out.parent / f"{out.name}_probabilities")
        if not resuming or not Path(prob_path).exists():
            import zarr

            root = zarr.open_group(prob_path, mode="w", zarr_format=2)
            root.create_array("0", shape=(model.n_classes, *shape), dtype=np.uint8,
                              chunks=(1, chunk_size, chunk_size, chunk_size),
                              compressors=omezarr.default_compressor(), fill_value=0,
                              chunk_key_encoding={"name": "v2", "separator": "/"})
            root.attrs.update({"ml4paleo": {"classes": model.classes, "scale": 255},
                               "voxel_size": list(vs or (1.0, 1.0, 1.0))})
    raw_path = str(work / "raw.zarr") if post else None
    if post and not (resuming and Path(raw_path).exists()):
        import zarr

        zarr.create_array(raw_path, shape=shape, chunks=(chunk_size,) * 3, dtype=dtype,
                          fill_value=0, zarr_format=2, compressors=omezarr.default_compressor())
    grid = _blocks.block_grid(shape, chunk_size, 0)
    n_post = len(grid) if post else 0
    total = len(grid) + n_post

    def stage_progress(offset):
        if progress is None:
            return None
        return lambda d, t: progress(offset + d, total)

    if post:
        # predict into a work array first, clean into the output
        tmp_root = str(work)
        fn = functools.partial(_segment_block, source=_source_ref(image), model_dir=model_dir,
                               out_path=tmp_root, prob_path=prob_path,
                               markers_dir=str(work / "done_predict"), level="raw.zarr")
    else:
        fn = functools.partial(_segment_block, source=_source_ref(image), model_dir=model_dir,
                               out_path=str(out), prob_path=prob_path,
                               markers_dir=str(work / "done_predict"), level="0")
    model = None  # the workers load their own (cached) copy; this process needs no forest
    _release_free_memory()
    _blocks.run_blocks(fn, grid, executor=executor, workers=workers, progress=stage_progress(0))
    if post:
        halo = 16
        pgrid = _blocks.block_grid(shape, chunk_size, halo)
        pfn = functools.partial(_postprocess_block, raw_path=raw_path, out_path=str(out),
                                min_size=int(min_size), fill_holes=bool(fill_holes),
                                markers_dir=str(work / "done_post"))
        _blocks.run_blocks(pfn, pgrid, executor=executor, workers=workers,
                           progress=stage_progress(len(grid)))
    omezarr.build_pyramid(img)
    img.group.attrs.update({"ml4paleo": {**extra, "min_size": int(min_size),
                                         "fill_holes": bool(fill_holes)}})
    shutil.rmtree(work, ignore_errors=True)
    return omezarr.open_image(out)


# --------------------------------------------------------------------------- interactive loop


class InteractiveSession:
    """The annotate-retrain-preview loop of the browser, kept in memory.

    Features of previewed / annotated slices are cached, so after new strokes on a slice
    that was just shown, retraining only fits a small forest on cached feature rows and
    the preview only runs that forest over cached slice features.

    Parameters
    ----------
    image : OmeImage, path, zarr array or ndarray
    label_store : LabelStore
    feature_settings : FeatureSettings, optional
    settings : TrainSettings, optional
        Forest used for previews (default: a 24-tree one-stage forest).
    cache_slices : int
        How many slices' features to keep (each is F x H x W float32).
    """

    def __init__(self, image: Any, label_store: LabelStore, *,
                 feature_settings: FeatureSettings | None = None,
                 settings: TrainSettings | None = None, cache_slices: int = 6) -> None:
        self.array, self.voxel_size, _ = _open_array(image)
        self.store = label_store
        if tuple(self.array.shape) != tuple(label_store.shape):
            raise ValueError(f"label store shape {label_store.shape} differs from image {tuple(self.array.shape)}")
        self.feature_settings = feature_settings or FeatureSettings()
        self.settings = settings or PREVIEW
        self.model: Model | None = None
        self._slice_cache: OrderedDict = OrderedDict()
        self._cache_slices = cache_slices
        self._rows: dict[tuple[int, int], tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.RLock()

    def slice_features(self, axis: int, index: int) -> np.ndarray:
        """Features (F, H, W) of one slice (cached)."""
        key = (int(axis), int(index))
        with self._lock:
            f = self._slice_cache.get(key)
            if f is not None:
                self._slice_cache.move_to_end(key)
                return f
        box = [slice(0, n) for n in self.array.shape]
        box[axis] = slice(index, index + 1)
        X, _ = _features_for_box(self.array, tuple(box), self.feature_settings, self.voxel_size)
        plane = tuple(n for i, n in enumerate(self.array.shape) if i != axis)
        f = X.reshape(X.shape[0], *plane)
        with self._lock:
            self._slice_cache[key] = f
            while len(self._slice_cache) > self._cache_slices:
                self._slice_cache.popitem(last=False)
        return f

    def retrain(self) -> Model:
        """Fit the preview forest on every annotated slice (feature rows cached per slice)."""
        with self._lock:
            return self._retrain()

    def _retrain(self) -> Model:
        t0 = time.perf_counter()
        classes = self.store.classes
        seen = set()
        for s in self.store.annotated_slices():
            key = (s["axis"], s["index"])
            seen.add(key)
            stamp = s["updated_at"]
            if key in self._rows and self._rows[key][0] == stamp:
                continue
            lab = self.store.read_slice(*key)
            nz = np.nonzero(lab)
            feats = self.slice_features(*key)
            X = feats[(slice(None), *nz)].T.copy()
            y = lab[nz].astype(np.int64) - 1
            mx = ndi.maximum_filter(lab, size=3)
            mn = ndi.minimum_filter(np.where(lab == 0, 255, lab).astype(np.uint8), size=3)
            border = (mx[nz] != lab[nz]) | (mn[nz] != lab[nz])
            self._rows[key] = (stamp, X, y, border)
        for key in list(self._rows):
            if key not in seen:
                del self._rows[key]
        if not self._rows:
            raise ValueError("no annotations yet: label at least two classes")
        X = np.concatenate([r[1] for r in self._rows.values()])
        y = np.concatenate([r[2] for r in self._rows.values()])
        border = np.concatenate([r[3] for r in self._rows.values()])
        if len(np.unique(y)) < 2:
            raise ValueError("annotations hold only one class: label at least two classes")
        ts = self.settings
        pick = _sample(y, border, ts.max_per_class, ts.border_weight, ts.seed)
        n_classes = max(len(classes), int(y.max()) + 1)
        forest = _fit_forest(X[pick], y[pick], ts.n_trees[0], ts, n_classes, ts.seed)
        cls_list = _class_list(classes, n_classes)
        meta = {"created_at": _now(), "preview": True,
                "label_counts": {c["name"]: int(n) for c, n in zip(cls_list, np.bincount(y, minlength=n_classes), strict=True)},
                "seconds": {"total": round(time.perf_counter() - t0, 3)}}
        with self._lock:
            self.model = Model([forest], self.feature_settings, None, cls_list, self.voxel_size, meta)
        return self.model

    def _probabilities(self, axis: int, index: int) -> np.ndarray:
        if self.model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        f = self.slice_features(axis, index)
        F, H, W = f.shape
        p = self.model.forests[0].predict_proba(f.reshape(F, -1).T, chunk=16384,
                                                threads=_blocks.default_workers())
        return p.T.reshape(-1, H, W)

    def predict_slice(self, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels2d uint8 class index, probabilities (C, H, W) float32) of one slice."""
        p = self._probabilities(axis, index)
        return np.argmax(p, axis=0).astype(np.uint8), p

    def uncertainty_slice(self, axis: int, index: int) -> np.ndarray:
        """1 - (top probability - second probability), float32 (H, W): 1 = undecided."""
        p = np.sort(self._probabilities(axis, index), axis=0)
        return (1.0 - (p[-1] - p[-2])).astype(np.float32)

    def suggest_slice(self, axis: int, candidates: int = 6, patch: int = 96) -> int:
        """Index of the slice along ``axis`` where the model is least certain.

        Evaluates a centre patch of up to ``candidates`` evenly spaced interior slices that
        are more than 2 slices from any annotated one; returns the most uncertain
        (mean of :meth:`uncertainty_slice` over the patch).
        """
        if self.model is None:
            raise ValueError("no model yet: call retrain() after annotating")
        n = self.array.shape[axis]
        done = [s["index"] for s in self.store.annotated_slices() if s["axis"] == axis]
        pool = [i for i in range(n) if all(abs(i - d) > 2 for d in done)] or list(range(n))
        k = min(candidates, len(pool))
        pick = [pool[int((j + 1) * len(pool) / (k + 1))] for j in range(k)]
        best, best_u = pick[0], -1.0
        plane = [n_ for i, n_ in enumerate(self.array.shape) if i != axis]
        for idx in dict.fromkeys(pick):
            box = []
            k = 0
            for a in range(3):
                if a == axis:
                    box.append(slice(idx, idx + 1))
                else:
                    size = min(patch, plane[k])
                    start = (plane[k] - size) // 2
                    box.append(slice(start, start + size))
                    k += 1
            X, _ = _features_for_box(self.array, tuple(box), self.feature_settings, self.voxel_size)
            p = np.sort(self.model.forests[0].predict_proba(X.T), axis=1)
            u = float(np.mean(1.0 - (p[:, -1] - p[:, -2])))
            if u > best_u:
                best, best_u = idx, u
        return int(best)


__all__ = [
    "ERASE",
    "ContextSettings",
    "InteractiveSession",
    "LabelStore",
    "Model",
    "TrainSettings",
    "PREVIEW",
    "context_halo",
    "postprocess_labels",
    "predict_box",
    "predict_slice",
    "segment",
    "train",
]
