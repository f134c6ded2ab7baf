"""Small NIfTI previews of an OME-Zarr image for browser volume viewers, and the
intensity range viewers window with.

The coarsest pyramid level whose every edge fits ``max_edge`` is written as gzipped
NIfTI with its physical voxel size, so a 50 GB scan previews as a few MB. The intensity
range comes from full-resolution voxels (a sample of whole chunks): the coarser levels
average voxels, so their range is narrower than the scan's (0..237 for 0..255).

Examples
--------
>>> import tempfile, numpy as np
>>> from ml4paleo.formats import create_image
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
from ml4paleo.formats import OmeImage, open_image

#: full-resolution voxels :func:`intensity_stats` reads at most (besides the coarsest level)
SAMPLE_VOXELS = 16 * 1024**2


def sample_level0(image: OmeImage, max_voxels: int = SAMPLE_VOXELS, seed: int = 0
                  ) -> np.ndarray:
    """Full-resolution voxels of ``image``: all of them when at most ``max_voxels``, else
    whole chunks spread over the volume (chosen with ``seed``, so repeatable)."""
    arr = image.level(0)
    shape = tuple(int(s) for s in arr.shape)
    if int(np.prod(shape, dtype=np.int64)) <= max_voxels:
        return np.asarray(arr[...]).ravel()
    chunks = tuple(int(c) for c in arr.chunks)
    grid = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    per_chunk = int(np.prod(chunks, dtype=np.int64))
    n = max(1, min(int(np.prod(grid)), max_voxels // max(per_chunk, 1)))
    rng = np.random.default_rng(seed)
    # a stratified pick: one chunk in each of n equal runs of the flattened chunk grid
    edges = np.linspace(0, int(np.prod(grid)), n + 1).astype(np.int64)
    picks = [int(rng.integers(lo, max(lo + 1, hi))) for lo, hi in zip(edges[:-1], edges[1:],
                                                                        strict=True)]
    parts = []
    for flat in sorted(set(picks)):
        idx = np.unravel_index(flat, grid)
        sl = tuple(slice(i * c, min((i + 1) * c, s))
                   for i, c, s in zip(idx, chunks, shape, strict=True))
        parts.append(np.asarray(arr[sl]).ravel())
    return np.concatenate(parts)


def intensity_stats(image: OmeImage | str | os.PathLike,
                    max_voxels: int = SAMPLE_VOXELS) -> dict:
    """Intensity ``min``, ``max`` and the 0.5 / 99.5 percentiles (``p_low``, ``p_high``) of
    the full-resolution level, from :func:`sample_level0`; min/max also take the coarsest
    level into account (all of it is read: it is small).

    Examples
    --------
    >>> import tempfile
    >>> from ml4paleo.formats import create_image
    >>> img = create_image(tempfile.mkdtemp() + "/a.ome.zarr", (4, 8, 8), "uint8", chunks=4)
    >>> img.array[0, 0, 0] = 255
    >>> intensity_stats(img)["max"]  # the coarsest level says 31.875
    255.0
    """
    if not isinstance(image, OmeImage):
        image = open_image(image)
    values = sample_level0(image, max_voxels)
    coarse = np.asarray(image.level(len(image.levels) - 1)[...]).ravel()
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if not finite.size:
        return {"min": 0.0, "max": 1.0, "p_low": 0.0, "p_high": 1.0, "sampled_voxels": 0}
    lo, hi = np.percentile(finite, [0.5, 99.5])
    both = np.concatenate([finite, coarse[np.isfinite(coarse)] if coarse.dtype.kind == "f"
                           else coarse])
    return {"min": float(both.min()), "max": float(both.max()), "p_low": float(lo),
            "p_high": float(hi), "sampled_voxels": int(values.size)}


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
