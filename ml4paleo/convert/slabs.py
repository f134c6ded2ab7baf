"""The first conversion stage: slab blocks of whole slices → level 0 and level 1.

A slab block is two chunks thick (one level-1 chunk) and spans whole slices, because
slice files decode whole: the source is read once, in order. The block reads its slices
chunk-thick (the next chunk-thick slab while the current one is compressed, when two fit
the memory limit), encodes whole level-0 chunks on a thread pool and downsamples the same
slices into its level-1 chunks while they are in memory, so level 1 costs no read-back.
When one chunk-thick slab does not fit the memory limit, the slices go through a
:class:`~ml4paleo.convert.staging.CellStager` instead.

Everything is bit-exact with a whole-volume computation: a block starts at an even z, so
no 2x2x2 cell of the pyramid straddles two blocks, and an odd plane left at the end of a
chunk-thick slab waits for its partner from the next one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo._fs import temp_path
from ml4paleo.blocks import Block, Shared
from ml4paleo.formats import ChunkFiles, downsample2

from .staging import CellStager

__all__ = ["BufferPool", "SlabJob", "write_slabs"]


class BufferPool:
    """Slab buffers reused from block to block within one process.

    Fresh buffers of hundreds of MiB cost page faults on every block; blocks run one
    after another in one process take the previous block's buffer instead. The pool
    pickles as an empty pool, so worker processes keep nothing after their block.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.shape == shape and buf.dtype == dtype:
                    return self._free.pop(i)
        return np.empty(shape, dtype)

    def give(self, *buffers: np.ndarray) -> None:
        with self._lock:
            self._free.extend(buffers)
            del self._free[:-4]  # a slab block uses at most three

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def __reduce__(self):
        return (BufferPool, ())


@dataclass(frozen=True)
class SlabJob:
    """What every slab block of one conversion needs (picklable: sent to workers).

    Attributes
    ----------
    source : Shared
        The source :class:`~ml4paleo.io.Volume` (reopened once per worker).
    level0, level1 : ChunkFiles
        Writers of the full-resolution level and of level 1 (None without a pyramid).
    label : bool
        Label image (nearest downsampling).
    threads : int
        Threads a block uses to decode and compress.
    memory_limit : int
        Bytes of slab buffers a block may hold.
    staging : str
        Destination the staging files are named after (hidden temp siblings).
    buffers : BufferPool
        Reused slab buffers (shared by the blocks run in this process).
    decode_threads : int, optional
        Threads the source decodes slices with in a worker (None: as opened).
    """

    source: Shared
    level0: ChunkFiles
    level1: ChunkFiles | None
    label: bool
    threads: int
    memory_limit: int
    staging: str
    buffers: BufferPool
    decode_threads: int | None = None


class _Halver:
    """Downsamples level-0 planes, fed in z order, into a block's level-1 planes."""

    def __init__(self, out: np.ndarray, z_base: int, label: bool, pool: ThreadPoolExecutor,
                 tile: tuple[int, int]) -> None:
        self.out, self.z_base, self.label, self.pool, self.tile = out, z_base, label, pool, tile
        self.carry: np.ndarray | None = None
        self.carry_z = 0

    def add(self, data: np.ndarray, z: int) -> None:
        """Planes ``z .. z + len(data)`` of level 0 (following the planes added before)."""
        i = 0
        if self.carry is not None:
            self._down(np.stack([self.carry, data[0]]), self.carry_z)
            self.carry = None
            i = 1
        n = len(data) - i
        even = n - n % 2
        if even:
            self._down(data[i : i + even], z + i)
        if n % 2:  # an odd plane waits for its partner in the next slab (copied: reused buffer)
            self.carry, self.carry_z = np.array(data[-1]), z + len(data) - 1

    def finish(self) -> None:
        """A plane still waiting is the volume's last: downsampled alone (edge padding)."""
        if self.carry is not None:
            self._down(self.carry[None], self.carry_z)
            self.carry = None

    def _down(self, planes: np.ndarray, z: int) -> None:
        k = (z - self.z_base) // 2
        ty, tx = self.tile
        out = self.out

        def tile(y: int, x: int) -> None:
            small = downsample2(planes[:, y : y + ty, x : x + tx], self.label)
            out[k : k + small.shape[0], y // 2 : y // 2 + small.shape[1],
                x // 2 : x // 2 + small.shape[2]] = small

        futures = [self.pool.submit(tile, y, x)
                   for y in range(0, planes.shape[1], ty) for x in range(0, planes.shape[2], tx)]
        for f in futures:
            f.result()


def write_slabs(block: Block, *, job: SlabJob) -> None:
    """Convert one slab block: its level-0 chunks, and its level-1 chunks when there is a pyramid.

    Parameters
    ----------
    block : Block
        Whole slices ``block.write[0]`` (an even start, two level-0 chunks thick).
    job : SlabJob
        The conversion's writers and limits.
    """
    volume = job.source.get()
    if job.decode_threads is not None:
        volume.workers = job.decode_threads
    _, ny, nx = volume.shape
    cz = job.level0.chunks[0]
    slab_bytes = cz * ny * nx * volume.dtype.itemsize
    with ThreadPoolExecutor(job.threads, thread_name_prefix="ml4paleo-convert") as pool:
        if slab_bytes <= job.memory_limit:
            _in_memory(block, volume, job, pool, slab_bytes)
        else:
            _staged(block, volume, job, pool)


def _in_memory(block: Block, volume: Any, job: SlabJob, pool: ThreadPoolExecutor,
               slab_bytes: int) -> None:
    z0, z1 = block.write[0].start, block.write[0].stop
    _, ny, nx = volume.shape
    cz = job.level0.chunks[0]
    subs = [(s, min(s + cz, z1)) for s in range(z0, z1, cz)]
    # Two buffers when they fit: slab k+1 is read while slab k is compressed, overlapping
    # file I/O and decoding with compression. Buffers are reused (fresh ones fault pages).
    nbuf = 2 if 2 * slab_bytes <= job.memory_limit and len(subs) > 1 else 1
    buffers = [job.buffers.take((cz, ny, nx), volume.dtype) for _ in range(nbuf)]
    halver = out1 = None
    if job.level1 is not None:
        out1 = job.buffers.take(((z1 - z0 + 1) // 2,) + job.level1.shape[1:], volume.dtype)
        tile = (2 * job.level1.chunks[1], 2 * job.level1.chunks[2])
        halver = _Halver(out1, z0, job.label, pool, tile)

    def read(k: int) -> np.ndarray:
        s, e = subs[k]
        return volume.read_slab(s, e, out=buffers[k % nbuf][: e - s])

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="ml4paleo-prefetch") as reader:
            pending = reader.submit(read, 0)
            for k, (s, _) in enumerate(subs):
                data = pending.result()
                if k + 1 < len(subs) and nbuf == 2:
                    pending = reader.submit(read, k + 1)
                futures = job.level0.write_region(data, (s, 0, 0), pool)
                if halver is not None:
                    halver.add(data, s)
                for f in futures:
                    f.result()
                del data
                if k + 1 < len(subs) and nbuf == 1:
                    pending = reader.submit(read, k + 1)
        if halver is not None:
            halver.finish()
            for f in job.level1.write_region(out1, (z0 // 2, 0, 0), pool):
                f.result()
    finally:
        job.buffers.give(*buffers, *([out1] if out1 is not None else []))


def _staged(block: Block, volume: Any, job: SlabJob, pool: ThreadPoolExecutor) -> None:
    z0, z1 = block.write[0].start, block.write[0].stop
    _, ny, nx = volume.shape
    cy, cx = job.level0.chunks[1:]
    plane_bytes = ny * nx * volume.dtype.itemsize
    with CellStager(temp_path(Path(job.staging), "staging"), z1 - z0, ny, nx, 2 * cy, 2 * cx,
                    volume.dtype) as stager:
        step = max(1, job.memory_limit // (2 * plane_bytes))
        for s0 in range(z0, z1, step):
            part = volume.read_slab(s0, min(s0 + step, z1))
            for i, plane in enumerate(part):
                stager.put(s0 - z0 + i, plane)
            del part

        def cell(c: int) -> None:
            (y0, x0), data = stager.cell(c)
            job.level0.write_region(data, (z0, y0, x0))
            if job.level1 is not None:
                job.level1.write_region(downsample2(data, job.label), (z0 // 2, y0 // 2, x0 // 2))

        for _ in pool.map(cell, range(len(stager.cells))):
            pass
