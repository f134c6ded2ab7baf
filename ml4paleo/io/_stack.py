"""Folders (or zips) of 2D slices, and single multi-page TIFF / BigTIFF files."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml4paleo.world import WorldTransform

from ._base import InputError, Volume, log, to_gray
from ._sources import IMAGE_EXTS, DirSource, FileSource, ZipSource, ext_of

_PIL_DTYPES = {
    "1": (np.uint8, 1), "L": (np.uint8, 1), "P": (np.uint8, 3), "LA": (np.uint8, 2),
    "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4), "CMYK": (np.uint8, 4),
    "I;16": (np.uint16, 1), "I;16L": (np.uint16, 1), "I;16B": (np.uint16, 1),
    "I;16N": (np.uint16, 1), "I": (np.int32, 1), "F": (np.float32, 1),
}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


@dataclass
class SliceInfo:
    """Header facts of one slice file."""

    height: int
    width: int
    dtype: np.dtype
    channels: int
    pages: int = 1


def probe_slice(source: FileSource, name: str) -> SliceInfo:
    """Read the header of one slice (size, bit depth, channels) without decoding pixels.

    Raises
    ------
    InputError
        When the file is not a readable image.
    """
    kind = IMAGE_EXTS[ext_of(name)]
    where = source.display(name)
    try:
        with source.open(name) as fh:
            if kind == "tiff":
                import tifffile

                with tifffile.TiffFile(fh) as tif:
                    page = tif.pages.first
                    info = SliceInfo(
                        int(page.imagelength), int(page.imagewidth), np.dtype(page.dtype),
                        int(page.samplesperpixel), len(tif.pages),
                    )
                    if page.imagedepth > 1:
                        raise InputError(f"{where}: volumetric TIFF tiles are not supported")
                    return info
            if kind == "png":
                head = fh.read(33)
                if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
                    raise InputError(f"{where}: not a PNG image")
                width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
                if colour not in _PNG_CHANNELS:
                    raise InputError(f"{where}: invalid PNG colour type {colour}")
                dtype = np.uint16 if depth == 16 else np.uint8
                return SliceInfo(height, width, np.dtype(dtype), _PNG_CHANNELS[colour])
            from PIL import Image

            with Image.open(fh) as im:
                if im.mode not in _PIL_DTYPES:
                    raise InputError(f"{where}: unsupported image mode {im.mode}")
                dtype, channels = _PIL_DTYPES[im.mode]
                return SliceInfo(im.height, im.width, np.dtype(dtype), channels)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: not a readable {kind.upper()} image ({_short(exc)})") from exc


def decode_slice(source: FileSource, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one slice file to an array (2D, or 3D with channels last).

    A single-channel TIFF whose size and dtype match ``out`` is decoded straight into
    ``out`` (which is returned); otherwise a new array is returned.
    """
    kind = IMAGE_EXTS[ext_of(name)]
    where = source.display(name)
    try:
        path = source.local_path(name)
        if kind == "tiff":
            import tifffile

            src: Any = path if path is not None else io.BytesIO(source.read(name))
            with tifffile.TiffFile(src) as tif:
                page = tif.pages.first
                if out is not None and page.shape == out.shape and page.dtype == out.dtype:
                    page.asarray(out=out, maxworkers=1)
                    return out
                arr = page.asarray(maxworkers=1)
                if arr.ndim == 3 and page.planarconfig == 2 and arr.shape[0] == page.samplesperpixel:
                    arr = np.moveaxis(arr, 0, -1)
                return arr
        data = source.read(name)
        if kind == "png" and len(data) > 25 and data[24] in (8, 16):
            import imagecodecs

            return imagecodecs.png_decode(data)
        if kind == "jpeg":
            import imagecodecs

            return imagecodecs.jpeg8_decode(data)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("1", "P", "CMYK"):
                im = im.convert("L" if im.mode == "1" else "RGB")
            im.load()
            return np.asarray(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: corrupt or truncated image ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class ImageStackVolume(Volume):
    """A naturally sorted series of 2D slice files (in a folder or a zip).

    Headers are checked up front where that is cheap (every file of a folder, PNG/JPEG and
    uncompressed TIFF members of a zip); pixel data is checked while slices are decoded.
    """

    source_type = "image_stack"

    def __init__(self, source: FileSource, names: list[str], ignored: list[str], **kw: Any):
        self.source = source
        self.names = list(names)
        first = probe_slice(source, names[0])
        infos = {names[0]: first}
        for name in names[1:]:
            if self._cheap_to_probe(name):
                infos[name] = probe_slice(source, name)
        if len(names) > 1:
            for name, info in infos.items():
                if info.pages > 1:
                    raise InputError(
                        f"{source.display(name)}: a multi-page TIFF inside a folder of slices "
                        f"(convert it on its own)"
                    )
        for name, info in infos.items():
            if (info.height, info.width) != (first.height, first.width):
                raise _size_error(source, name, (info.height, info.width), names[0], first)
        dtype = np.result_type(*{i.dtype for i in infos.values()})
        self._size = (first.height, first.width)
        self._rgb = any(i.channels >= 3 for i in infos.values())
        if self._rgb:
            log.warning("%s: colour slices, reduced to one channel (luma)", source.root)
        meta = {
            "container": "zip" if isinstance(source, ZipSource) else "folder",
            "files": len(names),
            "first_file": names[0],
            "last_file": names[-1],
            "format": IMAGE_EXTS[ext_of(names[0])],
            "rgb_reduced_to_gray": self._rgb,
            "ignored_files": ignored[:50],
            "ignored_count": len(ignored),
        }
        fmt = meta["format"]
        voxel_size, unit, assumed = (
            _tiff_pixel_size(source, names[0]) if fmt == "tiff"
            else _png_pixel_size(source, names[0]) if fmt == "png" else (None, None, ()))
        super().__init__(source.root, (len(names),) + self._size, dtype, voxel_size=voxel_size,
                         unit=unit, metadata=meta, world=_stack_world(voxel_size, unit, assumed),
                         **kw)

    def stored_bytes(self) -> int | None:
        """Bytes of the slice files (inside a zip: their sizes as stored in it)."""
        return sum(int(self.source.size(n)) for n in self.names)

    def _cheap_to_probe(self, name: str) -> bool:
        if isinstance(self.source, DirSource):
            return True
        if IMAGE_EXTS[ext_of(name)] != "tiff":
            return True  # header at the start of the stream
        info = self.source._infos[name]  # type: ignore[attr-defined]
        return info.compress_type == zipfile.ZIP_STORED

    def _decode(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        name = self.names[z]
        arr = decode_slice(self.source, name, out)
        if arr is out:
            return arr
        if arr.ndim == 3:
            arr, lossy = to_gray(arr)
            if lossy and not self.metadata.get("rgb_reduced_to_gray"):
                self.metadata["rgb_reduced_to_gray"] = True
                log.warning("%s: colour slices, reduced to one channel (luma)", self.path)
        if arr.ndim != 2:
            raise InputError(f"{self.source.display(name)}: not a 2D image (shape {arr.shape})")
        if arr.shape != self._size:
            raise _size_error(self.source, name, arr.shape, self.names[0], None, self._size)
        if arr.dtype != self.dtype:
            if arr.dtype.kind == "b" or np.can_cast(arr.dtype, self.dtype, "safe"):
                arr = arr.astype(self.dtype)
            else:
                raise InputError(
                    f"{self.source.display(name)}: {arr.dtype} pixels, but the stack is {self.dtype} "
                    f"(like {self.names[0]})"
                )
        return arr

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        if out is None:
            out = np.empty((z1 - z0, rows.stop - rows.start, cols.stop - cols.start), self.dtype)

        full = (rows.stop - rows.start, cols.stop - cols.start) == self._size

        def work(z: int) -> None:
            target = out[z - z0]
            arr = self._decode(z, target if full else None)
            if arr is not target:
                target[...] = arr[rows, cols]

        self._map(work, range(z0, z1))
        return out

    def close(self) -> None:
        super().close()
        self.source.close()


def _size_error(source, name, shape, first_name, first=None, size=None) -> InputError:
    h, w = (first.height, first.width) if first is not None else size
    return InputError(
        f"{source.display(name)}: slice is {shape[1]}x{shape[0]} pixels, "
        f"expected {w}x{h} like {first_name}"
    )


_UNITS = {
    "micron": "micrometer", "um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer",
    "micrometer": "micrometer", "mm": "millimeter", "millimeter": "millimeter",
    "nm": "nanometer", "nanometer": "nanometer", "cm": "centimeter", "centimeter": "centimeter",
    "m": "meter", "meter": "meter", "inch": "inch",
}


#: Pixel sizes image tools write by default (72 and 96 dpi): no physical meaning.
_SCREEN_DPI = (72.0, 96.0)
# TIFF ResolutionUnit -> (unit, micrometres per unit); 4 and 5 are tifffile's extensions
_TIFF_RES_UNITS = {2: ("inch", 25400.0), 3: ("centimeter", 1e4), 4: ("millimeter", 1e3),
                   5: ("micrometer", 1.0)}

SizeInfo = tuple[tuple | None, str | None, tuple[str, ...]]


def _stack_world(voxel_size: tuple | None, unit: str | None,
                 assumed: tuple[str, ...]) -> WorldTransform | None:
    """Origin 0 and the voxel size read from the slices (flags say what was guessed)."""
    if voxel_size is None or not assumed:
        return None  # the default from voxel_size is the same
    return WorldTransform.from_voxel_size(voxel_size, unit=unit, assumed=assumed)


def _is_screen_dpi(dpi: float) -> bool:
    return any(abs(dpi - d) < 0.05 for d in _SCREEN_DPI)


def _tiff_pixel_size(source: FileSource, name: str) -> SizeInfo:
    """(z, y, x) voxel size from the OME / ImageJ metadata or resolution tags of a TIFF."""
    import tifffile

    try:
        path = source.local_path(name)
        with (open(path, "rb") if path else source.open(name)) as fh, tifffile.TiffFile(fh) as tif:
            return _tiff_size_from(tif)
    except Exception:  # metadata is a bonus; the pixels are checked elsewhere
        return None, None, ()


def _png_pixel_size(source: FileSource, name: str) -> SizeInfo:
    """(z, y, x) voxel size in micrometres from a PNG's pHYs chunk (pixels per metre).

    z is taken equal to x (a PNG holds one plane; flagged ``z_spacing`` assumed); 72 and
    96 dpi, what image tools write by default, are ignored.
    """
    try:
        with source.open(name) as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None, None, ()
            for _ in range(64):  # pHYs comes before the first IDAT
                head = fh.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT":
                    break
                body = fh.read(length + 4)
                if kind == b"pHYs" and length == 9:
                    ppx, ppy, spec = struct.unpack(">IIB", body[:9])
                    if spec != 1 or not ppx or not ppy:
                        break  # aspect ratio only
                    if _is_screen_dpi(ppx * 0.0254) and _is_screen_dpi(ppy * 0.0254):
                        log.info("%s: pHYs says %.0f dpi (a screen default); no voxel size",
                                 source.display(name), ppx * 0.0254)
                        break
                    x, y = 1e6 / ppx, 1e6 / ppy
                    return (x, y, x), "micrometer", ("z_spacing",)
    except (OSError, struct.error, InputError):
        pass
    return None, None, ()


def _tiff_size_from(tif: Any) -> SizeInfo:
    if tif.is_ome and tif.ome_metadata:
        xml = tif.ome_metadata
        sizes = {}
        for ax in "XYZ":
            m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', xml)
            if m:
                sizes[ax] = float(m.group(1))
        if "X" in sizes:
            m = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
            unit = _UNITS.get(m.group(1), m.group(1)) if m else "micrometer"
            y = sizes.get("Y", sizes["X"])
            return (sizes.get("Z", y), y, sizes["X"]), unit, () if "Z" in sizes else ("z_spacing",)
    page = tif.pages.first
    ij = tif.imagej_metadata or {}
    tags = page.tags
    if ij and "XResolution" in tags:
        xr = tags["XResolution"].value
        yr = tags["YResolution"].value if "YResolution" in tags else xr
        if xr[0] and yr[0]:
            x, y = xr[1] / xr[0], yr[1] / yr[0]
            unit = _UNITS.get(str(ij.get("unit", "")).strip(), None)
            z = float(ij.get("spacing", x))
            if unit is not None or x != 1.0:
                return (z, y, x), unit, () if "spacing" in ij else ("z_spacing",)
        return None, None, ()
    return _tiff_resolution(tags)


def _tiff_resolution(tags: Any) -> SizeInfo:
    """Pixel size from the baseline XResolution / YResolution / ResolutionUnit tags."""
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None, None, ()
    res_unit = int(tags["ResolutionUnit"].value)
    if res_unit not in _TIFF_RES_UNITS:
        return None, None, ()  # 1 = no absolute unit
    xr = tags["XResolution"].value
    yr = tags["YResolution"].value if "YResolution" in tags else xr
    if not (xr[0] and xr[1] and yr[0] and yr[1]):
        return None, None, ()
    px_per_unit_x, px_per_unit_y = xr[0] / xr[1], yr[0] / yr[1]
    name, um_per_unit = _TIFF_RES_UNITS[res_unit]
    if name == "inch" and _is_screen_dpi(px_per_unit_x) and _is_screen_dpi(px_per_unit_y):
        log.info("TIFF resolution %.0f dpi is a screen default; no voxel size", px_per_unit_x)
        return None, None, ()
    x, y = um_per_unit / px_per_unit_x, um_per_unit / px_per_unit_y
    return (x, y, x), "micrometer", ("z_spacing",)


class TiffVolume(Volume):
    """One multi-page TIFF / BigTIFF (or OME-TIFF / ImageJ stack), read page by page."""

    source_type = "tiff"

    def __init__(self, source: FileSource, name: str, **kw: Any):
        import tifffile

        self.source = source
        self.name = name
        self._where = source.display(name)
        path = source.local_path(name)
        try:
            self._fh = open(path, "rb") if path else source.open(name)
            self._tif = tifffile.TiffFile(self._fh)
            all_series = self._tif.series
            series = all_series[0]
            shape, axes = tuple(series.shape), series.axes
            dtype = np.dtype(series.dtype)
            npages = len(series.pages) if series.pages is not None else 1
            self._page_index: list[int] | None = None
            if len(all_series) > 1 and all(
                len(s.pages) == 1 and s.shape == series.shape and s.dtype == series.dtype
                for s in all_series
            ):
                # each page written as its own series (e.g. page by page by tifffile): the
                # pages are the planes
                self._page_index = [s.pages[0].index for s in all_series]
                shape, axes, npages = (len(all_series),) + shape, "Z" + axes, len(all_series)
        except InputError:
            raise
        except Exception as exc:
            self._close_files()
            raise InputError(f"{self._where}: not a readable TIFF ({_short(exc)})") from exc
        self._samples = 1
        if axes.endswith("S"):
            self._samples = shape[-1]
            shape, axes = shape[:-1], axes[:-1]
        keep = [(s, a) for i, (s, a) in enumerate(zip(shape, axes, strict=True))
                if s > 1 or i >= len(shape) - 2]
        if len(keep) > 3:
            self._close_files()
            raise InputError(f"{self._where}: {len(keep)}D TIFF ({axes} {shape}) is not a 3D volume")
        shape = tuple(s for s, _ in keep)
        if len(shape) == 2:
            shape = (1,) + shape
        if npages != shape[0]:
            # pages are not planes (e.g. one page holding the whole volume): read it whole
            log.info("%s: %d pages for %d planes; reading whole pages", self._where, npages, shape[0])
        self._pages_are_planes = npages == shape[0]
        voxel_size, unit, assumed = _tiff_size_from(self._tif)
        meta = {
            "container": "zip" if isinstance(source, ZipSource) else "file",
            "file": name,
            "pages": npages,
            "axes": axes,
            "bigtiff": bool(self._tif.is_bigtiff),
            "compression": str(self._tif.pages.first.compression.name).lower(),
            "rgb_reduced_to_gray": self._samples >= 3,
        }
        if self._samples >= 3:
            log.warning("%s: colour pages, reduced to one channel (luma)", self._where)
        super().__init__(source.root if name != "" else source.root, shape, dtype,
                         voxel_size=voxel_size, unit=unit, metadata=meta,
                         world=_stack_world(voxel_size, unit, assumed), **kw)

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        try:
            if self._page_index is not None:
                data = self._tif.asarray(key=self._page_index[z0:z1], maxworkers=self.workers)
                data = data.reshape((z1 - z0,) + data.shape[-(2 if self._samples == 1 else 3):])
            elif self._pages_are_planes:
                data = self._tif.asarray(key=range(z0, z1), series=0, maxworkers=self.workers)
                data = data.reshape((z1 - z0,) + data.shape[-(2 if self._samples == 1 else 3):])
            else:
                data = self._tif.asarray(series=0, maxworkers=self.workers)
                data = data.reshape((self.shape[0],) + data.shape[-(2 if self._samples == 1 else 3):])
                data = data[z0:z1]
        except Exception as exc:
            raise InputError(
                f"{self._where}: corrupt or truncated TIFF page in {z0}..{z1 - 1} ({_short(exc)})"
            ) from exc
        if self._samples > 1:
            data = np.stack([to_gray(p)[0] for p in data])
        return np.ascontiguousarray(data[:, rows, cols], dtype=self.dtype)

    def stored_bytes(self) -> int | None:
        """Bytes of the TIFF file."""
        return int(self.source.size(self.name))

    def _close_files(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()

    def close(self) -> None:
        super().close()
        self._close_files()
        self.source.close()
