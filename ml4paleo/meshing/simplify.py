"""Decimation that keeps meshes closed (or gives the input back)."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["simplify_closed"]


def simplify_closed(vertices: np.ndarray, faces: np.ndarray, reduction: float, name: str = "mesh"):
    """Decimate a closed mesh, keeping it closed; fall back to the input if it breaks.

    Parameters
    ----------
    vertices, faces : ndarray
        The closed input mesh.
    reduction : float
        Fraction of the faces to remove, in (0, 1): 0.9 keeps about 10 %.
    name : str
        Used in the warning.

    Returns
    -------
    vertices, faces, simplified : ndarray, ndarray, bool
        The decimated mesh and True, or the input and False when the decimated mesh is
        not watertight, not consistently wound, changed its topology (Euler number) or
        turned inside out.
    """
    import fast_simplification
    import trimesh

    if not 0.0 < reduction < 1.0:
        raise ValueError(f"simplify must be a fraction of faces to remove in (0, 1), got {reduction}")
    before = trimesh.Trimesh(vertices, faces, process=False)
    pts, tri = fast_simplification.simplify(
        np.ascontiguousarray(vertices, np.float64),
        np.ascontiguousarray(faces, np.int64),
        target_reduction=reduction,
    )
    after = trimesh.Trimesh(pts, tri, process=False)
    after.remove_unreferenced_vertices()
    if (
        len(after.faces)
        and after.is_watertight
        and after.is_winding_consistent
        and after.euler_number == before.euler_number
        and after.volume > 0
    ):
        return np.asarray(after.vertices), np.asarray(after.faces), True
    log.warning("%s: simplification did not keep the mesh closed; writing it unsimplified", name)
    return vertices, faces, False
