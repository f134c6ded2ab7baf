"""One ``.nii.gz`` with the voxel size in its header, written slab by slab."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, Shared, imap

from .sinks import Sink
from .volumes import open_export_volume, slab_blocks

__all__ = ["NIFTI_UNITS", "nifti_header", "read_nifti_slab", "write_nifti"]

ProgressCallback = Callable[[int, int], None]

RETRIES = 2
#: unit name -> (NIfTI unit code name, factor to that unit)
NIFTI_UNITS = {
    "meter": ("meter", 1.0),
    "m": ("meter", 1.0),
    "centimeter": ("mm", 10.0),
    "millimeter": ("mm", 1.0),
    "mm": ("mm", 1.0),
    "micrometer": ("micron", 1.0),
    "micron": ("micron", 1.0),
    "um": ("micron", 1.0),
    "µm": ("micron", 1.0),
    "nanometer": ("micron", 1e-3),
    "nm": ("micron", 1e-3),
}
_HEADER_BYTES = 352


def nifti_header(shape_zyx, dtype, voxel_size_zyx, unit: str | None):
    """A NIfTI-1 header for a ``(z, y, x)`` volume stored as ``(x, y, z)``.

    Voxel ``(i, j, k)`` = ``(x, y, z)`` has its centre at ``(x * sx, y * sy, z * sz)``,
    the same convention as the OME-Zarr scale and the meshes.
    """
    import nibabel as nib

    z, y, x = (int(s) for s in shape_zyx)
    sz, sy, sx = (float(v) for v in voxel_size_zyx)
    nifti_unit, factor = NIFTI_UNITS.get((unit or "").lower(), ("unknown", 1.0))
    zooms = (sx * factor, sy * factor, sz * factor)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((x, y, z))
    hdr.set_data_dtype(np.dtype(dtype).newbyteorder("<"))
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units(xyz=nifti_unit)
    affine = np.diag([*zooms, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = _HEADER_BYTES
    return hdr


def read_nifti_slab(block: Block, *, source: Shared, dtype: str) -> np.ndarray:
    """One slab in the NIfTI's little-endian voxel type, C-contiguous."""
    z = block.write[0]
    return np.ascontiguousarray(source.get().read_slab(z.start, z.stop), dtype=np.dtype(dtype))


def write_nifti(source: Any, sink: Sink, *, label: bool | None = None, level: int = 0,
                progress: ProgressCallback | None = None, executor: Any = None,
                workers: int | None = None, **_: Any) -> Iterator[None]:
    """A gzipped NIfTI-1 of the volume (booleans as uint8)."""
    vol = open_export_volume(source, label, level)
    dtype = vol.dtype
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    dtype = dtype.newbyteorder("<")
    hdr = nifti_header(vol.shape, dtype, vol.voxel_size, vol.unit)
    n = vol.shape[0]
    blocks = slab_blocks(vol)
    read = functools.partial(read_nifti_slab, source=Shared(vol.volume), dtype=dtype.str)
    # NIfTI stores x fastest, then y, then z: exactly the C order of a (z, y, x) array,
    # so slices are appended as they come.
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(hdr.binaryblock)
        gz.write(b"\x00" * (_HEADER_BYTES - len(hdr.binaryblock)))  # no extensions
        yield
        slabs = imap(read, blocks, executor=executor or "serial", workers=workers,
                     retries=RETRIES)
        for block, slab in zip(blocks, slabs, strict=True):
            z0 = block.write[0].start
            for k, plane in enumerate(slab):
                gz.write(plane.tobytes())
                if progress is not None:
                    progress(z0 + k + 1, n)
                yield
    yield
