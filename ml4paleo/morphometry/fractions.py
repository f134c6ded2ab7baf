"""Volume fraction (BV/TV) and surface density (BS/TV) of a class in a region of interest.

- ``BV`` = voxels of the class inside the ROI x voxel volume; ``TV`` = voxels of the
  ROI x voxel volume.
- ``BS`` = area of the marching-cubes surface (Lorensen, level 0.5 on the binary class
  mask, cell by cell) *inside* the ROI box: the mask is continued across the box faces
  by mirroring, so faces cut by the box add no surface, and cells on the box faces,
  edges and corners count 1/2, 1/4, 1/8. This is a consistent estimator of the surface
  per unit volume of the structure the sample was cut from (on a cube of side ``a``
  inside the volume it gives ``6 a^2`` minus the small marching-cubes corner bevels).
- The *closed* area (mask padded with background, every object closed, as
  :func:`ml4paleo.meshing.label_stats` measures it) is reported too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml4paleo.morphometry.configurations import area_lut, mirror_histogram, zero_histogram
from ml4paleo.morphometry.thickness import check_voxel_size

__all__ = ["fractions_from_counts", "surface_area", "volume_fractions"]


def surface_area(hist: np.ndarray, voxel_size: Sequence[float], *, weights8: bool) -> float:
    """Marching-cubes area of a configuration histogram (``weights8``: mirror weights x8)."""
    area = float(np.dot(hist, area_lut(check_voxel_size(voxel_size))))
    return area / 8.0 if weights8 else area


def fractions_from_counts(class_voxels: int, roi_voxels: int, mirror_hist8: np.ndarray,
                          zero_hist: np.ndarray, voxel_size: Sequence[float]) -> dict:
    """BV, TV, BV/TV, BS, BS/TV, BS/BV and the closed surface area, in physical units."""
    vs = check_voxel_size(voxel_size)
    vox = vs[0] * vs[1] * vs[2]
    bv, tv = class_voxels * vox, roi_voxels * vox
    bs = surface_area(mirror_hist8, vs, weights8=True)
    return {
        "class_voxels": int(class_voxels),
        "roi_voxels": int(roi_voxels),
        "bv": bv,
        "tv": tv,
        "bv_tv": bv / tv if tv > 0 else None,
        "bs": bs,
        "bs_tv": bs / tv if tv > 0 else None,
        "bs_bv": bs / bv if bv > 0 else None,
        "closed_surface_area": surface_area(zero_hist, vs, weights8=False),
    }


def volume_fractions(mask: np.ndarray, voxel_size: Sequence[float] | float = 1.0,
                     roi: np.ndarray | None = None) -> dict:
    """Volume and surface fractions of a binary structure held in memory.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        The class ``(z, y, x)``.
    voxel_size : float or 3 floats
        ``(z, y, x)``.
    roi : numpy.ndarray of bool, optional
        Region of interest (default: the whole array, which is then the sample box).

    Examples
    --------
    >>> m = np.zeros((10, 10, 10), bool); m[:5] = True          # half the box
    >>> f = volume_fractions(m, voxel_size=(2.0, 1.0, 1.0))
    >>> f["bv_tv"], f["bs"]                                     # one 10 x 10 cut plane
    (0.5, 100.0)
    """
    m = np.asarray(mask, bool)
    vs = check_voxel_size(voxel_size)
    if roi is None:
        inside = np.ones(m.shape, bool)
    else:
        inside = np.asarray(roi, bool)
        if inside.shape != m.shape:
            raise ValueError(f"roi shape {inside.shape} differs from mask shape {m.shape}")
    x = m & inside
    return fractions_from_counts(int(np.count_nonzero(x)), int(np.count_nonzero(inside)),
                                 mirror_histogram(x), zero_histogram(x), vs)
