"""Blockwise processing written once: block grid, halo reads, the scheduler, done-markers.

A :class:`Block` has a *write* region (the voxels it owns, chunk aligned) and a *read*
region (the write region grown by a halo and clipped to the volume). Block functions are
plain picklable functions of a block; :func:`run` runs stages of them — serially, on
threads, on local worker processes or on a Dask cluster, with the same output — and owns
the done-markers (resumable runs), retries of transient failures, and the chaining of
one stage after another (block by block where the dependencies are known).

Modules: :mod:`~ml4paleo.blocks.grid` (blocks, halos), :mod:`~ml4paleo.blocks.run`
(:class:`Stage`, :func:`run`, :func:`run_blocks`, :func:`imap`),
:mod:`~ml4paleo.blocks.executors` (where blocks run), :mod:`~ml4paleo.blocks.markers`,
:mod:`~ml4paleo.blocks.worker` (workers die with their parent),
:mod:`~ml4paleo.blocks.shared` (values opened once per worker).

Example
-------
>>> import functools, numpy as np
>>> from ml4paleo.blocks import Stage, block_grid, run
>>> vol = np.arange(64.0).reshape(4, 4, 4)
>>> def total(v, block):
...     return float(v[block.write].sum())
>>> [sum(r) for r in run([Stage(functools.partial(total, vol), block_grid(vol.shape, 2))],
...                      executor="serial")]
[2016.0]
"""

from __future__ import annotations

from .executors import EXECUTORS, default_workers, is_dask
from .grid import Block, block_grid, overlapping, pad_reflect, read_with_halo
from .markers import DoneMarkers
from .progress import tqdm_progress
from .run import ProgressCallback, Stage, imap, is_transient, run, run_blocks
from .shared import Shared

__all__ = [
    "EXECUTORS",
    "Block",
    "DoneMarkers",
    "ProgressCallback",
    "Shared",
    "Stage",
    "block_grid",
    "default_workers",
    "imap",
    "is_dask",
    "is_transient",
    "overlapping",
    "pad_reflect",
    "read_with_halo",
    "run",
    "run_blocks",
    "tqdm_progress",
]
