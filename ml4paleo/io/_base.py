"""The :class:`Volume` interface every reader implements, and shared helpers."""

from __future__ import annotations

import abc
import importlib
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.world import LENGTH_UNITS, WorldTransform, normalize_unit

log = logging.getLogger("ml4paleo.io")

SOURCE_TYPES = ("image_stack", "tiff", "dicom", "nifti", "npy", "zarr")


class InputError(ValueError):
    """Bad input: the message is one line naming the file and the problem."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


def natural_key(text: str) -> list:
    """Sort key that orders ``img2`` before ``img10`` (case-insensitive).

    Examples
    --------
    >>> sorted(["img10.png", "img2.png", "Img1.png"], key=natural_key)
    ['Img1.png', 'img2.png', 'img10.png']
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def default_io_workers() -> int:
    """Threads used to decode slices in parallel (decoders release the GIL)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(2, min(n, 8))


def to_gray(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reduce a (y, x, channels) image to one channel.

    Alpha is dropped. When R == G == B the first channel is returned unchanged (lossless);
    otherwise the ITU-R 601 luma, rounded to the input dtype.

    Returns
    -------
    (ndarray, bool)
        The 2D image and whether colour information was actually discarded.
    """
    if array.ndim == 2:
        return array, False
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image, got shape {array.shape}")
    channels = array.shape[-1]
    if channels in (2, 4):  # gray+alpha, RGB+alpha
        array = array[..., : channels - 1]
        channels -= 1
    if channels == 1:
        return array[..., 0], False
    if channels != 3:
        raise ValueError(f"unsupported number of channels: {channels}")
    r, g, b = array[..., 0], array[..., 1], array[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r), False
    luma = 0.299 * r.astype(np.float32) + 0.587 * g + 0.114 * b
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        luma = np.clip(np.rint(luma), info.min, info.max)
    return luma.astype(array.dtype), True


def _normalize_index(k: Any, n: int, axis: int) -> int:
    k = int(k)
    if k < 0:
        k += n
    if not 0 <= k < n:
        raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
    return k


def reopen_volume(path: str, voxel_size: Any, unit: str | None, level: int) -> Volume:
    """Reopen a pickled :class:`Volume` reference with :func:`ml4paleo.io.open_any`.

    The opener is looked up when called: every reader imports this module, and the
    opener imports every reader.
    """
    open_any = importlib.import_module("ml4paleo.io").open_any
    return open_any(path, voxel_size=voxel_size, unit=unit, level=level)


class Volume(abc.ABC):
    """A 3D scan opened lazily as a ``(z, y, x)`` array.

    Readers subclass this and implement :meth:`_read_slab`; nothing is read until a slab
    or an index is requested. Use as a context manager (or call :meth:`close`).

    Attributes
    ----------
    path : Path
        The source as given to :func:`ml4paleo.io.open_volume`.
    shape : tuple of int
        ``(z, y, x)``.
    dtype : numpy.dtype
        Voxel type of every array returned.
    voxel_size : tuple of 3 floats or None
        Physical voxel size ``(z, y, x)`` when the source records it.
    unit : str or None
        Unit of ``voxel_size`` (NGFF name, e.g. ``"millimeter"``).
    world : ml4paleo.world.WorldTransform
        Voxel index -> world coordinates (never None: a source with no geometry gets its
        voxel size, origin 0; with no voxel size either, voxel units). Overriding
        ``voxel_size`` / ``unit`` afterwards rescales it (direction and origin kept).
    source_type : str
        One of ``"image_stack"``, ``"tiff"``, ``"dicom"``, ``"nifti"``, ``"npy"``, ``"zarr"``.
    metadata : dict
        JSON-able source details (format specifics, ignored files, warnings, ...).
    """

    source_type = ""

    def __init__(
        self,
        path: str | os.PathLike,
        shape: Sequence[int],
        dtype: Any,
        *,
        voxel_size: Sequence[float] | None = None,
        unit: str | None = None,
        metadata: dict | None = None,
        workers: int | None = None,
        world: WorldTransform | None = None,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or any(s <= 0 for s in self.shape):
            raise InputError(f"{self.path}: invalid volume dimensions {self.shape} "
                             "(every size must be positive)")
        self.dtype = np.dtype(dtype).newbyteorder("=")  # native byte order: what zarr writes
        self.voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        self.unit = unit
        self.metadata = dict(metadata or {})
        self.workers = workers or default_io_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._world: WorldTransform | None = None
        self._world_for: tuple = (None, None)
        if world is not None:
            self._world, self._world_for = world, (self.voxel_size, self.unit)

    @property
    def world(self) -> WorldTransform:
        """Voxel index -> world coordinates (see :mod:`ml4paleo.world` for the conventions)."""
        w = self._world
        # a unit that is no length (e.g. "pixel") leaves the world in voxel units
        unit = self.unit if self.unit in LENGTH_UNITS else normalize_unit(self.unit)
        if w is None:
            return WorldTransform.from_voxel_size(self.voxel_size, unit=unit)
        if (self.voxel_size, self.unit) != self._world_for:  # overridden since it was read
            return w.with_voxel_size(self.voxel_size or w.voxel_size, unit=unit)
        return w

    @world.setter
    def world(self, value: WorldTransform | None) -> None:
        """Set the transform; ``voxel_size`` and ``unit`` follow it."""
        if value is None:
            self._world = None
            return
        if not isinstance(value, WorldTransform):
            raise TypeError(f"world must be a WorldTransform, got {type(value).__name__}")
        self.voxel_size, self.unit = value.voxel_size, value.unit
        self._world, self._world_for = value, (self.voxel_size, self.unit)

    # -- array protocol -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return 3

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.source_type} {self.path.name!r} shape={self.shape} "
            f"dtype={self.dtype} voxel_size={self.voxel_size} unit={self.unit}>"
        )

    def read_slab(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read slices ``z0 .. z1-1`` as a ``(z1 - z0, y, x)`` array of :attr:`dtype`.

        ``out``, when given, is a C-contiguous array of that shape and dtype to fill (and
        return); reusing one buffer saves allocating and page-faulting a new slab each time.
        """
        nz = self.shape[0]
        z0, z1 = max(0, int(z0)), min(nz, int(z1))
        shape = (max(0, z1 - z0),) + self.shape[1:]
        if out is not None and (out.shape != shape or out.dtype != self.dtype
                                or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous {shape} {self.dtype} array")
        if z1 <= z0:
            return np.empty(shape, self.dtype) if out is None else out
        data = self._decoded(z0, z1, slice(0, self.shape[1]), slice(0, self.shape[2]), out)
        if out is not None and data is not out:
            out[...] = data
            return out
        return data

    def _decoded(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        """:meth:`_read_slab`, with any failure of a reader's decoder reported as the
        :class:`InputError` it is (I/O errors and memory stay what they are: they may pass)."""
        try:
            return self._read_slab(z0, z1, rows, cols, out)
        except (InputError, OSError, MemoryError):
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: cannot decode slices {z0}..{z1 - 1} "
                             f"({type(exc).__name__}: {exc})") from exc

    def stored_bytes(self) -> int | None:
        """Bytes of the files the volume is decoded from (None when unknown or when, as for
        Zarr stores, absent chunks are legitimately empty); used to refuse decompression
        bombs (:func:`check_decode_limits`)."""
        return None

    @abc.abstractmethod
    def _read_slab(
        self, z0: int, z1: int, rows: slice, cols: slice, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read ``[z0:z1, rows, cols]`` (0 <= z0 < z1 <= nz; rows/cols have step 1).

        Readers may fill and return ``out`` (same shape/dtype) or ignore it.
        """
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3D volume: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
        kz, ky, kx = key
        # y/x: read a contiguous window when the index is a simple slice, index the rest.
        window, post = [], []
        for k, n in ((ky, self.shape[1]), (kx, self.shape[2])):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step > 0:
                    stop = max(start, stop)
                    window.append(slice(start, stop))
                    post.append(slice(None, None, step))
                    continue
            window.append(slice(0, n))
            post.append(k)
        post_t = tuple(post)
        nz = self.shape[0]

        def read(z0: int, z1: int) -> np.ndarray:
            if z1 <= z0 or window[0].stop <= window[0].start or window[1].stop <= window[1].start:
                shape = (max(0, z1 - z0), window[0].stop - window[0].start, window[1].stop - window[1].start)
                return np.empty(shape, self.dtype)
            return self._decoded(z0, z1, window[0], window[1])

        if isinstance(kz, int | np.integer):
            z = _normalize_index(kz, nz, 0)
            return read(z, z + 1)[(0,) + post_t]
        if isinstance(kz, slice):
            start, stop, step = kz.indices(nz)
            if step == 1:
                return read(start, max(start, stop))[(slice(None),) + post_t]
            zs = list(range(start, stop, step))
        else:
            idx = np.asarray(kz)
            if idx.dtype == bool:
                if idx.shape != (nz,):
                    raise IndexError(f"boolean index of shape {idx.shape} does not match {nz}")
                idx = np.flatnonzero(idx)
            if idx.ndim != 1:
                raise IndexError("only 1D integer arrays are supported along z")
            zs = [_normalize_index(k, nz, 0) for k in idx]
        planes = [read(z, z + 1)[0] for z in zs]
        if not planes:
            return read(0, 0)[(slice(None),) + post_t]
        return np.stack(planes)[(slice(None),) + post_t]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read_slab(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __reduce__(self):
        # Pickles as a reference: a block worker reopens the source from its path instead
        # of receiving decoded data (subclasses over in-memory arrays override this).
        return (reopen_volume, (str(self.path), self.voxel_size, self.unit,
                                int(getattr(self, "level", 0))))

    # -- threads and lifetime ---------------------------------------------------------------
    def _map(self, fn, items) -> list:
        """``[fn(i) for i in items]`` on the reader's decode threads."""
        items = list(items)
        if len(items) <= 1 or self.workers <= 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ml4paleo-io")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        """Release open files and threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warnings(self) -> list[dict]:
        """What a user should know about how the source was read, as
        ``[{"code", "message"}]`` (messages name files, never folders of this machine).

        Derived from what every reader records (a single 2D image, colour reduced to grey,
        a voxel size that is unknown or partly assumed, spacing that varies) plus any a
        reader adds to ``metadata["warnings"]``. Codes: ``single_image``,
        ``colour_reduced``, ``voxel_size_unknown``, ``unit_assumed``,
        ``z_spacing_assumed``, ``uneven_spacing``, ``several_series``, ``unordered``.
        """
        out: list[dict] = []
        seen: set[str] = set()

        def add(code: str, message: str) -> None:
            if code not in seen:
                seen.add(code)
                out.append({"code": code, "message": message})

        meta = self.metadata
        what = self._what()
        if self.shape[0] == 1:
            add("single_image", f"{what}: one 2D image, converted as a volume of one slice")
        if meta.get("rgb_reduced_to_gray"):
            add("colour_reduced", f"{what}: colour reduced to one grey channel (luma)")
        assumed = self.world.assumed if self.voxel_size is not None else frozenset()
        if self.voxel_size is None:
            add("voxel_size_unknown", f"{what}: no voxel size recorded; sizes, volumes and "
                                      "meshes are in voxels until you set it")
        elif "unit" in assumed or meta.get("unit_assumed"):
            add("unit_assumed", f"{what}: no unit for the voxel size; "
                                f"{self.world.unit or 'millimeter'} was assumed")
        elif self.unit is None or self.unit not in LENGTH_UNITS:
            add("unit_assumed", f"{what}: the voxel size has no unit; set the unit so "
                                "measurements mean something")
        if "z_spacing" in assumed and self.shape[0] > 1:
            add("z_spacing_assumed", f"{what}: no spacing between slices recorded; it was "
                                     "taken equal to the pixel width")
        if meta.get("non_uniform_spacing"):
            add("uneven_spacing", f"{what}: the slices are not evenly spaced; the median "
                                  "spacing was used")
        if int(meta.get("series_count") or 1) > 1:
            add("several_series", f"{what}: {meta['series_count']} DICOM series; the largest "
                                  "was converted")
        if meta.get("sorted_by") == "instance_number":
            add("unordered", f"{what}: the slices carry no positions; they were ordered by "
                             "instance number")
        for w in meta.get("warnings") or []:
            if isinstance(w, dict) and w.get("code") and w.get("message"):
                add(str(w["code"]), str(w["message"]))
        return out

    def _what(self) -> str:
        """What the warnings call the source: its file, or "N slices" (never a folder of
        this machine)."""
        meta = self.metadata
        files = meta.get("files")
        if isinstance(meta.get("file"), str) and meta["file"]:
            return meta["file"]
        if files == 1 and isinstance(meta.get("first_file"), str):
            return meta["first_file"]
        if isinstance(files, int) and files > 1:
            return f"{files} slices ({meta.get('first_file') or self.path.name} ...)"
        return self.path.name

    def info(self) -> dict:
        """A JSON-able summary: shape, dtype, voxel size, unit, world transform, source
        type, metadata and warnings."""
        return {
            "path": str(self.path),
            "source_type": self.source_type,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "unit": self.unit,
            "world": self.world.to_json(),
            "metadata": self.metadata,
            "warnings": self.warnings(),
        }
