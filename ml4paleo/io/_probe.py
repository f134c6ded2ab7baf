"""What the first file of an upload says about the voxel size, before the rest arrives."""

from __future__ import annotations

import os
from pathlib import Path

from ._base import InputError
from ._open import open_volume

__all__ = ["probe_voxel_size"]


def probe_voxel_size(path: str | os.PathLike) -> dict:
    """The voxel size and unit the file at ``path`` records, read from its header.

    Meant for the first file of an upload (one slice of a stack, or the first megabytes
    of a NIfTI / TIFF / DICOM file): a form can offer these values before the upload is
    complete. A file that cannot be read gives no voxel size rather than an error.

    Returns
    -------
    dict
        ``voxel_size`` ((z, y, x) floats, or None when the file holds none), ``unit``
        (NGFF name or None), ``assumed`` (what the reader filled in: ``"z_spacing"`` for
        one slice of a stack, ``"unit"``, ...), ``source_type`` and ``readable``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "scan.npy"), np.zeros((2, 3, 4), np.uint8))
    >>> probe_voxel_size(os.path.join(d, "scan.npy"))["voxel_size"] is None
    True
    """
    path = Path(path)
    try:
        with open_volume(path, workers=1) as vol:
            voxel_size, unit = vol.voxel_size, vol.unit
            assumed = sorted(vol.world.assumed) if voxel_size is not None else []
            kind = vol.source_type
    except (InputError, OSError, ValueError, EOFError) as exc:
        return {"voxel_size": None, "unit": None, "assumed": [], "source_type": None,
                "readable": False, "reason": " ".join(str(exc).replace(str(path), path.name)
                                                      .split())[:300]}
    return {"voxel_size": None if voxel_size is None else [float(v) for v in voxel_size],
            "unit": unit, "assumed": assumed, "source_type": kind, "readable": True}
