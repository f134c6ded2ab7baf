"""Sources that are already arrays: NIfTI, ``.npy`` and Zarr / OME-Zarr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.world import WorldTransform

from ._base import InputError, Volume, log


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def _check_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise InputError(f"{path}: unsupported voxel type {dtype}")
    return dtype.newbyteorder("=")


class NiftiVolume(Volume):
    """A NIfTI-1/2 image (``.nii`` / ``.nii.gz``) as (z, y, x): the file's (i, j, k) reversed.

    Voxels keep their storage order (no reorientation). :attr:`world` is the header's
    sform or qform, chosen by their codes (:meth:`WorldTransform.from_nifti`), whose index
    order ``(i, j, k) = (x, y, z)`` is the array's reversed; units ``unknown`` are read as
    millimetre (``metadata["unit_assumed"]``). :attr:`voxel_size` is that affine's voxel
    size. A z-slab is contiguous on disk (NIfTI is stored x-fastest), so slabs read in
    order stream through a ``.nii.gz`` once.
    """

    source_type = "nifti"

    def __init__(self, path: str | os.PathLike, **kw: Any):
        import nibabel as nib

        path = Path(path)
        try:
            img = nib.load(str(path), keep_file_open=True)
            shape = img.shape
            header = img.header
            raw = np.dtype(img.get_data_dtype())
        except Exception as exc:
            raise InputError(f"{path}: not a readable NIfTI file ({_short(exc)})") from exc
        if len(shape) > 3 and any(s > 1 for s in shape[3:]):
            raise InputError(f"{path}: {len(shape)}D NIfTI {tuple(shape)}; only 3D volumes are supported")
        if len(shape) < 2:
            raise InputError(f"{path}: NIfTI of shape {tuple(shape)} is not an image")
        self._img = img
        self._proxy = img.dataobj
        self._ndim = len(shape)
        sx, sy = shape[0], shape[1]
        sz = shape[2] if len(shape) > 2 else 1
        # nibabel moves the header's scaling onto the data proxy when loading
        slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
        slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
        inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
        raw = _check_dtype(path, raw)
        if slope == 1.0 and inter == 0.0:
            dtype = raw
        elif raw.kind in "iu" and slope.is_integer() and inter.is_integer():
            info = np.iinfo(raw)
            ends = [info.min * slope + inter, info.max * slope + inter]
            dtype = np.dtype(np.int16 if -(2**15) <= min(ends) and max(ends) < 2**15 else np.int32)
            if not (-(2**31) <= min(ends) and max(ends) < 2**31):
                dtype = np.dtype(np.float64)
        else:
            dtype = np.dtype(np.float32)
        self._scaled = (slope, inter) != (1.0, 0.0)
        zooms = [float(z) for z in header.get_zooms()[:3]] + [1.0] * 3
        try:
            world = WorldTransform.from_nifti(header)
        except ValueError as exc:
            raise InputError(f"{path}: unusable NIfTI geometry ({_short(exc)})") from exc
        wanted = "sform" if world.sform_code else "qform" if world.qform_code else "pixdim"
        if world.source != wanted:
            log.warning("%s: the %s (code %s) is unusable; using the %s", path, wanted,
                        world.sform_code if wanted == "sform" else world.qform_code,
                        world.source)
        meta = {
            "file": path.name,
            "nifti_shape": [int(s) for s in shape],
            "datatype": str(raw),
            "scl_slope": slope,
            "scl_inter": inter,
            "affine": world.affine.round(6).tolist(),
            "affine_from": world.source,
            "axis_codes": list(world.orientation or ""),
            "sform_code": world.sform_code,
            "qform_code": world.qform_code,
            "pixdim": zooms[:3],
            "xyzt_units": str(header.get_xyzt_units()[0]),
            "unit_assumed": "unit" in world.assumed,
            "voxel_order": "nifti (i, j, k) reversed to (z, y, x); not reoriented",
        }
        super().__init__(path, (sz, sy, sx), dtype, voxel_size=world.voxel_size,
                         unit=world.unit, metadata=meta, world=world, **kw)

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        try:
            if self._ndim == 2:
                data = np.asarray(self._proxy[cols, rows])[..., None]
            else:
                key = (cols, rows, slice(z0, z1)) + (0,) * (self._ndim - 3)
                data = np.asarray(self._proxy[key])
        except Exception as exc:
            raise InputError(f"{self.path}: corrupt or truncated NIfTI data ({_short(exc)})") from exc
        data = data.transpose(2, 1, 0)
        if self._scaled and self.dtype.kind == "i":
            data = np.rint(data)
        return np.ascontiguousarray(data, dtype=self.dtype)

    def stored_bytes(self) -> int | None:
        """Bytes of the (possibly gzipped) NIfTI file."""
        return int(self.path.stat().st_size)

    def close(self) -> None:
        super().close()
        fileobj = getattr(self._proxy, "_opener", None)
        if fileobj is not None and hasattr(fileobj, "close"):
            fileobj.close()


class NpyVolume(Volume):
    """A ``.npy`` file (2D arrays become one slice).

    C-ordered arrays are read with plain positional reads (a z-slab is contiguous), so
    pages of the file do not pile up in the process's memory as they would through a
    memory map; Fortran-ordered arrays go through a memory map.
    """

    source_type = "npy"

    def __init__(self, path: str | os.PathLike, **kw: Any):
        path = Path(path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: not a readable .npy file ({_short(exc)})") from exc
        if arr.ndim not in (2, 3):
            raise InputError(f"{path}: array of shape {arr.shape} is not 2D or 3D")
        shape, dtype = arr.shape, arr.dtype
        self._offset = int(getattr(arr, "offset", 0))
        self._fortran = not arr.flags.c_contiguous
        self._raw = np.dtype(dtype)
        if arr.ndim == 2:
            arr = arr[None]
        self._arr = arr if self._fortran else None
        self._fd = None if self._fortran else os.open(path, os.O_RDONLY)
        if not self._fortran:
            del arr  # the map was only for validating the size
        meta = {"file": path.name, "fortran_order": self._fortran}
        super().__init__(path, shape if len(shape) == 3 else (1,) + tuple(shape),
                         _check_dtype(path, np.dtype(dtype)), metadata=meta, **kw)

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        if self._fortran:
            return np.array(self._arr[z0:z1, rows, cols], dtype=self.dtype)
        plane = self.shape[1] * self.shape[2] * self._raw.itemsize
        size = (z1 - z0) * plane
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = os.preadv(self._fd, [view[got:]], self._offset + z0 * plane + got)
            if n <= 0:
                raise InputError(f"{self.path}: truncated .npy file")
            got += n
        data = np.frombuffer(buf, self._raw).reshape((z1 - z0,) + self.shape[1:])
        return np.ascontiguousarray(data[:, rows, cols], dtype=self.dtype)

    def stored_bytes(self) -> int | None:
        """Bytes of the ``.npy`` file."""
        return int(self.path.stat().st_size)

    def close(self) -> None:
        super().close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._arr = None


class ZarrVolume(Volume):
    """An OME-Zarr image (full resolution level) or a plain 2D/3D Zarr array."""

    source_type = "zarr"

    def __init__(self, path: str | os.PathLike, *, level: int = 0, **kw: Any):
        import zarr

        from ml4paleo.formats import open_image

        path = Path(path)
        meta: dict[str, Any] = {"file": path.name}
        voxel_size = unit = world = None
        #: the OME-Zarr image (None for a bare array), the level read and the pyramid's
        #: arrays from that level down (just the array for a bare one)
        self.image = None
        self.level = int(level)
        self.levels: list[Any] = []
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:
            raise InputError(f"{path}: not a readable Zarr store ({_short(exc)})") from exc
        if isinstance(node, zarr.Array):
            if level:
                raise InputError(f"{path}: a bare Zarr array has no pyramid level {level}")
            arr = node
            meta["kind"] = "array"
            self.levels = [arr]
        else:
            try:
                image = open_image(path)
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}: {_short(exc)}") from exc
            if not 0 <= self.level < len(image.levels):
                raise InputError(f"{path}: no pyramid level {level} (it has "
                                 f"{len(image.levels)})")
            self.image = image
            self.levels = [image.level(i) for i in range(self.level, len(image.levels))]
            arr = self.levels[0]
            meta["label"] = "image-label" in image.attrs
            if "multiscales" in image.attrs:
                voxel_size, unit = image.level_scale(self.level), image.unit
                meta["kind"] = "ome-zarr"
                meta["levels"] = len(image.levels)
                if isinstance(image.attrs.get("ml4paleo"), dict):
                    meta["ml4paleo"] = image.attrs["ml4paleo"]
                world = _zarr_world(path, image, self.level)
                if world is not None:  # a unit that is no length stays as written
                    voxel_size, unit = world.voxel_size, world.unit or image.unit
            else:
                meta["kind"] = "group"
            meta["array"] = image.levels[0]
        shape = tuple(arr.shape)
        if len(shape) > 3 and all(s == 1 for s in shape[:-3]):
            self._lead = (0,) * (len(shape) - 3)
            shape = shape[-3:]
        elif len(shape) == 2:
            self._lead = None
            shape = (1,) + shape
        elif len(shape) == 3:
            self._lead = ()
        else:
            raise InputError(f"{path}: Zarr array of shape {shape} is not a 3D volume")
        self._arr = arr
        meta["chunks"] = list(arr.chunks)
        super().__init__(path, shape, _check_dtype(path, np.dtype(arr.dtype)),
                         voxel_size=voxel_size, unit=unit, metadata=meta, world=world, **kw)

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        try:
            if self._lead is None:
                data = np.asarray(self._arr[rows, cols])[None]
            else:
                data = np.asarray(self._arr[self._lead + (slice(z0, z1), rows, cols)])
        except Exception as exc:
            raise InputError(f"{self.path}: corrupt Zarr chunk in z {z0}..{z1 - 1} ({_short(exc)})") from exc
        return data.astype(self.dtype, copy=False)


def _zarr_world(path: Path, image: Any, level: int) -> WorldTransform | None:
    """The world transform of pyramid ``level``: ours when stored, else NGFF's scale+translation."""
    from ml4paleo.formats import image_world

    try:
        return image_world(image.attrs, level)
    except ValueError as exc:
        raise InputError(f"{path}: {_short(exc)}") from exc
