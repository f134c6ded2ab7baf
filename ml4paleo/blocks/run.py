"""The block scheduler: stages of blocks, done-markers, retries and chaining, written once.

A :class:`Stage` is a picklable function of one :class:`~ml4paleo.blocks.Block` and the
blocks to run it on. :func:`run` runs a list of stages on one executor:

- blocks already recorded in the stage's done-markers are skipped, and each block is
  marked after its function returned (block functions never check markers);
- a block failing with a transient error (I/O, a lost worker, memory) is retried up to
  ``Stage.retries`` times; an input error (``ValueError`` and its kin) fails the run at once;
- a stage starts each block as soon as the blocks of the previous stage it depends on are
  done (``depends_on``), or after the whole previous stage (a barrier).

The output is the same whichever executor ran the blocks: block functions read their
input and write their own region of the output, and the scheduler only decides when.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .executors import Backend, open_backend
from .grid import Block, overlapping
from .markers import DoneMarkers

log = logging.getLogger(__name__)

__all__ = ["ProgressCallback", "Stage", "imap", "is_transient", "run", "run_blocks"]

ProgressCallback = Callable[[int, int], None]

#: ``depends_on`` values: a barrier, or the previous stage's blocks overlapping the read region
BARRIER = "all"
OVERLAP = "overlap"

_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                  FileExistsError)
_TRANSIENT = (BrokenProcessPool, TimeoutError, ConnectionError, MemoryError, OSError)
_TRANSIENT_NAMES = {"KilledWorker", "CommClosedError", "FutureCancelledError"}


def is_transient(exc: BaseException) -> bool:
    """Whether a block that raised ``exc`` may succeed when run again.

    Lost workers (a broken process pool, Dask's ``KilledWorker``), timeouts, lost
    connections, ``MemoryError`` and I/O errors are transient; missing files, permissions
    and every ``ValueError`` (:class:`ml4paleo.io.InputError` included) are not: running
    again would fail the same way.
    """
    if isinstance(exc, _NOT_TRANSIENT):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return type(exc).__name__ in _TRANSIENT_NAMES


@dataclass
class Stage:
    """One step of blockwise work for :func:`run`.

    Parameters
    ----------
    fn : callable
        ``fn(block) -> result``: a picklable function of one :class:`Block` (module-level,
        or a ``functools.partial`` of one) that reads its input and writes its own output.
    blocks : sequence of Block
        The blocks to run it on.
    name : str
        Shown in logs and Dask task keys.
    markers : path or DoneMarkers, optional
        Done-markers folder: blocks marked there are skipped, finished blocks are marked,
        so an interrupted run resumes. None: every block runs.
    retries : int
        Extra attempts for a block that failed with a transient error (``retry_on``).
    retry_on : callable
        ``retry_on(exc) -> bool``; default :func:`is_transient`.
    depends_on : "all", "overlap" or callable
        For every stage but the first: which blocks of the previous stage a block waits
        for. ``"all"``: the whole previous stage (a barrier). ``"overlap"``: those whose
        write region overlaps this block's read region (same coordinates; use
        :func:`ml4paleo.blocks.overlapping` for a scaled rule). A callable
        ``deps(block) -> iterable of int`` gives positions in the previous stage's blocks.
    max_in_flight : int, optional
        At most this many blocks of this stage at once (e.g. 1 for blocks that use many
        threads or much memory each); default: the run's bound.
    """

    fn: Callable[[Block], Any]
    blocks: Sequence[Block]
    name: str = "blocks"
    markers: str | os.PathLike | DoneMarkers | None = None
    retries: int = 0
    retry_on: Callable[[BaseException], bool] = is_transient
    depends_on: str | Callable[[Block], Iterable[int]] = BARRIER
    max_in_flight: int | None = None
    _markers: DoneMarkers | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.blocks = list(self.blocks)
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.markers is not None:
            self._markers = (self.markers if isinstance(self.markers, DoneMarkers)
                             else DoneMarkers(self.markers))
        if not (callable(self.depends_on) or self.depends_on in (BARRIER, OVERLAP)):
            raise ValueError(f"depends_on must be 'all', 'overlap' or a callable, got "
                             f"{self.depends_on!r}")


class _Plan:
    """Dependency bookkeeping of a list of stages.

    ``waiting[k][i]`` counts the unfinished blocks block ``i`` of stage ``k`` waits for
    (1 for every block of a barrier stage, released when the previous stage completes);
    a block is queued in ``ready[k]`` once, when its count is (or drops to) zero.
    """

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self.done = [[False] * len(s.blocks) for s in stages]
        self.left = [len(s.blocks) for s in stages]  # unfinished blocks per stage
        self.waiting: list[list[int]] = []
        self.children: list[list[list[int]]] = []  # stage k block j -> stage k+1 blocks
        self.barrier = [False] * len(stages)
        self.ready: list[deque[int]] = [deque() for _ in stages]
        for k, stage in enumerate(stages):
            n = len(stage.blocks)
            self.children.append([[] for _ in range(n)])
            if k == 0:
                self.waiting.append([0] * n)
            elif stage.depends_on == BARRIER:
                self.barrier[k] = True
                self.waiting.append([1 if stages[k - 1].blocks else 0] * n)
            else:
                rule = stage.depends_on
                if rule == OVERLAP:
                    rule = overlapping(stages[k - 1].blocks)
                counts = []
                for i, b in enumerate(stage.blocks):
                    deps = sorted({int(j) for j in rule(b)})
                    for j in deps:
                        if not 0 <= j < len(stages[k - 1].blocks):
                            raise ValueError(f"stage {stage.name!r}: dependency {j} of block "
                                             f"{b.name} is not a block of the previous stage")
                        self.children[k - 1][j].append(i)
                    counts.append(len(deps))
                self.waiting.append(counts)
        for k, counts in enumerate(self.waiting):
            self.ready[k].extend(i for i, w in enumerate(counts) if w == 0)

    def marked(self) -> list[tuple[int, int]]:
        """Blocks already recorded in their stage's done-markers."""
        pre = []
        for k, stage in enumerate(self.stages):
            if stage._markers is not None:
                pre.extend((k, i) for i in sorted(stage._markers.done(stage.blocks)))
        return pre

    def next_ready(self, k: int) -> int | None:
        """The next queued, unfinished block of stage ``k``."""
        queue = self.ready[k]
        while queue:
            i = queue.popleft()
            if not self.done[k][i]:
                return i
        return None

    def finish(self, k: int, i: int) -> None:
        """Block ``i`` of stage ``k`` is done: release what waited for it."""
        if self.done[k][i]:
            return
        self.done[k][i] = True
        self.left[k] -= 1
        nxt = k + 1
        if nxt == len(self.stages):
            return
        if self.barrier[nxt]:
            if self.left[k] == 0:
                for c in range(len(self.stages[nxt].blocks)):
                    self._release(nxt, c)
        else:
            for c in self.children[k][i]:
                self._release(nxt, c)

    def _release(self, k: int, i: int) -> None:
        self.waiting[k][i] -= 1
        if self.waiting[k][i] == 0 and not self.done[k][i]:
            self.ready[k].append(i)


def run(
    stages: Sequence[Stage],
    *,
    executor: Any = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    max_in_flight: int | None = None,
) -> list[list[Any]]:
    """Run stages of blockwise work; return each stage's results in block order.

    Parameters
    ----------
    stages : sequence of Stage
        Run in order; each block of stage ``k + 1`` starts once the blocks of stage ``k``
        it depends on are done (see :class:`Stage`).
    executor : None, "serial", "threads", "processes", str address, or dask.distributed.Client
        ``None`` or ``"processes"``: local worker processes (spawned; they die with this
        process). ``"serial"``: in this process, one block at a time. ``"threads"``: this
        process's threads (for functions that release the GIL). A ``tcp://``/``tls://``
        address or a ``Client``: the Dask cluster behind it. One worker or one block
        runs serially.
    workers : int, optional
        Local processes or threads (default: CPUs available).
    progress : callable, optional
        ``progress(done, total)`` over the blocks of all stages (skipped blocks count as
        done), called from this thread.
    max_in_flight : int, optional
        Bound on submitted-but-unfinished blocks (keeps memory flat); default twice the
        executor's slots.

    Returns
    -------
    list of list
        ``results[k][i]``: what stage ``k``'s function returned for its block ``i``
        (None for blocks skipped as already done).

    Raises
    ------
    Exception
        The first error of a block that is not retried (or out of retries); blocks not
        started are dropped.

    Examples
    --------
    >>> from ml4paleo.blocks import Stage, block_grid
    >>> first, second = block_grid((6,), 3), block_grid((6,), 2, halo=1)
    >>> run([Stage(lambda b: b.write[0].start, first),
    ...      Stage(lambda b: b.read[0].stop, second, depends_on="overlap")], executor="serial")
    [[0, 3], [3, 5, 6]]
    """
    stages = list(stages)
    for s in stages:
        if not isinstance(s, Stage):
            raise TypeError(f"stages must be Stage objects, got {type(s).__name__}")
    total = sum(len(s.blocks) for s in stages)
    results: list[list[Any]] = [[None] * len(s.blocks) for s in stages]
    plan = _Plan(stages)
    n_done = 0
    for k, i in plan.marked():
        plan.finish(k, i)
        n_done += 1
    if n_done:
        log.info("resuming: %d of %d blocks already done", n_done, total)
    if progress is not None:
        progress(n_done, total)
    if n_done == total:
        return results
    backend = open_backend(executor, workers, total - n_done)
    bound = max_in_flight or max(2, 2 * backend.slots)
    try:
        _loop(plan, backend, bound, results, n_done, total, progress)
    finally:
        backend.close()
    return results


def _loop(plan: _Plan, backend: Backend, bound: int, results, n_done: int, total: int,
          progress: ProgressCallback | None) -> None:
    stages = plan.stages
    inflight: dict[Any, tuple[int, int]] = {}
    per_stage = [0] * len(stages)
    attempts: dict[tuple[int, int], int] = {}
    order: list[Any] = []  # submission order (the serial backend runs the oldest first)
    try:
        while n_done < total:
            while len(inflight) < bound:
                pick = None
                for k in range(len(stages) - 1, -1, -1):  # later stages first: finish chains
                    cap = stages[k].max_in_flight
                    if cap is not None and per_stage[k] >= cap:
                        continue
                    i = plan.next_ready(k)
                    if i is not None:
                        pick = (k, i)
                        break
                if pick is None:
                    break
                k, i = pick
                stage = stages[k]
                block = stage.blocks[i]
                handle = backend.submit(stage.fn, block, f"{stage.name}-{block.name}")
                inflight[handle] = pick
                order.append(handle)
                per_stage[k] += 1
            if not inflight:
                raise RuntimeError("block scheduler stalled: blocks wait for dependencies "
                                   "that never finish")
            order = [h for h in order if h in inflight]
            for handle in backend.wait(order):
                k, i = inflight.pop(handle)
                per_stage[k] -= 1
                stage = stages[k]
                try:
                    value = backend.outcome(handle)
                except Exception as exc:
                    tries = attempts.get((k, i), 0)
                    if tries < stage.retries and stage.retry_on(exc):
                        attempts[(k, i)] = tries + 1
                        log.warning("%s block %s failed (%s: %s); retry %d of %d", stage.name,
                                    stage.blocks[i].name, type(exc).__name__, exc, tries + 1,
                                    stage.retries)
                        plan.ready[k].appendleft(i)
                        continue
                    raise
                results[k][i] = value
                if stage._markers is not None:
                    stage._markers.mark(stage.blocks[i])
                plan.finish(k, i)
                n_done += 1
                if progress is not None:
                    progress(n_done, total)
    except BaseException:
        backend.cancel(list(inflight))
        raise


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

    The one-stage form of :func:`run` (no markers, no retries).

    Parameters
    ----------
    fn : callable
        A picklable function of one :class:`Block` (a module-level function or a
        ``functools.partial`` of one). It reads its own input and writes its own output.
    blocks : iterable of Block
        The blocks to process.
    executor : None, "serial", "threads", "processes", str address, or dask.distributed.Client
        See :func:`run`.
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
    return run([Stage(fn, list(blocks))], executor=executor, workers=workers,
               progress=progress, max_in_flight=max_in_flight)[0]


def imap(
    fn: Callable[[Block], Any],
    blocks: Iterable[Block],
    *,
    executor: Any = None,
    workers: int | None = None,
    max_in_flight: int | None = None,
    retries: int = 0,
    retry_on: Callable[[BaseException], bool] = is_transient,
) -> Iterator[Any]:
    """Yield ``fn(block)`` for every block, in block order, as the results arrive.

    For streamed output (a zip written slice by slice): at most ``max_in_flight`` blocks
    are computed ahead of the consumer, so memory stays bounded; with the serial executor
    each block is computed when the consumer asks for it.

    Parameters
    ----------
    fn, blocks, executor, workers
        As for :func:`run_blocks`.
    max_in_flight : int, optional
        Blocks computed ahead (default twice the executor's slots).
    retries, retry_on
        As for :class:`Stage`.

    Yields
    ------
    object
        ``fn``'s return values, in the order of ``blocks``.
    """
    blocks = list(blocks)
    if not blocks:
        return
    backend = open_backend(executor, workers, len(blocks))
    bound = max_in_flight or max(2, 2 * backend.slots)
    queue: deque[tuple[int, Any]] = deque()
    attempts = [0] * len(blocks)
    nxt = 0
    try:
        while queue or nxt < len(blocks):
            while nxt < len(blocks) and len(queue) < bound:
                queue.append((nxt, backend.submit(fn, blocks[nxt], f"imap-{blocks[nxt].name}")))
                nxt += 1
            i, handle = queue[0]
            while True:
                finished = backend.wait([handle])
                if handle in finished:
                    break
            queue.popleft()
            try:
                value = backend.outcome(handle)
            except Exception as exc:
                if attempts[i] < retries and retry_on(exc):
                    attempts[i] += 1
                    log.warning("block %s failed (%s: %s); retry %d of %d", blocks[i].name,
                                type(exc).__name__, exc, attempts[i], retries)
                    queue.appendleft((i, backend.submit(fn, blocks[i], f"imap-{blocks[i].name}")))
                    continue
                raise
            yield value
    finally:
        backend.cancel([h for _, h in queue])
        backend.close()
