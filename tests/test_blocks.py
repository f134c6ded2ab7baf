"""Block grid, halo reads, done-markers and executors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from ml4paleo.blocks import DoneMarkers, block_grid, read_with_halo, run_blocks


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
        run_blocks(_fail_on_second, block_grid((2, 2, 4), 2), executor="threads", workers=2)
