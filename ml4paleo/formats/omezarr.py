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

from ml4paleo.world import ZARR_WORLD_KEY, WorldTransform, normalize_unit

from .ngff import ImageLabel, Multiscale, validate_attrs

log = logging.getLogger(__name__)

__all__ = [
    "OmeImage",
    "chunk_shape",
    "create_image",
    "default_compressor",
    "downsample_rule",
    "image_world",
    "open_image",
    "pyramid_shapes",
    "read_slice",
    "update_extra_attrs",
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

    @property
    def world(self) -> WorldTransform:
        """Voxel index -> world transform of the full-resolution level (see :func:`image_world`)."""
        return image_world(self.attrs, 0)

    def level_world(self, i: int) -> WorldTransform:
        """The world transform of pyramid level ``i``."""
        return image_world(self.attrs, i)


def downsample_rule(attrs: dict) -> str:
    """``"nearest"`` for label images and nearest-downsampled pyramids, else ``"mean"``."""
    ms = (attrs.get("multiscales") or [{}])[0]
    return "nearest" if ("image-label" in attrs or ms.get("type") == "nearest") else "mean"


def image_world(attrs: dict, level: int = 0) -> WorldTransform:
    """The world transform of pyramid ``level`` of an image with these attributes.

    Ours (``attrs["ml4paleo"]["world"]``, the full affine) when stored, derived for the
    level by its downsampling rule; else the NGFF scale and translation of the level
    (and the multiscale's own transformations); voxel units when there is no
    ``multiscales``.

    Raises
    ------
    ValueError
        When the stored transform or the NGFF transformations are unusable.
    """
    ms = attrs.get("multiscales")
    extra = attrs.get("ml4paleo")
    stored = extra.get(ZARR_WORLD_KEY) if isinstance(extra, dict) else None
    rule = downsample_rule(attrs)
    if stored is not None:
        try:
            return WorldTransform.from_json(stored).for_level(level, rule)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"unreadable ml4paleo world transform ({exc})") from exc
    if not ms:
        return WorldTransform.from_voxel_size(None).for_level(level, rule)
    try:
        entry = ms[0]
        transforms = list(entry["datasets"][level].get("coordinateTransformations", []))
        outer = list(entry.get("coordinateTransformations", []))  # applied after the dataset's
        scale = np.ones(3)
        translation = np.zeros(3)
        for t in transforms + outer:
            if t.get("type") == "scale":
                s = np.asarray(t["scale"], float)[-3:]
                scale, translation = scale * s, translation * s
            elif t.get("type") == "translation":
                translation = translation + np.asarray(t["translation"], float)[-3:]
        unit = next((a.get("unit") for a in entry.get("axes", [])
                     if isinstance(a, dict) and a.get("unit")), None)
        return WorldTransform.from_ngff(scale, translation, unit=normalize_unit(unit))
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"unusable NGFF coordinateTransformations ({exc})") from exc


def update_extra_attrs(image: OmeImage, **values: Any) -> dict:
    """Merge ``values`` into the image's ``ml4paleo`` attribute (the stored world is kept).

    Returns
    -------
    dict
        The new ``ml4paleo`` attribute.
    """
    extra = dict(image.group.attrs.get("ml4paleo") or {})
    extra.update(values)
    image.group.attrs["ml4paleo"] = extra
    image.attrs["ml4paleo"] = extra
    return extra


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
    world: WorldTransform | None = None,
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
        Physical voxel size (z, y, x); 1.0 each when None. Ignored when ``world`` is given.
    unit : str, optional
        Unit of ``voxel_size`` (NGFF unit name such as ``"micrometer"``); default the
        world's.
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
    world : WorldTransform, optional
        Where the voxels are (default: ``voxel_size`` at origin 0). Every level gets its
        NGFF ``scale`` and ``translation`` from it (mean levels offset by half a coarser
        voxel, label levels by their nearest rule; the axis-aligned approximation when
        the world is rotated or flipped, which NGFF 0.4 cannot hold) and the whole
        transform is stored as ``attrs["ml4paleo"]["world"]`` (read back by
        :attr:`OmeImage.world` and :func:`ml4paleo.io.open_any`).

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
    if world is None and extra_attrs and extra_attrs.get(ZARR_WORLD_KEY) is not None:
        world = WorldTransform.from_json(extra_attrs[ZARR_WORLD_KEY])
    if world is None:
        voxel_size = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
        if len(voxel_size) != 3 or any(not v > 0 for v in voxel_size):
            raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
        world = WorldTransform.from_voxel_size(voxel_size, unit=normalize_unit(unit))
    elif not isinstance(world, WorldTransform):
        raise TypeError(f"world must be a WorldTransform, got {type(world).__name__}")
    chunk = chunk_shape(chunks)
    shapes = pyramid_shapes(shape) if pyramid else [tuple(int(s) for s in shape)]
    is_label = label or label_metadata is not None
    # every piece of metadata is built and checked before the first file is written
    attrs: dict[str, Any] = {"multiscales": [Multiscale.pyramid(
        len(shapes), unit=world.unit or unit, name=name,
        downscale="nearest" if is_label else "mean", world=world).to_dict()]}
    if is_label:
        attrs["image-label"] = (label_metadata or ImageLabel()).validate().to_dict()
    attrs["ml4paleo"] = {**(extra_attrs or {}), ZARR_WORLD_KEY: world.to_json()}
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
