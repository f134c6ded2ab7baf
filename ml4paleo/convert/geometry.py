"""The voxel size of a converted image, after the fact: set it, and say how well it is known.

A TIFF stack often arrives without a voxel size (1 x 1 x 1, no unit), and only its owner
knows it is a 25 µm scan. :func:`set_voxel_size` writes the right one into the image's
metadata (NGFF ``scale`` / ``translation`` of every pyramid level, the axes' unit and
the full world transform in ``attrs["ml4paleo"]["world"]``) without touching a voxel:
no reconversion, one atomic rewrite of the group's ``.zattrs``.
:func:`voxel_size_status` tells a user interface whether the size is known, partly
assumed or unknown, so it can warn.

Examples
--------
>>> import tempfile
>>> from ml4paleo.formats import create_image, open_image
>>> path = tempfile.mkdtemp() + "/scan.ome.zarr"
>>> _ = create_image(path, (4, 8, 8), "uint8", chunks=4)
>>> voxel_size_status(open_image(path).attrs)["state"]
'unknown'
>>> set_voxel_size(path, (20, 10, 10), "µm").voxel_size
(20.0, 10.0, 10.0)
>>> img = open_image(path)
>>> img.voxel_size, img.unit, voxel_size_status(img.attrs)["state"]
((20.0, 10.0, 10.0), 'micrometer', 'known')
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml4paleo._fs import atomic_write_json
from ml4paleo.formats import Multiscale, NGFFError, validate_attrs
from ml4paleo.io import InputError, is_zarr_store, open_any
from ml4paleo.world import LENGTH_UNITS, ZARR_WORLD_KEY, WorldTransform, normalize_unit

__all__ = ["SIZE_WARNINGS", "parse_voxel_size", "set_voxel_size", "voxel_size_status"]

#: warning codes (:meth:`ml4paleo.io.Volume.warnings`) that a voxel size set by the user
#: answers
SIZE_WARNINGS = frozenset({"voxel_size_unknown", "z_spacing_assumed", "unit_assumed"})
#: the group attributes of a zarr format 2 image
_ATTRS_FILE = ".zattrs"


def parse_voxel_size(voxel_size: Any, unit: Any) -> tuple[tuple[float, float, float], str]:
    """Check a voxel size and unit given by a user.

    Parameters
    ----------
    voxel_size : 1 or 3 positive numbers (z, y, x)
    unit : str
        A length unit (``"micrometer"``, ``"um"``, ``"µm"``, ``"mm"``, ...).

    Returns
    -------
    ((z, y, x), unit) : tuple
        Floats, and the NGFF unit name.

    Raises
    ------
    ValueError
        Naming what is wrong.
    """
    if isinstance(voxel_size, int | float) and not isinstance(voxel_size, bool):
        voxel_size = [voxel_size] * 3
    if isinstance(voxel_size, str) or not isinstance(voxel_size, Sequence) or \
            len(voxel_size) != 3:
        raise ValueError("voxel_size must be three numbers (z, y, x)")
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ValueError(f"voxel_size must be three numbers (z, y, x), got {voxel_size!r}"
                         ) from None
    if any(isinstance(v, bool) for v in voxel_size) or not all(v > 0 and v < 1e12 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers, got {list(voxel_size)}")
    name = normalize_unit(unit) if isinstance(unit, str) else None
    if name is None:
        raise ValueError(f"unit must be a length unit such as micrometer or millimeter, got "
                         f"{unit!r}")
    return vs, name  # type: ignore[return-value]


def _downsample_rule(attrs: Mapping) -> str:
    ms = (attrs.get("multiscales") or [{}])[0]
    return "nearest" if ("image-label" in attrs or ms.get("type") == "nearest") else "mean"


def set_voxel_size(path: str | os.PathLike, voxel_size: Sequence[float], unit: str
                   ) -> WorldTransform:
    """Give the OME-Zarr image at ``path`` a new voxel size (metadata only).

    Every pyramid level's ``scale`` and ``translation`` follow from the new world
    transform (the old one with its columns rescaled: direction and origin kept,
    :meth:`WorldTransform.with_voxel_size`), the space axes get ``unit``, the transform is
    stored as ``attrs["ml4paleo"]["world"]``, ``voxel_size_from`` becomes ``"user"`` and
    the warnings about the voxel size are dropped. The attributes are checked, then
    written in one atomic replacement of ``.zattrs``.

    Parameters
    ----------
    path : path
        An OME-Zarr image or label image (zarr format 2) written by ml4paleo.
    voxel_size : 3 floats
        ``(z, y, x)``.
    unit : str
        Length unit (``"micrometer"``, ``"um"``, ...).

    Returns
    -------
    WorldTransform
        The new full-resolution transform.

    Raises
    ------
    ValueError
        For a bad voxel size or unit, or a folder that is not such an image.
    """
    vs, unit = parse_voxel_size(voxel_size, unit)
    path = Path(path)
    attrs_file = path / _ATTRS_FILE
    if not is_zarr_store(path) or not attrs_file.is_file():
        raise ValueError(f"{path.name}: not an OME-Zarr image (zarr format 2)")
    attrs = json.loads(attrs_file.read_text())
    if not attrs.get("multiscales"):
        raise ValueError(f"{path.name}: no NGFF multiscales metadata to update")
    try:
        with open_any(path) as vol:
            world = vol.world
    except InputError as exc:
        raise ValueError(str(exc)) from None
    new = world.with_voxel_size(vs, unit)
    rule = _downsample_rule(attrs)
    entry = dict(attrs["multiscales"][0])
    axes = []
    for axis in entry.get("axes", []):
        axis = dict(axis) if isinstance(axis, Mapping) else {"name": str(axis), "type": "space"}
        if axis.get("type") == "space":
            axis["unit"] = unit
        axes.append(axis)
    entry["axes"] = axes
    datasets = []
    for level, ds in enumerate(entry.get("datasets", [])):
        datasets.append({**ds, "coordinateTransformations":
                         new.ngff_transformations(level, rule)})
    entry["datasets"] = datasets
    attrs["multiscales"] = [entry, *attrs["multiscales"][1:]]
    extra = dict(attrs.get("ml4paleo") or {})
    extra[ZARR_WORLD_KEY] = new.to_json()
    extra["voxel_size_from"] = "user"
    extra["warnings"] = [w for w in extra.get("warnings") or []
                         if not (isinstance(w, Mapping) and w.get("code") in SIZE_WARNINGS)]
    attrs["ml4paleo"] = extra
    try:
        Multiscale.from_dict(entry)
        validate_attrs(attrs)
    except NGFFError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    atomic_write_json(attrs_file, attrs)
    return new


def voxel_size_status(attrs: Mapping) -> dict:
    """How well an image's voxel size is known, for a user interface.

    Returns
    -------
    dict
        ``state``: ``"known"`` (from the file or the user), ``"assumed"`` (the file gave
        part of it: a unit or the slice spacing was assumed) or ``"unknown"`` (no voxel
        size: 1 x 1 x 1 voxel units); ``source``: ``"file"``, ``"user"`` or ``"default"``;
        ``assumed``: what was assumed; ``message``: one sentence to show (None when known).
    """
    extra = attrs.get("ml4paleo") if isinstance(attrs.get("ml4paleo"), Mapping) else {}
    source = {"source": "file", "user": "user", "default": "default"}.get(
        str(extra.get("voxel_size_from") or "source"), "file")
    codes = {w.get("code") for w in extra.get("warnings") or [] if isinstance(w, Mapping)}
    unit = None
    for entry in attrs.get("multiscales") or []:
        for axis in entry.get("axes", []) if isinstance(entry, Mapping) else []:
            if isinstance(axis, Mapping) and axis.get("unit"):
                unit = axis["unit"]
    stored = extra.get(ZARR_WORLD_KEY)
    assumed = set()
    if isinstance(stored, Mapping) and source != "user":
        assumed |= {str(a) for a in stored.get("assumed") or []} & {"unit", "z_spacing",
                                                                     "voxel_size"}
    if "unit_assumed" in codes:
        assumed.add("unit")
    if "z_spacing_assumed" in codes:
        assumed.add("z_spacing")
    scale = None
    for t in ((attrs.get("multiscales") or [{}])[0].get("datasets") or [{}])[0].get(
            "coordinateTransformations", []):
        if isinstance(t, Mapping) and t.get("type") == "scale":
            scale = [float(v) for v in t.get("scale", [])]
    bare = extra.get("voxel_size_from") is None and unit is None and scale in (None, [1.0] * 3)
    if source == "default" or "voxel_size_unknown" in codes or bare:
        return {"state": "unknown", "source": "default", "assumed": ["voxel_size"],
                "message": "Sizes, volumes and meshes are in voxels. Set the voxel size to "
                           "measure in physical units."}
    if unit is None or unit not in LENGTH_UNITS:
        assumed.add("unit")
    if assumed:
        what = " and ".join(sorted({"unit": "the unit", "z_spacing": "the slice spacing",
                                    "voxel_size": "the voxel size"}[a] for a in assumed))
        return {"state": "assumed", "source": source, "assumed": sorted(assumed),
                "message": f"Part of the voxel size was assumed ({what}): check it."}
    return {"state": "known", "source": source, "assumed": [], "message": None}
