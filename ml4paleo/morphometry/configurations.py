"""2x2x2 voxel configurations: the one local window behind Euler number, surface and MIL.

A *configuration* is the 8-bit code of a 2x2x2 window of a binary volume, bit
``k = 4 dz + 2 dy + dx`` holding voxel ``(dz, dy, dx)`` of the window. Two readings of
the same window are used:

- as the 8 voxels around one lattice *vertex* (a corner shared by 8 voxels): the Euler
  characteristic of the union of closed voxel cubes (26-connected foreground, as in
  BoneJ after Toriwaki & Yonekura 2002) is the sum over all vertices of a local value
  ``delta_chi(config)`` (each vertex, edge, face and cube of the complex is shared out
  equally among its own vertices: 1, 1/2, 1/4, 1/8);
- as one *marching-cubes cell* whose corners are the 8 voxel centres: the Lorensen
  surface at level 0.5 is built cell by cell from the configuration alone, so its area
  is a sum over cells too.

So a histogram of configurations (256 counts) holds the Euler number and the surface
area, and histograms of blocks add up exactly.
On binary masks the Lorensen table separates corners that are only edge- or
corner-adjacent inside a cell: the surface of a cell is the union of the surfaces of
its face-connected corner groups (checked for all 256 cases), which is what lets the
area be split between face-connected (6-connected) objects.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CORNERS",
    "area_lut",
    "cell_components",
    "config_histogram",
    "configurations",
    "euler_lut",
    "mirror_histogram",
    "triangles",
    "vertex_weights",
    "zero_histogram",
]

#: corner ``(dz, dy, dx)`` of bit ``k`` (``k = 4 dz + 2 dy + dx``)
CORNERS = tuple((k >> 2 & 1, k >> 1 & 1, k & 1) for k in range(8))


def configurations(padded: np.ndarray) -> np.ndarray:
    """Configuration code of every 2x2x2 window of ``padded``.

    Parameters
    ----------
    padded : numpy.ndarray of bool
        ``(a, b, c)`` voxels; window ``(i, j, l)`` covers ``padded[i:i+2, j:j+2, l:l+2]``.

    Returns
    -------
    numpy.ndarray of uint8
        Shape ``(a - 1, b - 1, c - 1)``.

    Examples
    --------
    >>> v = np.zeros((2, 2, 3), bool); v[1, 1, 1] = True
    >>> configurations(v).ravel().tolist()
    [128, 64]
    """
    p = np.asarray(padded, dtype=bool).view(np.uint8)
    if p.ndim != 3 or min(p.shape) < 2:
        raise ValueError(f"need a 3-D array at least 2 voxels wide, got shape {p.shape}")
    a, b, c = (s - 1 for s in p.shape)
    out = np.zeros((a, b, c), np.uint8)
    for k, (dz, dy, dx) in enumerate(CORNERS):
        out |= p[dz:dz + a, dy:dy + b, dx:dx + c] << np.uint8(k)
    return out


def config_histogram(codes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or summed weights) of each of the 256 configurations, as float64."""
    flat = np.asarray(codes, np.uint8).ravel()
    if weights is None:
        return np.bincount(flat, minlength=256).astype(np.float64)
    w = np.broadcast_to(weights, codes.shape).ravel()
    return np.bincount(flat, weights=w, minlength=256)


def zero_histogram(mask: np.ndarray) -> np.ndarray:
    """Configurations of every vertex of ``mask`` padded with background (``(n + 1)^3``).

    The Euler characteristic and the closed surface of ``mask`` "floating in space".
    """
    return config_histogram(configurations(np.pad(np.asarray(mask, bool), 1)))


def vertex_weights(lo: Sequence[int], hi: Sequence[int], n: Sequence[int]) -> np.ndarray:
    """Weights x8 of vertices ``[lo, hi)`` per axis of an ``n``-voxel box (vertices 0..n).

    A vertex on a box face counts 1/2, on an edge 1/4, at a corner 1/8: the share of the
    box in a space tiled by mirror images of it. Returned as a broadcastable uint8 array
    of values 1, 2, 4 or 8.
    """
    w = []
    for axis, (a, b, size) in enumerate(zip(lo, hi, n, strict=True)):
        v = np.arange(a, b)
        wa = np.where((v == 0) | (v == size), 1, 2).astype(np.uint8)
        shape = [1, 1, 1]
        shape[axis] = len(wa)
        w.append(wa.reshape(shape))
    return w[0] * w[1] * w[2]


def mirror_histogram(mask: np.ndarray) -> np.ndarray:
    """Configurations of ``mask`` as a piece of a larger structure, weights x8.

    ``mask`` is padded by mirroring and the vertices on its faces, edges and corners
    weigh 1/2, 1/4 and 1/8: the histogram is 1/8 of the one of the mirrored volume
    wrapped on a torus, so cut faces count no surface and the Euler sum is BoneJ's
    edge-corrected contribution (Odgaard & Gundersen 1993).
    """
    m = np.asarray(mask, bool)
    codes = configurations(np.pad(m, 1, mode="symmetric"))
    return config_histogram(codes, vertex_weights((0, 0, 0), tuple(s + 1 for s in m.shape), m.shape))


def _bits(code: int) -> np.ndarray:
    return np.array([(code >> k) & 1 for k in range(8)], bool).reshape(2, 2, 2)


@functools.cache
def euler_lut() -> np.ndarray:
    """``8 * delta_chi`` of each configuration read as the 8 voxels around a vertex.

    Summed over all vertices of a volume padded with background, it gives 8 times the
    Euler characteristic of the foreground (26-connected) / background (6-connected).

    Examples
    --------
    >>> ring = np.ones((1, 3, 3), bool); ring[0, 1, 1] = False   # a loop: chi = 0
    >>> int(euler_lut()[configurations(np.pad(ring, 1))].sum()) // 8
    0
    >>> int(euler_lut()[configurations(np.pad(~ring, 1))].sum()) // 8
    1
    """
    lut = np.zeros(256, np.int64)
    for code in range(256):
        v = _bits(code)
        if not v.any():
            continue
        edges = sum(int(np.take(v, side, axis=ax).any()) for ax in range(3) for side in (0, 1))
        faces = 0
        for ax in range(3):
            pair = np.moveaxis(v, ax, 0)  # voxels on both sides of the plane through the vertex
            faces += int(np.count_nonzero(pair[0] | pair[1]))
        cubes = int(np.count_nonzero(v))
        lut[code] = 8 - 4 * edges + 2 * faces - cubes
    return lut


@functools.cache
def _index_triangles() -> tuple[np.ndarray, ...]:
    """Marching-cubes (Lorensen) triangles of each configuration, in voxel index units.

    Vertices are voxel-edge midpoints, exact in float32; scaled later per voxel size.
    """
    from skimage.measure import marching_cubes

    out: list[np.ndarray] = []
    for code in range(256):
        v = _bits(code).astype(np.float32)
        if code in (0, 255):
            out.append(np.zeros((0, 3, 3)))
            continue
        verts, faces, _, _ = marching_cubes(v, 0.5, method="lorensen")
        out.append(np.asarray(verts, np.float64)[faces])
    return tuple(out)


def triangles(code: int, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Triangles ``(n, 3, 3)`` of one cell, corners ``(z, y, x)`` in physical units."""
    return _index_triangles()[int(code)] * np.asarray(voxel_size, np.float64)


def _area_vectors(voxel_size: Sequence[float]) -> list[np.ndarray]:
    vecs = []
    for code in range(256):
        t = triangles(code, voxel_size)
        vecs.append(0.5 * np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]))
    return vecs


@functools.cache
def _area_lut(voxel_size: tuple[float, float, float]) -> np.ndarray:
    return np.array([float(np.linalg.norm(a, axis=1).sum()) for a in _area_vectors(voxel_size)])


def area_lut(voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Marching-cubes surface area of each configuration read as a cell (unit²).

    Examples
    --------
    >>> round(float(area_lut()[1]), 6)  # one corner cut off: a triangle of side sqrt(2)/2
    0.216506
    """
    return _area_lut(tuple(float(v) for v in voxel_size))


_FACE_STRUCT = np.array(
    [[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
     [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool)


@functools.cache
def cell_components() -> tuple[np.ndarray, np.ndarray]:
    """Face-connected corner groups of each configuration.

    Returns
    -------
    sub : numpy.ndarray
        ``(256, 4)`` uint8: the configuration of each group (0 = no group); at most
        four groups fit in a cell.
    anchor : numpy.ndarray
        ``(256, 4)`` int8: the highest bit of each group (its *anchor* corner), -1 if
        none. A block handles a group when it owns the anchor voxel, so each group of
        each cell is counted once whichever blocks share the cell.
    """
    from scipy import ndimage

    sub = np.zeros((256, 4), np.uint8)
    anchor = np.full((256, 4), -1, np.int8)
    for code in range(1, 256):
        lab, n = ndimage.label(_bits(code), structure=_FACE_STRUCT)
        for j in range(n):
            bits = [k for k, (dz, dy, dx) in enumerate(CORNERS) if lab[dz, dy, dx] == j + 1]
            sub[code, j] = sum(1 << k for k in bits)
            anchor[code, j] = max(bits)
    return sub, anchor
