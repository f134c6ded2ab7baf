"""Meshes coloured by local thickness: the thickness map sampled at every vertex.

A surface vertex lies between the voxels of its class and the others; its thickness is
the largest thickness among the (up to 8) voxels around it that belong to the mesh's
class. Colours follow :mod:`ml4paleo.morphometry.colours` (0 .. the run's
``max_thickness``). Vertices are read in batches (point reads of the OME-Zarr map), so
memory follows the mesh, not the volume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["color_meshes", "vertex_thickness"]

#: mesh files read as sources, best first (world coordinates in the scan's unit)
SOURCE_FORMATS = ("ply", "obj", "stl")
_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def vertex_thickness(vertices_xyz: np.ndarray, thickness_map: Any, labels: Any, value: int,
                     *, batch: int = 100_000) -> np.ndarray:
    """Local thickness (physical units) at each vertex of a mesh of class ``value``.

    Parameters
    ----------
    vertices_xyz : (N, 3) array
        World coordinates ``(x, y, z)`` in the map's unit (as meshing writes them).
    thickness_map : OmeImage or path
        The map written by :func:`ml4paleo.morphometry.measure` (it knows its box).
    labels : OmeImage or path
        The label image that was measured.
    value : int
        The mesh's class value.
    batch : int
        Vertices per read.

    Returns
    -------
    (N,) float32
        0 where no voxel of the class is next to the vertex.
    """
    from ml4paleo.formats import open_image

    tmap = open_image(thickness_map) if isinstance(thickness_map, str | os.PathLike) else thickness_map
    lab = open_image(labels) if isinstance(labels, str | os.PathLike) else labels
    box = np.array([b[0] for b in (tmap.attrs.get("ml4paleo") or {}).get("box")
                    or [[0, n] for n in tmap.shape]])
    shape = np.array(tmap.shape)
    tarr, larr = tmap.array, lab.array
    verts = np.asarray(vertices_xyz, np.float64)
    out = np.zeros(len(verts), np.float32)
    for start in range(0, len(verts), batch):
        idx = tmap.world.index_of(verts[start:start + batch])  # (n, 3) z, y, x in the map
        base = np.floor(idx).astype(np.int64)
        cand = base[:, None, :] + _CORNERS[None]  # (n, 8, 3)
        ok = np.all((cand >= 0) & (cand < shape), axis=2)
        cand = np.clip(cand, 0, shape - 1).reshape(-1, 3)
        # one point read of each distinct voxel
        uniq, inverse = np.unique(cand, axis=0, return_inverse=True)
        pts = tuple(uniq.T)
        t = np.asarray(tarr.vindex[pts], np.float32)
        lab_pts = tuple((uniq + box).T)
        same = np.asarray(larr.vindex[lab_pts]) == int(value)
        vals = np.where(same, t, 0.0)[inverse.reshape(-1)].reshape(-1, 8)
        out[start:start + batch] = np.where(ok, vals, 0.0).max(axis=1)
    return out


def _source_files(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for fmt in SOURCE_FORMATS:
        for path in sorted(folder.glob(f"*.{fmt}")):
            try:
                found.setdefault(int(path.stem), path)
            except ValueError:
                continue
    return found


def color_meshes(meshes: str | os.PathLike, thickness_map: str | os.PathLike,
                 labels: str | os.PathLike, out: str | os.PathLike, *,
                 formats: Sequence[str] = ("ply", "glb"),
                 class_names: dict[int, str] | None = None) -> list[Path]:
    """Write every class mesh of folder ``meshes`` again with thickness vertex colours.

    Parameters
    ----------
    meshes : path
        Folder of ``<label>.ply|obj|stl`` meshes in world coordinates (meshing's output).
    thickness_map, labels : path
        The measure run's map and the label image it measured.
    out : path
        Folder for ``<label>.ply`` / ``<label>.glb`` (created; files written atomically).
    formats : sequence of {"ply", "glb"}
    class_names : dict, optional
        Value -> class name for the files' metadata.

    Returns
    -------
    list of Path
        Files written (none when the folder holds no readable mesh).
    """
    import trimesh

    from ml4paleo.formats import open_image
    from ml4paleo.meshing.writers import write_mesh
    from ml4paleo.morphometry.colours import colorize

    bad = sorted(set(formats) - {"ply", "glb"})
    if bad:
        raise ValueError(f"thickness-coloured meshes are ply or glb, not {', '.join(bad)}")
    tmap, lab = open_image(thickness_map), open_image(labels)
    vmax = float((tmap.attrs.get("ml4paleo") or {}).get("max_thickness") or 1.0)
    world = tmap.world
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for value, path in sorted(_source_files(Path(meshes)).items()):
        try:
            mesh = trimesh.load(path, force="mesh", process=False)
        except Exception as exc:  # noqa: BLE001 - one unreadable mesh must not stop the others
            log.warning("%s: not coloured (%s)", path, exc)
            continue
        mesh.merge_vertices()
        verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
        if not len(verts):
            continue
        thick = vertex_thickness(verts, tmap, lab, value)
        colors = colorize(thick, vmax)
        colors[:, 3] = 255  # every vertex opaque: 0 thickness shows the scale's bottom colour
        meta = {"label": value, "class": (class_names or {}).get(value), "space": "world",
                "unit": world.unit, "frame": world.frame,
                "colours": f"local thickness 0..{vmax:g} {world.unit or 'voxel'}"}
        for fmt in formats:
            written.append(write_mesh(verts, faces, out / f"{value}.{fmt}", fmt, meta=meta,
                                      colors=colors))
    return written
