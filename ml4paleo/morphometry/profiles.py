"""Compactness profiles along an axis (paleohistology's bone compactness, per section).

For every slice perpendicular to ``axis``:

- ``area``: area of the class inside the ROI (voxel count x pixel area of the slice);
- ``roi_area``: area of the ROI in the slice, and ``area_fraction = area / roi_area``;
- ``section_area``: area of the *section* — the class with its holes filled in 2-D
  (a bone's outline including its medullary cavity and vascular canals; holes open to
  the slice border are not filled);
- ``compactness = area / section_area``: the fraction of the section filled, as Bone
  Profiler (Girondot & Laurin 2003) reports it for one section; here for every slice.

The whole-volume compactness is ``sum(area) / sum(section_area)``. Slices are
independent, so the profile is computed slab by slab.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ml4paleo.morphometry.thickness import check_voxel_size

__all__ = ["compactness_profile", "profile_counts", "profile_from_counts"]


def profile_counts(mask: np.ndarray, roi: np.ndarray | None, axis: int) -> dict[str, np.ndarray]:
    """Per-slice voxel counts of a slab: class, ROI and hole-filled section.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        Class voxels of the slab ``(z, y, x)`` (already restricted to the ROI).
    roi : numpy.ndarray of bool or None
        ROI voxels of the slab (None: all).
    axis : int
        Axis the slices are perpendicular to.

    Returns
    -------
    dict
        ``class``, ``roi`` and ``section``: int64 arrays, one count per slice.
    """
    m = np.moveaxis(np.asarray(mask, bool), axis, 0)
    n = m.shape[0]
    section = np.zeros(n, np.int64)
    for i in range(n):
        if m[i].any():
            section[i] = int(np.count_nonzero(ndimage.binary_fill_holes(m[i])))
    if roi is None:
        roi_counts = np.full(n, m[0].size, np.int64)
    else:
        roi_counts = np.moveaxis(np.asarray(roi, bool), axis, 0).reshape(n, -1).sum(axis=1)
    return {"class": m.reshape(n, -1).sum(axis=1).astype(np.int64),
            "roi": roi_counts.astype(np.int64), "section": section}


def profile_from_counts(counts: dict[str, np.ndarray], voxel_size: Sequence[float], axis: int,
                        start: int = 0) -> dict:
    """Physical profile from per-slice counts (slice ``i`` is volume index ``start + i``).

    Returns
    -------
    dict
        ``axis``, ``index`` (slice indices), ``position`` (slice centre, physical),
        ``area``, ``roi_area``, ``area_fraction``, ``section_area``, ``compactness``
        (None where undefined) and ``volume_compactness``.
    """
    vs = check_voxel_size(voxel_size)
    pixel = float(np.prod([s for i, s in enumerate(vs) if i != axis]))
    cls = np.asarray(counts["class"], np.int64)
    roi = np.asarray(counts["roi"], np.int64)
    sec = np.asarray(counts["section"], np.int64)
    index = np.arange(start, start + len(cls))

    def ratio(a: np.ndarray, b: np.ndarray) -> list:
        return [float(x) / float(y) if y > 0 else None for x, y in zip(a.tolist(), b.tolist(), strict=True)]

    total_sec = int(sec.sum())
    return {
        "axis": "zyx"[axis],
        "index": index.tolist(),
        "position": (index * vs[axis]).tolist(),
        "area": (cls * pixel).tolist(),
        "roi_area": (roi * pixel).tolist(),
        "area_fraction": ratio(cls, roi),
        "section_area": (sec * pixel).tolist(),
        "compactness": ratio(cls, sec),
        "volume_compactness": float(cls.sum()) / total_sec if total_sec else None,
    }


def compactness_profile(mask: np.ndarray, axis: int = 0,
                        voxel_size: Sequence[float] | float = 1.0,
                        roi: np.ndarray | None = None) -> dict:
    """Compactness profile of a binary structure held in memory.

    Examples
    --------
    >>> tube = np.zeros((4, 9, 9), bool); tube[:, 1:8, 1:8] = True; tube[:, 3:6, 3:6] = False
    >>> p = compactness_profile(tube, axis=0)
    >>> p["area"][0], p["section_area"][0], round(p["compactness"][0], 4)
    (40.0, 49.0, 0.8163)
    """
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {m.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis}")
    r = None if roi is None else np.asarray(roi, bool)
    if r is not None:
        m = m & r
    return profile_from_counts(profile_counts(m, r, axis), check_voxel_size(voxel_size), axis)
