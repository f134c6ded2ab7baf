"""One way to open anything that holds a volume: :func:`open_any`.

Library functions accept a *volume-like* — a path (anything :func:`open_volume` reads),
an :class:`~ml4paleo.formats.OmeImage`, a :class:`Volume`, a zarr array, a numpy array
or any ``(z, y, x)`` array-like — and turn it into a :class:`Volume` here, the only
coercer in the package. The result pickles as a cheap reference (its path, or the array
itself), so block workers reopen it instead of receiving the data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._base import InputError, Volume
from ._open import open_volume
from ._sources import is_zarr_store

__all__ = ["ArrayVolume", "VolumeLike", "is_zarr_store", "open_any", "voxel_size_or_default"]

#: What :func:`open_any` accepts.
VolumeLike = str | os.PathLike | Volume | np.ndarray | Any

def voxel_size_or_default(value: Sequence[float] | float | None) -> tuple[float, float, float]:
    """``value`` as three positive finite floats ``(z, y, x)``; ``(1, 1, 1)`` when None.

    Raises
    ------
    ValueError
        When the value is not one or three positive finite numbers.
    """
    if value is None:
        return (1.0, 1.0, 1.0)
    if isinstance(value, int | float | np.number):
        value = (float(value),) * 3
    vs = tuple(float(v) for v in value)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {vs}")
    return vs


class ArrayVolume(Volume):
    """A :class:`Volume` over an in-memory or lazy array (numpy, zarr, dask, ...).

    Parameters
    ----------
    array : array-like
        3-D ``(z, y, x)``, with ``shape``, ``dtype`` and slicing.
    voxel_size, unit : optional
        Physical voxel size and its unit.
    name : str
        Shown in messages.
    world : WorldTransform, optional
        Voxel index -> world coordinates (default: from ``voxel_size``, origin 0).
    """

    source_type = "array"

    def __init__(self, array: Any, *, voxel_size: Sequence[float] | None = None,
                 unit: str | None = None, name: str = "array", metadata: dict | None = None,
                 world: Any = None):
        shape = tuple(int(s) for s in array.shape)
        if len(shape) != 3:
            raise InputError(f"{name}: expected a 3-D (z, y, x) volume, got shape {shape}")
        self._arr = array
        if world is not None and voxel_size is None:
            voxel_size, unit = world.voxel_size, world.unit
        super().__init__(name, shape, np.dtype(array.dtype), voxel_size=voxel_size, unit=unit,
                         metadata=metadata, workers=1, world=world)

    @property
    def array(self) -> Any:
        """The wrapped array."""
        return self._arr

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        return np.asarray(self._arr[z0:z1, rows, cols]).astype(self.dtype, copy=False)

    def __reduce__(self):
        return (_rebuild_array, (self._arr, self.voxel_size, self.unit, str(self.path),
                                 self.metadata, self.world))


def _rebuild_array(array, voxel_size, unit, name, metadata, world=None):
    return ArrayVolume(array, voxel_size=voxel_size, unit=unit, name=name, metadata=metadata,
                       world=world)


def open_any(source: VolumeLike, *, voxel_size: Sequence[float] | float | None = None,
             unit: str | None = None, level: int = 0) -> Volume:
    """Open ``source`` as a lazy ``(z, y, x)`` :class:`Volume`.

    Parameters
    ----------
    source : volume-like
        A path (slice folder, zip, TIFF, DICOM, NIfTI, ``.npy``, Zarr / OME-Zarr), an
        ``OmeImage``, a ``Volume`` (returned as is unless overridden), a zarr array, a
        numpy array or any 3-D array-like with ``shape``, ``dtype`` and slicing.
    voxel_size : float or 3 floats, optional
        Overrides the stored voxel size ``(z, y, x)``.
    unit : str, optional
        Overrides the stored unit.
    level : int
        Pyramid level of an OME-Zarr image (0 = full resolution).

    Returns
    -------
    Volume
        With ``voxel_size`` / ``unit`` (None when unknown), ``metadata`` and, for
        OME-Zarr images, ``image`` (the :class:`~ml4paleo.formats.OmeImage`), ``level``
        and ``levels`` (the pyramid's arrays from ``level`` down).

    Raises
    ------
    InputError
        When the source cannot be read or is not 3-D.
    FileNotFoundError
        (an :class:`InputError` subclass is raised instead for paths; see ``open_volume``.)
    """
    from ml4paleo.formats import OmeImage

    vs = None if voxel_size is None else voxel_size_or_default(voxel_size)
    if isinstance(source, Volume):
        vol = source
    elif isinstance(source, OmeImage):
        from ._arrays import ZarrVolume

        vol = ZarrVolume(source.path, level=level)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if is_zarr_store(path):
            from ._arrays import ZarrVolume

            vol = ZarrVolume(path, level=level)
            vol.source_type = "zarr"
        else:
            vol = open_volume(path)
    elif isinstance(source, np.ndarray) or (
        hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__")
    ):
        vol = ArrayVolume(source, voxel_size=getattr(source, "voxel_size", None),
                          unit=getattr(source, "unit", None),
                          name=str(getattr(source, "name", None) or type(source).__name__))
    else:
        raise InputError(f"cannot read a volume from {type(source).__name__}: give a path, an "
                         "OME-Zarr image or a 3-D array")
    if vs is not None:
        vol.voxel_size = vs
    if unit is not None:
        vol.unit = unit
    return vol
