"""Any scan → OME-Zarr image (NGFF 0.4, zarr format 2), streamed with flat memory.

The full-resolution level is written slab by slab (one chunk thick in z), bit-exact in the
source dtype, blosc-zstd compressed, whole chunks encoded on a thread pool; level 1 of the
2x pyramid is downsampled from the same slabs while they are in memory, the smaller levels
from level 1 afterwards. Everything goes to a hidden temporary sibling of ``dest`` that is
renamed into place only when complete.

When one chunk-thick slab of whole slices would exceed ``memory_limit`` (e.g. 128 slices of
4000 x 4000 uint16 = 4 GiB), slices are first spread into chunk-row bands of a temporary
file (page cache, not process memory) and written band by band (level 1 likewise), so
memory stays flat whatever the slice size.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

from ml4paleo._verbs import make_module_callable
from ml4paleo.io import InputError, Volume, open_volume
from ml4paleo.omezarr import (
    OmeImage,
    build_pyramid,
    create_image,
    default_compressor,
    downsample2,
    open_image,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

#: Bytes of slab buffers: two chunk-thick slabs of whole slices when they fit (the next one
#: is read while the current one is compressed), else one, else slices are staged through
#: a temporary file.
DEFAULT_MEMORY_LIMIT = 320 << 20
#: zstd level of converted images: on noisy CT data level 1 encodes ~4x faster than level 3
#: for a ratio within ~8 % of it (1 MiB blosc blocks).
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
        Bytes of slab buffers (one slab = ``chunks`` slices). Two slabs when they fit (the
        next is read while the current is compressed), else one; when even one does not
        fit, slices are staged through a temporary file so memory stays flat.
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
    _sweep_dead_temps(dest)
    token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = dest.with_name(f".{dest.name}.tmp-{token}")
    staging = dest.with_name(f".{dest.name}.staging-{token}")
    t0 = time.perf_counter()
    try:
        _convert_into(volume, tmp, staging, voxel_size, unit, chunk, progress, workers, memory_limit)
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        staging.unlink(missing_ok=True)
        staging.with_name(staging.name + "-1").unlink(missing_ok=True)
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
        compressor=default_compressor(clevel=CONVERT_CLEVEL),
    )
    nz, ny, nx = volume.shape
    cz = image.array.chunks[0]
    slabs = list(range(0, nz, cz))
    slab_bytes = cz * ny * nx * volume.dtype.itemsize
    in_memory = slab_bytes <= memory_limit
    # Level 1 is downsampled from the slabs (or bands) while they are in memory, which saves
    # reading level 0 back; that needs even slab thickness so no 2x2x2 cell straddles two.
    inline = len(image.levels) > 1 and all(c % 2 == 0 for c in image.array.chunks)
    threads = workers or volume.workers
    level0 = _ChunkWriter(image, 0)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="ml4paleo-convert")
    stack = contextlib.ExitStack()
    level1 = None
    first_pyramid_level = 1
    if inline:
        stager1 = None
        if not in_memory:
            shape1, chunks1 = image.level(1).shape, image.level(1).chunks
            stager1 = stack.enter_context(_BandStager(
                staging.with_name(staging.name + "-1"), chunks1[0], shape1[1], shape1[2],
                chunks1[1], volume.dtype))
        builders = _level_builders(image, pool, memory_limit, stager1)
        level1 = builders[0]
        first_pyramid_level = len(builders) + 1
    total = len(slabs) + _pyramid_task_count(image, first_pyramid_level)
    if progress is not None:
        progress(0, total)
    try:
        if in_memory:
            # Slab buffers are allocated once and reused (fresh buffers cost page faults).
            # With two, slab k+1 is read while slab k is compressed, overlapping file I/O
            # and decoding with compression.
            nbuf = 2 if 2 * slab_bytes <= memory_limit and len(slabs) > 1 else 1
            buffers = [np.empty((min(cz, nz), ny, nx), volume.dtype) for _ in range(nbuf)]

            def read(k: int) -> np.ndarray:
                z0 = slabs[k]
                z1 = min(z0 + cz, nz)
                return volume.read_slab(z0, z1, out=buffers[k % len(buffers)][: z1 - z0])

            with ThreadPoolExecutor(1, thread_name_prefix="ml4paleo-prefetch") as reader:
                pending = reader.submit(read, 0)
                for k, z0 in enumerate(slabs, start=1):
                    data = pending.result()
                    if k < len(slabs) and nbuf == 2:
                        pending = reader.submit(read, k)
                    futures = level0.submit_slab(pool, data, z0)
                    if level1 is not None:
                        level1.add(data, z0)
                        level1.end_slab(z0, data.shape[0])
                    for f in futures:
                        f.result()
                    del data
                    if k < len(slabs) and nbuf == 1:
                        pending = reader.submit(read, k)
                    if progress is not None:
                        progress(k, total)
            if level1 is not None:
                level1.finish()
            del buffers, read  # free the slabs before any remaining pyramid pass
        else:
            log.info("slab of %d MiB > memory limit: staging slices through %s",
                     slab_bytes >> 20, staging)
            # bands of two chunk rows: each downsamples to one level-1 chunk row
            band_rows = 2 * level0.chunks[1]
            with _BandStager(staging, cz, ny, nx, band_rows, volume.dtype) as stager:
                step = max(1, memory_limit // (2 * ny * nx * volume.dtype.itemsize))
                for k, z0 in enumerate(slabs, start=1):
                    z1 = min(z0 + cz, nz)
                    for s0 in range(z0, z1, step):
                        part = volume.read_slab(s0, min(s0 + step, z1))
                        for i, plane in enumerate(part):
                            stager.put(s0 - z0 + i, plane)
                        del part
                    for b, (y0, _) in enumerate(stager.bands):
                        band = stager.band(b, z1 - z0)
                        futures = level0.submit_slab(pool, band, z0, y0)
                        if level1 is not None:
                            level1.add(band, z0, y0)
                        for f in futures:
                            f.result()
                        del band
                    if level1 is not None:
                        level1.end_slab(z0, z1 - z0)
                    if progress is not None:
                        progress(k, total)
                if level1 is not None:
                    level1.finish()
    finally:
        pool.shutdown(wait=True)
        stack.close()
    base = len(slabs)

    def pyramid_progress(done: int, _total: int) -> None:
        if progress is not None and done > 0:
            progress(base + done, total)

    if first_pyramid_level < len(image.levels):
        build_pyramid(image, progress=pyramid_progress, workers=threads,
                      first_level=first_pyramid_level)
    return image


def _pyramid_task_count(image: OmeImage, first_level: int) -> int:
    count = 0
    for i in range(first_level, len(image.levels)):
        arr = image.level(i)
        count += int(np.prod([-(-s // c) for s, c in zip(arr.shape, arr.chunks, strict=True)]))
    return count


class _ChunkWriter:
    """Encodes and writes whole chunks of one level straight to their files.

    The level was just created by :func:`ml4paleo.omezarr.create_image` as a zarr v2 array
    with ``/``-separated chunk keys, C order and no filters; a chunk file is the compressor's
    encoding of the full-size chunk (edge chunks padded with the fill value), exactly what
    zarr writes, minus zarr's per-chunk bookkeeping (which costs as much CPU as blosc here).
    """

    def __init__(self, image: OmeImage, level: int) -> None:
        self.folder = Path(image.path) / image.levels[level]
        meta = json.loads((self.folder / ".zarray").read_text())
        ok = (meta.get("zarr_format") == 2 and meta.get("order") == "C" and not meta.get("filters")
              and meta.get("dimension_separator") == "/" and meta.get("compressor"))
        if not ok:
            raise RuntimeError(f"{self.folder}: unexpected zarr layout {meta}")
        self.codec = numcodecs.get_codec(meta["compressor"])
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunks"])
        self.dtype = np.dtype(meta["dtype"])
        self.fill = meta.get("fill_value") or 0
        self._local = threading.local()

    def write_chunk(self, index: tuple[int, int, int], block: np.ndarray) -> None:
        if block.shape != self.chunks:
            full = np.full(self.chunks, self.fill, self.dtype)
            full[tuple(slice(0, s) for s in block.shape)] = block
            block = full
        if not (block.flags.c_contiguous and block.dtype == self.dtype):
            # copy into this thread's reusable buffer rather than a fresh array per chunk
            buf = getattr(self._local, "buf", None)
            if buf is None:
                buf = self._local.buf = np.empty(self.chunks, self.dtype)
            buf[...] = block
            block = buf
        encoded = self.codec.encode(block)
        path = self.folder.joinpath(*map(str, index))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(encoded)

    def submit_slab(self, pool: ThreadPoolExecutor, data: np.ndarray, z0: int, y0: int = 0) -> list:
        """Queue every chunk of ``data`` (placed at ``z0, y0, 0``; chunk aligned)."""
        cz, cy, cx = self.chunks
        futures = []
        for dy in range(0, data.shape[1], cy):
            for dx in range(0, data.shape[2], cx):
                index = (z0 // cz, (y0 + dy) // cy, dx // cx)
                block = data[:, dy : dy + cy, dx : dx + cx]
                futures.append(pool.submit(self.write_chunk, index, block))
        return futures


class _LevelBuilder:
    """Downsamples the level above (whole slabs, or row bands of them) into one pyramid
    level, written chunk-thick from a buffer held in memory (or in a band stager when even
    that is too big). When full, the buffer also feeds the next level's builder, so the
    whole pyramid is built in one pass without reading anything back."""

    def __init__(self, image: OmeImage, level: int, pool: ThreadPoolExecutor,
                 stager: _BandStager | None = None) -> None:
        self.writer = _ChunkWriter(image, level)
        self.pool = pool
        self.stager = stager
        self.next: _LevelBuilder | None = None
        self.label = "image-label" in image.attrs
        self.cz = self.writer.chunks[0]
        if stager is None:
            self.buffer = np.zeros((self.cz,) + self.writer.shape[1:], self.writer.dtype)
        self.base = 0  # z (in this level) of the first buffered plane
        self.filled = 0

    def add(self, region: np.ndarray, z0: int, y0: int = 0) -> None:
        """Downsample ``region`` (data of the level above at ``z0, y0, 0``; ``z0, y0`` even)."""
        cy, cx = (2 * c for c in self.writer.chunks[1:])
        nz1 = (region.shape[0] + 1) // 2
        ny1 = (region.shape[1] + 1) // 2
        zoff = z0 // 2 - self.base
        if self.stager is None:
            target, tz, ty = self.buffer, zoff, y0 // 2
        else:
            target, tz, ty = np.empty((nz1, ny1, self.writer.shape[2]), self.writer.dtype), 0, 0

        def tile(y: int, x: int) -> None:
            small = downsample2(region[:, y : y + cy, x : x + cx], self.label)
            target[tz : tz + small.shape[0], ty + y // 2 : ty + y // 2 + small.shape[1],
                   x // 2 : x // 2 + small.shape[2]] = small

        futures = [self.pool.submit(tile, y, x)
                   for y in range(0, region.shape[1], cy) for x in range(0, region.shape[2], cx)]
        for f in futures:
            f.result()
        if self.stager is not None:
            self.stager.put_block(y0 // 2 // self.writer.chunks[1], zoff, target)

    def end_slab(self, z0: int, nz: int) -> None:
        """Every region of the slab ``z0 .. z0 + nz`` of the level above was added."""
        self.filled = z0 // 2 - self.base + (nz + 1) // 2
        if self.filled >= self.cz:
            self._flush()

    def _flush(self) -> None:
        n = min(self.filled, self.writer.shape[0] - self.base)
        if n > 0:
            if self.stager is None:
                data = self.buffer[:n]
                for f in self.writer.submit_slab(self.pool, data, self.base):
                    f.result()
                if self.next is not None:
                    self.next.add(data, self.base)
            else:
                for b, (y0, _) in enumerate(self.stager.bands):
                    band = self.stager.band(b, n)
                    futures = self.writer.submit_slab(self.pool, band, self.base, y0)
                    if self.next is not None:
                        self.next.add(band, self.base, y0)
                    for f in futures:
                        f.result()
            if self.next is not None:
                self.next.end_slab(self.base, n)
        self.base += self.cz
        self.filled = 0

    def finish(self) -> None:
        """Write what is buffered (the last, partial slab) and finish the levels below."""
        if self.filled:
            self._flush()
        if self.next is not None:
            self.next.finish()


def _level_builders(image: OmeImage, pool: ThreadPoolExecutor, memory_limit: int,
                    stager1: _BandStager | None = None) -> list[_LevelBuilder]:
    """Chained builders for levels 1.. while their buffers stay small (the rest of the
    pyramid, if any, is built afterwards by :func:`build_pyramid`)."""
    builders: list[_LevelBuilder] = []
    for level in range(1, len(image.levels)):
        arr = image.level(level)
        buffer_bytes = arr.chunks[0] * arr.shape[1] * arr.shape[2] * np.dtype(arr.dtype).itemsize
        if level == 1 and stager1 is not None:
            builder = _LevelBuilder(image, 1, pool, stager1)
        elif buffer_bytes <= memory_limit // 4:
            builder = _LevelBuilder(image, level, pool)
        else:
            break
        if builders:
            builders[-1].next = builder
        builders.append(builder)
    return builders


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

    def put_block(self, b: int, zi: int, block: np.ndarray) -> None:
        """Write planes ``zi .. zi + len(block)`` of band ``b`` (block is (n, rows, nx))."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        rows = self.bands[b][1] - self.bands[b][0]
        _pwrite_all(self.fd, memoryview(block).cast("B"), self.offsets[b] + zi * rows * self.row_bytes)

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


def _sweep_dead_temps(dest: Path) -> None:
    """Delete temp siblings of ``dest`` left by a killed conversion on this host.

    Temp names carry ``<host>-<pid>``; one whose process is gone is debris (a live
    conversion of the same ``dest``, e.g. by another runner, is left alone).
    """
    host = socket.gethostname()
    for kind in ("tmp", "staging", "old"):
        prefix = f".{dest.name}.{kind}-"
        for path in dest.parent.glob(f"{glob.escape(prefix)}*"):
            parts = path.name[len(prefix):].rsplit("-", 2)  # host-pid-token
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid() or _pid_alive(pid):
                continue
            log.info("removing %s left by a killed conversion (pid %d)", path, pid)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest``; an old ``dest`` is removed only afterwards."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
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


make_module_callable(__name__, convert)
