"""Clean-up of a label array: small objects removed, holes filled, window-consistently."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["plane_island_size", "postprocess_labels", "preview_plane"]


def postprocess_labels(labels: np.ndarray, *, min_size: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Remove small objects and fill holes in a label array, window-consistently.

    Only objects (and holes) that do not touch the border of ``labels`` are changed, so
    running this on overlapping windows (block + halo) gives the same answer in every
    window that sees the whole object: blockwise clean-up is seam-free for objects whose
    extent fits in the halo; larger objects crossing a window border are left as they are.

    A removed object (or a filled hole) takes the most frequent label around it.
    """
    out = labels.copy()
    if not min_size and not fill_holes:
        return out
    border = np.zeros(labels.shape, bool)
    for a in range(labels.ndim):
        sl = [slice(None)] * labels.ndim
        sl[a] = 0
        border[tuple(sl)] = True
        sl[a] = -1
        border[tuple(sl)] = True
    for c in np.unique(labels):
        if c == 0 and not fill_holes:
            continue
        mask = labels == c
        cc, n = ndi.label(mask)
        if n == 0:
            continue
        sizes = np.bincount(cc.ravel())
        touching = np.unique(cc[border & mask])
        small = sizes < (min_size if c != 0 else 0)
        if c == 0 and fill_holes:
            small = np.ones_like(small)  # every enclosed background pocket is a hole
        small[0] = False
        small[touching] = False
        if c != 0 and not min_size:
            continue
        if not small.any():
            continue
        remove = small[cc]
        # fill with the surrounding label (most frequent in a 1-voxel shell)
        shell = ndi.binary_dilation(remove) & ~remove
        around = out[shell]
        around = around[around != c]
        if around.size:
            out[remove] = np.bincount(around).argmax()
    return out


def plane_island_size(min_size: int) -> int:
    """The 2D island area (pixels) standing in for a 3D island of ``min_size`` voxels on one
    slice: the cross-section of a cube of that volume (``min_size ** (2/3)``).

    Examples
    --------
    >>> plane_island_size(1000), plane_island_size(0)
    (100, 0)
    """
    if min_size <= 0:
        return 0
    return max(1, int(round(float(min_size) ** (2.0 / 3.0))))


def preview_plane(labels2d: np.ndarray, *, min_size: int = 0, fill_holes: bool = False
                  ) -> tuple[np.ndarray, int]:
    """What :func:`postprocess_labels` would do to one slice of a prediction, seen on that
    slice alone: islands below :func:`plane_island_size` pixels removed, enclosed holes
    filled, in 2D (the whole-volume clean-up works in 3D, so this is a preview).

    Returns
    -------
    (cleaned, changed) : tuple
        The cleaned slice and how many pixels changed.
    """
    labels2d = np.asarray(labels2d)
    if labels2d.ndim != 2:
        raise ValueError(f"a slice must be 2-D, got shape {labels2d.shape}")
    out = postprocess_labels(labels2d, min_size=plane_island_size(int(min_size)),
                             fill_holes=bool(fill_holes))
    return out, int((out != labels2d).sum())
