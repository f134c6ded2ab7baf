"""Zips of one image per z slice: 8-bit (or 16-bit label) PNG with the pixel size in its
``pHYs`` chunk, 8-bit (8-bit sources) or 16-bit ImageJ TIFF with the voxel size.

Slabs are encoded block by block through :func:`ml4paleo.blocks.imap` (in this process by
default; on threads, local processes or Dask when asked) and added to the zip in order as
they arrive, so the zip streams and memory stays bounded.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ml4paleo.blocks import Block, Shared, imap
from ml4paleo.world import LENGTH_UNITS

from .sinks import Sink, add_bytes, open_zip
from .volumes import ExportVolume, SliceMapping, open_export_volume, slab_blocks, uint16_mapping
from .volumes import window as window_of

__all__ = ["encode_png_slab", "encode_tiff_slab", "png_phys_chunk", "write_png", "write_tiff"]

ProgressCallback = Callable[[int, int], None]

#: retries of a slab after a transient error
RETRIES = 2
IMAGEJ_UNITS = {"micrometer": "micron", "millimeter": "mm", "nanometer": "nm", "meter": "m",
                "centimeter": "cm"}


def png_phys_chunk(voxel_size_zyx: Sequence[float], unit: str | None) -> bytes:
    """A PNG ``pHYs`` chunk: pixels per metre along x and y (aspect ratio only without a unit).

    Examples
    --------
    >>> png_phys_chunk((1.0, 0.5, 0.25), "micrometer")[8:16].hex()
    '003d0900001e8480'
    """
    vy, vx = float(voxel_size_zyx[1]), float(voxel_size_zyx[2])
    metres = LENGTH_UNITS.get(unit or "")
    if metres is None:  # voxel units: only the pixel aspect ratio is known
        small = min(vx, vy)
        ppx, ppy, spec = round(1000 * small / vx), round(1000 * small / vy), 0
    else:
        ppx, ppy, spec = round(1.0 / (vx * metres)), round(1.0 / (vy * metres)), 1
    ppx, ppy = (min(max(int(v), 1), 2**31 - 1) for v in (ppx, ppy))
    body = b"pHYs" + struct.pack(">IIB", ppx, ppy, spec)
    return struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body))


def _with_chunk(png: bytes, chunk: bytes | None) -> bytes:
    """``png`` with ``chunk`` inserted right after IHDR (8-byte signature + 25-byte IHDR)."""
    if not chunk:
        return png
    return png[:33] + chunk + png[33:]


def encode_png_slab(block: Block, *, source: Shared, mapping: SliceMapping,
                    phys: bytes | None = None) -> list[bytes]:
    """PNG files of the slices of one slab (with the ``phys`` chunk, when given)."""
    import imagecodecs

    z = block.write[0]
    slab = source.get().read_slab(z.start, z.stop)
    return [_with_chunk(bytes(imagecodecs.png_encode(np.ascontiguousarray(mapping(plane)),
                                                     level=3)), phys)
            for plane in slab]


def encode_tiff_slab(block: Block, *, source: Shared, mapping: SliceMapping,
                     resolution: tuple[float, float], metadata: dict) -> list[bytes]:
    """ImageJ TIFF files of the slices of one slab."""
    import tifffile

    z = block.write[0]
    slab = source.get().read_slab(z.start, z.stop)
    out = []
    for plane in slab:
        buf = io.BytesIO()
        tifffile.imwrite(buf, mapping(plane), imagej=True, resolution=resolution,
                         metadata=metadata)
        out.append(buf.getvalue())
    return out


def _readme(vol: ExportVolume, kind: str) -> bytes:
    text = (
        f"ml4paleo export ({kind}) of {vol.name}\n"
        f"shape (z, y, x): {vol.shape}\n"
        f"voxel size (z, y, x): {vol.voxel_size} {vol.unit or 'voxel units'}\n"
        f"{'label image' if vol.label else 'image'}, source dtype {vol.dtype}\n"
        "One file per z slice, numbered from 0; see metadata.json for the value mapping.\n"
    )
    return text.encode()


def _metadata(vol: ExportVolume, extra: dict) -> bytes:
    meta = {"source": vol.name, "shape_zyx": list(vol.shape), "voxel_size_zyx": list(vol.voxel_size),
            "unit": vol.unit, "label": vol.label, "source_dtype": str(vol.dtype), **extra}
    return json.dumps(meta, indent=2).encode()


def _digits(n: int) -> int:
    return max(5, len(str(max(n - 1, 0))))


def _write_stack(vol: ExportVolume, sink: Sink, kind: str, suffix: str, encode: Callable,
                 meta: dict, progress: ProgressCallback | None, executor: Any,
                 workers: int | None) -> Iterator[None]:
    n = vol.shape[0]
    digits = _digits(n)
    blocks = slab_blocks(vol)
    with open_zip(sink) as zf:
        add_bytes(zf, f"{vol.name}/README.txt", _readme(vol, kind), compress=True)
        yield
        files = imap(encode, blocks, executor=executor or "serial", workers=workers,
                     retries=RETRIES)
        for block, pieces in zip(blocks, files, strict=True):
            z0 = block.write[0].start
            for k, data in enumerate(pieces):
                add_bytes(zf, f"{vol.name}/z{z0 + k:0{digits}d}.{suffix}", data,
                          compress=suffix == "tif")
                if progress is not None:
                    progress(z0 + k + 1, n)
                yield
        add_bytes(zf, f"{vol.name}/metadata.json", _metadata(vol, meta), compress=True)
        yield


def write_png(source: Any, sink: Sink, *, label: bool | None = None, level: int = 0,
              window: Any = None, progress: ProgressCallback | None = None, executor: Any = None,
              workers: int | None = None, **_: Any) -> Iterator[None]:
    """A zip of PNG slices: 8-bit windowed for images, label values for label images."""
    vol = open_export_volume(source, label, level)
    if vol.label:
        out_dtype = np.dtype(np.uint8 if vol.dtype.itemsize == 1 else np.uint16)
        mapping = SliceMapping("labels", str(out_dtype), name=vol.name)
        meta: dict = {"mapping": "label values", "png_dtype": str(out_dtype)}
    else:
        lo, hi = window_of(vol, window)
        mapping = SliceMapping("window", "uint8", lo=lo, hi=hi)
        meta = {"mapping": "value = lo + png / 255 * (hi - lo)", "window": [lo, hi],
                "png_dtype": "uint8"}
    encode = functools.partial(encode_png_slab, source=Shared(vol.volume), mapping=mapping,
                               phys=png_phys_chunk(vol.voxel_size, vol.unit))
    yield from _write_stack(vol, sink, "png", "png", encode, meta, progress, executor, workers)


def write_tiff(source: Any, sink: Sink, *, label: bool | None = None, level: int = 0,
               progress: ProgressCallback | None = None, executor: Any = None,
               workers: int | None = None, **_: Any) -> Iterator[None]:
    """A zip of ImageJ TIFF slices carrying the voxel size: 8-bit for 8-bit sources, else
    16-bit."""
    vol = open_export_volume(source, label, level)
    sz, sy, sx = vol.voxel_size
    unit = IMAGEJ_UNITS.get(vol.unit or "", vol.unit or "pixel")
    mapping, meta = uint16_mapping(vol)
    encode = functools.partial(encode_tiff_slab, source=Shared(vol.volume), mapping=mapping,
                               resolution=(1.0 / sx, 1.0 / sy),
                               metadata={"spacing": sz, "unit": unit})
    yield from _write_stack(vol, sink, "tiff", "tif", encode, meta, progress, executor, workers)
