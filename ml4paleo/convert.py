"""Any scan → OME-Zarr image (NGFF 0.4, zarr format 2), streamed with flat memory.

The full-resolution level is written slab by slab (one chunk thick in z), bit-exact in the
source dtype, blosc-zstd compressed; then a 2x pyramid is built from it. Everything goes to
a hidden temporary sibling of ``dest`` that is renamed into place only when complete.

When one chunk-thick slab of whole slices would exceed ``memory_limit`` (e.g. 128 slices of
4000 x 4000 uint16 = 4 GiB), slices are first spread into chunk-row bands of a temporary
file (page cache, not process memory) and written band by band, so memory stays flat
whatever the slice size.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

from ml4paleo.io import InputError, Volume, open_volume
from ml4paleo.omezarr import OmeImage, build_pyramid, create_image, open_image

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

#: Bytes of one in-memory slab above which slices are staged through a temporary file.
DEFAULT_MEMORY_LIMIT = 256 << 20
#: zstd level of converted images: level 1 keeps conversion fast on noisy CT data at a ratio
#: within a few percent of level 3.
CONVERT_CLEVEL = 1


def _chunk_shape(chunks: int | Sequence[int]) -> tuple[int, int, int]:
    out = (int(chunks),) * 3 if isinstance(chunks, int | np.integer) else tuple(int(c) for c in chunks)
    if len(out) != 3 or any(c <= 0 for c in out):
        raise ValueError(f"chunks must be a positive int or three positive ints, got {chunks!r}")
    return out  # type: ignore[return-value]


def convert(
    source: str | os.PathLike | Volume,
    dest: str | os.PathLike,
    *,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    chunks: int | Sequence[int] = 128,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    overwrite: bool = True,
) -> OmeImage:
    """Convert a scan to an OME-Zarr image with a 2x pyramid.

    Parameters
    ----------
    source : path or Volume
        Anything :func:`ml4paleo.io.open_volume` opens (or an opened volume).
    dest : path
        Output folder, e.g. ``scan.ome.zarr``.
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` physical voxel size; overrides the source's. 1.0 when neither has one.
    unit : str, optional
        Unit of the voxel size (NGFF name such as ``"micrometer"``); default the source's.
    chunks : int or 3 ints
        Chunk edge(s) of the full-resolution level.
    progress : callable, optional
        ``progress(done, total)``: slabs written, then pyramid blocks.
    workers : int, optional
        Threads for decoding and compressing (default: CPUs, 2..8).
    memory_limit : int
        Bytes one slab of whole slices may take before slices are staged through a
        temporary file instead (keeps peak memory flat for very large slices).
    overwrite : bool
        Replace an existing ``dest`` once the new image is complete (else FileExistsError).

    Returns
    -------
    OmeImage
        The finished image (opened read-only) at ``dest``. Its ``ml4paleo`` attribute
        holds ``{"source_type", "source": {...source metadata}, ...}``.

    Raises
    ------
    InputError
        Bad input (one line naming the file); nothing is left at ``dest`` or beside it.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(f"{d}/scan.npy", np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6))
    >>> img = convert(f"{d}/scan.npy", f"{d}/scan.ome.zarr", voxel_size=(2, 1, 1), unit="micrometer")
    >>> img.shape, img.voxel_size, int(img.array[3, 4, 5])
    ((4, 5, 6), (2.0, 1.0, 1.0), 119)
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists")
    chunk = _chunk_shape(chunks)
    if voxel_size is not None:
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) != 3 or any(not v > 0 for v in voxel_size):
            raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    own = not isinstance(source, Volume)
    volume = open_volume(source, workers=workers) if own else source
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = dest.with_name(f".{dest.name}.tmp-{token}")
    staging = dest.with_name(f".{dest.name}.staging-{token}")
    t0 = time.perf_counter()
    try:
        _convert_into(volume, tmp, staging, voxel_size, unit, chunk, progress, workers,
                              memory_limit)
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
        if own:
            volume.close()
    result = open_image(dest)
    log.info("converted %s -> %s (%s %s) in %.1f s", volume.path, dest, result.shape,
             result.dtype, time.perf_counter() - t0)
    return result


def _convert_into(volume, tmp, staging, voxel_size, unit, chunk, progress, workers, memory_limit):
    if voxel_size is not None:
        size, size_from = voxel_size, "user"
        unit = unit if unit is not None else volume.unit
    elif volume.voxel_size is not None:
        size, size_from = volume.voxel_size, "source"
        unit = unit if unit is not None else volume.unit
    else:
        size, size_from = (1.0, 1.0, 1.0), "default"
    attrs: dict[str, Any] = {
        "source_type": volume.source_type,
        "source": {"name": volume.path.name, **volume.metadata},
        "source_voxel_size": None if volume.voxel_size is None else list(volume.voxel_size),
        "source_unit": volume.unit,
        "voxel_size_from": size_from,
    }
    image = create_image(
        tmp, volume.shape, volume.dtype, chunks=chunk, voxel_size=size, unit=unit,
        name=volume.path.name, extra_attrs=attrs,
        compressor=numcodecs.Blosc(cname="zstd", clevel=CONVERT_CLEVEL, shuffle=numcodecs.Blosc.SHUFFLE),
    )
    nz, ny, nx = volume.shape
    cz = min(chunk[0], nz)
    slabs = list(range(0, nz, cz))
    pyramid_total = _pyramid_task_count(image)
    total = len(slabs) + pyramid_total
    if progress is not None:
        progress(0, total)
    threads = workers or volume.workers
    slab_bytes = cz * ny * nx * volume.dtype.itemsize
    writer = ThreadPoolExecutor(threads, thread_name_prefix="ml4paleo-convert")
    try:
        array = image.array
        if slab_bytes <= memory_limit:
            for k, z0 in enumerate(slabs, start=1):
                data = volume.read_slab(z0, min(z0 + cz, nz))
                _write_bands(array, writer, data, z0, chunk[1])
                del data
                if progress is not None:
                    progress(k, total)
        else:
            log.info("slab of %d MiB > memory limit: staging slices through %s",
                     slab_bytes >> 20, staging)
            with _BandStager(staging, cz, ny, nx, chunk[1], volume.dtype) as stager:
                step = max(1, memory_limit // (2 * ny * nx * volume.dtype.itemsize))
                for k, z0 in enumerate(slabs, start=1):
                    z1 = min(z0 + cz, nz)
                    for s0 in range(z0, z1, step):
                        part = volume.read_slab(s0, min(s0 + step, z1))
                        for i, plane in enumerate(part):
                            stager.put(s0 - z0 + i, plane)
                        del part
                    list(writer.map(
                        lambda b, z0=z0, z1=z1: _write_region(array, stager.band(b, z1 - z0), z0,
                                                             stager.bands[b][0]),
                        range(len(stager.bands)),
                    ))
                    if progress is not None:
                        progress(k, total)
    finally:
        writer.shutdown(wait=True)
    base = len(slabs)

    def pyramid_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(base + done, total)

    build_pyramid(image, progress=pyramid_progress, workers=threads)
    return image


def _pyramid_task_count(image: OmeImage) -> int:
    count = 0
    for i in range(1, len(image.levels)):
        arr = image.level(i)
        count += int(np.prod([-(-s // c) for s, c in zip(arr.shape, arr.chunks, strict=True)]))
    return count


def _write_region(array: Any, data: np.ndarray, z0: int, y0: int) -> None:
    array[z0 : z0 + data.shape[0], y0 : y0 + data.shape[1], :] = data


def _write_bands(array: Any, pool: ThreadPoolExecutor, data: np.ndarray, z0: int, cy: int) -> None:
    """Write a slab as chunk-row bands in parallel (each band is whole chunks)."""
    ny = data.shape[1]
    list(pool.map(lambda y0: _write_region(array, data[:, y0 : y0 + cy], z0, y0), range(0, ny, cy)))


class _BandStager:
    """A temporary raw file laid out band-major: band b holds rows ``[b*cy, (b+1)*cy)`` of
    every slice of the slab, contiguously, so one band reads back in one call."""

    def __init__(self, path: Path, nz: int, ny: int, nx: int, cy: int, dtype: np.dtype) -> None:
        self.path = path
        self.nx, self.dtype = nx, np.dtype(dtype)
        self.row_bytes = nx * self.dtype.itemsize
        self.bands = [(y0, min(y0 + cy, ny)) for y0 in range(0, ny, cy)]
        self.offsets = []
        offset = 0
        for y0, y1 in self.bands:
            self.offsets.append(offset)
            offset += nz * (y1 - y0) * self.row_bytes
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def put(self, zi: int, plane: np.ndarray) -> None:
        plane = np.ascontiguousarray(plane, dtype=self.dtype)
        for (y0, y1), off in zip(self.bands, self.offsets, strict=True):
            rows = y1 - y0
            _pwrite_all(self.fd, memoryview(plane[y0:y1]).cast("B"), off + zi * rows * self.row_bytes)

    def band(self, b: int, nz: int) -> np.ndarray:
        y0, y1 = self.bands[b]
        size = nz * (y1 - y0) * self.row_bytes
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.preadv(self.fd, [view[got:]], self.offsets[b] + got)
            if n <= 0:
                raise OSError(f"{self.path}: short read")
            got += n
        return np.frombuffer(buf, self.dtype).reshape(nz, y1 - y0, self.nx)

    def __enter__(self) -> _BandStager:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest``; an old ``dest`` is removed only afterwards."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


__all__ = ["DEFAULT_MEMORY_LIMIT", "InputError", "convert"]
