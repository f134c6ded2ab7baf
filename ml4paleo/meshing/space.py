"""Which coordinates meshes and statistics are written in: the scan's world, or its voxel grid.

Meshes are extracted on the voxel grid (vertex ``(x, y, z)`` = voxel index x voxel size,
voxel ``(0, 0, 0)``'s centre at the origin, axes along the array's). This module is the
one place that moves them elsewhere, applied to the welded (and smoothed / simplified)
vertices just before they are written:

``"world"`` (default)
    The scan's world coordinates (:class:`ml4paleo.world.WorldTransform`): the affine of
    the source (NIfTI sform/qform, DICOM position/orientation, OME-Zarr ``world``), in its
    frame and unit. A mesh therefore overlays the NIfTI / DICOM / OME-Zarr it came from in
    any viewer that reads those coordinates. The frame is kept as the source has it: RAS
    for NIfTI (and for slice stacks, which have none), LPS for DICOM, and written into each
    file's header (3D Slicer reads models as LPS unless told otherwise; an LPS mesh loads
    there as it is, a RAS one is loaded with "coordinate system: RAS").
``"voxel"``
    The voxel grid scaled by the voxel size (what ml4paleo wrote before world
    coordinates; origin at voxel (0, 0, 0), no rotation or flip).

An affine that mirrors (negative determinant, e.g. an LAS NIfTI) would turn the
triangles inside out; their winding is reversed with it, so normals stay outward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml4paleo.world import WorldTransform

__all__ = ["SPACES", "MeshSpace", "mesh_space", "unit_suffix", "world_of"]

#: the coordinate spaces meshes and statistics can be written in
SPACES = ("world", "voxel")

_SUFFIXES = {"millimeter": "mm", "micrometer": "um", "nanometer": "nm", "meter": "m",
             "centimeter": "cm", "angstrom": "A", "picometer": "pm", "decimeter": "dm",
             "kilometer": "km", "inch": "in", "foot": "ft"}


def unit_suffix(unit: str | None) -> str:
    """Short ASCII unit for column names: ``"mm"``, ``"um"``, ... ``"vox"`` for voxel units.

    Examples
    --------
    >>> unit_suffix("micrometer"), unit_suffix(None)
    ('um', 'vox')
    """
    if not unit:
        return "vox"
    return _SUFFIXES.get(unit, unit)


@dataclass(frozen=True)
class MeshSpace:
    """The map from grid coordinates (index x voxel size, ``(x, y, z)``) to the output space.

    Attributes
    ----------
    space : str
        ``"world"`` or ``"voxel"``.
    matrix : (3, 3) ndarray
        Linear part: output = grid @ matrix.T + offset.
    offset : (3,) ndarray
    unit : str or None
        Unit of the output coordinates (None: voxel units).
    frame : str or None
        ``"RAS"``, ``"LPS"`` or None (voxel space, or a world with no anatomical frame).
    world : WorldTransform
        The scan's transform (with the voxel size used for meshing).
    """

    space: str
    matrix: np.ndarray
    offset: np.ndarray
    unit: str | None
    frame: str | None
    world: WorldTransform

    @property
    def flips(self) -> bool:
        """True when the map mirrors (determinant < 0): windings must be reversed."""
        return bool(np.linalg.det(self.matrix) < 0)

    @property
    def volume_factor(self) -> float:
        """How the output space scales volumes of the grid space (1 unless sheared)."""
        return float(abs(np.linalg.det(self.matrix)))

    def points(self, grid_xyz: np.ndarray) -> np.ndarray:
        """Grid ``(x, y, z)`` points (N, 3) -> output coordinates (float64)."""
        p = np.asarray(grid_xyz, dtype=np.float64)
        if self.space == "voxel" or (np.array_equal(self.matrix, np.eye(3))
                                     and not self.offset.any()):
            return p  # the grid itself (also keeps -0.0 as it is, byte for byte)
        return p @ self.matrix.T + self.offset

    def apply(self, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A mesh in grid coordinates -> the output space, windings kept outward."""
        out = self.points(vertices)
        if self.flips:
            faces = np.ascontiguousarray(faces[:, ::-1])
        return out, faces

    def box(self, lo_zyx: Sequence[float], hi_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Output-space ``(x, y, z)`` bounds of the voxel-centre box ``lo..hi`` (z, y, x indices)."""
        lo, hi = np.asarray(lo_zyx, float), np.asarray(hi_zyx, float)
        vs = np.asarray(self.world.voxel_size, float)
        corners = np.array([[(hi if (k >> a) & 1 else lo)[a] for a in range(3)]
                            for k in range(8)])  # (z, y, x) indices
        grid = (corners * vs)[:, ::-1]
        pts = self.points(grid)
        return pts.min(axis=0), pts.max(axis=0)

    def describe(self) -> dict:
        """What mesh headers say about the coordinates (JSON-able)."""
        return {"space": self.space, "unit": self.unit, "frame": self.frame,
                "orientation": self.world.orientation if self.space == "world" else None}


def mesh_space(world: WorldTransform, space: str = "world") -> MeshSpace:
    """The :class:`MeshSpace` of a scan with transform ``world``.

    Raises
    ------
    ValueError
        For an unknown ``space``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if space == "voxel":
        return MeshSpace("voxel", np.eye(3), np.zeros(3), world.unit, None, world)
    a = np.array(world.affine, dtype=np.float64)
    vs = np.asarray(world.voxel_size, float)[::-1]  # (x, y, z)
    matrix = a[:3, :3] / vs[None, :]  # grid (index x size) -> world
    return MeshSpace("world", matrix, a[:3, 3].copy(), world.unit, world.frame, world)


def world_of(volume, voxel_size: Sequence[float] | None = None, unit: str | None = None
             ) -> WorldTransform:
    """The world transform of an opened volume, with a voxel size / unit given by the user.

    ``volume.world`` (its reader's), rescaled to ``voxel_size`` and relabelled ``unit``
    when they differ from it (direction and origin kept).
    """
    from ml4paleo.world import normalize_unit

    w = volume.world
    length = normalize_unit(unit) if unit else None
    if voxel_size is not None and not np.allclose(voxel_size, w.voxel_size, rtol=1e-9, atol=0):
        return w.with_voxel_size(voxel_size, unit=length)
    if length is not None and length != w.unit:
        return w.with_voxel_size(w.voxel_size, unit=length)
    return w
