"""The block grid: write regions, halo read regions, halo reads and crops.

A :class:`Block` has a *write* region (the voxels it owns, chunk aligned) and a *read*
region (the write region grown by a halo and clipped to the volume).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Block", "block_grid", "overlapping", "pad_reflect", "read_with_halo"]


@dataclass(frozen=True)
class Block:
    """One block of a regular grid.

    Attributes
    ----------
    index : tuple of int
        Position of the block in the grid.
    write : tuple of slice
        Region of the volume this block produces (never overlaps another block's).
    read : tuple of slice
        ``write`` grown by the halo on every side, clipped to the volume.
    halo : tuple of int
        Requested halo per axis (the read region may be smaller at the volume border).
    """

    index: tuple[int, ...]
    write: tuple[slice, ...]
    read: tuple[slice, ...]
    halo: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the write region."""
        return tuple(s.stop - s.start for s in self.write)

    @property
    def name(self) -> str:
        """Stable text id, e.g. ``"0_3_1"``, used for done-markers."""
        return "_".join(str(i) for i in self.index)

    def crop_from_read(self) -> tuple[slice, ...]:
        """Slices that cut the write region out of an array covering ``read``."""
        return tuple(
            slice(w.start - r.start, w.stop - r.start)
            for w, r in zip(self.write, self.read, strict=True)
        )

    def crop_from_padded(self) -> tuple[slice, ...]:
        """Slices that cut the write region out of :func:`read_with_halo`'s full-halo array."""
        return tuple(slice(h, h + n) for h, n in zip(self.halo, self.shape, strict=True))


def _as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        out = (int(value),) * ndim
    else:
        out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} needs {ndim} values, got {len(out)}")
    return out


def block_grid(
    shape: Sequence[int],
    block_shape: int | Sequence[int],
    halo: int | Sequence[int] = 0,
) -> list[Block]:
    """Cut a volume into a regular grid of blocks.

    Parameters
    ----------
    shape : sequence of int
        Volume shape.
    block_shape : int or sequence of int
        Block edge per axis (make it a multiple of the output chunk shape so that
        blocks write whole chunks).
    halo : int or sequence of int
        Context voxels on each side of a block's read region.

    Returns
    -------
    list of Block
        Blocks in C order.

    Examples
    --------
    >>> blocks = block_grid((10, 10), 4, halo=1)
    >>> len(blocks), blocks[0].write, blocks[0].read
    (9, (slice(0, 4, None), slice(0, 4, None)), (slice(0, 5, None), slice(0, 5, None)))
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    bs = _as_tuple(block_shape, ndim, "block_shape")
    hs = _as_tuple(halo, ndim, "halo")
    if any(b <= 0 for b in bs):
        raise ValueError(f"block_shape must be positive, got {bs}")
    if any(h < 0 for h in hs):
        raise ValueError(f"halo must be >= 0, got {hs}")
    counts = [math.ceil(s / b) for s, b in zip(shape, bs, strict=True)]
    blocks = []
    for index in itertools.product(*(range(c) for c in counts)):
        write = tuple(
            slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, bs, shape, strict=True)
        )
        read = tuple(
            slice(max(w.start - h, 0), min(w.stop + h, s))
            for w, h, s in zip(write, hs, shape, strict=True)
        )
        blocks.append(Block(tuple(index), write, read, hs))
    return blocks


def read_with_halo(array: Any, block: Block, pad_mode: str = "symmetric") -> np.ndarray:
    """Read ``block.read`` from ``array`` and pad to the full halo at the volume border.

    The padding mirrors the volume (``"symmetric"`` equals scipy.ndimage's ``"reflect"``
    boundary mode), so a filter run on the padded block and cropped with
    :meth:`Block.crop_from_padded` equals the same filter run on the whole volume.

    Parameters
    ----------
    array : array-like
        Anything sliceable that returns numpy arrays (zarr array, numpy, lazy reader).
    block : Block
        The block to read.
    pad_mode : str
        ``numpy.pad`` mode for the part of the halo outside the volume.

    Returns
    -------
    numpy.ndarray
        Array of shape ``block.shape + 2 * block.halo``.
    """
    data = np.asarray(array[block.read])
    pads = []
    for w, r, h in zip(block.write, block.read, block.halo, strict=True):
        before = h - (w.start - r.start)
        after = h - (r.stop - w.stop)
        pads.append((before, after))
    if any(p != (0, 0) for p in pads):
        data = pad_reflect(data, pads, pad_mode)
    return data


def pad_reflect(data: np.ndarray, pads: Sequence[tuple[int, int]],
                mode: str = "symmetric") -> np.ndarray:
    """``numpy.pad`` with mirror modes, for pads wider than the axis.

    numpy's ``symmetric``/``reflect`` padding cannot exceed the axis length in one call;
    this repeats the padding until done, which mirrors the data back and forth.

    Parameters
    ----------
    data : ndarray
        Array to pad.
    pads : sequence of (before, after)
        Voxels to add on each side of each axis.
    mode : str
        ``numpy.pad`` mode (``"symmetric"`` = scipy.ndimage ``"reflect"``).

    Examples
    --------
    >>> pad_reflect(np.array([1, 2]), [(3, 0)]).tolist()
    [2, 2, 1, 1, 2]
    """
    pads = [(int(b), int(a)) for b, a in pads]
    while any(b > 0 or a > 0 for b, a in pads):
        step = []
        for (b, a), n in zip(pads, data.shape, strict=True):
            step.append((min(b, n), min(a, n)))
        data = np.pad(data, step, mode=mode)
        pads = [(b - sb, a - sa) for (b, a), (sb, sa) in zip(pads, step, strict=True)]
    return data


def overlapping(blocks: Sequence[Block], scale: int | Sequence[int] = 1
                ) -> Callable[[Block], list[int]]:
    """A dependency rule: which of ``blocks`` write what another block reads.

    For chaining two stages of :func:`ml4paleo.blocks.run`: the returned function maps a
    block of the later stage to the positions (in ``blocks``) of the earlier stage's
    blocks whose write region overlaps its read region scaled by ``scale`` (e.g. 2 when
    the later stage reads a level of a 2x pyramid from the level above).

    Parameters
    ----------
    blocks : sequence of Block
        The earlier stage's blocks (a grid from :func:`block_grid`, or part of one).
    scale : int or sequence of int
        Factor from the later stage's coordinates to the earlier stage's.

    Returns
    -------
    callable
        ``deps(block) -> list of int``.

    Examples
    --------
    >>> level0 = block_grid((8, 8), 4)
    >>> deps = overlapping(level0, scale=2)
    >>> deps(block_grid((4, 4), 2)[1])
    [1]
    """
    blocks = list(blocks)
    if not blocks:
        return lambda block: []
    ndim = len(blocks[0].index)
    factors = _as_tuple(scale, ndim, "scale")
    position = {b.index: i for i, b in enumerate(blocks)}
    # per axis: sorted (start, grid index) of the distinct write intervals
    axes = []
    for a in range(ndim):
        spans = sorted({(b.write[a].start, b.write[a].stop, b.index[a]) for b in blocks})
        axes.append(([s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans]))

    def deps(block: Block) -> list[int]:
        ranges = []
        for a in range(ndim):
            lo = block.read[a].start * factors[a]
            hi = block.read[a].stop * factors[a]
            starts, stops, ids = axes[a]
            i = max(bisect.bisect_right(starts, lo) - 1, 0)
            hit = []
            while i < len(starts) and starts[i] < hi:
                if stops[i] > lo:
                    hit.append(ids[i])
                i += 1
            ranges.append(hit)
        found = (position.get(index) for index in itertools.product(*ranges))
        return sorted(p for p in found if p is not None)

    return deps
