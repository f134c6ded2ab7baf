"""The result of :func:`ml4paleo.morphometry.measure`: per-class measures, objects, profiles.

Block sums (see :mod:`ml4paleo.morphometry.blockwise`) are reduced here into the
numbers a paper reports, in the voxel size's units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.morphometry.anisotropy import anisotropy_from_counts
from ml4paleo.morphometry.connectivity import connectivity_from_histograms
from ml4paleo.morphometry.fractions import fractions_from_counts

__all__ = ["Morphometry", "class_measures", "thickness_summary"]


@dataclass
class Morphometry:
    """Morphometry of a segmentation.

    Attributes
    ----------
    classes : list of dict
        One dict per measured class (see :func:`class_measures`), by class value.
    objects : list of dict
        One row per object (:data:`~ml4paleo.morphometry.objects.OBJECT_COLUMNS`).
    profiles : dict
        Class value -> compactness profile (:func:`~ml4paleo.morphometry.profiles.profile_from_counts`).
    voxel_size : tuple of 3 floats
        ``(z, y, x)``.
    unit : str or None
        Unit of the voxel size (lengths in it, areas in unit², volumes in unit³).
    box : tuple of 3 (start, stop)
        The analysed box, volume indices.
    max_thickness : float or None
        Cap on local thickness (None when thickness was not measured).
    clipped : bool
        Some voxel reached ``max_thickness``: thicker structures are under-reported.
    objects_csv, thickness_map : Path or None
        Files written.
    blocks : int
        Blocks of the main pass.
    """

    classes: list[dict]
    objects: list[dict] = field(default_factory=list)
    profiles: dict[int, dict] = field(default_factory=dict)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None
    box: tuple[tuple[int, int], ...] = ()
    max_thickness: float | None = None
    clipped: bool = False
    objects_csv: Path | None = None
    thickness_map: Path | None = None
    blocks: int = 0

    def by_value(self, value: int) -> dict:
        """The measures of class ``value``."""
        for c in self.classes:
            if c["value"] == int(value):
                return c
        raise KeyError(f"class value {value} was not measured")

    def to_dict(self) -> dict:
        """JSON-able summary (objects and profiles included)."""
        return {
            "voxel_size": list(self.voxel_size),
            "unit": self.unit,
            "box": [list(b) for b in self.box],
            "max_thickness": self.max_thickness,
            "clipped": self.clipped,
            "classes": self.classes,
            "objects": self.objects,
            "profiles": {str(k): v for k, v in self.profiles.items()},
            "objects_csv": str(self.objects_csv) if self.objects_csv else None,
            "thickness_map": str(self.thickness_map) if self.thickness_map else None,
            "blocks": self.blocks,
        }


def thickness_summary(parts: Sequence[Mapping[str, Any]], max_thickness: float, bins: int) -> dict:
    """Mean, SD (population), max and histogram of block thickness sums."""
    n = sum(p["n"] for p in parts)
    hist = np.sum([p["hist"] for p in parts], axis=0) if parts else np.zeros(bins, np.int64)
    edges = np.linspace(0.0, max_thickness, bins + 1)
    if n == 0:
        return {"mean": None, "sd": None, "max": None, "voxels": 0, "clipped": False,
                "histogram": {"edges": edges.tolist(), "counts": hist.astype(int).tolist()}}
    total = sum(p["sum"] for p in parts)
    sumsq = sum(p["sumsq"] for p in parts)
    mean = total / n
    var = max(sumsq / n - mean * mean, 0.0)
    return {
        "mean": mean,
        "sd": math.sqrt(var),
        "max": max(p["max"] for p in parts),
        "voxels": int(n),
        "clipped": any(p["clipped"] for p in parts),
        "histogram": {"edges": edges.tolist(), "counts": hist.astype(int).tolist()},
    }


def class_measures(
    value: int,
    name: str,
    parts: Sequence[Mapping[str, Any]],
    roi_voxels: int,
    voxel_size: Sequence[float],
    *,
    max_thickness: float | None,
    bins: int,
) -> dict:
    """Per-class measures from the block sums of one class.

    Returns
    -------
    dict
        ``value``, ``name``; fractions (``bv``, ``tv``, ``bv_tv``, ``bs``, ``bs_tv``,
        ``bs_bv``, ``closed_surface_area``, voxel counts); connectivity (``euler``,
        ``delta_euler``, ``connectivity``, ``connectivity_density``); anisotropy
        (``degree_of_anisotropy``, MIL eigenvalues/axes, fabric tensor); ``thickness``
        and ``spacing`` summaries (``mean``, ``sd``, ``max``, ``histogram``,
        ``clipped``) when measured.
    """
    vox = float(np.prod(voxel_size))
    h0 = np.sum([p["h0"] for p in parts], axis=0)
    h8 = np.sum([p["h8"] for p in parts], axis=0)
    voxels = sum(p["voxels"] for p in parts)
    changes = np.sum([p["changes"] for p in parts], axis=0)
    pairs = np.sum([p["pairs"] for p in parts], axis=0)
    tv = roi_voxels * vox
    out: dict[str, Any] = {"value": int(value), "name": name}
    out.update(fractions_from_counts(voxels, roi_voxels, h8, h0, voxel_size))
    out.update(connectivity_from_histograms(h0, h8, tv))
    out.update(anisotropy_from_counts(changes, pairs, voxel_size))
    for key in ("thickness", "spacing"):
        if parts and key in parts[0] and max_thickness is not None:
            out[key] = thickness_summary([p[key] for p in parts], max_thickness, bins)
    return out
