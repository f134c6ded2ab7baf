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


def features_for_parts(array: Any, box: tuple[slice, ...], settings: FeatureSettings,
                       voxel_size: Sequence[float] | None,
                       parts: Sequence[tuple[tuple[slice, ...], tuple[slice, ...] | None]],
                       extra_rows: int = 0) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """One filter-bank pass over ``box``, kept at several parts of it.

    Each part is ``(inner, coarse_sel)``: slices into the box of the voxels whose features
    are kept, (F + extra_rows, N), and optionally (strided) slices of coarse voxels kept too,
    (F, M). Parts of one box computed together equal each part computed on its own box
    exactly (every pass is a 'valid' sum, the coarse grid sits on the volume's even voxels),
    so annotated planes whose context regions overlap share one pass.
    """
    shape = array.shape
    h1 = halo_for(settings, voxel_size)
    data = read_with_halo(array, box_block(box, h1, shape))
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
        out.append((full, coarse))
    origin = tuple(b.start for b in box)
    for k, ch in enumerate(iter_features(data, settings, voxel_size, h1, origin=origin)):
        for (inner, coarse_sel), (full, coarse) in zip(parts, out, strict=True):
            full[k] = ch[inner].reshape(-1)
            if coarse is not None:
                coarse[k] = ch[coarse_sel].reshape(-1)
    return out
