"""Open any scan lazily as a ``(z, y, x)`` volume with dtype and voxel size.

Supported sources (auto-detected by :func:`open_volume`):

- folders of TIFF / PNG / JPEG / BMP slices, 8/16/32-bit, naturally sorted (``img2`` before
  ``img10``), colour reduced to one channel with a warning; the same inside a ``.zip``;
- a multi-page TIFF / BigTIFF / OME-TIFF / ImageJ stack, read page by page;
- DICOM series (folder or zip; single- or multi-frame files), sorted by position along the
  slice normal, rescaled (HU for CT), spacing from PixelSpacing and slice positions;
- NIfTI (``.nii``, ``.nii.gz``), ``.npy`` (memory-mapped), Zarr / OME-Zarr;
- a folder (e.g. a job's ``upload/``) holding exactly one of the above.

Example
-------
>>> import numpy as np, tempfile, os
>>> from ml4paleo.io import open_volume
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "scan.npy"), np.zeros((4, 5, 6), np.uint16))
>>> with open_volume(d) as vol:
...     vol.shape, vol.dtype.name, vol.source_type, vol[1:3, :2, :2].shape
((4, 5, 6), 'uint16', 'npy', (2, 2, 2))
"""

from __future__ import annotations

from ._any import ArrayVolume, VolumeLike, is_zarr_store, open_any, voxel_size_or_default
from ._base import SOURCE_TYPES, InputError, Volume, natural_key, to_gray
from ._limits import DecodeLimits, check_decode_limits
from ._open import detect_source_type, open_volume
from ._probe import probe_voxel_size

__all__ = [
    "SOURCE_TYPES",
    "ArrayVolume",
    "DecodeLimits",
    "InputError",
    "Volume",
    "VolumeLike",
    "check_decode_limits",
    "detect_source_type",
    "is_zarr_store",
    "natural_key",
    "open_any",
    "open_volume",
    "probe_voxel_size",
    "to_gray",
    "voxel_size_or_default",
]
