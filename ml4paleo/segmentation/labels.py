"""The label store: painted annotations of one volume, their log and the class list.

Labels are one volume: 0 = unlabelled, value ``k + 1`` = class ``k`` (class 0 is the
background; see :mod:`ml4paleo.classes`). Brush strokes, polygons and whole painted slices
all end up in it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo import _fs, formats
from ml4paleo.classes import ERASE, class_list, validate_classes

__all__ = ["CLASSES_NAME", "ERASE", "INDEX_NAME", "LABELS_NAME", "LOG_NAME", "LabelStore"]

#: file names inside a label store folder
LABELS_NAME = "labels.zarr"
LOG_NAME = "log.jsonl"
CLASSES_NAME = "classes.json"
INDEX_NAME = "slices.json"


class LabelStore:
    """The annotations of one volume: a label volume, a log of edits and the class list.

    Layout of ``folder``: ``labels.zarr`` (uint8 zarr array, 0 = unlabelled, ``k + 1`` =
    class ``k``, chunks of 64^3 so any slice reads fast), ``log.jsonl`` (append-only, one
    JSON object per edit), ``classes.json`` (``[{"name", "color"}, ...]``, class 0 first =
    background) and ``slices.json`` (index of annotated slices with per-class counts).

    The class list and the slice index are read once and kept while their files are
    unchanged (a ``stat`` per access), so a stroke does not re-read them.

    Parameters
    ----------
    folder : path
        An existing store (made by :meth:`create`).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        import zarr

        self.folder = Path(folder)
        if not (self.folder / LABELS_NAME).exists():
            raise FileNotFoundError(f"{self.folder}: no label store ({LABELS_NAME} missing)")
        self.labels = zarr.open_array(str(self.folder / LABELS_NAME), mode="r+")
        self._lock = threading.Lock()
        self._json_cache: dict[str, tuple[Any, Any]] = {}

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
        if (folder / LABELS_NAME).exists():
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"shape must be three positive sizes, got {shape}")
        zarr.create_array(
            str(folder / LABELS_NAME),
            shape=shape,
            chunks=tuple(min(chunks, s) for s in shape),
            dtype=np.uint8,
            fill_value=0,
            zarr_format=2,
            compressors=formats.default_compressor(),
        )
        store = cls(folder)
        store.set_classes(classes or ["background", "bone"])
        store._write_json(INDEX_NAME, {})
        return store

    # -- cached JSON files
    def _stamp(self, name: str) -> Any:
        try:
            st = os.stat(self.folder / name)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_json(self, name: str, default: Any) -> Any:
        stamp = self._stamp(name)
        if stamp is None:
            return default
        hit = self._json_cache.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = json.loads((self.folder / name).read_text())
        self._json_cache[name] = (stamp, value)
        return value

    def _write_json(self, name: str, value: Any) -> None:
        _fs.atomic_write_json(self.folder / name, value)
        self._json_cache[name] = (self._stamp(name), value)

    # -- classes
    @property
    def classes(self) -> list[dict]:
        """``[{"name", "color"}, ...]``; list position = class index (a copy)."""
        value = self._read_json(CLASSES_NAME, None)
        if value is None:
            return class_list(None, 1)
        return [dict(c) for c in value]

    def set_classes(self, classes: Sequence[dict | str]) -> list[dict]:
        """Replace the class list (names and colours; 1 to 254 classes, see
        :func:`ml4paleo.classes.validate_classes`)."""
        out = validate_classes(classes, min_count=1)
        before = self._read_json(CLASSES_NAME, None)
        with self._lock:
            self._write_json(CLASSES_NAME, out)
            if before:
                self._rename_counts([c["name"] for c in before], [c["name"] for c in out])
            self._log({"action": "set_classes", "classes": out})
        return [dict(c) for c in out]

    def _rename_counts(self, old: list[str], new: list[str]) -> None:
        """Re-key the slice index's per-class counts after classes were renamed (by position)."""
        rename = {a: b for a, b in zip(old, new, strict=False) if a != b}
        if not rename:
            return
        idx = self._read_json(INDEX_NAME, {})
        fixed = {key: {**v, "counts": {rename.get(k, k): n for k, n in v["counts"].items()}}
                 for key, v in idx.items()}
        self._write_json(INDEX_NAME, fixed)

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
        return self._read(self._plane(axis, index))

    def _read(self, sl: tuple) -> np.ndarray:
        # straight from the chunk files when their layout allows: a plane of a large label
        # volume touches thousands of chunks, mostly never written, and zarr's per-chunk
        # bookkeeping costs ~0.3 ms each (a 4096^2 plane: 1.4 s; this way: a few ms)
        files = self._chunk_files()
        if files is None:
            return np.asarray(self.labels[sl])
        box = tuple(slice(s, s + 1) if isinstance(s, int) else s for s in sl)
        out = files.read(box)
        return out[tuple(0 if isinstance(s, int) else slice(None) for s in sl)]

    def _chunk_files(self) -> Any:
        if not hasattr(self, "_files"):
            from ml4paleo.formats import ChunkFiles

            try:
                self._files = ChunkFiles(self.folder / LABELS_NAME)
            except (ValueError, OSError, KeyError):
                self._files = None
        return self._files

    def _write_changes(self, axis: int, index: int, before: np.ndarray, after: np.ndarray) -> None:
        """Write the chunks of plane ``index`` where ``after`` differs from ``before``.

        Each run of changed chunks along a chunk row is one zarr write, so a stroke
        rewrites the few chunks it touches instead of every chunk of the plane.
        """
        diff = before != after
        if not diff.any():
            return
        plane_chunks = [c for a, c in enumerate(self.labels.chunks) if a != axis]
        ch, cw = plane_chunks
        h, w = diff.shape
        ny, nx = -(-h // ch), -(-w // cw)
        pad = np.zeros((ny * ch, nx * cw), bool)
        pad[:h, :w] = diff
        changed = pad.reshape(ny, ch, nx, cw).any(axis=(1, 3))
        for cy in np.flatnonzero(changed.any(axis=1)):
            row = changed[cy]
            starts = np.flatnonzero(row & ~np.r_[False, row[:-1]])
            stops = np.flatnonzero(row & ~np.r_[row[1:], False]) + 1
            rows = slice(int(cy) * ch, min((int(cy) + 1) * ch, h))
            for a, b in zip(starts, stops, strict=True):
                cols = slice(int(a) * cw, min(int(b) * cw, w))
                sl: list[Any] = [rows, cols]
                sl.insert(axis, int(index))
                self.labels[tuple(sl)] = after[rows, cols]

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
            :data:`~ml4paleo.classes.ERASE` (255) erases.
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
        n_classes = len(self.classes)
        if lab.size and (lab.min() < 0 or (lab.max() > n_classes and lab.max() != ERASE)):
            raise ValueError(f"label values must be 0..{n_classes} (or {ERASE} to erase)")
        lab = lab.astype(np.uint8)
        with self._lock:
            before = self._read(sl)
            if merge:
                cur = np.where(lab == ERASE, 0, np.where(lab > 0, lab, before)).astype(np.uint8)
            else:
                cur = np.where(lab == ERASE, 0, lab).astype(np.uint8)
            self._write_changes(axis, index, before, cur)
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
        n_classes = len(self.classes)
        for p in polygons:
            k = int(p["label"])
            if not 0 <= k < n_classes:
                raise ValueError(f"polygon class {k} outside 0..{n_classes - 1}")
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
        idx = self._read_json(INDEX_NAME, {})
        out = []
        for key, v in sorted(idx.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("/"))):
            axis, index = (int(x) for x in key.split("/"))
            out.append({"axis": axis, "index": index, **json.loads(json.dumps(v))})
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
        p = self.folder / LOG_NAME
        if not p.exists():
            return 0
        with open(p, "rb") as fh:
            return sum(1 for _ in fh)

    def _index_slice(self, axis: int, index: int, lab: np.ndarray | None) -> dict:
        idx = dict(self._read_json(INDEX_NAME, {}))
        key = f"{axis}/{int(index)}"
        entry: dict[str, Any] = {"counts": {}, "updated_at": _fs.now_iso()}
        if lab is not None:
            names = [c["name"] for c in self.classes]
            counts = np.bincount(lab.ravel(), minlength=len(names) + 1)
            entry["counts"] = {names[k]: int(counts[k + 1]) for k in range(len(names)) if counts[k + 1]}
        if entry["counts"]:
            idx[key] = entry
        else:
            idx.pop(key, None)
        self._write_json(INDEX_NAME, idx)
        return {"axis": axis, "index": int(index), **entry}

    def _log(self, record: dict) -> None:
        record = {"at": _fs.now_iso(), **record}
        with open(self.folder / LOG_NAME, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def log_entries(self) -> list[dict]:
        """All log records, oldest first."""
        p = self.folder / LOG_NAME
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
