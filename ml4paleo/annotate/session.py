"""One job's annotate -> retrain -> preview loop, kept in memory: :class:`JobAnnotator`.

Everything the annotator's routes do beyond HTTP lives here: opening the job's image and
label store, checking and writing submitted labels (:meth:`JobAnnotator.submit`, the one
entry for a stroke), recording them in the job store after they are written, retraining the
preview model and assembling the preview (class overlay, uncertainty, fractions, timing),
the info / classes / thumbnail answers, and the original API's cut-out submissions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ml4paleo.blocks import default_workers
from ml4paleo.classes import DEFAULT_CLASSES, PALETTE, ClassError, colors_of, validate_classes
from ml4paleo.formats import read_slice
from ml4paleo.io import open_any
from ml4paleo.jobs import InvalidTransition, annotation_effect, parse_status
from ml4paleo.segmentation import (
    ByteCache,
    InteractiveSession,
    LabelStore,
    plane_island_size,
    preview_plane,
)
from ml4paleo.segmentation.interactive import DEFAULT_CACHE_BYTES
from ml4paleo.workspace.paths import JobPaths

from .codecs import (
    decode_data_url,
    decode_image_array,
    decode_label_mask,
    decode_png,
    legacy_mask_to_labels,
    rasterize_polygons,
)
from .errors import AnnotationConflict, AnnotationError, AnnotationNotFound
from .legacy import (
    FILMSTRIP_SHAPE_ZYX,
    cutout_region,
    field,
    filmstrip,
    filmstrip_slice,
    legacy_regions,
    random_cutout,
    read_cutout,
    sample_metadata_for_z,
    uses_polygons,
    validate_sample_metadata,
)
from .overlays import (
    apply_window,
    class_overlay,
    data_url,
    display_window,
    encode_png,
    legacy_prediction_png,
    png_base64,
    thumbnail,
    uncertainty_overlay,
)
from .planes import AXIS_NAMES, parse_axis, plane_shape

log = logging.getLogger(__name__)

__all__ = ["JobAnnotator"]


class JobAnnotator:
    """The interactive annotate -> retrain -> preview loop of one job, kept in memory.

    Holds the job's opened image, its :class:`~ml4paleo.segmentation.LabelStore`
    (``<job>/annotations``) and one :class:`~ml4paleo.segmentation.InteractiveSession`
    whose feature tiles, training rows (features of labelled pixels only) and predicted
    tiles stay in a byte-bounded :class:`~ml4paleo.segmentation.cache.ByteCache` (shared
    by the annotators of a server), so a retrain after a few more strokes does not read
    the volume again. The first overlay of a plane is the whole plane on its coarse
    pyramid level (:meth:`preview`); finer tiles of what is in view come from
    :meth:`tile_png`. Not thread-safe by itself except :meth:`tile_png`: callers hold
    :attr:`lock` (the web app keeps these in a :class:`~ml4paleo.annotate.SessionPool`).

    Parameters
    ----------
    job_dir : path
        The job folder (see :class:`~ml4paleo.workspace.JobPaths`).
    classes : list of dict, optional
        Classes of a new label store (default: :data:`ml4paleo.classes.DEFAULT_CLASSES`).
    store : JobStore, optional
        The job store to record annotations in (after they are written); without one
        nothing is recorded (a notebook).
    cache : ByteCache, optional
        Where previews are kept (default: a private 512 MiB one).
    tile : int
        Preview tile edge, pixels (a multiple of 64).
    coarse_pixels : int
        The first overlay is the whole plane on the finest level at most this large.
    workers : int, optional
        Tile computations of this job at once (default: CPUs).

    Raises
    ------
    AnnotationConflict
        When the job has no converted image yet.
    """

    def __init__(self, job_dir: Any, classes: Sequence[dict] | None = None, *,
                 store: Any = None, cache: ByteCache | None = None, tile: int = 256,
                 coarse_pixels: int = 512, workers: int | None = None) -> None:
        self.paths = JobPaths(job_dir)
        self.job_dir = self.paths.root
        self.job_id = self.paths.job_id
        self.store = store
        if not self.paths.image.is_dir():
            raise AnnotationConflict("the image is not converted yet; wait for the conversion")
        self.volume = open_any(self.paths.image)
        #: the OME-Zarr image (pyramid levels, metadata)
        self.image = self.volume.image
        self.shape = tuple(int(s) for s in self.volume.shape)
        self.lock = threading.RLock()
        self.labels = self._open_store(classes)
        #: derived data of the previews (shared between annotators to bound a server's memory)
        self.cache = cache if cache is not None else ByteCache(DEFAULT_CACHE_BYTES)
        self.tile = int(tile)
        self.coarse_pixels = int(coarse_pixels)
        self._session: InteractiveSession | None = None
        self._session_lock = threading.Lock()
        self.model: Any = None
        self.model_version = 0
        self.revision = 0  # bumps on every label change
        self.style = 0  # bumps when class colours change (overlays look different)
        self._token = uuid.uuid4().hex[:8]  # versions of a rebuilt annotator never collide
        self._trained_revision = -1
        self._window: dict | None = None
        self._issued: OrderedDict[str, dict] = OrderedDict()  # legacy cut-outs by content hash
        self.last_timing: dict[str, float] = {}
        self._prefetch: dict[tuple[int, int], Any] = {}
        self._prefetch_pool: ThreadPoolExecutor | None = None
        self._prefetch_lock = threading.Lock()
        #: tile computations of this job at once (the others wait; other jobs do not)
        self._compute = threading.BoundedSemaphore(max(1, int(workers or default_workers())))

    # ---------------------------------------------------------------- labels
    def _open_store(self, classes: Sequence[dict] | None) -> LabelStore:
        folder = self.paths.annotations
        if folder.is_dir() and any(folder.iterdir()):
            return LabelStore(folder)
        return LabelStore.create(folder, self.shape, classes=list(classes or DEFAULT_CLASSES))

    @property
    def classes(self) -> list[dict]:
        """The label store's classes ``[{name, color}, ...]`` (a copy; read once, cached)."""
        return self.labels.classes

    @property
    def colors(self) -> list[str]:
        """``#rrggbb`` per class."""
        return colors_of(self.labels.classes)

    def set_classes(self, classes: Any) -> list[dict]:
        """Replace names/colours (2 to 254 classes); never drops a class that holds labels."""
        try:
            clean = validate_classes(classes, min_count=2)
        except ClassError as exc:
            raise AnnotationError(str(exc)) from exc
        current = self.classes
        counts = self.count_by_class(current)
        used = max((k for k, n in counts.items() if n), default=-1)
        if len(clean) <= used:
            raise AnnotationError(
                f"class {used} ({current[used]['name']}) still holds labels; "
                "delete those annotations before removing the class"
            )
        if len(clean) != len(current):
            self._invalidate_model()
        elif [c.get("color") for c in clean] != [c.get("color") for c in current]:
            self.style += 1
        self.labels.set_classes(clean)
        return self.classes

    def count_by_class(self, classes: list[dict] | None = None) -> dict[int, int]:
        """Labelled voxels per class index."""
        names = [c["name"] for c in (classes if classes is not None else self.classes)]
        out: dict[int, int] = {}
        for k, n in self.labels.count_by_class().items():
            if k in names:
                out[names.index(k)] = int(n)
            elif n:
                log.warning("labels counted for unknown class %r in job %s", k, self.job_id)
        return out

    def counts(self, classes: list[dict] | None = None) -> dict[str, int]:
        """:meth:`count_by_class` with string keys (what the API returns)."""
        return {str(k): v for k, v in self.count_by_class(classes).items()}

    def read_labels(self, axis: int, index: int) -> np.ndarray:
        self._check_index(axis, index)
        return np.asarray(self.labels.read_slice(axis, index), dtype=np.uint8)

    def write_labels(self, axis: int, index: int, labels2d: np.ndarray,
                     n_classes: int | None = None) -> dict:
        """Replace the labels of one plane with ``labels2d`` (0 = unlabelled)."""
        self._check_index(axis, index)
        labels2d = np.asarray(labels2d, dtype=np.uint8)
        expected = plane_shape(self.shape, axis)
        if labels2d.shape != expected:
            raise AnnotationError(
                f"labels are {labels2d.shape[0]} x {labels2d.shape[1]}, "
                f"the {AXIS_NAMES[axis]} plane is {expected[0]} x {expected[1]}"
            )
        n_classes = len(self.classes) if n_classes is None else n_classes
        if labels2d.size and int(labels2d.max()) > n_classes:
            raise AnnotationError(
                f"labels hold class value {int(labels2d.max())} but only "
                f"{n_classes} classes exist"
            )
        # the plane becomes exactly labels2d (0 erases), one log entry per submission
        self.labels.write_slice(axis, index, labels2d, source="annotator")
        self._labels_changed()
        return {"axis": AXIS_NAMES[axis], "index": int(index), "labelled": int((labels2d > 0).sum())}

    def merge_labels(self, axis: int, index: int, region: tuple[slice, slice], patch: np.ndarray) -> dict:
        """Set ``region`` of a plane to ``patch`` (the rest of the plane is kept)."""
        current = self.read_labels(axis, index).copy()
        current[region] = patch
        return self.write_labels(axis, index, current)

    def clear_labels(self, axis: int, index: int) -> None:
        self._check_index(axis, index)
        self.labels.clear_slice(axis, index)
        self._labels_changed()

    def annotated_slices(self) -> list[dict]:
        """``[{axis, index, counts{class: n}, updated_at}, ...]`` of planes holding labels."""
        out = []
        for item in self.labels.annotated_slices():
            entry = {"axis": AXIS_NAMES[parse_axis(item["axis"])], "index": int(item["index"])}
            for key in ("counts", "updated_at"):
                if key in item:
                    entry[key] = item[key]
            out.append(entry)
        return out

    def _labels_changed(self) -> None:
        self.revision += 1

    def _invalidate_model(self) -> None:
        with self._prefetch_lock:
            for f in self._prefetch.values():
                f.cancel()
            self._prefetch.clear()
        with self._session_lock:
            old, self._session = self._session, None
        if old is not None:
            old.close()
        self.model = None
        self.style += 1

    def _check_index(self, axis: int, index: int) -> None:
        if axis not in (0, 1, 2):
            raise AnnotationError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= int(index) < self.shape[axis]:
            raise AnnotationError(
                f"{AXIS_NAMES[axis]} index {index} outside 0..{self.shape[axis] - 1}"
            )

    # ---------------------------------------------------------------- the job store
    def _check_can_annotate(self) -> None:
        """Refuse (409) before writing when the job store would refuse the annotation."""
        if self.store is None:
            return
        _, refusal = annotation_effect(self.store.get(self.job_id)["status"])
        if refusal:
            raise AnnotationConflict(refusal)

    def record(self) -> None:
        """Tell the job store the annotations changed (after they are written).

        New labels mean the next segmentation should train on them, so a chosen model is
        dropped; queued or running work is kept.
        """
        if self.store is None:
            return
        try:
            self.store.record_annotation(self.job_id, chosen_model_id=None)
        except InvalidTransition as exc:
            raise AnnotationConflict(str(exc)) from exc

    # ---------------------------------------------------------------- one submission
    def submit(self, axis: int, index: int, mask: Any, *, preview: bool = True) -> dict:
        """Check, store and record one plane's labels; retrain and preview that plane.

        Parameters
        ----------
        axis, index : int
            The plane.
        mask : str or dict
            A grey class-index PNG data URL or ``{encoding: rle|raw|zlib, shape, data}``
            (0 = unlabelled, k+1 = class k); see :func:`~ml4paleo.annotate.decode_label_mask`.
            The plane becomes exactly this mask.
        preview : bool
            Also retrain and return :meth:`preview` of the plane.

        Returns
        -------
        dict
            ``{saved: {axis, index, labelled}, counts: {class index: n}, preview?: {...}}``.

        Raises
        ------
        AnnotationError
            For a malformed or out-of-range mask or index (nothing is written).
        AnnotationConflict
            When the job cannot take annotations now (nothing is written).
        """
        classes = self.classes
        colors = colors_of(classes)
        labels = decode_label_mask(mask, plane_shape(self.shape, axis), n_classes=len(classes),
                                   colors=colors)
        self._check_index(axis, index)
        self._check_can_annotate()
        saved = self.write_labels(axis, index, labels, n_classes=len(classes))
        self.record()
        out: dict[str, Any] = {"saved": saved, "counts": self.counts(classes)}
        if preview:
            try:
                out["preview"] = self.preview(axis, index, classes=classes)
            except (ValueError, RuntimeError) as exc:
                log.warning("preview failed for job %s: %s", self.job_id, exc)
                out["preview"] = {"overlay": None, "uncertainty": None, "message": str(exc)}
        return out

    def delete(self, axis: int, index: int) -> dict:
        """Erase one plane's labels and record that; ``{deleted, counts}``."""
        self._check_index(axis, index)
        self._check_can_annotate()
        self.clear_labels(axis, index)
        self.record()
        return {"deleted": {"axis": AXIS_NAMES[axis], "index": int(index)}, "counts": self.counts()}

    # ---------------------------------------------------------------- model
    @property
    def session(self) -> InteractiveSession:
        with self._session_lock:
            if self._session is None:
                self._session = InteractiveSession(self.volume, self.labels, cache=self.cache,
                                                   tile=self.tile,
                                                   coarse_pixels=self.coarse_pixels)
            return self._session

    @property
    def version(self) -> str:
        """Names what the overlays show now (labels and colours); changes with either."""
        return f"{self._token}-{self.revision}-{self.style}"

    @property
    def nbytes(self) -> int:
        """Memory this annotator holds outside the shared cache (its preview forests), bytes."""
        session = self._session
        return session.nbytes if session is not None else 0

    def levels(self, axis: int) -> list[list[int]]:
        """(rows, columns) of a plane across ``axis`` on every pyramid level."""
        s = self.session
        return [list(s.plane_shape(axis, level)) for level in range(s.n_levels)]

    def prefetch(self, axis: int, index: int) -> None:
        """Start computing the features of a plane's first overlay in the background.

        Called when the browser opens a plane: the coarse level's feature tiles are ready by
        the time the first strokes arrive. Safe to call without holding :attr:`lock`; at
        most one plane is computed at once.
        """
        self._check_index(axis, index)
        key = (int(axis), int(index))
        with self._prefetch_lock:
            fut = self._prefetch.get(key)
            if fut is not None and not fut.cancelled():
                return
            for k, f in list(self._prefetch.items()):
                if f.done() or f.cancel():  # drop finished and not-yet-started planes
                    del self._prefetch[k]
            if self._prefetch_pool is None:
                self._prefetch_pool = ThreadPoolExecutor(1, thread_name_prefix="features")
            session = self.session
            self._prefetch[key] = self._prefetch_pool.submit(session.prefetch, *key)

    def _await_prefetch(self, axis: int, index: int) -> None:
        """Wait for a running feature prefetch of this plane instead of computing twice."""
        with self._prefetch_lock:
            fut = self._prefetch.get((int(axis), int(index)))
        if fut is not None:
            try:
                fut.result()
            except Exception as exc:  # the synchronous path reports real errors
                log.warning("feature prefetch failed: %s", exc)

    def close(self) -> None:
        """Stop the background feature thread and drop this annotator's cached previews."""
        if self._prefetch_pool is not None:
            self._prefetch_pool.shutdown(wait=False, cancel_futures=True)
        with self._session_lock:
            old, self._session = self._session, None
        if old is not None:
            old.close()

    def labelled_classes(self, classes: list[dict] | None = None) -> int:
        return sum(1 for n in self.count_by_class(classes).values() if n)

    def retrain(self, classes: list[dict] | None = None, level: int = 0) -> Any:
        """The preview model of pyramid ``level`` (0 = full resolution, the one saved and used
        for suggestions) for the current labels, refitted when they changed.

        Returns the model, or None when fewer than two classes hold labels.
        """
        classes = classes if classes is not None else self.classes
        if self.labelled_classes(classes) < 2:
            if level == 0:
                self.model = None
            self._trained_revision = self.revision
            return None
        with self._prefetch_lock:
            pending = set(self._prefetch)
        for s in self.labels.annotated_slices():
            if (int(s["axis"]), int(s["index"])) in pending:
                self._await_prefetch(int(s["axis"]), int(s["index"]))
        revision = self.revision
        t0 = time.perf_counter()
        model = self.session.retrain(classes, level)
        self.last_timing["retrain_s"] = time.perf_counter() - t0
        if level == 0:
            self.model = model
        if self._trained_revision != revision:
            self.model_version += 1
            self._trained_revision = revision
        return model

    @property
    def stale(self) -> bool:
        """True when labels changed since the last retrain."""
        return self._trained_revision != self.revision

    def coarse_level(self, axis: int) -> int:
        """The pyramid level of a plane's first overlay (the whole plane, at most
        ``coarse_pixels`` on a side)."""
        return self.session.coarse_level(axis)

    def predict(self, axis: int, index: int, level: int = 0, rows: slice | None = None,
                cols: slice | None = None, *, refit: bool = True
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """(classes2d uint8, uncertainty float32 0..1) of a plane (or a region of it) on
        pyramid ``level``, or None while fewer than two classes hold labels.

        Assembled from cached preview tiles; ``refit=False`` keeps a level's existing model
        even when the labels changed since.
        """
        self._check_index(axis, index)
        classes = self.classes
        if self.labelled_classes(classes) < 2:
            return None
        self._await_prefetch(axis, index)
        t0 = time.perf_counter()
        with self._compute:
            cls, unc = self.session.predict_region(axis, int(index), level, rows, cols,
                                                   classes, refit=refit)
        self.last_timing["predict_s"] = time.perf_counter() - t0
        return cls, unc.astype(np.float32) / np.float32(255)

    def uncertainty(self, axis: int, index: int) -> np.ndarray | None:
        """Uncertainty 0..1 of one plane at full resolution, or None."""
        pred = self.predict(axis, index)
        return None if pred is None else pred[1]

    def preview(self, axis: int, index: int, *, retrain: bool = True,
                classes: list[dict] | None = None) -> dict:
        """Retrain (if labels changed) and predict a whole plane on its coarse level: the
        first overlay (class and uncertainty data URLs); the browser refines what is in view
        with :meth:`tile_png`.

        Returns
        -------
        dict
            ``{axis, index, model_version, stale, version, level, levels, tile, overlay,
            uncertainty, fractions, mean_uncertainty, timing}``; ``overlay`` is None (with a
            ``message``) while fewer than two classes hold labels. ``level`` is the pyramid
            level of the overlay, ``levels`` the plane's (rows, columns) on every level,
            ``version`` the key of this prediction's tiles.
        """
        self._check_index(axis, index)
        classes = classes if classes is not None else self.classes
        level = self.coarse_level(axis)
        t0 = time.perf_counter()
        if retrain:
            self.retrain(classes, level)
        t1 = time.perf_counter()
        pred = self.predict(axis, index, level, refit=retrain)
        t2 = time.perf_counter()
        out: dict[str, Any] = {
            "axis": AXIS_NAMES[axis],
            "index": int(index),
            "model_version": self.model_version,
            "stale": self.stale,
            "version": self.version,
            "level": level,
            "levels": self.levels(axis),
            "tile": self.tile,
        }
        if pred is None:
            out.update(overlay=None, uncertainty=None,
                       message="label at least two classes to see a prediction")
        else:
            classes2d, unc = pred
            out.update(
                overlay=data_url(class_overlay(classes2d, colors_of(classes))),
                uncertainty=data_url(uncertainty_overlay(unc)),
                fractions={c["name"]: float((classes2d == k).mean()) for k, c in enumerate(classes)},
                mean_uncertainty=float(unc.mean()),
            )
        out["timing"] = {"retrain_s": round(t1 - t0, 4), "predict_s": round(t2 - t1, 4),
                         "total_s": round(time.perf_counter() - t0, 4)}
        return out

    def tile_png(self, axis: int, index: int, level: int, ty: int, tx: int,
                 kind: str = "classes") -> bytes:
        """PNG (RGBA) of one preview tile: the class overlay, or ``kind="uncertainty"``.

        Thread-safe without :attr:`lock` (tiles of one job are computed at most
        ``workers`` at once); retrains ``level``'s model first when the labels changed.
        Cached per model and colours.

        Raises
        ------
        AnnotationError
            For an unknown kind, level or tile.
        AnnotationConflict
            While fewer than two classes hold labels.
        """
        self._check_index(axis, index)
        if kind not in ("classes", "uncertainty"):
            raise AnnotationError(f"kind must be classes or uncertainty, got {kind!r}")
        session = self.session
        if not 0 <= int(level) < session.n_levels:
            raise AnnotationNotFound(f"level {level} outside 0..{session.n_levels - 1}")
        if ty < 0 or tx < 0:
            raise AnnotationError(f"tile row and column must be >= 0, got {ty}, {tx}")
        try:
            session.grid(axis, level).check(ty, tx)
        except ValueError as exc:
            raise AnnotationNotFound(str(exc)) from exc
        classes = self.classes
        if self.labelled_classes(classes) < 2:
            raise AnnotationConflict("no model yet: label at least two classes")
        style = self.style
        with self._compute:
            cls, unc = session.tile_prediction(axis, int(index), level, ty, tx, classes)
        li = session.level_plane(axis, int(index), level)
        key = (session.owner, "png", kind, axis, li, level, ty, tx, session.model_id(level), style)
        colors = colors_of(classes)

        def encode() -> bytes:
            if kind == "uncertainty":
                return encode_png(uncertainty_overlay(unc.astype(np.float32) / np.float32(255)))
            return encode_png(class_overlay(cls, colors))

        return self.cache.get_or_compute(key, encode)

    def overlay(self, axis: int, index: int, kind: str = "classes") -> np.ndarray | None:
        """RGBA class (or ``kind="uncertainty"``) overlay of one plane at full resolution
        after a retrain; None without a model."""
        self._check_index(axis, index)
        pred = self.predict(axis, index)
        if pred is None:
            return None
        if kind == "uncertainty":
            return uncertainty_overlay(pred[1])
        return class_overlay(pred[0], self.colors)

    def cleanup_preview(self, axis: int, index: int, *, min_size: int = 0,
                        fill_holes: bool = False) -> dict:
        """The prediction of one plane with the whole-volume clean-up's options applied on
        that plane (:func:`ml4paleo.segmentation.preview_plane`): what "remove islands
        below ``min_size`` voxels" and "fill holes" would change here.

        Returns
        -------
        dict
            ``{axis, index, model_version, overlay, changed_pixels, island_pixels}``;
            ``overlay`` is None (with a ``message``) without a model.
        """
        self._check_index(axis, index)
        self.retrain()
        pred = self.predict(axis, index)
        out: dict[str, Any] = {"axis": AXIS_NAMES[axis], "index": int(index),
                               "model_version": self.model_version,
                               "island_pixels": plane_island_size(int(min_size))}
        if pred is None:
            out.update(overlay=None, changed_pixels=0,
                       message="label at least two classes to see a prediction")
            return out
        cleaned, changed = preview_plane(pred[0], min_size=int(min_size),
                                         fill_holes=bool(fill_holes))
        out.update(overlay=data_url(class_overlay(cleaned, self.colors)), changed_pixels=changed)
        return out

    def suggest(self, axis: int) -> dict:
        """The plane along ``axis`` to annotate next.

        The engine's choice (least certain plane) when a model exists; otherwise the
        plane farthest from every annotated plane of that axis.
        """
        n = self.shape[axis]
        if self.model is not None:
            return {"index": int(self.session.suggest_slice(axis)), "reason": "least certain"}
        done = sorted(
            s["index"] for s in self.annotated_slices() if s["axis"] == AXIS_NAMES[axis]
        )
        if not done:
            return {"index": n // 2, "reason": "middle of the volume"}
        idx = np.arange(n)
        dist = np.min(np.abs(idx[:, None] - np.asarray(done)[None, :]), axis=1)
        return {"index": int(dist.argmax()), "reason": "farthest from annotated slices"}

    # ---------------------------------------------------------------- image
    def window(self) -> dict:
        """Display window of the whole image (from its smallest pyramid level)."""
        if self._window is None:
            level = self.volume.levels[-1]
            if int(np.prod(level.shape)) <= 32 * 1024**2:
                values = np.asarray(level[...])
            else:
                mid = [s // 2 for s in level.shape]
                values = np.concatenate(
                    [np.asarray(level[mid[0]]).ravel(), np.asarray(level[:, mid[1]]).ravel()]
                )
            self._window = display_window(values)
        return self._window

    def read_plane(self, axis: int, index: int, level: int = 0) -> np.ndarray:
        """One plane of the image on pyramid ``level`` (default full resolution)."""
        self._check_index(axis, index)
        if not 0 <= int(level) < len(self.image.levels):
            raise AnnotationNotFound(f"level {level} outside 0..{len(self.image.levels) - 1}")
        return read_slice(self.image, axis, int(index), int(level))

    def thumbnail(self, axis: int, index: int, size: int = 192) -> np.ndarray:
        """RGB thumbnail of a plane (display window) with its labels blended in."""
        plane = self.read_plane(axis, index)
        w = self.window()
        gray = apply_window(plane, w["window_min"], w["window_max"])
        return thumbnail(gray, self.read_labels(axis, index), self.colors, int(size))

    # ---------------------------------------------------------------- answers
    def info(self, record: dict | None = None) -> dict:
        """What the annotator page starts from: image, window, classes (+ palette), labels, model.

        ``record``: the job's record (name, status, chosen model), when there is one.
        """
        record = record or {}
        classes = self.classes
        vs = self.volume.voxel_size
        return {
            "job_id": record.get("id", self.job_id),
            "name": record.get("name"),
            "status": parse_status(record["status"]).value if record.get("status") else None,
            "shape": list(self.shape),
            "dtype": str(self.volume.dtype),
            "voxel_size": list(vs) if vs else None,
            "unit": self.volume.unit,
            "window": self.window(),
            "classes": classes,
            "palette": list(PALETTE),
            "counts": self.counts(classes),
            "annotated": self.annotated_slices(),
            "model_version": self.model_version,
            "stale": self.stale,
            "chosen_model": record.get("chosen_model_id"),
            "levels": [list(a.shape) for a in self.volume.levels],
            "tile": self.tile,
            "coarse_pixels": self.coarse_pixels,
        }

    def classes_state(self) -> dict:
        """``{classes, palette, counts}``: the class list, the colours for new classes, labels."""
        classes = self.classes
        return {"classes": classes, "palette": list(PALETTE), "counts": self.counts(classes)}

    # ---------------------------------------------------------------- original API cut-outs
    def issue_cutout(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict, dict]:
        """A random legacy cut-out: (filmstrip uint8 (z*512, 512), sample metadata, window).

        Each served slice is remembered by its content hash so an old client that
        submits only the image (no metadata) is still placed in the volume.
        """
        meta = random_cutout(self.shape, FILMSTRIP_SHAPE_ZYX, rng)
        block = read_cutout(self.volume, meta)
        window = display_window(block)
        display = apply_window(block, window["window_min"], window["window_max"])
        meta["intensity_window"] = window
        for z in range(display.shape[0]):
            m = sample_metadata_for_z(meta, z)
            if m["annotated_global_z_index"] is None:
                continue
            key = hashlib.sha1(display[z].tobytes()).hexdigest()
            self._issued[key] = m
        while len(self._issued) > FILMSTRIP_SHAPE_ZYX[0] * 64:
            self._issued.popitem(last=False)
        return filmstrip(display), meta, window

    def find_cutout(self, gray2d: np.ndarray) -> dict | None:
        """Sample metadata of a served cut-out slice equal to ``gray2d``, if any."""
        key = hashlib.sha1(np.ascontiguousarray(gray2d, np.uint8).tobytes()).hexdigest()
        return self._issued.get(key)

    def cutout_prediction(self, meta: dict) -> np.ndarray | None:
        """Predicted classes of a cut-out's annotated slice, at the requested size."""
        z, vy, vx, my, mx = cutout_region(meta)
        pred = self.predict(0, z, 0, vy, vx)
        if pred is None:
            return None
        rx, ry, _ = meta["requested_shape_xyz"]
        out = np.zeros((ry, rx), dtype=np.uint8)
        out[my, mx] = pred[0]
        return out

    def legacy_meta(self, payload: dict, image_gray: np.ndarray | None) -> dict | None:
        """The cut-out a legacy payload refers to: its ``sample_metadata``, else the served
        slice its ``image`` equals; None when neither places it."""
        raw = field(payload, "sample_metadata", "sampleMetadata")
        local_z = field(payload, "annotated_local_z_index", "annotatedLocalZIndex")
        if isinstance(raw, dict):
            meta = validate_sample_metadata(raw, self.shape)
            if local_z is not None:
                meta = sample_metadata_for_z(meta, local_z)
            window = field(payload, "intensity_window", "intensityWindow")
            if isinstance(window, dict):
                meta["intensity_window"] = window
            return meta
        if raw is not None:
            raise AnnotationError("sample_metadata must be an object")
        if image_gray is not None:
            n = FILMSTRIP_SHAPE_ZYX[0]
            z = local_z if isinstance(local_z, int) and not isinstance(local_z, bool) else n // 2
            return self.find_cutout(filmstrip_slice(image_gray, n, z))
        return None

    def legacy_submit(self, payload: dict) -> dict:
        """The original submit: a raster ``{image, mask, sample_metadata?}`` or polygons
        ``{regions_by_slice, sample_metadata, canvas_size_xy?}`` (snake or camel case).

        Labels go into the label store (painted = structure, rest of the cut-out slice =
        background, as the original trained) and are recorded after they are written; the
        answer's ``prediction`` is the retrained model's red-alpha overlay of the annotated
        slice: ``{prediction: base64 PNG, saved_samples: [...]}``.
        """
        from PIL import Image

        polygons = uses_polygons(payload)
        image_text = field(payload, "image")
        mask_text = field(payload, "mask")
        if not polygons and (image_text is None or mask_text is None):
            raise AnnotationError("{mask, image} not provided")
        image_gray = decode_image_array(image_text, "image") if image_text is not None else None
        meta = self.legacy_meta(payload, image_gray)
        if meta is None:
            raise AnnotationError("sample_metadata is required (the image matches no cut-out "
                                  "served by /images/next)")
        rx, ry, _ = meta["requested_shape_xyz"]
        writes: list[tuple[dict, np.ndarray]] = []
        if polygons:
            size = field(payload, "canvas_size_xy", "canvasSizeXY") or \
                field(payload, "displayed_image_shape_xy", "displayedImageShapeXY")
            by_slice = legacy_regions(payload, int(meta["annotated_local_z_index"]))
            if not by_slice:
                raise AnnotationError("polygon submission requires at least one region")
            for z in sorted(by_slice):
                m = sample_metadata_for_z(meta, z)
                mask = rasterize_polygons((ry, rx), by_slice[z]["positive_regions"],
                                          by_slice[z]["negative_regions"], size)
                writes.append((m, np.where(mask, 2, 1).astype(np.uint8)))
        else:
            img = decode_png(decode_data_url(mask_text, "mask"), "mask").convert("RGBA")
            if img.size != (rx, ry):
                img = img.resize((rx, ry), Image.Resampling.NEAREST)
            writes.append((meta, legacy_mask_to_labels(img)))
        regions = [(m, labels, cutout_region(m)) for m, labels in writes]  # all placed first
        self._check_can_annotate()
        saved = []
        for m, labels, (z, vy, vx, my, mx) in regions:
            self.merge_labels(0, z, (vy, vx), labels[my, mx])
            saved.append({"slice_index": int(m["annotated_local_z_index"]),
                          "global_z_index": z, "axis": "z",
                          "origin_xyz": [vx.start, vy.start, z],
                          "shape_xy": [vx.stop - vx.start, vy.stop - vy.start]})
        self.record()
        show = next((m for m, _ in writes
                     if m["annotated_local_z_index"] == meta["annotated_local_z_index"]),
                    writes[0][0])
        self.retrain()
        pred = self.cutout_prediction(show)
        if pred is None:  # one class only: echo the mask like the original did
            pred = (writes[0][1] == 2).astype(np.uint8)
        return {"prediction": png_base64(legacy_prediction_png(pred)), "saved_samples": saved}

    def legacy_predict(self, payload: dict) -> dict:
        """The original predict: ``{sample_metadata, annotated_local_z_index}`` or ``{image}``
        -> ``{prediction: base64 RGBA PNG | None}`` from the in-memory model."""
        image_text = field(payload, "image")
        raw_meta = field(payload, "sample_metadata", "sampleMetadata")
        if image_text is None and raw_meta is None:
            raise AnnotationError("image or sample_metadata not provided")
        image_gray = decode_image_array(image_text, "image") if image_text is not None else None
        meta = self.legacy_meta(payload, image_gray)
        if meta is None or meta.get("annotated_global_z_index") is None:
            return {"prediction": None}
        self.retrain()
        pred = self.cutout_prediction(meta)
        if pred is None:
            return {"prediction": None}
        return {"prediction": png_base64(legacy_prediction_png(pred))}

