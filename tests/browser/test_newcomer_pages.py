"""Pages of issue 16 in headless Chromium: planes of an oriented scan shown as 3D Slicer
shows them (superior up) with flip controls, in the slice viewer and the annotator;
an unfinished upload resumed with the Resume button and another cancelled; the voxel
size set on the job page. Screenshots: ``test-artifacts/newcomer-*.png``."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests

from ml4paleo.world import ZARR_WORLD_KEY, WorldTransform

from .conftest import shot

SHAPE = (40, 48, 56)


def _seed_oriented(live_server, name: str) -> str:
    """A converted job whose world is RAS (a NIfTI brain's) and whose voxels are bright at
    the top (high z = superior) and dark at the bottom."""
    from ml4paleo.formats import build_pyramid, create_image
    from ml4paleo.jobs.steps import image_metadata

    store = live_server.store
    jid = store.create(name, "nifti")["id"]
    z = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    image = np.broadcast_to(z * 6, SHAPE).astype(np.uint8).copy()
    world = WorldTransform(np.diag([1.0, 1.0, 2.0, 1.0]), frame="RAS", unit="millimeter",
                           source="sform")
    dest = store.job_dir(jid) / "image.ome.zarr"
    img = create_image(dest, SHAPE, np.uint8, chunks=32, voxel_size=(2.0, 1.0, 1.0),
                       unit="millimeter", extra_attrs={"source_type": "nifti", "source": {},
                                                       ZARR_WORLD_KEY: world.to_json()})
    img.array[:] = image
    build_pyramid(img)
    meta = image_metadata(dest)
    store.update(jid, lambda r: r.update(status="converted", progress=1.0, metadata=meta))
    return jid


def _rows_mean(png: bytes) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(float)
    return a.mean(axis=1)


@pytest.mark.timeout(180)
def test_oriented_planes_superior_up_with_flips(page, live_server):
    jid = _seed_oriented(live_server, "brain (RAS)")
    info = requests.get(f"{live_server.url}/api/job/{jid}/image", timeout=30).json()
    assert info["orientation"] == "RAS" and info["planes"]["y"]["top"] == "S"

    page.goto(f"/job/{jid}/viewer")
    plane = page.wait_for_selector("#planes .plane[data-axis=y]")
    page.wait_for_function("() => document.querySelector('#planes .plane[data-axis=y] .label')"
                           ".textContent.startsWith('Coronal (y) · slice 25 / 48')")
    page.wait_for_timeout(1500)  # tiles arrive
    assert plane.get_attribute("data-flip-rows") == "true"
    top = plane.query_selector(".edge.top").text_content()
    assert (top, plane.query_selector(".edge.left").text_content()) == ("S", "R")
    rows = _rows_mean(plane.query_selector("canvas").screenshot())
    band = rows[rows > 5]  # the drawn part of the canvas
    assert band[: len(band) // 4].mean() > band[-len(band) // 4:].mean() + 40  # bright top
    shot(page, "newcomer-01-viewer-superior-up")
    plane.query_selector("button[data-flip=v]").click()
    page.wait_for_function("() => document.querySelector('#planes .plane[data-axis=y]')"
                           ".dataset.flipRows === 'false'")
    page.wait_for_timeout(800)
    assert plane.query_selector(".edge.top").text_content() == "I"
    rows = _rows_mean(plane.query_selector("canvas").screenshot())
    band = rows[rows > 5]
    assert band[: len(band) // 4].mean() + 40 < band[-len(band) // 4:].mean()  # now at the bottom
    shot(page, "newcomer-02-viewer-flipped")
    assert "slice 21 / 40" in page.text_content(".info-cell")  # numbered from 1
    assert "null" not in page.text_content(".info-cell")
    assert not page.js_errors, page.js_errors

    # the annotator shows the same plane the same way, and paints where it is clicked
    page.goto(f"/job/{jid}/annotate#axis=y&index=24")
    page.wait_for_selector("#ann-viewport[data-loaded='y:24']")
    vp = page.locator("#ann-viewport")
    assert vp.get_attribute("data-flip-rows") == "true"
    assert page.text_content("#ann-pos").startswith("y slice 25 / 48")
    assert page.locator("#ann-viewport .ann-edge.top").text_content() == "S"
    assert "Coronal view" in page.text_content("#ann-view-name")
    assert "1 × 1 mm" in page.text_content("#ann-voxel")
    x, y = 10, 5  # image pixel: z = 5, near the bottom of the volume (inferior)
    pt = page.evaluate(
        """([x, y]) => { const S = window.ml4paleoAnnotator; const f = S.flips[S.axis];
            const fx = f.cols ? S.w - x : x, fy = f.rows ? S.h - y : y;
            const r = document.getElementById('ann-canvas').getBoundingClientRect();
            return [r.left + S.view.tx + fx * S.view.scale, r.top + S.view.ty + fy * S.view.scale * S.aspect,
                    r.top, r.bottom]; }""", [x + 0.5, y + 0.5])
    assert pt[1] > (pt[2] + pt[3]) / 2  # inferior is drawn in the lower half
    page.fill("#ann-brush", "1")
    page.dispatch_event("#ann-brush", "input")
    page.mouse.click(pt[0], pt[1])
    labels = np.array(page.evaluate("Array.from(window.ml4paleoAnnotator.labels)"))
    w = page.evaluate("window.ml4paleoAnnotator.w")
    assert labels.reshape(-1, w)[y, x] > 0 and labels.sum() == labels.reshape(-1, w)[y, x]
    shot(page, "newcomer-03-annotator-coronal")


def _half_upload(live_server, name: str, data: bytes, filename: str) -> str:
    r = requests.post(f"{live_server.url}/api/job/new", timeout=30, json={
        "name": name, "files": [{"path": filename, "size": len(data), "last_modified": None}]})
    jid = r.json()["job_id"]
    half = len(data) // 2
    r = requests.post(f"{live_server.url}/api/upload", timeout=30, data={
        "job_id": jid, "fullPath": filename, "dzchunkbyteoffset": "0",
        "dztotalfilesize": str(len(data)), "dztotalchunkcount": "2"},
        files={"file": (filename, data[:half])})
    assert r.ok, r.text
    return jid


@pytest.mark.timeout(180)
def test_resume_button_cancel_and_voxel_size_on_the_job_page(page, live_server, tmp_path):
    scan = np.arange(8 * 32 * 40, dtype=np.uint16).reshape(8, 32, 40)
    path = tmp_path / "resume_me.npy"
    np.save(path, scan)
    data = path.read_bytes()
    keep = _half_upload(live_server, "resume me", data, "resume_me.npy")
    drop = _half_upload(live_server, "drop me", data[:5000], "drop_me.bin")
    page.goto("/")
    row = page.wait_for_selector(f"#unfinished-list li[data-job-id='{keep}']")
    assert "50 %" in row.text_content() and "0 of 1 file" in row.text_content()
    shot(page, "newcomer-04-unfinished-uploads")
    # cancel one: it is deleted
    page.once("dialog", lambda d: d.accept())
    page.click(f"#unfinished-list li[data-job-id='{drop}'] button.danger")
    page.wait_for_selector(f"#unfinished-list li[data-job-id='{drop}']", state="detached")
    assert requests.get(f"{live_server.url}/api/job/{drop}", timeout=30).status_code == 404
    # a wrong file is refused, the same file resumes
    wrong = tmp_path / "resume_me_other.npy"
    wrong.write_bytes(data[:-10])
    with page.expect_file_chooser() as fc:
        page.click(f"#unfinished-list li[data-job-id='{keep}'] button.primary")
    fc.value.set_files(str(wrong))
    page.wait_for_selector(".toast.bad", timeout=10_000)
    assert "not the files" in page.text_content(".toast.bad")
    with page.expect_file_chooser() as fc:
        page.click(f"#unfinished-list li[data-job-id='{keep}'] button.primary")
    fc.value.set_files(str(path))
    page.wait_for_url(f"**/job/{keep}", timeout=60_000)
    assert (live_server.store.job_dir(keep) / "upload" / "resume_me.npy").read_bytes() == data
    deadline = time.monotonic() + 90
    while live_server.store.get(keep)["status"] != "converted":
        assert time.monotonic() < deadline, live_server.store.get(keep)
        time.sleep(0.3)
    # the .npy had no voxel size: the job page warns and takes one
    page.wait_for_selector("#voxel-warning:not([hidden])", timeout=30_000)
    assert "Voxel size unknown" in page.text_content("#voxel-warning")
    page.fill("#vs-z", "25")
    page.fill("#vs-y", "12.5")
    page.fill("#vs-x", "12.5")
    page.select_option("#vs-unit", "micrometer")
    page.click("#voxel-save")
    page.wait_for_function("() => document.querySelector('#voxel-size-text')"
                           ".textContent.startsWith('25 × 12.5 × 12.5 µm')", timeout=15_000)
    assert page.locator("#voxel-warning").is_hidden()
    shot(page, "newcomer-05-voxel-size-set")
    meta = live_server.store.get(keep)["metadata"]
    assert meta["voxel_size"] == [25.0, 12.5, 12.5] and meta["unit"] == "micrometer"
