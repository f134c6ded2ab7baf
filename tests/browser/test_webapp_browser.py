"""The no-code path end to end in headless Chromium: upload a PNG stack through the home
page, watch the real runners convert it, scroll the slice viewer, segment + mesh (the
runners again), open the 3D view and download zips."""

from __future__ import annotations

import io
import re
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from .conftest import shot

SHAPE = (24, 96, 128)


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'bone' in noisy matrix: (image uint8, truth 0/1)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    truth = (((z - 12) / 9.0) ** 2 + ((y - 48) / 30.0) ** 2 + ((x - 64) / 40.0) ** 2) < 1
    image = np.where(truth, 190, 60) + rng.normal(0, 12, SHAPE)
    return np.clip(image, 0, 255).astype(np.uint8), truth.astype(np.uint8)


def _wait_status(live_server, job_id, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = live_server.store.get(job_id)
        status = str(getattr(record["status"], "value", record["status"]))
        if status in wanted:
            return record
        if status.endswith("_error") and status not in wanted:
            pytest.fail(f"job went to {status}: {record.get('error')}\n{live_server.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"job still {status} after {timeout} s\n{live_server.log_tail()}")
        time.sleep(0.3)


def _canvas_stats(page, selector: str) -> dict:
    return page.eval_on_selector(selector, """(c) => {
        const g = c.getContext('2d');
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let sum = 0, n = 0, colored = 0;
        for (let i = 0; i < d.length; i += 4 * 7) {
            sum += d[i]; n++;
            if (Math.abs(d[i] - d[i + 1]) > 40) colored++;
        }
        return {mean: sum / n, colored};
    }""")


@pytest.mark.timeout(300)
def test_upload_convert_view_segment_mesh_download(page, live_server, tmp_path):
    image, truth = _phantom()
    folder = tmp_path / "ammonite_scan"
    folder.mkdir()
    files = []
    for z in range(SHAPE[0]):
        path = folder / f"slice_{z:03d}.png"
        Image.fromarray(image[z]).save(path)
        files.append(str(path))

    (folder / ".DS_Store").write_bytes(b"junk")  # hidden files are left out
    assert len(files) == SHAPE[0]

    # ---- home: choose a whole folder, name the job (hostile name), upload
    page.goto("/")
    page.set_input_files("#folder-input", str(folder))
    page.wait_for_selector("#selection:not([hidden])")
    assert page.input_value("#source-type") == "image_stack"
    assert page.input_value("#job-name") == "ammonite_scan"
    assert "24 files" in page.text_content("#selection-summary")
    name = '<img src=x onerror="window.pwned=1"> Ammonite'
    page.fill("#job-name", name)
    shot(page, "01-home-selected")
    page.click("#upload-start")
    page.wait_for_url(re.compile(r"/job/[A-Za-z0-9_-]{22,}$"), timeout=60_000)
    job_id = page.url.rsplit("/", 1)[-1]
    uploaded = sorted(p.name for p in (live_server.store.job_dir(job_id) / "upload").rglob("*.png"))
    assert uploaded == [f"slice_{z:03d}.png" for z in range(SHAPE[0])]
    assert page.text_content("#job-name") == name  # shown as text, never as HTML
    assert page.evaluate("window.pwned") is None

    # ---- the real convert runner converts it; the page follows live
    _wait_status(live_server, job_id, {"converted"}, 120)
    page.wait_for_selector("#pipeline li[data-step=convert].done", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#image-meta').textContent"
                           ".includes('24')")
    meta = page.text_content("#image-meta")
    assert "24 × 96 × 128" in meta and "uint8" in meta
    shot(page, "02-job-converted")

    # ---- slice viewer: tiles drawn, scroll changes the slice
    page.goto(f"/job/{job_id}/viewer")
    z_plane = "#planes .plane[data-axis=z] canvas"
    page.wait_for_selector(z_plane)
    page.wait_for_function(
        "(s) => { const c = document.querySelector(s); if (!c || !c.width) return false;"
        " const d = c.getContext('2d').getImageData(c.width/2, c.height/2, 1, 1).data;"
        " return d[0] > 100; }", arg=z_plane, timeout=20_000)
    label = page.locator("#planes .plane[data-axis=z] .label")
    assert "slice 13 / 24" in label.text_content()
    box = page.locator(z_plane).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(5):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(60)
    page.wait_for_function("() => document.querySelector('#planes .plane[data-axis=z] .label')"
                           ".textContent.includes('slice 18 / 24')")
    page.wait_for_timeout(500)
    shot(page, "03-viewer-scrolled")
    stats = _canvas_stats(page, z_plane)
    assert 20 < stats["mean"] < 250

    # ---- annotate two slices (library, as the annotation studio would), segment + mesh
    from ml4paleo.segmentation import LabelStore

    store = live_server.store
    labels = LabelStore.create(store.job_dir(job_id) / "annotations", SHAPE,
                               classes=[{"name": "matrix", "color": "#888888"},
                                        {"name": "bone", "color": "#e6194b"}])
    for z in (8, 16):
        labels.write_slice(0, z, (truth[z] + 1).astype(np.uint8))
    store.record_annotation(job_id)
    page.goto(f"/job/{job_id}")
    page.click("#segment-btn")  # queues the segment runner from the job page
    page.wait_for_selector("#pipeline li[data-step=segment].done", timeout=150_000)
    record = _wait_status(live_server, job_id, {"segmented"}, 30)
    seg_id = record["segmentation_id"]
    page.click("#mesh-btn")
    page.wait_for_selector("#pipeline li[data-step=mesh].done", timeout=120_000)
    _wait_status(live_server, job_id, {"meshed"}, 30)
    page.reload()
    page.wait_for_selector("#pipeline li[data-step=mesh].done")
    assert page.locator("#actions a", has_text="3D view").count() == 1
    shot(page, "04-job-meshed")

    # ---- slice viewer with the overlay
    page.goto(f"/job/{job_id}/viewer")
    page.wait_for_selector("#overlay-controls:not([hidden])")
    page.wait_for_function(
        "(s) => { const c = document.querySelector(s); if (!c || !c.width) return false;"
        " const d = c.getContext('2d').getImageData(c.width/2, c.height/2, 1, 1).data;"
        " return d[0] - d[1] > 40; }", arg=z_plane, timeout=20_000)
    assert page.locator("#class-list li").count() >= 1
    shot(page, "05-viewer-overlay")

    # ---- 3D view: meshes with three.js, then the volume with NiiVue
    page.goto(f"/job/{job_id}/3d")
    page.wait_for_function(
        "() => Number(document.querySelector('#mesh-stage').dataset.loaded) > 0", timeout=30_000)
    page.wait_for_timeout(800)
    assert page.locator("#mesh-list li").count() >= 1
    shot(page, "06-3d-meshes")
    pixels = page.evaluate("""() => {
        const c = document.querySelector('#mesh-stage canvas');
        const g = c.getContext('webgl2') || c.getContext('webgl');
        const w = g.drawingBufferWidth, h = g.drawingBufferHeight;
        const px = new Uint8Array(4 * w * h);
        g.readPixels(0, 0, w, h, g.RGBA, g.UNSIGNED_BYTE, px);
        let lit = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] > 90 && px[i] > px[i + 2] + 30) lit++;
        return lit / (w * h);
    }""")
    assert pixels > 0.01, f"mesh barely visible: {pixels:.4f} of the canvas"
    page.click(".tab[data-tab=volume]")
    page.wait_for_selector("#vol-canvas[data-loaded=true]", timeout=40_000)
    page.wait_for_timeout(1000)
    shot(page, "07-3d-volume")

    # ---- downloads: the zips stream and hold what they should
    page.goto(f"/job/{job_id}/download")
    page.wait_for_selector("#downloads-table tbody tr")
    shot(page, "08-downloads")
    with page.expect_download() as dl_info:
        page.click(f"a[href='/api/job/{job_id}/meshes/{seg_id}/download']")
    meshes_zip = zipfile.ZipFile(dl_info.value.path())
    names = meshes_zip.namelist()
    assert any(n.endswith(".stl") for n in names) and any(n.endswith(".glb") for n in names)
    with page.expect_download() as dl_info:
        page.click(f"a[href='/api/job/{job_id}/segmentation/{seg_id}/download/png']")
    png_zip = zipfile.ZipFile(dl_info.value.path())
    slices = sorted(n for n in png_zip.namelist() if n.endswith(".png"))
    assert len(slices) == SHAPE[0]
    mid = np.asarray(Image.open(io.BytesIO(png_zip.read(slices[12]))))
    agreement = ((mid > 0) == (truth[12] > 0)).mean()
    assert agreement > 0.9, f"segmentation agrees with the truth on {agreement:.2%} only"

    # ---- home: the job is listed with its status
    page.goto("/")
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    row.wait_for()
    assert "meshed" in row.text_content()
    assert row.locator("td").first.text_content() == name
    shot(page, "09-home-list")
    assert not page.evaluate("window.pwned")
    errors = [e for e in page.js_errors if "favicon" not in e]
    assert not errors, errors
