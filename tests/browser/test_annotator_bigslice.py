"""The annotator on a 2048 x 2048 scan in headless Chromium: paint, see the first (coarse)
overlay, zoom in and see it refined in place by finer tiles, pan and see new tiles.

The scan (8 x 2048 x 2048 uint8) is written chunk by chunk from a mirrored phantom, never
whole in memory. Screenshots: ``test-artifacts/bigslice-*.png``.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import requests
from PIL import Image

from .conftest import ARTIFACTS
from .test_annotator import _stroke, _to_page, _wait_saved

pytestmark = pytest.mark.browser

Z = 4
N = 2048


def _runs(mask2d: np.ndarray, rows, min_len: int = 40, max_len: int = 200):
    """(row, x0, x1) of horizontal runs of True at least ``min_len`` long in ``rows``."""
    out = []
    for r in rows:
        row = np.r_[False, mask2d[r], False].astype(np.int8)
        d = np.diff(row)
        starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        for a, b in zip(starts, stops, strict=True):
            if b - a >= min_len:
                out.append((int(r), int(a) + 8, int(min(b, a + max_len)) - 8))
                break
    return out


def _canvas_pixels(page) -> np.ndarray:
    """The central part of the annotator canvas (device pixels), RGBA."""
    data = page.evaluate("""() => { const c = document.getElementById('ann-canvas');
        const w = Math.floor(c.width / 2), h = Math.floor(c.height / 2);
        const d = c.getContext('2d').getImageData(Math.floor(w / 2), Math.floor(h / 2), w, h);
        return [w, h, Array.from(d.data)]; }""")
    w, h, px = data
    return np.array(px, np.uint8).reshape(h, w, 4)


def _tile_requests(page) -> list[dict]:
    out = []
    for url in page.evaluate("window.ml4paleoAnnotator.tileLog"):
        q = dict(re.findall(r"[?&](\w+)=([^&]*)", url))
        out.append({k: q[k] for k in ("level", "ty", "tx", "kind")})
    return out


def shot(page, name: str) -> None:
    """Screenshot of the window as it is (a full-page one resizes the window, and a resize
    fits the slice to the view again)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def _press(page, key: str, times: int) -> None:
    for _ in range(times):
        page.keyboard.press(key)


def test_a_2048_scan_previews_coarse_first_then_refines_when_zoomed_and_panned(page, live_server):
    job_id, phantom = live_server.seed_phantom_job("bigslice 2048", (8, N, N), "uint8",
                                                   tile=(16, 128, 128))
    truth = phantom.plane_truth(0, Z)
    page.goto(f"/job/{job_id}/annotate#axis=z&index={Z}")
    page.wait_for_selector(f"#ann-viewport[data-loaded='z:{Z}']", timeout=60_000)
    info = page.evaluate("window.ml4paleoAnnotator.info")
    assert info["levels"][0] == [8, N, N] and info["levels"][2] == [2, 512, 512]
    shot(page, "bigslice-0-opened")

    # paint: background and bone strokes along runs of the truth in the top-left quarter
    page.fill("#ann-brush", "6")
    page.dispatch_event("#ann-brush", "input")
    rows = range(40, 1000, 90)
    page.keyboard.press("1")
    for row, a, b in _runs(truth[:, :1000] == 0, rows)[:4]:
        _stroke(page, row, a, b)
    page.keyboard.press("2")
    for row, a, b in _runs(truth[:, :1000] > 0, range(40, 1000, 10), min_len=24)[:6]:
        _stroke(page, row, a, b)
    page.wait_for_selector("#ann-viewport[data-prediction]", timeout=120_000)
    _wait_saved(page)
    labels = np.array(page.evaluate("Array.from(window.ml4paleoAnnotator.labels)"), np.uint8)
    assert (labels == 1).sum() > 1000 and (labels == 2).sum() > 200

    # the first overlay: the whole plane on the coarse level (512 x 512), at fit view no
    # finer tiles are needed (the view level is the coarse one)
    pv = page.evaluate("window.ml4paleoAnnotator.pv")
    assert pv["level"] == 2 and pv["levels"][2] == [512, 512] and pv["tile"] == 256
    assert page.evaluate("window.ml4paleoAnnotator.predImg.width") == 512
    page.wait_for_timeout(500)
    assert page.get_attribute("#ann-viewport", "data-view-level") == "2"
    assert _tile_requests(page) == []
    # it is a real prediction: the coarse tile at the top left follows the truth
    r = requests.get(f"{live_server.url}/api/job/{job_id}/annotate/tile",
                     params={"axis": "z", "index": Z, "level": 2, "ty": 0, "tx": 0}, timeout=120)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    alpha = np.asarray(Image.open(io.BytesIO(r.content)))[..., 3] > 0
    assert alpha.shape == (256, 256)
    bone = truth[:1024:4, :1024:4] > 0
    assert alpha[bone].mean() > 0.5 and alpha[~bone].mean() < 0.3, (alpha[bone].mean(),
                                                                    alpha[~bone].mean())
    shot(page, "bigslice-1-coarse-overlay")

    # zoom in (x1.95): the view level becomes 1; hold the tiles to see the coarse overlay
    # first, then let them through and see it refined in place
    held, hold = [], [True]

    def tiles(route):
        if hold[0]:
            held.append(route)
        else:
            route.continue_()

    page.route("**/annotate/tile?*", tiles)
    _press(page, "+", 3)
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "no tile was requested after zooming in"
    assert page.get_attribute("#ann-viewport", "data-view-level") == "1"
    before = _canvas_pixels(page)
    shot(page, "bigslice-2-zoomed-before-tiles")
    hold[0] = False
    for route in held:
        route.continue_()
    page.wait_for_function(
        "() => document.getElementById('ann-viewport').dataset.tileLevel === '1' && "
        "Number(document.getElementById('ann-viewport').dataset.tiles) >= 4", timeout=120_000)
    page.wait_for_timeout(300)
    after = _canvas_pixels(page)
    changed = np.any(before != after, axis=2).mean()
    assert changed > 0.005, changed  # the overlay changed in place (finer edges)
    level1 = [t for t in _tile_requests(page) if t["level"] == "1"]
    assert level1 and all(t["kind"] == "classes" for t in level1)
    shot(page, "bigslice-3-refined-level-1")

    # zoom in further (x2.44 more): full-resolution tiles
    _press(page, "+", 4)
    page.wait_for_function(
        "() => document.getElementById('ann-viewport').dataset.tileLevel === '0'", timeout=120_000)
    level0 = {(t["ty"], t["tx"]) for t in _tile_requests(page) if t["level"] == "0"}
    assert level0
    page.wait_for_timeout(300)
    shot(page, "bigslice-4-refined-level-0")

    # pan (right-drag) to the right and down: tiles of the newly visible part come in
    box = page.locator("#ann-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    for k in range(1, 9):
        page.mouse.move(cx - 70 * k, cy - 50 * k)
    page.mouse.up(button="right")
    page.wait_for_function(
        """(seen) => window.ml4paleoAnnotator.tileLog.some((u) => u.includes('level=0') &&
             !seen.includes(u.match(/ty=(\\d+)&tx=(\\d+)/).slice(1).join(',')))""",
        arg=[f"{ty},{tx}" for ty, tx in level0], timeout=60_000)
    new = {(t["ty"], t["tx"]) for t in _tile_requests(page) if t["level"] == "0"} - level0
    assert new
    page.wait_for_timeout(1500)
    shot(page, "bigslice-5-panned")
    # a stroke at this zoom still lands where the mouse is
    a = _to_page(page, 1, 1)
    assert np.isfinite(a).all()
    assert not page.js_errors, page.js_errors
