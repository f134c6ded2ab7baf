"""OME-Zarr (NGFF 0.4, zarr format 2) images: create, open, read slices, build the pyramid.

Every volume ml4paleo writes (converted images, label images, probabilities) goes
through here, so metadata and chunk layout are written in one place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

log = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
AXES = ("z", "y", "x")


def default_compressor(clevel: int = 3, blocksize: int = 1 << 20) -> numcodecs.abc.Codec:
    """Blosc-zstd with byte shuffle: good ratio on CT data and fast to decode.

    Blosc's automatic block size is small for zstd; 1 MiB blocks give zstd enough context:
    on noisy 16-bit CT-like data the ratio goes from 1.2 to 1.8 and decoding is ~3x faster
    at the same encoding speed.
    """
    return numcodecs.Blosc(cname="zstd", clevel=clevel, shuffle=numcodecs.Blosc.SHUFFLE,
                           blocksize=blocksize)


@dataclass
class OmeImage:
    """An opened OME-Zarr image.

    Attributes
    ----------
    path : Path
        Folder of the zarr group.
    group : zarr.Group
        The root group.
    voxel_size : tuple of float
        Physical size of a full-resolution voxel, (z, y, x).
    unit : str or None
        Unit of ``voxel_size`` (e.g. ``"micrometer"``), None when unknown.
    levels : list of str
        Dataset paths, full resolution first.
    attrs : dict
        The group's attributes (``multiscales``, ``ml4paleo`` extras, ...).
    """

    path: Path
    group: Any
    voxel_size: tuple[float, float, float]
    unit: str | None
    levels: list[str]
    attrs: dict = field(default_factory=dict)

    def level(self, i: int = 0) -> Any:
        """The zarr array of pyramid level ``i`` (0 = full resolution)."""
        return self.group[self.levels[i]]

    @property
    def array(self) -> Any:
        """Full-resolution zarr array."""
        return self.level(0)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def level_scale(self, i: int) -> tuple[float, float, float]:
        """Voxel size of level ``i``."""
        ms = self.attrs["multiscales"][0]
        for t in ms["datasets"][i].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                return tuple(float(v) for v in t["scale"][-3:])
        return self.voxel_size


def multiscales_metadata(
    levels: int,
    voxel_size: Sequence[float],
    unit: str | None,
    name: str = "image",
    downscale: str = "mean",
) -> dict:
    """NGFF 0.4 ``multiscales`` attribute for a 2x-per-level pyramid."""
    axes = []
    for a in AXES:
        ax = {"name": a, "type": "space"}
        if unit:
            ax["unit"] = unit
        axes.append(ax)
    datasets = []
    for i in range(levels):
        f = 2**i
        scale = [float(v) * f for v in voxel_size]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": downscale,
            }
        ]
    }


def pyramid_shapes(shape: Sequence[int], min_size: int = 64, max_levels: int = 8) -> list[tuple[int, ...]]:
    """Shapes of a 2x pyramid: halve every axis until the largest is below ``min_size``."""
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < max_levels and max(shapes[-1]) > min_size:
        shapes.append(tuple(max(1, (s + 1) // 2) for s in shapes[-1]))
    return shapes


def create_image(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    *,
    chunks: int | Sequence[int] = 128,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    name: str = "image",
    pyramid: bool = True,
    label: bool = False,
    extra_attrs: dict | None = None,
    overwrite: bool = True,
    compressor: numcodecs.abc.Codec | None = None,
) -> OmeImage:
    """Create an empty OME-Zarr image (all pyramid levels allocated, zero filled).

    Parameters
    ----------
    path : path
        Folder to create (replaced when ``overwrite``).
    shape : sequence of int
        Full-resolution (z, y, x) shape.
    dtype : dtype
        Voxel type.
    chunks : int or sequence of int
        Chunk edge(s).
    voxel_size : sequence of float, optional
        Physical voxel size (z, y, x); 1.0 each when None.
    unit : str, optional
        Unit of ``voxel_size`` (NGFF unit name such as ``"micrometer"``).
    name : str
        Image name stored in the metadata.
    pyramid : bool
        Allocate downsampled levels (fill them with :func:`build_pyramid`).
    label : bool
        Mark as a label image (``image-label`` metadata, nearest downsampling).
    extra_attrs : dict, optional
        Stored under the ``ml4paleo`` attribute.
    compressor : numcodecs codec, optional
        Chunk compressor (default :func:`default_compressor`).

    Returns
    -------
    OmeImage
    """
    path = Path(path)
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), got {tuple(shape)}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    voxel_size = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    if len(voxel_size) != 3 or any(v <= 0 for v in voxel_size):
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists")
        shutil.rmtree(path)
    chunk_shape = tuple(int(c) for c in (chunks if not isinstance(chunks, int) else (chunks,) * 3))
    shapes = pyramid_shapes(shape) if pyramid else [tuple(int(s) for s in shape)]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for i, s in enumerate(shapes):
        c = tuple(min(cc, ss) for cc, ss in zip(chunk_shape, s, strict=True))
        root.create_array(
            str(i),
            shape=s,
            chunks=c,
            dtype=np.dtype(dtype),
            compressors=compressor or default_compressor(),
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
    attrs = multiscales_metadata(len(shapes), voxel_size, unit, name, "nearest" if label else "mean")
    if label:
        attrs["image-label"] = {"version": NGFF_VERSION}
    if extra_attrs:
        attrs["ml4paleo"] = extra_attrs
    root.attrs.update(attrs)
    return open_image(path, mode="r+")


def open_image(path: str | os.PathLike, mode: str = "r") -> OmeImage:
    """Open an OME-Zarr image (or a plain zarr array / group with a ``0`` array).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When ``path`` is not a zarr image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such OME-Zarr image")
    try:
        node = zarr.open(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for "not a zarr store"
        raise ValueError(f"{path}: not a Zarr store ({exc})") from exc
    if isinstance(node, zarr.Array):
        raise ValueError(f"{path}: a bare zarr array, not an OME-Zarr image")
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales")
    if ms:
        levels = [d["path"] for d in ms[0]["datasets"]]
        axes = ms[0].get("axes", [])
        unit = next((a.get("unit") for a in axes if isinstance(a, dict) and a.get("unit")), None)
        scale = (1.0, 1.0, 1.0)
        for t in ms[0]["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = tuple(float(v) for v in t["scale"][-3:])
    else:
        arrays = sorted(k for k, _ in node.arrays())
        if not arrays:
            raise ValueError(f"{path}: Zarr group holds no arrays")
        levels, unit, scale = [arrays[0]], None, (1.0, 1.0, 1.0)
    return OmeImage(path, node, scale, unit, levels, attrs)


def downsample2(block: np.ndarray, label: bool) -> np.ndarray:
    """Halve every axis: mean of 2x2x2 for intensities, top-left voxel for labels.

    Odd axes are padded by repeating the edge. Integer means are rounded half to even.
    """
    if label:
        return block[::2, ::2, ::2]
    pads = [(0, s % 2) for s in block.shape]
    if any(p[1] for p in pads):
        block = np.pad(block, pads, mode="edge")
    # Pairwise sums along z, then y, then x: the first (full-size) pass reads whole
    # contiguous planes, the strided x pass touches a quarter of the data (2-3x faster
    # than reshape + mean). Sums of 8 integers of <= 16 bits are exact in float32.
    acc_dtype = np.float64 if block.dtype.itemsize > 2 and block.dtype != np.float32 else np.float32
    acc = np.add(block[0::2], block[1::2], dtype=acc_dtype)
    acc = acc[:, 0::2] + acc[:, 1::2]
    acc = acc[:, :, 0::2] + acc[:, :, 1::2]
    acc *= 0.125
    if np.issubdtype(block.dtype, np.integer):
        np.rint(acc, out=acc)
    return acc.astype(block.dtype)


def build_pyramid(
    image: OmeImage,
    progress=None,
    slab: int | None = None,
    workers: int | None = None,
    first_level: int = 1,
) -> None:
    """Fill levels ``first_level``.. of ``image`` from the level above, chunk by chunk (flat memory).

    Each task reads the 2x2x2 chunks under one output chunk, downsamples and writes it;
    tasks run on a few threads (blosc and numpy release the GIL).

    Parameters
    ----------
    image : OmeImage
        Opened writable image created by :func:`create_image`.
    progress : callable, optional
        ``progress(done, total)`` over the output blocks of all levels.
    slab : int, optional
        z-thickness of an output block, in voxels of the level written (default: one chunk).
    workers : int, optional
        Threads (default: CPUs available, at most 8).
    first_level : int
        First level to fill (levels before it must already be written).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ml4paleo.blocks import default_workers

    label = "image-label" in image.attrs
    n = len(image.levels)
    tasks = []
    for i in range(max(1, first_level), n):
        dst = image.level(i)
        bz = slab or dst.chunks[0]
        for z0 in range(0, dst.shape[0], bz):
            for y0 in range(0, dst.shape[1], dst.chunks[1]):
                for x0 in range(0, dst.shape[2], dst.chunks[2]):
                    tasks.append((i, z0, y0, x0, bz))
    total = len(tasks)
    if progress is not None:
        progress(0, total)
    levels = [image.level(i) for i in range(n)]

    def work(task):
        i, z0, y0, x0, bz = task
        src, dst = levels[i - 1], levels[i]
        cy, cx = dst.chunks[1], dst.chunks[2]
        data = np.asarray(src[2 * z0 : 2 * (z0 + bz), 2 * y0 : 2 * (y0 + cy), 2 * x0 : 2 * (x0 + cx)])
        small = downsample2(data, label)
        z1, y1, x1 = (min(a + b, s) for a, b, s in zip((z0, y0, x0), (bz, cy, cx), dst.shape, strict=True))
        dst[z0:z1, y0:y1, x0:x1] = small[: z1 - z0, : y1 - y0, : x1 - x0]

    threads = workers or min(8, default_workers())
    done = 0
    for level in range(max(1, first_level), n):
        # a level is complete before the next one reads it
        batch = [t for t in tasks if t[0] == level]
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(work, batch):
                done += 1
                if progress is not None:
                    progress(done, total)


def read_slice(image: OmeImage, axis: int, index: int, level: int = 0) -> np.ndarray:
    """Read one 2D plane of ``image`` at pyramid ``level``.

    Parameters
    ----------
    axis : int
        0 = z (yx plane), 1 = y (zx plane), 2 = x (zy plane).
    index : int
        Plane index in full-resolution voxels (scaled down for ``level``).
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    arr = image.level(level)
    full = image.shape[axis]
    if not 0 <= index < full:
        raise IndexError(f"index {index} outside 0..{full - 1} along axis {axis}")
    idx = min(index // (2**level), arr.shape[axis] - 1)
    sl: list[Any] = [slice(None)] * 3
    sl[axis] = idx
    return np.asarray(arr[tuple(sl)])


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temp file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
