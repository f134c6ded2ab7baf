"""One ``.nii.gz`` on the source's world (sform/qform and codes), written slab by slab.

The header carries the image's world transform exactly (:meth:`ml4paleo.world.
WorldTransform.to_nifti`: RAS, millimetres), so an exported segmentation overlays its
scan in NIfTI / ITK viewers; label images are written with intent ``NIFTI_INTENT_LABEL``
and an integer voxel type.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, Shared, imap
from ml4paleo.world import WorldTransform, normalize_unit

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
_NIFTI_UNIT_NGFF = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}
_HEADER_BYTES = 352


def nifti_header(shape_zyx, dtype, voxel_size_zyx=None, unit: str | None = None, *,
                 world: WorldTransform | None = None, label: bool = False):
    """A NIfTI-1 header for a ``(z, y, x)`` volume stored as ``(x, y, z)``.

    Parameters
    ----------
    shape_zyx, dtype
        Of the volume.
    voxel_size_zyx, unit
        Used only without ``world``: an axis-aligned grid at the origin.
    world : WorldTransform, optional
        Where the voxels are: its RAS affine in millimetres becomes the sform and the
        qform (:meth:`~ml4paleo.world.WorldTransform.to_nifti`: the source's codes, its own
        qform when it had one), so the export lands exactly on the source in NIfTI
        readers (nibabel, ITK / SimpleITK, 3D Slicer, ITK-SNAP). A world without a frame
        (slice stacks) is written as RAS; one in voxel units with units ``unknown``.
        Metre, millimetre and micrometre are written as they are (ITK converts micron
        and metre to millimetres on reading, nibabel does not), other units in mm.
    label : bool
        A label image: intent ``NIFTI_INTENT_LABEL``.
    """
    import nibabel as nib

    z, y, x = (int(s) for s in shape_zyx)
    if world is None:
        sz, sy, sx = (float(v) for v in voxel_size_zyx)
        name = NIFTI_UNITS.get((unit or "").lower())
        if name is None:
            world = WorldTransform.from_voxel_size((sz, sy, sx), unit=normalize_unit(unit))
        else:  # a known unit, written as NIfTI holds it (nm as micron, cm as mm)
            f = name[1]
            world = WorldTransform.from_voxel_size((sz * f, sy * f, sx * f),
                                                   unit=_NIFTI_UNIT_NGFF[name[0]])
    # the world's unit when NIfTI holds it (metre, millimetre, micrometre), else millimetre
    nifti_unit = world.unit if world.unit in _NIFTI_UNIT_NGFF.values() else "millimeter"
    geometry = world.to_nifti(unit=nifti_unit)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((x, y, z))
    hdr.set_data_dtype(np.dtype(dtype).newbyteorder("<"))
    hdr.set_xyzt_units(xyz=geometry["xyzt_units"])
    hdr.set_qform(geometry["qform"], code=int(geometry["qform_code"]))
    hdr.set_sform(geometry["sform"], code=int(geometry["sform_code"]))
    # pixdim = the voxel sizes (what set_qform derived, kept for readers that use only them)
    vs = world.voxel_size if world.unit is None else world.in_unit(nifti_unit).voxel_size
    hdr.set_zooms((vs[2], vs[1], vs[0]))
    if label:
        hdr.set_intent("label")
    hdr["vox_offset"] = _HEADER_BYTES
    return hdr


def read_nifti_slab(block: Block, *, source: Shared, dtype: str) -> np.ndarray:
    """One slab in the NIfTI's little-endian voxel type, C-contiguous."""
    z = block.write[0]
    return np.ascontiguousarray(source.get().read_slab(z.start, z.stop), dtype=np.dtype(dtype))


def write_nifti(source: Any, sink: Sink, *, label: bool | None = None, level: int = 0,
                progress: ProgressCallback | None = None, executor: Any = None,
                workers: int | None = None, **_: Any) -> Iterator[None]:
    """A gzipped NIfTI-1 of the volume on its world (booleans as uint8; labels with
    intent ``NIFTI_INTENT_LABEL``)."""
    vol = open_export_volume(source, label, level)
    dtype = vol.dtype
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    if vol.label and dtype.kind == "f":
        raise ValueError(f"{vol.name}: a label image must hold integers, got {dtype}")
    dtype = dtype.newbyteorder("<")
    hdr = nifti_header(vol.shape, dtype, world=vol.world, label=vol.label)
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
