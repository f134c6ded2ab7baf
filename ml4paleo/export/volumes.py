"""The volume an export reads, and how its values become 8- or 16-bit slices.

The volume is opened with :func:`ml4paleo.io.open_any` (at the pyramid level asked for);
slabs of it are read block by block, and value mappings are small picklable objects so
slab blocks can run on workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, block_grid
from ml4paleo.formats import OmeImage
from ml4paleo.io import Volume, open_any, voxel_size_or_default
from ml4paleo.world import WorldTransform

__all__ = [
    "SAMPLE_VOXELS",
    "SLAB_BYTES",
    "ExportVolume",
    "SliceMapping",
    "open_export_volume",
    "sample",
    "slab_blocks",
    "stem",
    "to_uint8",
    "uint16_mapping",
    "window",
]

#: voxels read to estimate percentiles (never the whole volume)
SAMPLE_VOXELS = 8_000_000
#: bytes of one slab read at a time
SLAB_BYTES = 128 * 1024**2


@dataclass
class ExportVolume:
    """A volume to export: the lazy volume at the chosen level, voxel size, label flag.

    Attributes
    ----------
    name : str
        Used for folder names inside zips (``<name>/z00000.png``).
    volume : Volume
        The level exported.
    voxel_size : tuple of 3 floats
    unit : str or None
    label : bool
    levels : list
        Arrays from the exported level down (the smaller ones serve for sampling).
    chunk_z : int
        z-chunk of the stored array (slabs follow it), 8 when not chunked.
    """

    name: str
    volume: Volume
    voxel_size: tuple[float, float, float]
    unit: str | None
    label: bool
    levels: list[Any]
    chunk_z: int = 8

    @property
    def world(self) -> WorldTransform:
        """Voxel index -> world transform of the level exported."""
        return self.volume.world

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype


def stem(path: Path) -> str:
    """A volume's name without its format suffix (``labels.ome.zarr`` -> ``labels``)."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".nii.gz", ".nii", ".npy", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "volume"
    return name or "volume"


def open_export_volume(source: Any, label: bool | None, level: int = 0) -> ExportVolume:
    """Open ``source`` (path, OmeImage or array) for export at pyramid ``level``.

    Raises
    ------
    FileNotFoundError
        For a missing path.
    ValueError
        When not a 3-D volume of booleans, integers or floats, or no such level.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        name = stem(path)
    elif isinstance(source, OmeImage):
        name = stem(Path(source.path))
    else:
        name = "volume"
    volume = open_any(source, level=level)
    if volume.dtype.kind not in "biuf":
        raise ValueError(f"{name}: cannot export dtype {volume.dtype}")
    levels = list(getattr(volume, "levels", None) or [getattr(volume, "array", volume)])
    chunks = getattr(levels[0], "chunks", None)
    chunk_z = int(chunks[-3]) if chunks is not None and len(chunks) >= 3 else 8
    is_label = bool(volume.metadata.get("label")) if label is None else bool(label)
    return ExportVolume(name, volume, voxel_size_or_default(volume.voxel_size), volume.unit,
                        is_label, levels, chunk_z)


def slab_blocks(vol: ExportVolume) -> list[Block]:
    """z-slabs of whole slices: a stored chunk thick when it fits :data:`SLAB_BYTES`."""
    z, y, x = vol.shape
    per_slice = max(1, y * x * vol.dtype.itemsize)
    step = max(1, min(vol.chunk_z, SLAB_BYTES // per_slice))
    return block_grid(vol.shape, (step, y, x))


def sample(vol: ExportVolume) -> np.ndarray:
    """A few million voxels spread over the volume, for percentiles (never the whole)."""
    for arr in vol.levels:
        if int(np.prod(arr.shape)) <= SAMPLE_VOXELS:
            return np.asarray(arr[...]).ravel()
    arr = vol.levels[-1]
    z, y, x = (int(s) for s in arr.shape[-3:])
    n_slices = min(z, 16)
    stride = max(1, int(np.ceil(np.sqrt(y * x * n_slices / SAMPLE_VOXELS))))
    picks = np.unique(np.linspace(0, z - 1, n_slices).round().astype(int))
    return np.concatenate([np.asarray(arr[int(k), ::stride, ::stride]).ravel() for k in picks])


def window(vol: ExportVolume, value: Any) -> tuple[float, float]:
    """``value`` as ``(lo, hi)``, or the 1 and 99.5 percentiles of a sample."""
    if value is not None:
        lo, hi = (float(v) for v in value)
    else:
        values = sample(vol).astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.5]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def to_uint8(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Window ``data`` linearly to 0..255 (``lo`` -> 0, ``hi`` -> 255, clipped)."""
    scaled = (data.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SliceMapping:
    """How a slice's source values become the exported values (picklable).

    ``kind``: ``"window"`` (8-bit, ``lo``..``hi``), ``"labels"`` (values kept, checked to
    fit ``out_dtype``), ``"cast"`` (uint16), ``"offset"`` (``value + offset`` as uint16)
    or ``"rescale"`` (``(value - lo) / scale`` clipped to uint16).
    """

    kind: str
    out_dtype: str = "uint8"
    lo: float = 0.0
    hi: float = 1.0
    offset: int = 0
    scale: float = 1.0
    name: str = "volume"

    def __call__(self, data: np.ndarray) -> np.ndarray:
        if self.kind == "window":
            return to_uint8(data, self.lo, self.hi)
        if self.kind == "labels":
            out_dtype = np.dtype(self.out_dtype)
            limit = np.iinfo(out_dtype).max
            if data.size and (int(data.max()) > limit or int(data.min()) < 0):
                raise ValueError(f"{self.name}: label values outside 0..{limit} cannot be "
                                 f"written as {out_dtype} slices")
            return data.astype(out_dtype)
        if self.kind == "cast":
            return data.astype(np.dtype(self.out_dtype))
        if self.kind == "offset":
            return (data.astype(np.int32) + self.offset).astype(np.uint16)
        if self.kind == "rescale":
            return np.clip(np.rint((data.astype(np.float64) - self.lo) / self.scale), 0,
                           65535).astype(np.uint16)
        raise ValueError(f"unknown slice mapping {self.kind!r}")


def uint16_mapping(vol: ExportVolume) -> tuple[SliceMapping, dict]:
    """How source values become TIFF values, and the inverse written to metadata.json.

    8-bit sources (images, labels, booleans) stay 8-bit; everything else becomes uint16
    (signed 16-bit offset, wider or float types rescaled from the sampled range).
    """
    dt = vol.dtype
    if vol.label:
        out = "uint8" if dt.itemsize == 1 else "uint16"
        return SliceMapping("labels", out, name=vol.name), {"mapping": "label values",
                                                            "tiff_dtype": out}
    if dt.kind == "b" or (dt.kind == "u" and dt.itemsize == 1):
        return SliceMapping("cast", "uint8"), {"mapping": "value = tiff", "tiff_dtype": "uint8"}
    if dt.kind == "u" and dt.itemsize == 2:
        return SliceMapping("cast", "uint16"), {"mapping": "value = tiff"}
    if dt.kind == "i" and dt.itemsize <= 2:
        offset = 2 ** (8 * dt.itemsize - 1)
        return (SliceMapping("offset", "uint16", offset=offset),
                {"mapping": f"value = tiff - {offset}", "offset": -offset})
    values = sample(vol).astype(np.float64)
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    scale = (hi - lo) / 65535.0
    return (SliceMapping("rescale", "uint16", lo=lo, scale=scale),
            {"mapping": "value = offset + tiff * scale (clipped to the sampled range)",
             "offset": lo, "scale": scale})
