"""Mesh files: binary STL, OBJ, binary PLY and GLB, written atomically, each saying what
its coordinates are (space, unit, frame) where the format can hold it."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ml4paleo._fs import atomic_writer
from ml4paleo.world import LENGTH_UNITS

__all__ = ["GLTF_ROOT_ROTATION", "MESH_FORMATS", "header_text", "parse_formats", "write_glb",
           "write_mesh", "write_stl"]

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


def header_text(meta: Mapping[str, Any] | None) -> str:
    """One line describing a mesh's coordinates: ``ml4paleo label=1 class=bone unit=... frame=...``.

    Values with spaces have them replaced by ``_`` so the line splits on spaces.

    Examples
    --------
    >>> header_text({"label": 1, "class": "shell bone", "unit": "millimeter", "frame": "LPS",
    ...              "space": "world"})
    'ml4paleo label=1 class=shell_bone space=world unit=millimeter frame=LPS'
    """
    if not meta:
        return "ml4paleo"
    parts = ["ml4paleo"]
    for key in ("label", "class", "space", "unit", "frame", "orientation"):
        value = meta.get(key)
        if key == "unit" and value is None and "unit" in meta:
            value = "voxel"
        if value is None or value == "":
            continue
        parts.append(f"{key}={str(value).replace(' ', '_')}")
    return " ".join(parts)


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: str | os.PathLike,
               fmt: str | None = None, *, meta: Mapping[str, Any] | None = None,
               colors: np.ndarray | None = None) -> Path:
    """Write a mesh, atomically (temp file + rename), with its coordinates described.

    Parameters
    ----------
    vertices : (N, 3) float array
        Vertex coordinates.
    faces : (M, 3) int array
        Triangles (counter-clockwise seen from outside).
    path : path
        Output file.
    fmt : str, optional
        One of :data:`MESH_FORMATS` (binary STL, OBJ, binary PLY, GLB); default: the suffix.
    meta : dict, optional
        ``label``, ``class``, ``space``, ``unit`` (None: voxel units), ``frame``,
        ``orientation``: written where the format can hold them: the STL header's 80
        bytes, OBJ comments, PLY ``comment`` lines, glTF ``extras`` (see
        :func:`write_glb`; glTF positions are converted to metres).
    colors : (N, 3) or (N, 4) uint8 array, optional
        Vertex colours (RGB or RGBA), written by PLY (``red green blue alpha``) and GLB
        (``COLOR_0``); refused for STL and OBJ, which have none.

    Returns
    -------
    Path
    """
    import trimesh

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r}: use one of {', '.join(MESH_FORMATS)}")
    if colors is not None:
        colors = np.asarray(colors)
        if fmt in ("stl", "obj"):
            raise ValueError(f"{fmt.upper()} files hold no vertex colours: use ply or glb")
        if colors.dtype != np.uint8 or colors.ndim != 2 or colors.shape[1] not in (3, 4) \
                or len(colors) != len(vertices):
            raise ValueError(f"colors must be uint8 (n_vertices, 3 or 4), got {colors.dtype} "
                             f"{colors.shape} for {len(vertices)} vertices")
        if colors.shape[1] == 3:
            colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    line = header_text(meta)
    with atomic_writer(path, "wb") as fh:
        if fmt == "stl":
            write_stl(vertices, faces, fh, header=line)
        elif fmt == "glb":
            write_glb(vertices, faces, fh, meta=meta, colors=colors)
        elif fmt == "obj":
            text = trimesh.exchange.obj.export_obj(
                trimesh.Trimesh(vertices, faces, process=False), include_normals=False,
                include_color=False, include_texture=False)
            fh.write(_obj_comments(line, meta).encode() + text.encode())
        else:
            data = trimesh.exchange.ply.export_ply(trimesh.Trimesh(
                vertices, faces, vertex_colors=colors, process=False))
            fh.write(_ply_with_comments(data, line))
    return path


def _obj_comments(line: str, meta: Mapping[str, Any] | None) -> str:
    out = [f"# {line}"]
    if meta and "unit" in meta:
        out.append(f"# coordinates: {meta.get('space', 'world')} (x, y, z) in "
                   f"{meta.get('unit') or 'voxel units'}"
                   + (f", frame {meta['frame']}" if meta.get("frame") else ""))
    return "\n".join(out) + "\n"


def _ply_with_comments(data: bytes, line: str) -> bytes:
    """Binary PLY with ``comment <line>`` right after the ``format`` line."""
    first = data.index(b"\n") + 1  # "ply\n"
    second = data.index(b"\n", first) + 1  # "format ...\n"
    return data[:second] + f"comment {line}\n".encode("ascii", "replace") + data[second:]


def write_stl(vertices: np.ndarray, faces: np.ndarray, fh: BinaryIO, step: int = 250_000,
              header: str = "") -> None:
    """Binary STL through trimesh's exporter, a piece of faces at a time.

    The facets equal one ``trimesh.exchange.stl.export_stl`` call on the whole mesh;
    memory stays bounded by the piece instead of growing to several hundred bytes per
    face of the whole mesh. ``header``: text for the 80-byte header (ASCII, cut to 80
    bytes; never starting with ``solid``, which readers take for an ASCII STL).
    """
    import trimesh
    from trimesh.exchange.stl import export_stl

    text = header.encode("ascii", "replace")[:80]
    if text[:5].lower() == b"solid":
        text = (b"_" + text)[:80]
    head = np.zeros(1, dtype=[("header", "<u1", 80), ("face_count", "<u4")])
    head["header"][0, : len(text)] = np.frombuffer(text, np.uint8)
    head["face_count"] = len(faces)
    fh.write(head.tobytes())
    for start in range(0, len(faces), step):
        piece = trimesh.Trimesh(vertices, faces[start : start + step], process=False)
        fh.write(memoryview(export_stl(piece))[head.itemsize :])


#: Root node rotation (quaternion x, y, z, w) per world frame. glTF is +Y up, +Z the
#: asset's front and -X its right; the scans' worlds are z-up. RAS (and frameless worlds,
#: taken as RAS like every export): superior -> +Y, anterior -> +Z, right -> -X (180
#: degrees about (0, 1, 1)). LPS: superior -> +Y, posterior -> -Z, left -> +X (-90
#: degrees about x).
GLTF_ROOT_ROTATION = {
    "RAS": (0.0, math.sqrt(0.5), math.sqrt(0.5), 0.0),
    "LPS": (-math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)),
}
_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def write_glb(vertices: np.ndarray, faces: np.ndarray, fh: BinaryIO,
              meta: Mapping[str, Any] | None = None, colors: np.ndarray | None = None) -> None:
    """A binary glTF 2.0: one mesh in metres under a y-up root node.

    glTF's unit is the metre and its up axis +Y. Positions are converted from
    ``meta["unit"]`` to metres (kept as they are in voxel units, ``"unit"`` None), and
    the mesh node sits under a root node rotated (:data:`GLTF_ROOT_ROTATION`) so the
    scan's +Z (superior, or the stack's slice axis) is up and its anterior side the
    asset's front in every glTF viewer. The scene's and
    the root node's ``extras`` hold ``ml4paleo``: the source unit and the factor back to
    it, the frame, the space, the label and class.

    Parameters
    ----------
    vertices : (N, 3) float array
    faces : (M, 3) int array
        Counter-clockwise seen from outside (glTF's front faces).
    fh : binary file
    meta : dict, optional
        As for :func:`write_mesh`.
    colors : (N, 4) uint8 array, optional
        Vertex colours, stored as ``COLOR_0`` (normalised unsigned bytes, RGBA).
    """
    meta = dict(meta or {})
    unit = meta.get("unit")
    to_m = LENGTH_UNITS.get(unit) if unit else None
    rotation = GLTF_ROOT_ROTATION["LPS" if meta.get("frame") == "LPS" else "RAS"]
    pos = np.asarray(vertices, np.float64) * (to_m if to_m else 1.0)
    pos = np.ascontiguousarray(pos, dtype="<f4")
    idx = np.ascontiguousarray(faces, dtype="<u4").reshape(-1)
    pos_bytes, idx_bytes = pos.tobytes(), idx.tobytes()
    pad = (-len(pos_bytes)) % 4
    binary = pos_bytes + b"\0" * pad + idx_bytes
    binary += b"\0" * ((-len(binary)) % 4)
    color_offset = len(binary)
    if colors is not None:
        binary += np.ascontiguousarray(colors, np.uint8).tobytes()
        binary += b"\0" * ((-len(binary)) % 4)
    extras = {"ml4paleo": {
        "unit": "meter" if to_m else None,
        "source_unit": unit,
        "scale_to_source_unit": (1.0 / to_m) if to_m else 1.0,
        "space": meta.get("space"),
        "frame": meta.get("frame"),
        "orientation": meta.get("orientation"),
        "label": meta.get("label"),
        "class": meta.get("class"),
        "up": "the world's +Z (superior) is glTF's +Y: see the root node's rotation",
    }}
    name = str(meta.get("class") or f"label {meta.get('label', '')}".strip())
    count = len(pos)
    lo = pos.min(axis=0).tolist() if count else [0.0, 0.0, 0.0]
    hi = pos.max(axis=0).tolist() if count else [0.0, 0.0, 0.0]
    gltf = {
        "asset": {"version": "2.0", "generator": "ml4paleo"},
        "extensionsUsed": [],
        "scene": 0,
        "scenes": [{"nodes": [0], "name": name, "extras": extras}],
        "nodes": [
            {"name": "ml4paleo y-up root", "rotation": list(rotation),
             "children": [1], "extras": extras},
            {"name": name, "mesh": 0},
        ],
        "meshes": [{"name": name, "primitives": [
            {"attributes": {"POSITION": 0}, "indices": 1, "mode": 4}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes), "target": 34962},
            {"buffer": 0, "byteOffset": len(pos_bytes) + pad, "byteLength": len(idx_bytes),
             "target": 34963},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": count, "type": "VEC3",
             "min": lo, "max": hi},
            {"bufferView": 1, "componentType": 5125, "count": int(idx.size), "type": "SCALAR",
             "min": [int(idx.min())] if idx.size else [0],
             "max": [int(idx.max())] if idx.size else [0]},
        ],
    }
    del gltf["extensionsUsed"]
    if colors is not None:
        gltf["bufferViews"].append({"buffer": 0, "byteOffset": color_offset,
                                    "byteLength": int(colors.size), "target": 34962})
        gltf["accessors"].append({"bufferView": 2, "componentType": 5121, "normalized": True,
                                  "count": count, "type": "VEC4"})
        gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"] = 2
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    fh.write(struct.pack("<III", _GLB_MAGIC, 2, total))
    fh.write(struct.pack("<II", len(text), _GLB_JSON))
    fh.write(text)
    fh.write(struct.pack("<II", len(binary), _GLB_BIN))
    fh.write(binary)
