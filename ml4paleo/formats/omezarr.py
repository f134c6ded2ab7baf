"""OME-Zarr (NGFF 0.4, zarr format 2) images: create, open, read slices.

Every volume ml4paleo writes (converted images, label images, probabilities) goes
through here, so metadata and chunk layout are written in one place. Metadata is built
with the classes of :mod:`ml4paleo.formats.ngff` and checked before the first file is
written.
"""

from __future__ import annotations

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

from .ngff import ImageLabel, Multiscale, validate_attrs

log = logging.getLogger(__name__)

__all__ = [
    "OmeImage",
    "chunk_shape",
    "create_image",
    "default_compressor",
    "open_image",
    "pyramid_shapes",
    "read_slice",
]


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

    @property
    def is_label(self) -> bool:
        """Whether this is a label image (``image-label`` metadata, nearest downsampling)."""
        return "image-label" in self.attrs

    def level_scale(self, i: int) -> tuple[float, float, float]:
        """Voxel size of level ``i``."""
        ms = self.attrs["multiscales"][0]
        for t in ms["datasets"][i].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                return tuple(float(v) for v in t["scale"][-3:])
        return self.voxel_size


def pyramid_shapes(shape: Sequence[int], min_size: int = 64, max_levels: int = 8) -> list[tuple[int, ...]]:
    """Shapes of a 2x pyramid: halve every axis until the largest is below ``min_size``.

    Examples
    --------
    >>> pyramid_shapes((70, 90, 130))
    [(70, 90, 130), (35, 45, 65), (18, 23, 33)]
    """
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < max_levels and max(shapes[-1]) > min_size:
        shapes.append(tuple(max(1, (s + 1) // 2) for s in shapes[-1]))
    return shapes


def chunk_shape(chunks: int | Sequence[int], ndim: int = 3) -> tuple[int, ...]:
    """``chunks`` as ``ndim`` positive ints (one int means the same edge on every axis).

    Raises
    ------
    ValueError
        When not one or ``ndim`` positive integers.
    """
    if isinstance(chunks, int | np.integer):
        out = (int(chunks),) * ndim
    else:
        out = tuple(int(c) for c in chunks)
    if len(out) != ndim or any(c <= 0 for c in out):
        raise ValueError(f"chunks must be a positive int or {ndim} positive ints, got {chunks!r}")
    return out


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
    label_metadata: ImageLabel | None = None,
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
    label_metadata : ImageLabel, optional
        ``image-label`` contents (colours, properties) of a label image; default just the
        version.

    Returns
    -------
    OmeImage

    Raises
    ------
    ValueError
        Bad shape, chunks or voxel size; :class:`~ml4paleo.formats.ngff.NGFFError` for metadata
        that would not be valid NGFF. Nothing is written then.

    Examples
    --------
    >>> import tempfile
    >>> img = create_image(tempfile.mkdtemp() + "/a.ome.zarr", (4, 80, 90), "uint16", chunks=32)
    >>> img.levels, img.level(1).shape
    (['0', '1'], (2, 40, 45))
    """
    path = Path(path)
    if len(shape) != 3:
        raise ValueError(f"shape must be (z, y, x), got {tuple(shape)}")
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    voxel_size = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    if len(voxel_size) != 3 or any(not v > 0 for v in voxel_size):
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    chunk = chunk_shape(chunks)
    shapes = pyramid_shapes(shape) if pyramid else [tuple(int(s) for s in shape)]
    # every piece of metadata is built and checked before the first file is written
    attrs: dict[str, Any] = {"multiscales": [Multiscale.pyramid(
        len(shapes), voxel_size, unit, name, "nearest" if label else "mean").to_dict()]}
    if label or label_metadata is not None:
        attrs["image-label"] = (label_metadata or ImageLabel()).validate().to_dict()
    if extra_attrs:
        attrs["ml4paleo"] = extra_attrs
    validate_attrs(attrs)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists")
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for i, s in enumerate(shapes):
        c = tuple(min(cc, ss) for cc, ss in zip(chunk, s, strict=True))
        root.create_array(
            str(i),
            shape=s,
            chunks=c,
            dtype=np.dtype(dtype),
            compressors=compressor or default_compressor(),
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
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
