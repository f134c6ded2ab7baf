"""Filter-bank features for voxel classification, computed per block with a halo.

A block is passed *with* its halo (see :func:`halo_for` and
:func:`ml4paleo.blocks.read_with_halo`) and the features of the centre are returned, so
features computed block by block equal features of the whole (halo-padded) volume.

Modules: :mod:`.settings` (FeatureSettings, the per-scale plan, names, halos),
:mod:`.compute` (compute_features / iter_features), :mod:`.families` (one module per
feature family, one table), :mod:`.backend` (the Gaussian / derivative filters, selectable
by name: numpy now), :mod:`.kernels` (kernel radius, per-axis sigmas), :mod:`.eigen`
(closed-form symmetric eigenvalues), :mod:`.planes` (one plane or tile of a volume,
filtered along the plane normal first: :func:`plane_features`).
"""

from __future__ import annotations

from .backend import FilterBackend, NumpyBackend, backend_names, get_backend, register_backend
from .compute import compute_features, iter_features
from .eigen import eigvalsh2, eigvalsh3, eigvalsh3_slabs
from .families import FAMILIES, Family
from .kernels import TRUNCATE, axis_sigmas, kernel_radius
from .planes import iter_plane_features, plane_axes, plane_box, plane_features
from .settings import FeatureSettings, feature_names, halo_for, n_features, scale_plan

__all__ = [
    "FAMILIES",
    "TRUNCATE",
    "Family",
    "FeatureSettings",
    "FilterBackend",
    "NumpyBackend",
    "axis_sigmas",
    "backend_names",
    "compute_features",
    "eigvalsh2",
    "eigvalsh3",
    "eigvalsh3_slabs",
    "feature_names",
    "get_backend",
    "halo_for",
    "iter_features",
    "iter_plane_features",
    "kernel_radius",
    "n_features",
    "plane_axes",
    "plane_box",
    "plane_features",
    "register_backend",
    "scale_plan",
]
