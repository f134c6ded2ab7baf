"""Mesh files: binary STL, OBJ, binary PLY and GLB, written atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ml4paleo._fs import atomic_writer

__all__ = ["MESH_FORMATS", "parse_formats", "write_mesh", "write_stl"]

#: mesh file formats :func:`ml4paleo.meshing.mesh` can write (trimesh file types)
MESH_FORMATS = ("stl", "obj", "ply", "glb")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"stl, ply"`` or ``["stl", "ply"]`` -> ``("stl", "ply")`` (checked, duplicates dropped).

    Raises
    ------
    ValueError
        For an unknown or empty format list.
    """
    if isinstance(formats, str):
        formats = [f for f in re.split(r"[,\s]+", formats) if f]
    out = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    bad = [f for f in out if f not in MESH_FORMATS]
    if bad or not out:
        raise ValueError(f"unknown mesh format(s) {bad or formats}: use {', '.join(MESH_FORMATS)}")
    return out


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: str | os.PathLike,
               fmt: str | None = None) -> Path:
    """Write a mesh with trimesh, atomically (temp file + rename).

    Parameters
    ----------
    vertices : (N, 3) float array
        Vertex coordinates.
    faces : (M, 3) int array
        Triangles.
    path : path
        Output file.
    fmt : str, optional
        One of :data:`MESH_FORMATS` (binary STL, OBJ, binary PLY, GLB); default: the suffix.

    Returns
    -------
    Path
    """
    import trimesh

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    kwargs: dict = {}
    if fmt == "obj":
        kwargs = {"include_normals": False, "include_color": False, "include_texture": False}
    with atomic_writer(path, "wb") as fh:
        if fmt == "stl":
            write_stl(vertices, faces, fh)
        else:
            mesh = trimesh.Trimesh(vertices, faces, process=False)
            trimesh.exchange.export.export_mesh(mesh, fh, file_type=fmt, **kwargs)
    return path


def write_stl(vertices: np.ndarray, faces: np.ndarray, fh: BinaryIO, step: int = 250_000) -> None:
    """Binary STL through trimesh's exporter, a piece of faces at a time.

    The bytes equal one ``trimesh.exchange.stl.export_stl`` call on the whole mesh;
    memory stays bounded by the piece instead of growing to several hundred bytes per
    face of the whole mesh.
    """
    import trimesh
    from trimesh.exchange.stl import export_stl

    header = np.zeros(1, dtype=[("header", "<u1", 80), ("face_count", "<u4")])
    header["face_count"] = len(faces)
    fh.write(header.tobytes())
    for start in range(0, len(faces), step):
        piece = trimesh.Trimesh(vertices, faces[start : start + step], process=False)
        fh.write(memoryview(export_stl(piece))[header.itemsize :])
