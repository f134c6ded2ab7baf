"""Features of a box of a volume, read with exactly the halo they need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, read_with_halo
from ml4paleo.features import FeatureSettings, halo_for, iter_features, n_features

__all__ = ["box_block", "features_for_box", "features_for_parts"]


def box_block(box: tuple[slice, ...], halo: Sequence[int], shape: Sequence[int]) -> Block:
    """The :class:`~ml4paleo.blocks.Block` that writes ``box`` and reads it with ``halo``."""
    read = tuple(
        slice(max(b.start - h, 0), min(b.stop + h, n)) for b, h, n in zip(box, halo, shape, strict=True)
    )
    return Block((0, 0, 0), tuple(box), read, tuple(int(h) for h in halo))


def features_for_box(array: Any, box: tuple[slice, ...], settings: FeatureSettings,
                     voxel_size: Sequence[float] | None, coarse_sel: tuple[slice, ...] | None = None,
                     inner: tuple[slice, ...] | None = None, extra_rows: int = 0
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of ``box``: (F + extra_rows, N) for the ``inner`` part of the box (default: all)
    and, optionally, (F, M) at the coarse voxels ``coarse_sel`` of the box.

    Only the needed voxels are kept per channel, so memory stays at one block of features.
    The ``extra_rows`` rows are left for the caller to fill (the auto-context channels).
    """
    bshape = tuple(b.stop - b.start for b in box)
    inner = inner or tuple(slice(0, n) for n in bshape)
    return features_for_parts(array, box, settings, voxel_size, [(inner, coarse_sel)],
                              extra_rows)[0]


def _row_tiles(box: tuple[slice, ...], halo: Sequence[int], max_read: float | None) -> list[tuple[int, int]]:
    """Row ranges (axis 1, box coordinates) of tiles whose reads (grown by ``halo``) stay
    within ``max_read`` voxels where they can (tiles at least 16 rows); one tile if it fits."""
    ext = [b.stop - b.start for b in box]
    rest = (ext[0] + 2 * halo[0]) * (ext[2] + 2 * halo[2])
    if max_read is None or rest * (ext[1] + 2 * halo[1]) <= max_read:
        return [(0, ext[1])]
    rows = max(int(max_read // rest) - 2 * int(halo[1]), 16)
    n = -(-ext[1] // rows)
    cuts = [round(ext[1] * k / n) for k in range(n + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def _strided_within(sl: slice, n: int, lo: int, hi: int) -> tuple[int, int, slice]:
    """Indices j0:j1 of the positions of ``sl`` (into an axis of length ``n``) inside
    [lo, hi), and those positions as a slice relative to ``lo``."""
    start, stop, step = sl.indices(n)
    count = len(range(start, stop, step))
    j0 = min(max(-(-(lo - start) // step), 0), count)
    j1 = min(max(-(-(hi - start) // step), 0), count)
    first = start + j0 * step - lo
    return j0, j1, slice(first, first + (j1 - j0 - 1) * step + 1, step) if j1 > j0 else slice(0, 0)


def features_for_parts(array: Any, box: tuple[slice, ...], settings: FeatureSettings,
                       voxel_size: Sequence[float] | None,
                       parts: Sequence[tuple[tuple[slice, ...], tuple[slice, ...] | None]],
                       extra_rows: int = 0, max_read: float | None = None
                       ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """One filter-bank pass over ``box``, kept at several parts of it.

    Each part is ``(inner, coarse_sel)``: slices into the box of the voxels whose features
    are kept, (F + extra_rows, N), and optionally (strided) slices of coarse voxels kept too,
    (F, M). Parts of one box computed together equal each part computed on its own box
    exactly (every pass is a 'valid' sum, the coarse grid sits on the volume's even voxels),
    so annotated planes whose context regions overlap share one pass. With ``max_read``
    (voxels), a box whose read (grown by the halo) is larger is computed in tiles of rows
    (axis 1) that fit it -- the same values, memory bounded by the tile.
    """
    shape = array.shape
    h1 = halo_for(settings, voxel_size)
    F = n_features(settings)
    bshape = tuple(b.stop - b.start for b in box)
    out = []
    for inner, coarse_sel in parts:
        ishape = tuple(i.stop - i.start for i in inner)
        full = np.empty((F + extra_rows, int(np.prod(ishape))), np.float32)
        coarse = None
        if coarse_sel is not None:
            cshape = tuple(len(range(*c.indices(n))) for c, n in zip(coarse_sel, bshape, strict=True))
            coarse = np.empty((F, int(np.prod(cshape))), np.float32)
        out.append((full, coarse, ishape, cshape if coarse_sel is not None else None))
    for t0, t1 in _row_tiles(box, h1, max_read):
        tile = (box[0], slice(box[1].start + t0, box[1].start + t1), box[2])
        data = read_with_halo(array, box_block(tile, h1, shape))
        origin = tuple(b.start for b in tile)
        for k, ch in enumerate(iter_features(data, settings, voxel_size, h1, origin=origin)):
            for (inner, coarse_sel), (full, coarse, ishape, cshape) in zip(parts, out, strict=True):
                r0, r1 = max(inner[1].start, t0), min(inner[1].stop, t1)
                if r0 < r1:
                    view = full[k].reshape(ishape)
                    view[:, r0 - inner[1].start:r1 - inner[1].start] = \
                        ch[inner[0], r0 - t0:r1 - t0, inner[2]]
                if coarse is not None:
                    j0, j1, rows = _strided_within(coarse_sel[1], bshape[1], t0, t1)
                    if j1 > j0:
                        coarse[k].reshape(cshape)[:, j0:j1] = ch[coarse_sel[0], rows, coarse_sel[2]]
        del data
    return [(full, coarse) for full, coarse, _, _ in out]
