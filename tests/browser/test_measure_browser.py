"""Morphometry in headless Chromium: the job page's Measure action runs the real measure
runner, the results table shows the known thickness, and the slice viewer shows the
thickness map as a colour overlay with its legend."""

from __future__ import annotations

import time

import numpy as np
import pytest

from .conftest import shot

SHAPE = (32, 96, 96)
PLATE = (12, 20)  # z range of the 8-voxel plate (class 1)


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[PLATE[0]:PLATE[1], 8:88, 8:88] = 1
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    for cy, cx in ((30, 30), (60, 66)):
        lab[(z - 26) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 16] = 2
    return lab


def _segmented(live_server) -> tuple[str, str]:
    from ml4paleo.formats import add_labels, build_pyramid
    from ml4paleo.workspace import SegmentationRegistry
    from ml4paleo.workspace.segmentations import record_segmentation

    labels = _labels()
    image = (labels * 80 + 40).astype(np.uint8)
    job_id = live_server.seed_job("measure me", image)
    store = live_server.store
    paths = store.paths(job_id)
    seg_id = SegmentationRegistry(paths).create()
    lab = add_labels(paths.image, seg_id, classes=["background", "cortex", "grain"], chunks=64)
    lab.array[:] = labels
    build_pyramid(lab)
    record_segmentation(lambda fn: store.update(job_id, fn), seg_id)
    store.update(job_id, lambda r: r.update(status="segmented"))
    return job_id, seg_id


@pytest.mark.timeout(240)
def test_measure_from_the_job_page_then_the_thickness_overlay(page, live_server):
    job_id, seg_id = _segmented(live_server)
    # meshes first (the mesh runner), so measuring also colours them by thickness
    live_server.store.request_mesh(job_id, formats=["ply", "glb"])
    deadline = time.monotonic() + 120
    while str(live_server.store.get(job_id)["status"]) != "meshed":
        assert time.monotonic() < deadline, live_server.log_tail()
        time.sleep(0.3)
    page.goto(f"/job/{job_id}")
    page.wait_for_selector("#measure-btn")
    assert page.locator("#morphometry-card").is_hidden()
    page.click("#measure-btn")
    page.wait_for_selector("#pipeline li[data-step=measure].done", timeout=180_000)
    page.wait_for_selector("#morphometry-table tbody tr")
    page.wait_for_timeout(300)
    rows = page.locator("#morphometry-table tbody tr")
    assert rows.count() == 2
    cells = [rows.nth(0).locator("td").nth(i).inner_text() for i in range(10)]
    header = page.locator("#morphometry-table thead th").all_inner_texts()
    assert cells[0] == "cortex" and header[5] == "Th max (micrometer)"
    assert float(cells[5]) == pytest.approx(8.0)  # the plate is 8 voxels of 1 µm
    assert rows.nth(1).locator("td").nth(9).inner_text() == "2"  # two grains
    assert page.locator("#morphometry-files a", has_text="objects.csv").count() == 1
    record = live_server.store.get(job_id)
    assert str(getattr(record["status"], "value", record["status"])) == "measured"
    shot(page, "measure-01-job-table")

    # ---- slice viewer: the thickness overlay and its legend
    page.click("#morphometry-files a:has-text('Thickness map')")
    page.wait_for_selector("#thickness-controls:not([hidden])")
    assert page.locator("#thickness-show").is_checked()
    ticks = page.locator("#thickness-ticks span").all_inner_texts()
    assert ticks[0] == "0" and float(ticks[-1]) == pytest.approx(32.0)
    assert "micrometer" in page.locator("#thickness-unit").inner_text()
    z_plane = "#planes .plane[data-axis=z] canvas"
    # the centre of the z = 16 plane lies in the plate: viridis blue of 8/32 dominates
    page.wait_for_function(
        "(s) => { const c = document.querySelector(s); if (!c || !c.width) return false;"
        " const d = c.getContext('2d').getImageData(c.width/2, c.height/2, 1, 1).data;"
        " return d[2] - d[0] > 30; }", arg=z_plane, timeout=20_000)
    shot(page, "measure-02-viewer-thickness")
    page.uncheck("#thickness-show")
    time.sleep(0.5)
    centre = page.eval_on_selector(
        z_plane, "(c) => Array.from(c.getContext('2d').getImageData(c.width/2, c.height/2, 1, 1).data)")
    assert centre[2] - centre[0] <= 30, centre  # the class colour again, not the map

    # ---- 3D view: the meshes coloured by local thickness, with the legend
    page.goto(f"/job/{job_id}/3d")
    page.wait_for_function(
        "() => Number(document.querySelector('#mesh-stage').dataset.loaded) > 0", timeout=30_000)
    page.wait_for_selector("#mesh-thickness:not([hidden])")
    page.check("#mesh-thickness-show")
    page.wait_for_function(
        "() => document.querySelector('#mesh-stage').dataset.coloring === 'thickness'"
        " && Number(document.querySelector('#mesh-stage').dataset.loaded) === 2", timeout=30_000)
    page.wait_for_timeout(800)
    assert page.locator("#mesh-thickness-legend").is_visible()
    shot(page, "measure-03-3d-thickness")
    bluish = page.evaluate("""() => {
        const c = document.querySelector('#mesh-stage canvas');
        const g = c.getContext('webgl2') || c.getContext('webgl');
        const w = g.drawingBufferWidth, h = g.drawingBufferHeight;
        const px = new Uint8Array(4 * w * h);
        g.readPixels(0, 0, w, h, g.RGBA, g.UNSIGNED_BYTE, px);
        let n = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i + 2] > px[i] + 25 && px[i + 2] > 60) n++;
        return n / (w * h);
    }""")
    assert bluish > 0.01, f"thickness colours barely visible: {bluish:.4f}"
    assert not page.js_errors, page.js_errors
