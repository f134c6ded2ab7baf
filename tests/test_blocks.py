"""Block grid, halo reads, the scheduler (markers, retries, chaining) and executors."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from scipy import ndimage

from ml4paleo.blocks import (
    DoneMarkers,
    Shared,
    Stage,
    block_grid,
    imap,
    is_transient,
    overlapping,
    read_with_halo,
    run,
    run_blocks,
)
from ml4paleo.io import InputError


def test_grid_covers_volume_exactly_once():
    shape = (13, 7, 20)
    blocks = block_grid(shape, (4, 4, 8), halo=2)
    cover = np.zeros(shape, dtype=np.int32)
    for b in blocks:
        cover[b.write] += 1
        for w, r, s in zip(b.write, b.read, shape, strict=True):
            assert r.start == max(w.start - 2, 0)
            assert r.stop == min(w.stop + 2, s)
    assert (cover == 1).all()
    assert len(blocks) == 4 * 2 * 3


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block_shape must be positive"):
        block_grid((4, 4, 4), 0)
    with pytest.raises(ValueError, match="halo must be >= 0"):
        block_grid((4, 4, 4), 2, halo=-1)
    with pytest.raises(ValueError, match="needs 3 values"):
        block_grid((4, 4, 4), (2, 2))


@pytest.mark.parametrize("halo", [3, 12])
def test_blockwise_filter_equals_whole_volume(halo):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 18, 22)).astype(np.float32)
    whole = ndimage.gaussian_filter(vol, sigma=0.7, mode="reflect", truncate=4.0)
    out = np.zeros_like(vol)
    for b in block_grid(vol.shape, (8, 7, 9), halo=halo):
        padded = read_with_halo(vol, b)
        assert padded.shape == tuple(s + 2 * halo for s in b.shape)
        out[b.write] = ndimage.gaussian_filter(padded, sigma=0.7, mode="reflect", truncate=4.0)[
            b.crop_from_padded()
        ]
    np.testing.assert_allclose(out, whole, atol=1e-5)


def test_crop_from_read_matches_write_region():
    vol = np.arange(10 * 10).reshape(10, 10)
    for b in block_grid(vol.shape, 4, halo=1):
        np.testing.assert_array_equal(vol[b.read][b.crop_from_read()], vol[b.write])


def test_done_markers(tmp_path):
    markers = DoneMarkers(tmp_path / "done")
    blocks = block_grid((4, 4, 4), 2)
    assert not markers.is_done(blocks[0])
    markers.mark(blocks[0])
    assert markers.is_done(blocks[0]) and not markers.is_done(blocks[1])
    markers.clear()
    assert not markers.is_done(blocks[0])


def _block_sum(vol: np.ndarray, block) -> float:
    return float(vol[block.write].sum())


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_run_blocks_returns_results_in_order(executor):
    vol = np.arange(6 * 6 * 6, dtype=np.float64).reshape(6, 6, 6)
    blocks = block_grid(vol.shape, 3)
    seen = []
    results = run_blocks(
        functools.partial(_block_sum, vol),
        blocks,
        executor=executor,
        workers=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert results == [float(vol[b.write].sum()) for b in blocks]
    assert seen[0] == (0, len(blocks)) and seen[-1] == (len(blocks), len(blocks))


def _fail_on_second(block):
    if block.index == (0, 0, 1):
        raise RuntimeError("boom in block 0_0_1")
    return block.index


def test_run_blocks_propagates_errors():
    with pytest.raises(RuntimeError, match="boom"):
        run_blocks(_fail_on_second, block_grid((2, 2, 4), 2), executor="processes", workers=2)
    with pytest.raises(ValueError, match="unknown executor"):
        run_blocks(_fail_on_second, block_grid((2, 2, 4), 2), executor="gpu", workers=2)


# -- the scheduler -------------------------------------------------------------------------
def _write_block(out_dir, block):
    """Stage 1: write this block's values (its linear index) to a file of its own."""
    np.save(os.path.join(out_dir, f"{block.name}.npy"), np.full(block.shape, sum(block.index)))
    return block.name


def _smooth_block(in_dir, shape, block):
    """Stage 2: read the block with a halo from stage 1's files and sum it."""
    full = np.zeros(shape)
    for b in block_grid(shape, 4):
        overlaps = all(w.start < r.stop and r.start < w.stop for w, r in zip(b.write, block.read, strict=True))
        path = os.path.join(in_dir, f"{b.name}.npy")
        # only the blocks it reads: others may still be mid-write (their stage-1 files are
        # not atomic); a missing or partial dependency makes the sum wrong and the test fail
        if overlaps and os.path.exists(path):
            full[b.write] = np.load(path)
    return float(full[block.read].sum())


@pytest.mark.parametrize("executor", ["serial", "threads", "processes"])
def test_chained_stages_wait_for_the_blocks_they_read(tmp_path, executor):
    shape = (12, 8)
    first = block_grid(shape, 4)
    second = block_grid(shape, 4, halo=1)
    expected = np.zeros(shape)
    for b in first:
        expected[b.write] = sum(b.index)
    seen = []
    results = run(
        [Stage(functools.partial(_write_block, str(tmp_path)), first, name="write"),
         Stage(functools.partial(_smooth_block, str(tmp_path), shape), second, name="smooth",
               depends_on="overlap")],
        executor=executor, workers=2, progress=lambda d, t: seen.append((d, t)),
    )
    assert results[0] == [b.name for b in first]
    # each stage-2 block saw every stage-1 block it reads, finished (no partial sums)
    assert results[1] == [float(expected[b.read].sum()) for b in second]
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_overlapping_maps_scaled_regions():
    level0 = block_grid((16, 16), (8, 16))  # slabs
    deps = overlapping(level0, scale=4)
    level2 = block_grid((4, 4), 2)
    assert [deps(b) for b in level2] == [[0], [0], [1], [1]]
    assert overlapping(block_grid((10,), 3))(block_grid((10,), 5, halo=1)[1]) == [1, 2, 3]


def _count_calls(log_dir, block):
    with open(os.path.join(log_dir, f"{block.name}.{os.getpid()}.{time.monotonic_ns()}"), "w"):
        pass
    return block.name


def test_markers_skip_done_blocks_and_mark_finished_ones(tmp_path):
    blocks = block_grid((6, 6), 2)
    markers = DoneMarkers(tmp_path / "done")
    markers.mark(blocks[0])
    markers.mark(blocks[4])
    calls = tmp_path / "calls"
    calls.mkdir()
    stage = Stage(functools.partial(_count_calls, str(calls)), blocks, markers=markers.folder)
    results = run([stage], executor="serial")[0]
    assert results[0] is None and results[4] is None  # skipped, not recomputed
    assert sorted(p.name.split(".")[0] for p in calls.iterdir()) == sorted(
        b.name for i, b in enumerate(blocks) if i not in (0, 4))
    assert markers.done(blocks) == set(range(len(blocks)))
    # a second run does nothing at all
    seen = []
    run([stage], executor="serial", progress=lambda d, t: seen.append((d, t)))
    assert len(list(calls.iterdir())) == len(blocks) - 2 and seen == [(9, 9)]


def _stop_at(n, done, total):
    if done == n:
        raise KeyboardInterrupt


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    blocks = block_grid((8, 8), 2)
    calls = tmp_path / "calls"
    calls.mkdir()
    stage = Stage(functools.partial(_count_calls, str(calls)), blocks, markers=tmp_path / "m")
    with pytest.raises(KeyboardInterrupt):
        run([stage], executor="serial", progress=functools.partial(_stop_at, 5))
    assert len(list((tmp_path / "m").iterdir())) == 5
    run([stage], executor="serial")
    names = [p.name.split(".")[0] for p in calls.iterdir()]
    assert sorted(names) == sorted(b.name for b in blocks)  # each block ran exactly once


def _flaky(state_dir, exc_type, block):
    """Fails the first time each block runs, then succeeds."""
    flag = os.path.join(state_dir, block.name)
    if not os.path.exists(flag):
        open(flag, "w").close()
        raise exc_type(f"first attempt at {block.name}")
    return block.name


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_transient_errors_are_retried(tmp_path, executor):
    blocks = block_grid((4, 4), 2)
    fn = functools.partial(_flaky, str(tmp_path), OSError)
    out = run([Stage(fn, blocks, retries=1)], executor=executor, workers=2)[0]
    assert out == [b.name for b in blocks]


def test_input_errors_are_not_retried_and_retries_run_out(tmp_path):
    blocks = block_grid((4,), 2)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="first attempt"):
        run([Stage(functools.partial(_flaky, str(tmp_path / "a"), ValueError), blocks,
                   retries=3)], executor="serial")
    (tmp_path / "b").mkdir()
    with pytest.raises(OSError, match="first attempt"):
        run([Stage(functools.partial(_flaky, str(tmp_path / "b"), OSError), blocks)],
            executor="serial")
    assert is_transient(TimeoutError()) and not is_transient(FileNotFoundError())
    assert not is_transient(InputError("bad.tif: truncated"))


def _die_once(state_dir, block):
    """Kills its worker process the first time block 1 runs."""
    flag = os.path.join(state_dir, "died")
    if block.index == (1,) and not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(3)
    return os.getpid()


def test_a_lost_worker_process_is_replaced_and_its_blocks_retried(tmp_path):
    blocks = block_grid((8,), 2)
    out = run([Stage(functools.partial(_die_once, str(tmp_path)), blocks, retries=2)],
              executor="processes", workers=2)[0]
    assert (tmp_path / "died").exists() and all(isinstance(p, int) for p in out)


def _sleep_then_name(seconds, block):
    time.sleep(seconds * (3 - block.index[0]) / 3)
    return block.name


def test_imap_yields_in_block_order_with_a_bounded_queue():
    blocks = block_grid((12,), 3)
    got = list(imap(functools.partial(_sleep_then_name, 0.05), blocks, executor="threads",
                    workers=3, max_in_flight=2))
    assert got == [b.name for b in blocks]
    # serial: computed when asked for
    calls = []
    it = imap(lambda b: calls.append(b.name) or b.name, blocks, executor="serial")
    assert next(it) == "0" and calls == ["0"]


def _pid_and_volume_id(shared, block):
    return os.getpid(), id(shared.get()), float(shared.get()[block.write].sum())


def test_shared_values_are_opened_once_per_worker():
    vol = np.arange(4 * 4 * 4, dtype=np.float64).reshape(4, 4, 4)
    blocks = block_grid(vol.shape, 1)
    out = run_blocks(functools.partial(_pid_and_volume_id, Shared(vol)), blocks,
                     executor="processes", workers=2)
    per_pid = {}
    for pid, ident, _ in out:
        per_pid.setdefault(pid, set()).add(ident)
    assert all(len(ids) == 1 for ids in per_pid.values())  # one copy per worker process
    assert [s for _, _, s in out] == [float(vol[b.write].sum()) for b in blocks]


PARENT_SCRIPT = textwrap.dedent(
    """
    import functools, os, sys, time
    from ml4paleo.blocks import block_grid, run_blocks

    def work(folder, block):
        open(os.path.join(folder, str(os.getpid())), "w").close()
        time.sleep(60)

    if __name__ == "__main__":
        run_blocks(functools.partial(work, sys.argv[1]), block_grid((8,), 1),
                   executor="processes", workers=2)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead too
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc")
def test_worker_processes_die_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(pids)])
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            assert parent.poll() is None, "the parent exited early"
            time.sleep(0.1)
        workers = [int(p.name) for p in pids.iterdir()]
        assert all(_alive(pid) for pid in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


UNGUARDED_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np

    from ml4paleo.blocks import Stage, block_grid, run

    # top level, no __main__ guard: runs once, in this process only
    with open(Path(sys.argv[1]) / "ran", "a") as fh:
        fh.write("x")
    results = run([Stage(np.size, block_grid((8, 8, 8), (2, 8, 8)), name="size")],
                  executor="processes", workers=2)
    print("blocks:", len(results[0]) if isinstance(results, list) else results)
""")

GUARDED_SCRIPT = textwrap.dedent("""
    import sys

    from ml4paleo.blocks import Stage, block_grid, run


    def depth(block):  # defined in the script: the workers need the script
        return block.write[0].stop - block.write[0].start


    if __name__ == "__main__":
        out = run([Stage(depth, block_grid((8, 8, 8), (2, 8, 8)), name="depth")],
                  executor="processes", workers=2)
        print("ok", out)
""")


def test_worker_processes_do_not_rerun_an_unguarded_script(tmp_path):
    """The README's example saved as a file has no ``__main__`` guard: the workers start
    without running it again (they would call ml4paleo again and break the pool)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ran").read_text() == "x"  # once: not in the two workers
    assert "BrokenProcessPool" not in r.stderr


def test_a_block_function_of_the_script_still_reaches_the_workers(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ok")
