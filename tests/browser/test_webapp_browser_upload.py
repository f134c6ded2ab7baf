"""Browser: a chunked upload survives a failed chunk and a pause, byte-exact; the access
key is asked for once; the job page shows a failure with a working retry button."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ml4paleo import keys

from .conftest import shot


@pytest.mark.timeout(180)
def test_chunked_upload_retries_and_resumes(page, live_server, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "volume.npy"
    np.save(path, rng.integers(0, 4000, size=(12, 40, 50), dtype=np.uint16))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    failed = {"n": 0}

    def flaky(route):
        # the 3rd chunk fails once at the network level: the uploader must retry it
        failed["n"] += 1
        if failed["n"] == 3:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/upload", flaky)
    page.goto("/")
    page.evaluate("() => { window.ml4pUpload.chunkSize = 4096; }")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#selection:not([hidden])")
    assert page.input_value("#source-type") == "npy"
    page.fill("#job-name", "resumable")
    page.click("#upload-start")
    # pause part-way, then resume: the server's byte count decides where to go on
    page.wait_for_function("() => /\\(([1-9]\\d?)%\\)/.test("
                           "document.querySelector('#upload-text').textContent)")
    page.click("#upload-cancel")
    page.wait_for_selector("#upload-resume:not([hidden])")
    shot(page, "10-upload-paused")
    page.click("#upload-resume")
    page.wait_for_url("**/job/*", timeout=60_000)
    job_id = page.url.rsplit("/", 1)[-1]
    assert failed["n"] >= 13  # 12 chunks of 4 KB, the failed one sent again
    uploaded = live_server.store.job_dir(job_id) / "upload" / "volume.npy"
    assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == digest


@pytest.mark.timeout(120)
def test_access_key_is_asked_once(page, live_server):
    job_id = live_server.seed_job("keyed job", np.zeros((8, 16, 16), np.uint8))
    _, secret = keys.add_key(live_server.data_dir, "browser-test")
    try:
        page.goto("/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "m4p_wrong")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-error:not([hidden])")
        shot(page, "11-key-dialog")
        page.fill("#key-input", secret)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
        # a new page of the same browser does not ask again
        page.goto(f"/job/{job_id}")
        page.wait_for_function("() => document.querySelector('#status-badge')"
                               ".textContent === 'converted'")
        assert not page.locator("#key-dialog[open]").count()
        # the key cookie lets plain links (downloads, CSV) through too
        r = page.request.get("/api/jobs.csv")
        assert r.ok and "keyed job" in r.text()
    finally:
        keys.revoke_key(live_server.data_dir, "browser-test")


@pytest.mark.timeout(120)
def test_failed_job_shows_error_and_retry(page, live_server):
    store = live_server.store
    job_id = store.create("broken upload", "image_stack")["id"]
    (store.job_dir(job_id) / "upload" / "notes.txt").write_text("not an image")
    store.mark_uploaded(job_id)  # the real convert runner fails on this upload
    page.goto(f"/job/{job_id}")
    page.wait_for_selector("#job-error:not([hidden])", timeout=90_000)
    text = page.text_content("#job-error-text").strip()
    assert text and str(live_server.data_dir) not in text  # no server paths
    assert page.locator("#pipeline li[data-step=convert].failed").count() == 1
    # bad input fails the same way every time: no Retry, a hint saying what to do
    assert page.locator("#retry-btn").is_hidden()
    assert "upload them again" in page.text_content("#retry-hint")
    shot(page, "12-job-failed")
    # a crash (e.g. a runner that died) can be retried
    store.update(job_id, lambda r: r.update(error_kind="failed"))
    page.wait_for_selector("#retry-btn:not([hidden])", timeout=10_000)
    page.click("#retry-btn")
    page.wait_for_function("() => !document.querySelector('#status-badge').textContent"
                           ".endsWith('_error') || document.querySelectorAll('.toast').length",
                           timeout=10_000)
    history = [h["message"] for h in store.get(job_id)["history"]]
    assert any("retry" in (m or "") for m in history)


@pytest.mark.timeout(120)
def test_viewer_picks_the_pyramid_level_of_the_zoom(page, live_server):
    image = np.tile(np.arange(1024, dtype=np.uint16) % 256, (8, 1024, 1)).astype(np.uint8)
    job_id = live_server.seed_job("big slices", image)
    requested: list[str] = []
    page.on("request", lambda r: "/slice?" in r.url and requested.append(r.url))
    page.goto(f"/job/{job_id}/viewer")
    page.select_option("#layout", "z")
    z_plane = "#planes .plane[data-axis=z] canvas"
    page.wait_for_selector(z_plane)
    label = page.locator("#planes .plane[data-axis=z] .label")
    page.wait_for_function("() => /level [1-9]/.test(document.querySelector("
                           "'#planes .plane[data-axis=z] .label').textContent)")
    fit_level = int(label.text_content().split("level ")[1].split()[0])
    assert fit_level >= 1  # a 1024^2 slice on a ~1100 px canvas at 1x DPR: level 1
    page.wait_for_timeout(500)
    coarse = [u for u in requested if "level=0" not in u]
    assert coarse and all("level=0" not in u for u in requested), requested[:5]
    # zoom in with ctrl+wheel: full-resolution tiles of only the visible part
    box = page.locator(z_plane).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.keyboard.down("Control")
    for _ in range(8):
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(50)
    page.keyboard.up("Control")
    page.wait_for_function("() => document.querySelector("
                           "'#planes .plane[data-axis=z] .label').textContent.includes('level 0')")
    page.wait_for_timeout(800)
    requested.clear()
    page.mouse.wheel(0, 120)  # next slice: only the visible tiles are fetched
    page.wait_for_function("() => document.querySelector("
                           "'#planes .plane[data-axis=z] .label').textContent.includes('slice 6 /')")
    page.wait_for_timeout(800)
    fine = [u for u in requested if "level=0" in u and "index=5" in u]
    assert 0 < len(fine) < 16, len(fine)  # 16 tiles of 256^2 make the whole plane
    shot(page, "13-viewer-zoomed")


@pytest.mark.timeout(120)
def test_zip_upload_converts(page, live_server, tmp_path):
    import io
    import zipfile

    from PIL import Image

    stack = (np.arange(8 * 32 * 40) % 251).reshape(8, 32, 40).astype(np.uint8)
    archive = tmp_path / "stack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for z in range(8):
            buf = io.BytesIO()
            Image.fromarray(stack[z]).save(buf, format="PNG")
            zf.writestr(f"scan/img_{z:02d}.png", buf.getvalue())
    page.goto("/")
    page.set_input_files("#file-input", str(archive))
    page.wait_for_selector("#selection:not([hidden])")
    assert page.input_value("#job-name") == "stack"
    page.click("#upload-start")
    page.wait_for_url("**/job/*", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#status-badge').textContent"
                           " === 'converted'", timeout=90_000)
    page.wait_for_function("() => document.querySelector('#image-meta').textContent"
                           ".includes('8 × 32 × 40')")


@pytest.mark.timeout(60)
def test_pages_fit_a_phone_screen(browser, live_server):
    job_id = live_server.seed_job("phone", np.full((4, 32, 32), 100, np.uint8))
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  base_url=live_server.url, device_scale_factor=2)
    page = context.new_page()
    try:
        for url, name in (("/", "14-phone-home"), (f"/job/{job_id}", "15-phone-job"),
                          (f"/job/{job_id}/viewer", "16-phone-viewer")):
            page.goto(url)
            page.wait_for_load_state("networkidle")
            overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 1, f"{url} is {overflow}px wider than the phone"
            shot(page, name)
    finally:
        context.close()


@pytest.mark.timeout(60)
def test_drag_and_drop_selects_files(page):
    page.goto("/")
    page.evaluate("""() => {
        const dt = new DataTransfer();
        for (const n of ['a_001.tif', 'a_002.tif', '.DS_Store'])
            dt.items.add(new File([new Uint8Array(300)], n, {type: 'image/tiff'}));
        const dz = document.querySelector('#dropzone');
        dz.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true}));
        dz.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""")
    page.wait_for_selector("#selection:not([hidden])")
    assert page.text_content("#selection-summary").startswith("2 files")  # .DS_Store left out
    assert page.input_value("#source-type") == "image_stack"


@pytest.mark.timeout(60)
def test_rename_and_delete_from_the_job_page(page, live_server):
    job_id = live_server.seed_job("old name", np.zeros((4, 16, 16), np.uint8))
    page.goto(f"/job/{job_id}")
    page.wait_for_function("() => document.querySelector('#status-badge').textContent"
                           " === 'converted'")
    page.once("dialog", lambda d: d.accept("<i>new</i> name"))
    page.click("#rename-btn")
    page.wait_for_function("() => document.querySelector('#job-name').textContent"
                           " === '<i>new</i> name'")
    assert live_server.store.get(job_id)["name"] == "<i>new</i> name"
    assert page.locator("#job-name i").count() == 0
    page.once("dialog", lambda d: d.accept())
    page.click("#delete-btn")
    page.wait_for_url(live_server.url + "/")
    assert not live_server.store.exists(job_id)
