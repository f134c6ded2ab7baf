"""Small NIfTI previews of an OME-Zarr image for browser volume viewers.

The coarsest pyramid level whose every edge fits ``max_edge`` is written as gzipped
NIfTI with its physical voxel size, so a 50 GB scan previews as a few MB.

Examples
--------
>>> import tempfile, numpy as np
>>> from ml4paleo.omezarr import create_image
>>> d = tempfile.mkdtemp()
>>> img = create_image(f"{d}/a.ome.zarr", (8, 8, 8), "uint8", chunks=4)
>>> img.array[:] = 7
>>> write_nifti_preview(img, f"{d}/p.nii.gz").name
'p.nii.gz'
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ml4paleo._fs import atomic_writer
from ml4paleo.omezarr import OmeImage, open_image


def preview_level(image: OmeImage, max_edge: int = 256) -> int:
    """Index of the finest pyramid level whose every edge is at most ``max_edge``.

    Falls back to the coarsest level when none fits.
    """
    if max_edge < 1:
        raise ValueError(f"max_edge must be positive, got {max_edge}")
    for i in range(len(image.levels)):
        if max(image.level(i).shape) <= max_edge:
            return i
    return len(image.levels) - 1


def write_nifti_preview(
    image: OmeImage | str | os.PathLike, dest: str | os.PathLike, *, max_edge: int = 256
) -> Path:
    """Write a downsampled copy of ``image`` as a ``.nii.gz`` (atomically, see :mod:`ml4paleo._fs`).

    Parameters
    ----------
    image : OmeImage or path
        The OME-Zarr image (intensity or labels).
    dest : path
        Output file, ending in ``.nii.gz``.
    max_edge : int
        Largest allowed edge of the preview, voxels.

    Returns
    -------
    Path
        ``dest``.
    """
    import nibabel as nib

    if not isinstance(image, OmeImage):
        image = open_image(image)
    dest = Path(dest)
    level = preview_level(image, max_edge)
    data = np.asarray(image.level(level)[:])  # bounded by max_edge**3 voxels
    scale = image.level_scale(level)
    # NIfTI is (x, y, z); ours is (z, y, x)
    vol = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    if vol.dtype == np.float64:
        vol = vol.astype(np.float32)
    if vol.dtype == np.bool_:
        vol = vol.astype(np.uint8)
    affine = np.diag([scale[2], scale[1], scale[0], 1.0])
    nii = nib.Nifti1Image(vol, affine)
    nii.header.set_xyzt_units("mm" if image.unit in (None, "millimeter") else "micron")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(dest) as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=6,
                                                  mtime=0) as gz:
        gz.write(nii.to_bytes())
    return dest
