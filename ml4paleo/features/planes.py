"""Features of one plane of a volume, or of a tile of it, filtered along the plane normal first.

:func:`plane_features` reads the thin slab a plane (or an in-plane tile ``rows x cols`` of
it) needs -- the plane plus the feature halo on every side -- and runs the same filter bank
as :func:`~ml4paleo.features.compute_features`, with the axes ordered so the first
separable Gaussian pass runs along the plane normal: the slab of ``2 h + 1`` planes is
reduced to the few planes the finite differences need before any in-plane pass, and the
in-plane passes then touch only those. The cost is proportional to the tile's area, not to
the plane's, so a caller computes what it shows (or what is labelled) tile by tile.

Equality (what the tests assert):

- tiles of a plane put side by side equal the whole plane's features **exactly**: every
  Gaussian pass is a 'valid' float32 sum in kernel order (:mod:`.compiled`) and the coarse
  grid of large scales sits on the volume's even voxels, so a pixel gets the same
  arithmetic whatever tile holds it;
- a plane's features equal the 3-D :func:`~ml4paleo.features.compute_features` of the whole
  volume at that plane to float32 rounding: the separable passes run in another order, so
  the smoothed image differs by ~1e-7 relative; finite differences and the closed-form
  eigenvalues amplify that to at most ``5e-4`` of the largest value of the channel's family
  at that scale (``tests/test_plane_features.py``; the median difference is ~1e-7
  relative), and second differences of the coarse sigma-10 Gaussian (values ~1e-4 of the
  image's) to ~5e-3 of their own largest value (``tests/test_coarse_features.py``). Forests
  see the same leaves but for a pixel in a thousand or so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, read_with_halo

from .backend import FilterBackend
from .compute import iter_features
from .settings import FeatureSettings, halo_for, n_features

__all__ = ["iter_plane_features", "plane_axes", "plane_box", "plane_features"]


def plane_axes(axis: int, settings: FeatureSettings | None = None) -> tuple[int, int, int]:
    """Axis order the filters run in for a plane across ``axis``: the normal first.

    In ``"2d"`` mode z is never filtered and stays axis 0; the normal comes first among
    the filtered axes.

    Examples
    --------
    >>> plane_axes(0), plane_axes(1), plane_axes(2)
    ((0, 1, 2), (1, 0, 2), (2, 0, 1))
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if settings is not None and settings.mode == "2d":
        return (0, 1, 2) if axis in (0, 1) else (0, 2, 1)
    return (axis, *(a for a in (0, 1, 2) if a != axis))


def plane_box(shape: Sequence[int], axis: int, index: int, rows: slice | None = None,
              cols: slice | None = None) -> tuple[slice, slice, slice]:
    """The 3-D box (z, y, x slices) of plane ``index`` across ``axis``, in-plane part
    ``rows`` x ``cols`` (rows and columns of :func:`ml4paleo.annotate.plane_shape`'s
    plane: (y, x) for z, (z, x) for y, (z, y) for x).

    Raises
    ------
    ValueError
        For a bad axis, an index outside the volume or an empty / out-of-range tile.
    """
    shape = tuple(int(s) for s in shape)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0 <= int(index) < shape[axis]:
        raise ValueError(f"plane {index} outside 0..{shape[axis] - 1} along axis {axis}")
    in_plane = [a for a in (0, 1, 2) if a != axis]
    box: list[slice] = [slice(0, 0)] * 3
    box[axis] = slice(int(index), int(index) + 1)
    for a, sl in zip(in_plane, (rows, cols), strict=True):
        start, stop, step = (sl or slice(None)).indices(shape[a])
        if step != 1 or stop <= start:
            raise ValueError(f"tile {sl} is empty or strided on an axis of length {shape[a]}")
        box[a] = slice(start, stop)
    return tuple(box)


def iter_plane_features(
    volume: Any,
    axis: int,
    index: int,
    rows: slice | None = None,
    cols: slice | None = None,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    *,
    backend: str | FilterBackend | None = None,
) -> Iterator[np.ndarray]:
    """Yield the channels of :func:`plane_features` one by one, each ``(h, w)`` float32."""
    settings = settings or FeatureSettings()
    if voxel_size is None:
        voxel_size = getattr(volume, "voxel_size", None)
    shape = tuple(int(s) for s in volume.shape)
    box = plane_box(shape, axis, index, rows, cols)
    halo = halo_for(settings, voxel_size)
    read = tuple(slice(max(b.start - h, 0), min(b.stop + h, n))
                 for b, h, n in zip(box, halo, shape, strict=True))
    raw = read_with_halo(volume, Block((0, 0, 0), box, read, halo))
    order = plane_axes(axis, settings)
    data = np.ascontiguousarray(np.transpose(raw, order))
    del raw
    vs = None if voxel_size is None else tuple(float(voxel_size[a]) for a in order)
    halo_t = tuple(halo[a] for a in order)
    origin_t = tuple(box[a].start for a in order)
    out_shape = tuple(box[a].stop - box[a].start for a in (0, 1, 2) if a != axis)
    for channel in iter_features(data, settings, vs, halo_t, backend=backend, origin=origin_t):
        yield np.asarray(channel).reshape(out_shape)


def plane_features(
    volume: Any,
    axis: int,
    index: int,
    rows: slice | None = None,
    cols: slice | None = None,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    *,
    backend: str | FilterBackend | None = None,
) -> np.ndarray:
    """Features ``(F, h, w)`` of plane ``index`` across ``axis`` (or of a tile of it).

    Reads only the slab the tile needs (the tile grown by the feature halo, mirrored at
    the volume border as :func:`ml4paleo.blocks.read_with_halo` does) and filters along
    the plane normal first; the values are those of the 3-D
    :func:`~ml4paleo.features.compute_features` of the whole volume at that plane (see the
    module docstring for the exact equality guarantees).

    Parameters
    ----------
    volume : array-like (z, y, x)
        Anything sliceable that returns numpy arrays (a :class:`~ml4paleo.io.Volume`, a
        zarr array, numpy); never read whole.
    axis : int
        0 = z (a yx plane), 1 = y (zx), 2 = x (zy).
    index : int
        Plane index along ``axis``.
    rows, cols : slice, optional
        The tile: rows and columns of the plane (default: all).
    settings : FeatureSettings, optional
        Filters and scales (default ``FeatureSettings()``).
    voxel_size : sequence of 3 float, optional
        Physical voxel size (z, y, x) for per-axis sigmas (default: ``volume.voxel_size``
        when it has one).
    backend : str or FilterBackend, optional
        The filter backend (default ``"numpy"``).

    Returns
    -------
    ndarray, float32, shape (F, h, w)
        ``F = n_features(settings)`` channels, in :func:`~ml4paleo.features.feature_names`
        order.

    Examples
    --------
    >>> vol = np.random.default_rng(0).random((12, 40, 50)).astype(np.float32)
    >>> s = FeatureSettings(scales=(1.0,))
    >>> plane_features(vol, 0, 6, slice(8, 24), slice(0, 20), s).shape
    (8, 16, 20)
    """
    settings = settings or FeatureSettings()
    channels = iter_plane_features(volume, axis, index, rows, cols, settings, voxel_size,
                                   backend=backend)
    first = next(channels)
    out = np.empty((n_features(settings), *first.shape), np.float32)
    out[0] = first
    for k, ch in enumerate(channels, start=1):
        out[k] = ch
    return out
