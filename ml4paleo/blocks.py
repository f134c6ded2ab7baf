"""Blockwise processing written once: block grid, halo reads, done-markers and executors.

A :class:`Block` has a *write* region (the voxels it owns, chunk aligned) and a *read*
region (the write region grown by a halo and clipped to the volume).  Workers are plain
functions of a block; :func:`run_blocks` runs them serially, on local worker processes,
or on a Dask cluster, so the output is identical whichever executor ran it.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Block:
    """One block of a regular grid.

    Attributes
    ----------
    index : tuple of int
        Position of the block in the grid.
    write : tuple of slice
        Region of the volume this block produces (never overlaps another block's).
    read : tuple of slice
        ``write`` grown by the halo on every side, clipped to the volume.
    halo : tuple of int
        Requested halo per axis (the read region may be smaller at the volume border).
    """

    index: tuple[int, ...]
    write: tuple[slice, ...]
    read: tuple[slice, ...]
    halo: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the write region."""
        return tuple(s.stop - s.start for s in self.write)

    @property
    def name(self) -> str:
        """Stable text id, e.g. ``"0_3_1"``, used for done-markers."""
        return "_".join(str(i) for i in self.index)

    def crop_from_read(self) -> tuple[slice, ...]:
        """Slices that cut the write region out of an array covering ``read``."""
        return tuple(
            slice(w.start - r.start, w.stop - r.start)
            for w, r in zip(self.write, self.read, strict=True)
        )

    def crop_from_padded(self) -> tuple[slice, ...]:
        """Slices that cut the write region out of :func:`read_with_halo`'s full-halo array."""
        return tuple(slice(h, h + n) for h, n in zip(self.halo, self.shape, strict=True))


def _as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        out = (int(value),) * ndim
    else:
        out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} needs {ndim} values, got {len(out)}")
    return out


def block_grid(
    shape: Sequence[int],
    block_shape: int | Sequence[int],
    halo: int | Sequence[int] = 0,
) -> list[Block]:
    """Cut a volume into a regular grid of blocks.

    Parameters
    ----------
    shape : sequence of int
        Volume shape.
    block_shape : int or sequence of int
        Block edge per axis (make it a multiple of the output chunk shape so that
        blocks write whole chunks).
    halo : int or sequence of int
        Context voxels on each side of a block's read region.

    Returns
    -------
    list of Block
        Blocks in C order.

    Examples
    --------
    >>> blocks = block_grid((10, 10), 4, halo=1)
    >>> len(blocks), blocks[0].write, blocks[0].read
    (9, (slice(0, 4, None), slice(0, 4, None)), (slice(0, 5, None), slice(0, 5, None)))
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    bs = _as_tuple(block_shape, ndim, "block_shape")
    hs = _as_tuple(halo, ndim, "halo")
    if any(b <= 0 for b in bs):
        raise ValueError(f"block_shape must be positive, got {bs}")
    if any(h < 0 for h in hs):
        raise ValueError(f"halo must be >= 0, got {hs}")
    counts = [math.ceil(s / b) for s, b in zip(shape, bs, strict=True)]
    blocks = []
    for index in itertools.product(*(range(c) for c in counts)):
        write = tuple(
            slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, bs, shape, strict=True)
        )
        read = tuple(
            slice(max(w.start - h, 0), min(w.stop + h, s))
            for w, h, s in zip(write, hs, shape, strict=True)
        )
        blocks.append(Block(tuple(index), write, read, hs))
    return blocks


def read_with_halo(array: Any, block: Block, pad_mode: str = "symmetric") -> np.ndarray:
    """Read ``block.read`` from ``array`` and pad to the full halo at the volume border.

    The padding mirrors the volume (``"symmetric"`` equals scipy.ndimage's ``"reflect"``
    boundary mode), so a filter run on the padded block and cropped with
    :meth:`Block.crop_from_padded` equals the same filter run on the whole volume.

    Parameters
    ----------
    array : array-like
        Anything sliceable that returns numpy arrays (zarr array, numpy, lazy reader).
    block : Block
        The block to read.
    pad_mode : str
        ``numpy.pad`` mode for the part of the halo outside the volume.

    Returns
    -------
    numpy.ndarray
        Array of shape ``block.shape + 2 * block.halo``.
    """
    data = np.asarray(array[block.read])
    pads = []
    for w, r, h in zip(block.write, block.read, block.halo, strict=True):
        before = h - (w.start - r.start)
        after = h - (r.stop - w.stop)
        pads.append((before, after))
    if any(p != (0, 0) for p in pads):
        data = _pad_reflect(data, pads, pad_mode)
    return data


def _pad_reflect(data: np.ndarray, pads: list[tuple[int, int]], mode: str) -> np.ndarray:
    # numpy's symmetric padding cannot exceed the axis length in one go; repeat until done.
    while any(b > 0 or a > 0 for b, a in pads):
        step = []
        for (b, a), n in zip(pads, data.shape, strict=True):
            step.append((min(b, n), min(a, n)))
        data = np.pad(data, step, mode=mode)
        pads = [(b - sb, a - sa) for (b, a), (sb, sa) in zip(pads, step, strict=True)]
    return data


class DoneMarkers:
    """Empty files that record finished blocks, so an interrupted run can resume.

    Parameters
    ----------
    folder : path
        Folder for the marker files (created on demand).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def is_done(self, block: Block) -> bool:
        """Whether ``block`` was marked done."""
        return (self.folder / block.name).exists()

    def mark(self, block: Block) -> None:
        """Record ``block`` as done (after its output is fully written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / block.name).touch()

    def clear(self) -> None:
        """Forget every marker."""
        if self.folder.exists():
            for p in self.folder.iterdir():
                p.unlink(missing_ok=True)
            self.folder.rmdir()


def default_workers() -> int:
    """Worker processes to use when none are given: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_blocks(
    fn: Callable[[Block], Any],
    blocks: Iterable[Block],
    *,
    executor: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    max_in_flight: int | None = None,
) -> list[Any]:
    """Run ``fn(block)`` for every block and return the results in block order.

    Parameters
    ----------
    fn : callable
        A picklable function of one :class:`Block` (a module-level function or a
        ``functools.partial`` of one). It reads its own input and writes its own output.
    blocks : iterable of Block
        The blocks to process.
    executor : None, "serial", "processes", str address, or dask.distributed.Client
        ``None`` or ``"processes"``: local worker processes (``"serial"`` when only one
        worker or one block). ``"serial"``: in this process. A ``tcp://``/``tls://``
        address or a ``Client``: the Dask cluster behind it.
    workers : int, optional
        Local worker processes (default: CPUs available).
    progress : callable, optional
        Called as ``progress(done, total)`` after each finished block.
    max_in_flight : int, optional
        Bound on submitted-but-unfinished blocks (keeps memory flat); default 2 x workers.

    Returns
    -------
    list
        ``fn``'s return values, in the order of ``blocks``.

    Raises
    ------
    Exception
        The first exception raised by ``fn`` (other blocks are cancelled).
    """
    blocks = list(blocks)
    total = len(blocks)
    if progress is not None:
        progress(0, total)
    if total == 0:
        return []
    if _is_dask(executor):
        return _run_dask(fn, blocks, executor, progress)
    n = workers or default_workers()
    if executor == "serial" or n <= 1 or total == 1:
        results = []
        for i, b in enumerate(blocks):
            results.append(fn(b))
            if progress is not None:
                progress(i + 1, total)
        return results
    if executor not in (None, "processes"):
        raise ValueError(f"unknown executor {executor!r}: use 'serial', 'processes', a Dask Client or address")
    return _run_processes(fn, blocks, n, progress, max_in_flight or 2 * n)


def _is_dask(executor: Any) -> bool:
    if isinstance(executor, str):
        return "://" in executor
    return executor is not None and type(executor).__name__ == "Client"


def _run_processes(fn, blocks, n, progress, max_in_flight):
    # spawn: forking a process that runs zarr's event-loop thread can deadlock.
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(blocks)
    done_count = 0
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        pending: dict = {}
        todo = iter(enumerate(blocks))
        try:
            while True:
                while len(pending) < max_in_flight:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    i, b = nxt
                    pending[pool.submit(fn, b)] = i
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    results[i] = fut.result()
                    done_count += 1
                    if progress is not None:
                        progress(done_count, len(blocks))
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return results


def _run_dask(fn, blocks, executor, progress):
    from dask.distributed import Client, as_completed

    own = isinstance(executor, str)
    client = Client(executor) if own else executor
    try:
        futures = client.map(fn, blocks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(blocks)
        for n_done, fut in enumerate(as_completed(futures), start=1):
            results[index[fut.key]] = fut.result()
            if progress is not None:
                progress(n_done, len(blocks))
        return results
    finally:
        if own:
            client.close()


def tqdm_progress(desc: str, disable: bool = False) -> ProgressCallback:
    """A progress callback that drives a tqdm bar (for the CLI)."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="block", disable=disable)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
