"""Euler characteristic and connectivity density (Odgaard & Gundersen 1993; BoneJ).

The structure is the union of its closed voxel cubes (26-connected foreground,
6-connected background). Its Euler characteristic ``chi`` is a sum over lattice
vertices of a local value (Toriwaki & Yonekura 2002), see
:mod:`ml4paleo.morphometry.configurations`.

For a sample cut out of a larger network the cut ends would count, so BoneJ reports
``delta_chi``, the sample's contribution to the Euler characteristic of the structure it
was cut from: vertices on the faces, edges and corners of the box weigh 1/2, 1/4 and
1/8 (equal to BoneJ's ``correctForEdges``). Then

- connectivity ``beta1 = 1 - delta_chi`` (one connected piece, no cavities assumed),
- connectivity density ``Conn.D = beta1 / TV`` (unit^-3).

Both sums are additive over any partition of the vertices, so blocks add up exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml4paleo.morphometry.configurations import euler_lut, mirror_histogram, zero_histogram
from ml4paleo.morphometry.thickness import check_voxel_size

__all__ = ["connectivity", "connectivity_from_histograms", "delta_euler", "euler_characteristic"]


def euler_characteristic(zero_hist: np.ndarray) -> int:
    """Euler characteristic from a background-padded configuration histogram."""
    return int(round(float(np.dot(zero_hist, euler_lut())) / 8.0))


def delta_euler(mirror_hist8: np.ndarray) -> float:
    """Edge-corrected Euler contribution from a mirror histogram (weights x8)."""
    return float(np.dot(mirror_hist8, euler_lut())) / 64.0


def connectivity_from_histograms(zero_hist: np.ndarray, mirror_hist8: np.ndarray,
                                 total_volume: float) -> dict:
    """Euler characteristic, ``delta_chi``, connectivity and its density.

    Returns
    -------
    dict
        ``euler`` (int), ``delta_euler``, ``connectivity`` (``1 - delta_euler``) and
        ``connectivity_density`` (per unit volume; None when ``total_volume`` is 0).
    """
    d = delta_euler(mirror_hist8)
    conn = 1.0 - d
    return {
        "euler": euler_characteristic(zero_hist),
        "delta_euler": d,
        "connectivity": conn,
        "connectivity_density": conn / total_volume if total_volume > 0 else None,
    }


def connectivity(mask: np.ndarray, voxel_size: Sequence[float] | float = 1.0) -> dict:
    """Connectivity of a binary structure held in memory (the array is the sample box).

    Examples
    --------
    >>> ring = np.zeros((3, 7, 7), bool); ring[1, 1:6, 1:6] = True; ring[1, 2:5, 2:5] = False
    >>> c = connectivity(ring)
    >>> c["euler"], c["connectivity"]
    (0, 1.0)
    """
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {m.shape}")
    vs = check_voxel_size(voxel_size)
    tv = float(m.size) * vs[0] * vs[1] * vs[2]
    return connectivity_from_histograms(zero_histogram(m), mirror_histogram(m), tv)
