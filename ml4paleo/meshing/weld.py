"""Joining block parts into one mesh per label, by exact vertex positions.

On a binary mask at level 0.5 every marching-cubes vertex is the midpoint of a voxel
edge, so its doubled coordinates are integers: parts made by different blocks share
vertices exactly, and welding by integer keys gives the whole-volume mesh.  Smoothed
parts also carry float positions; blocks compute them bit-identically, which the weld
checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["body_count", "canonical_faces", "to_physical", "weld"]


def weld(
    files: Sequence[Path], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Join block parts (``.npz`` with ``v``, ``f``, maybe ``p``) into one mesh.

    Parameters
    ----------
    files : sequence of path
        Parts written by :func:`ml4paleo.meshing.blockwise.mesh_block`.
    shape : sequence of int
        Shape of the label volume (bounds the doubled coordinates).

    Returns
    -------
    vertices, faces : ndarray
        Doubled (z, y, x) integer vertex coordinates sorted by position, and faces in a
        canonical order (:func:`canonical_faces`), so the result does not depend on the
        block size.
    points : ndarray or None
        The smoothed ``(z, y, x)`` positions of ``vertices`` when the parts hold them
        (``p``, from :mod:`ml4paleo.meshing.smooth`), else None.

    Raises
    ------
    RuntimeError
        When two blocks computed different smoothed positions for one vertex: the halo
        did not cover the smoothing support and a seam would open.
    """
    verts, points, faces, offset = [], [], [], 0
    for f in files:
        with np.load(f) as part:
            v, fc = part["v"], part["f"].astype(np.int64)
            if "p" in part:
                points.append(part["p"])
        verts.append(v)
        faces.append(fc + offset)
        offset += len(v)
    v_all = np.concatenate(verts)
    f_all = np.concatenate(faces)
    del verts, faces
    dims = np.array([2 * s + 1 for s in shape], np.int64)
    k = v_all.astype(np.int64) + 1  # doubled coordinates start at -1
    keys = (k[:, 0] * dims[1] + k[:, 1]) * dims[2] + k[:, 2]
    del k
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    del keys
    inverse = inverse.reshape(-1)
    vertices = v_all[first]
    smoothed = None
    if points:
        p_all = np.concatenate(points)
        del points
        smoothed = p_all[first]
        step = 1 << 20  # compare a piece at a time: no second copy of every position
        for i in range(0, len(p_all), step):
            if not np.array_equal(smoothed[inverse[i : i + step]], p_all[i : i + step]):
                raise RuntimeError("blocks disagree on smoothed vertex positions: the "
                                   "smoothing halo does not cover its support (a seam)")
        del p_all
    f_all = inverse[f_all]
    return vertices, canonical_faces(f_all), smoothed


def canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Each face rotated to start at its smallest index (winding kept), then faces sorted.

    Examples
    --------
    >>> canonical_faces(np.array([[2, 0, 1], [1, 3, 0]])).tolist()
    [[0, 1, 2], [0, 1, 3]]
    """
    start = np.argmin(faces, axis=1)
    cols = (start[:, None] + np.arange(3)) % 3
    faces = np.take_along_axis(faces, cols, axis=1)
    order = np.lexsort((faces[:, 2], faces[:, 1], faces[:, 0]))
    return faces[order]


def to_physical(v2: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Doubled (z, y, x) voxel coordinates -> (x, y, z) physical coordinates."""
    return (v2[:, ::-1].astype(np.float64) * 0.5) * np.asarray(voxel_size, np.float64)[::-1]


def body_count(n_vertices: int, faces: np.ndarray) -> int:
    """Connected surface pieces of a mesh whose vertices are all used by ``faces``."""
    if len(faces) == 0:
        return 0
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)),
                              shape=(n_vertices, n_vertices))
    n, _ = csgraph.connected_components(graph, directed=False)
    return int(n)
