"""The job page's surface choice reaches the mesh runner; the 3D view before/after smoothing.

Screenshots: ``test-artifacts/smooth-none-3d.png`` (stair-stepped marching cubes) and
``test-artifacts/smooth-light-3d.png`` (the default smooth surface) of the same labels.
"""

from __future__ import annotations

import time

import numpy as np

from ml4paleo.meshing.stats import row_key

from .conftest import shot

SHAPE = (64, 80, 80)
SEG = "seg-smooth"


def _labels() -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    labels = np.zeros(SHAPE, np.uint8)
    labels[(z - 31.6) ** 2 + (y - 24.3) ** 2 + (x - 25.8) ** 2 <= 17.0**2] = 1  # a ball
    ring = np.sqrt((y - 52.4) ** 2 + (x - 50.2) ** 2) - 16.0
    labels[ring**2 + (z - 30.7) ** 2 <= 6.0**2] = 2  # a torus
    labels[6:58, 8:11, 66:69] = 2  # a rod 3 voxels across
    return labels


def _seed_segmentation(live_server, job_id: str, labels: np.ndarray) -> None:
    from ml4paleo._fs import atomic_write_json
    from ml4paleo.formats import build_pyramid, create_image

    store = live_server.store
    seg_dir = store.job_dir(job_id) / "segmentations" / SEG
    img = create_image(seg_dir / "labels.ome.zarr", labels.shape, np.uint8, chunks=64,
                       voxel_size=(1.0, 1.0, 1.0), unit="micrometer", label=True)
    img.array[:] = labels
    build_pyramid(img)
    atomic_write_json(seg_dir / "segmentation.json", {"id": SEG, "model_id": None})

    def segmented(record: dict) -> None:
        record.update(status="segmented", segmentation_id=SEG, segmentations=[SEG],
                      message="seeded by a test")

    store.update(job_id, segmented)


def _mesh_from_job_page(page, live_server, job_id: str, smooth: str) -> dict:
    page.goto(f"/job/{job_id}")
    page.wait_for_selector("#mesh-btn")
    page.select_option("#mesh-smooth", smooth)
    page.wait_for_timeout(1500)  # a poll re-renders the actions: the choice must survive it
    assert page.locator("#mesh-smooth").input_value() == smooth
    page.click("#mesh-btn")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        record = live_server.store.get(job_id)
        if record["status"] == "meshed" and record.get("request", {}).get("smooth") == smooth:
            return record
        assert record["status"] not in ("mesh_error",), record.get("error")
        time.sleep(0.5)
    raise AssertionError(f"meshing did not finish: {live_server.store.get(job_id)['status']}")


def _show_3d(page, job_id: str, name: str):
    page.goto(f"/job/{job_id}/3d")
    page.wait_for_function(
        "() => Number(document.querySelector('#mesh-stage').dataset.loaded) > 0", timeout=60_000)
    page.wait_for_timeout(1500)
    path = shot(page, name)
    return path, page.evaluate("""() => {
        const c = document.querySelector('#mesh-stage canvas');
        const g = c.getContext('webgl2') || c.getContext('webgl');
        const w = g.drawingBufferWidth, h = g.drawingBufferHeight;
        const px = new Uint8Array(4 * w * h);
        g.readPixels(0, 0, w, h, g.RGBA, g.UNSIGNED_BYTE, px);
        let lit = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 150) lit++;
        return lit / (w * h);
    }""")


def _roughness(png) -> float:
    """Mean |Laplacian| of the brightness inside the shapes (silhouettes eroded away)."""
    from PIL import Image
    from scipy import ndimage

    g = np.asarray(Image.open(png).convert("L"), np.float64)[260:, 300:]  # the stage
    inside = ndimage.binary_erosion(g > 60, iterations=4)
    return float(np.abs(ndimage.laplace(g))[inside].mean())


def test_surface_choice_on_the_job_page_and_3d_view_before_after(page, live_server):
    labels = _labels()
    rng = np.random.default_rng(0)
    image = (labels * 90 + rng.normal(40, 6, SHAPE)).clip(0, 255).astype(np.uint8)
    job_id = live_server.seed_job("smooth surfaces", image)
    _seed_segmentation(live_server, job_id, labels)
    seg_dir = live_server.store.job_dir(job_id) / "segmentations" / SEG

    areas = {}
    for smooth in ("none", "light"):
        _mesh_from_job_page(page, live_server, job_id, smooth)
        rows = (seg_dir / "stats.csv").read_text().splitlines()
        header = rows[0].split(",")
        first = {row_key(k): v for k, v in zip(header, rows[1].split(","), strict=True)}
        surface = "marching-cubes" if smooth == "none" else "smooth-light"
        assert first["surface"] == surface
        areas[smooth] = float(first["surface_area"])
        path, lit = _show_3d(page, job_id, f"smooth-{smooth}-3d")
        assert lit > 0.01, f"meshes barely visible ({lit:.4f})"
        areas[f"rough-{smooth}"] = _roughness(path)
    # the ball's area: +8-9 % stair-stepped, within 2 % of 4 pi r^2 when smoothed
    ball = 4 * np.pi * 17.0**2
    assert areas["none"] / ball - 1 > 0.07
    assert abs(areas["light"] / ball - 1) < 0.02
    # terraces shade as stripes: the smooth view is much calmer (not a cached stale mesh)
    assert areas["rough-light"] < 0.75 * areas["rough-none"], areas
    assert not page.js_errors, page.js_errors
