"""Planes cut into tiles, and labels carried to the coarser pyramid levels.

The interactive preview works tile by tile on the pyramid level that matches what is shown:
:class:`TileGrid` names the tiles of one plane of one level, :func:`downsample_labels`
gives the labels of a plane at a coarser level (each coarse pixel takes the most frequent
label of the full-resolution pixels under it), :func:`label_border` marks labelled pixels
next to another label (the training sample prefers them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MIN_EXTENT", "TileGrid", "compute_range", "downsample_labels", "label_border",
           "level_index"]

#: a tile is computed over at least this many pixels per axis (when the plane has them):
#: every filter pass is the same arithmetic at any extent, so tiles of a plane put together
#: equal the whole plane's features exactly; thinner tiles would only cost more per pixel
MIN_EXTENT = 16


def compute_range(start: int, stop: int, n: int, min_extent: int = MIN_EXTENT) -> tuple[int, int]:
    """``[a, b)`` holding ``[start, stop)`` inside ``0..n``, at least ``min_extent`` long when
    ``n`` allows.

    Examples
    --------
    >>> compute_range(250, 256, 256), compute_range(0, 5, 300), compute_range(0, 5, 7)
    ((240, 256), (0, 16), (0, 7))
    """
    if stop - start >= min_extent or n <= min_extent:
        return (0, n) if n <= min_extent else (start, stop)
    a = max(0, min(start, stop - min_extent))
    b = min(n, a + min_extent)
    a = max(0, b - min_extent)
    return a, b


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one plane: ``tile`` x ``tile`` pixels from the top-left corner.

    Attributes
    ----------
    shape : (int, int)
        Plane (rows, columns).
    tile : int
        Tile edge, pixels.

    Examples
    --------
    >>> g = TileGrid((600, 300), 256)
    >>> g.n_rows, g.n_cols, g.slices(2, 1)
    (3, 2, (slice(512, 600, None), slice(256, 300, None)))
    """

    shape: tuple[int, int]
    tile: int

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @property
    def n_rows(self) -> int:
        return -(-self.shape[0] // self.tile)

    @property
    def n_cols(self) -> int:
        return -(-self.shape[1] // self.tile)

    def check(self, ty: int, tx: int) -> None:
        """Raise ValueError unless ``(ty, tx)`` is a tile of the grid."""
        if not (0 <= ty < self.n_rows and 0 <= tx < self.n_cols):
            raise ValueError(f"tile ({ty}, {tx}) outside the {self.n_rows} x {self.n_cols} tiles "
                             f"of a {self.shape[0]} x {self.shape[1]} plane")

    def slices(self, ty: int, tx: int) -> tuple[slice, slice]:
        """Rows and columns of tile ``(ty, tx)``."""
        self.check(ty, tx)
        t = self.tile
        return (slice(ty * t, min((ty + 1) * t, self.shape[0])),
                slice(tx * t, min((tx + 1) * t, self.shape[1])))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for ty in range(self.n_rows):
            for tx in range(self.n_cols):
                yield ty, tx

    def covering(self, rows: slice, cols: slice) -> list[tuple[int, int]]:
        """Tiles overlapping the region ``rows`` x ``cols``."""
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        if r1 <= r0 or c1 <= c0:
            return []
        t = self.tile
        return [(ty, tx) for ty in range(r0 // t, (r1 - 1) // t + 1)
                for tx in range(c0 // t, (c1 - 1) // t + 1)]


def level_index(index: int, level: int, n_level: int) -> int:
    """Plane ``index`` (full resolution) on pyramid ``level`` with ``n_level`` planes."""
    return min(int(index) >> int(level), int(n_level) - 1)


def downsample_labels(labels2d: np.ndarray, level: int, shape: tuple[int, int]) -> np.ndarray:
    """Labels of a plane on pyramid ``level`` (each level pixel covers 2**level squared
    full-resolution pixels): the most frequent non-zero label under it, 0 where none.

    Costs time in proportion to the labelled pixels, not the plane.

    Examples
    --------
    >>> lab = np.zeros((4, 4), np.uint8); lab[0, :3] = 2; lab[1, 0] = 1; lab[3, 3] = 1
    >>> downsample_labels(lab, 1, (2, 2)).tolist()
    [[2, 2], [0, 1]]
    """
    labels2d = np.asarray(labels2d)
    if level == 0:
        return labels2d.astype(np.uint8, copy=False)
    out = np.zeros(shape, np.uint8)
    rr, cc = np.nonzero(labels2d)
    if rr.size == 0:
        return out
    vals = labels2d[rr, cc].astype(np.int64)
    cell = (rr >> level).astype(np.int64) * shape[1] + (cc >> level)
    keys, counts = np.unique(cell * 256 + vals, return_counts=True)
    cells, values = keys // 256, keys % 256
    order = np.lexsort((-counts, cells))  # per cell, the most frequent label first
    cells, values = cells[order], values[order]
    first = np.ones(cells.size, bool)
    first[1:] = cells[1:] != cells[:-1]
    out.flat[cells[first]] = values[first]
    return out


def label_border(lab: np.ndarray, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Whether each labelled pixel ``(rr, cc)`` of ``lab`` has a 3x3 neighbour holding
    another label or none (the filters run on the labels' bounding box only)."""
    if rr.size == 0:
        return np.zeros(0, bool)
    r0, r1 = max(int(rr.min()) - 1, 0), min(int(rr.max()) + 2, lab.shape[0])
    c0, c1 = max(int(cc.min()) - 1, 0), min(int(cc.max()) + 2, lab.shape[1])
    sub = lab[r0:r1, c0:c1]
    mx = ndi.maximum_filter(sub, size=3)
    mn = ndi.minimum_filter(np.where(sub == 0, 255, sub).astype(np.uint8), size=3)
    r, c = rr - r0, cc - c0
    v = sub[r, c]
    return (mx[r, c] != v) | (mn[r, c] != v)
