"""ml4paleo: segment CT / synchrotron scans of fossils and mesh the result.

The verbs a notebook needs are importable from here; each lives in its own module::

    import ml4paleo
    ml4paleo.convert("scan_folder/", "scan.ome.zarr")

Packages: :mod:`ml4paleo.io` (readers, ``open_any``), :mod:`ml4paleo.formats` (OME-Zarr,
NGFF metadata, pyramid), :mod:`ml4paleo.blocks` (block grid and scheduler: threads, local
processes or Dask), :mod:`ml4paleo.convert`, :mod:`ml4paleo.features`,
:mod:`ml4paleo.segmentation`, :mod:`ml4paleo.meshing`, :mod:`ml4paleo.morphometry`,
:mod:`ml4paleo.export`,
:mod:`ml4paleo.workspace`, :mod:`ml4paleo.jobs`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# verb -> (module, attribute); imported on first use so `import ml4paleo` stays fast.
_VERBS = {
    "open_volume": ("ml4paleo.io", "open_volume"),
    "convert": ("ml4paleo.convert", "convert"),
    "train": ("ml4paleo.segmentation", "train"),
    "segment": ("ml4paleo.segmentation", "segment"),
    "predict_slice": ("ml4paleo.segmentation", "predict_slice"),
    "mesh": ("ml4paleo.meshing", "mesh"),
    "measure": ("ml4paleo.morphometry", "measure"),
    "export": ("ml4paleo.export", "export"),
    "Settings": ("ml4paleo.config", "Settings"),
    "Client": ("ml4paleo.client", "Client"),
    "make_phantom": ("ml4paleo.phantom", "make_phantom"),
}

__all__ = sorted(_VERBS) + ["__version__"]


def __getattr__(name: str):
    if name in _VERBS:
        module, attr = _VERBS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ml4paleo' has no attribute {name!r}")
