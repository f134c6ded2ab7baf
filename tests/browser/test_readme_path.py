"""The newcomer's path, exactly as the README says, in Debian Chromium (issue 16).

A fresh ``git clone`` of this repository is started with ``bash scripts/start.sh`` from its
root, so the data folder is the default relative ``./data``. ``start.sh`` first runs
``scripts/install.sh`` (``pip install -e`` + npm); the test sets
``ML4PALEO_SKIP_INSTALL=1`` so start.sh skips that line and runs its own
``exec .venv/bin/python main.py`` line: reinstalling would take minutes, needs the network
for npm, and ``pip install -e`` would re-point the shared test venv at the temporary clone.
The clone's ``.venv`` is a link to the venv running the tests and its
``webapp/static/vendor`` a link to the vendored JavaScript already installed.

Then, as a user would: close the page in the middle of an upload (the browser warns),
resume it from a new page by choosing the same file; upload a PNG stack with a voxel size
typed in the form; convert; annotate three classes with the mouse; segment with clean-up
(previewed on the slice first); mesh; open the 3D volume view (the canvas shows the scan);
download the report PDF (its first page rendered with ``pdftoppm``) and the statistics
CSV (in the typed unit). Screenshots: ``test-artifacts/readme-*.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ml4paleo.phantom import make_phantom

from .conftest import ARTIFACTS, ROOT, _free_port, shot

SHAPE = (24, 96, 96)
VOXEL = (20.0, 10.0, 10.0)  # typed in the form, micrometres
CHUNK = 256 * 1024


class Clone:
    """A fresh clone of this repository, started as the README says."""

    def __init__(self, root: Path, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.url, self.proc, self.log = root, url, proc, log

    def tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def record(self, job_id: str) -> dict:
        return self.get(f"/api/job/{job_id}").json()

    def wait_status(self, job_id: str, wanted: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record(job_id)
            if rec["status"] in wanted:
                return rec
            if rec["status"].endswith("_error"):
                pytest.fail(f"job went to {rec['status']}: {rec.get('error')}\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"job still {rec['status']} after {timeout} s\n{self.tail()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    vendor = (ROOT / "webapp" / "static" / "vendor").resolve()
    if not (vendor / "three" / "three.module.js").is_file():
        pytest.fail("webapp/static/vendor is missing: run scripts/vendor.sh once")
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is missing: apt-get install poppler-utils (scripts/test.sh does)")
    root = tmp_path_factory.mktemp("fresh") / "ml4paleo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(root)], check=True)
    (root / ".venv").symlink_to(Path(sys.prefix))  # the venv running the tests
    (root / "webapp" / "static" / "vendor").symlink_to(vendor)
    port = _free_port()
    log = root.parent / "start.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML4PALEO_")}
    env.update(ML4PALEO_SKIP_INSTALL="1", ML4PALEO_POLL_INTERVAL="0.3", ML4PALEO_WORKERS="1",
               ML4PALEO_CHUNK_SIZE="64", PYTHONUNBUFFERED="1", PYTHONPATH=str(root))
    with open(log, "wb") as out:
        # the README: bash scripts/start.sh (options go to main.py: a free port here)
        proc = subprocess.Popen(["bash", "scripts/start.sh", "--port", str(port)], cwd=root,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Clone(root, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"start.sh exited with {proc.returncode}:\n{server.tail()}")
        try:
            if server.get("/api/openapi.json").ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the app did not answer within 90 s:\n{server.tail()}")
        time.sleep(0.3)
    while time.monotonic() < deadline and log.read_text(errors="replace").count("started on") < 3:
        time.sleep(0.2)  # the three runners are up
    yield server
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def page_of(browser, clone):
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      accept_downloads=True, base_url=clone.url)
        contexts.append(context)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.js_errors = []
        pg.on("pageerror", lambda exc: pg.js_errors.append(f"pageerror: {exc}"))
        return pg

    yield make
    for c in contexts:
        c.close()


def _to_page(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) of the annotator's plane (flips included)."""
    return page.evaluate(
        """([x, y]) => { const S = window.ml4paleoAnnotator;
            const f = S.flips[S.axis];
            const fx = f.cols ? S.w - x : x, fy = f.rows ? S.h - y : y;
            const r = document.getElementById('ann-canvas').getBoundingClientRect();
            return [r.left + S.view.tx + fx * S.view.scale,
                    r.top + S.view.ty + fy * S.view.scale * S.aspect]; }""",
        [x + 0.5, y + 0.5])


def _longest_run(mask2d: np.ndarray) -> tuple[int, int, int]:
    best = (0, 0, 0)
    for r, row in enumerate(mask2d):
        x = 0
        while x < row.size:
            if row[x]:
                x1 = x
                while x1 < row.size and row[x1]:
                    x1 += 1
                if x1 - x > best[2] - best[1]:
                    best = (r, x, x1)
                x = x1
            x += 1
    return best


def _stroke(page, row: int, x0: int, x1: int) -> None:
    a, b = _to_page(page, x0, row), _to_page(page, x1 - 1, row)
    page.mouse.move(*a)
    page.mouse.down()
    for t in np.linspace(0, 1, 10)[1:]:
        page.mouse.move(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
    page.mouse.up()


def _wait_saved(page) -> None:
    page.wait_for_function(
        "() => !window.ml4paleoAnnotator.dirty && !window.ml4paleoAnnotator.inflight",
        timeout=90_000)


def _unfinished(clone: Clone, job_id: str) -> dict | None:
    ups = clone.get("/api/uploads").json()["uploads"]
    return next((u for u in ups if u["job_id"] == job_id), None)


def _close_mid_upload_and_resume(page_of, clone: Clone, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    big = tmp_path / "bigscan.npy"
    np.save(big, rng.integers(0, 4000, (64, 160, 256), dtype=np.uint16))  # 5.2 MB
    size = big.stat().st_size
    page = page_of()
    page.goto("/")
    page.set_input_files("#file-input", str(big))
    page.wait_for_selector("#voxel-note[data-probed]")
    page.evaluate(f"window.ml4pUpload.chunkSize = {CHUNK}")
    cdp = page.context.new_cdp_session(page)  # a slow connection: ~400 KB/s up
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 20,
                                                  "downloadThroughput": -1,
                                                  "uploadThroughput": 400 * 1024})
    page.click("#upload-start")
    page.wait_for_function("() => window.ml4pHome.uploader && window.ml4pHome.uploader.running")
    job_id = page.evaluate("window.ml4pHome.uploader.jobId")
    deadline = time.monotonic() + 60
    while True:
        up = _unfinished(clone, job_id)
        if up and up["received_bytes"] >= 0.3 * size:
            break
        assert time.monotonic() < deadline, "the upload did not get going"
        time.sleep(0.2)
    shot(page, "readme-01-uploading")
    # leaving the page while bytes are on their way: the browser asks first
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.type), d.accept()))
    page.close(run_before_unload=True)
    deadline = time.monotonic() + 10
    while not page.is_closed() and time.monotonic() < deadline:
        page.context.cookies()  # a round trip: Playwright delivers the dialog / close events
        time.sleep(0.1)
    assert dialogs == ["beforeunload"]
    left = _unfinished(clone, job_id)
    assert left and 0 < left["received_bytes"] < size, left
    assert clone.record(job_id)["status"] == "uploading"

    # a new page lists the unfinished upload with its progress ...
    page = page_of()
    sent: list[int] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/upload")
            and sent.append(1))
    page.goto("/")
    row = page.wait_for_selector(f"#unfinished-list li[data-job-id='{job_id}']")
    pct = math.floor(100 * left["received_bytes"] / size)
    assert f"{pct} %" in row.text_content() or f"{pct + 1} %" in row.text_content()
    shot(page, "readme-02-unfinished-upload")
    # ... and choosing the same file resumes that job from the server's bytes
    page.evaluate(f"window.ml4pUpload.chunkSize = {CHUNK}")
    page.set_input_files("#file-input", str(big))
    page.wait_for_selector("#match-note:not([hidden])")
    assert "bigscan" in page.text_content("#match-note")
    assert page.text_content("#upload-start") == "Resume upload"
    shot(page, "readme-03-resume-matched")
    page.click("#upload-start")
    page.wait_for_url(f"**/job/{job_id}", timeout=120_000)
    total_chunks = math.ceil(size / CHUNK)
    resumed_from = left["received_bytes"] - left["received_bytes"] % CHUNK
    assert len(sent) <= math.ceil((size - resumed_from) / CHUNK) + 1 < total_chunks, sent
    upload = clone.root / "data" / "jobs" / job_id / "upload" / "bigscan.npy"
    assert upload.read_bytes() == big.read_bytes()  # ./data of the clone, bit-exact
    clone.wait_status(job_id, {"converted"}, 120)
    assert _unfinished(clone, job_id) is None


@pytest.mark.timeout(1500)
def test_readme_quick_start_whole_path(page_of, clone, tmp_path):
    _close_mid_upload_and_resume(page_of, clone, tmp_path)

    # ---- a PNG stack, the voxel size typed in the form
    image, truth = make_phantom(SHAPE, seed=4)
    folder = tmp_path / "ammonite"
    folder.mkdir()
    for z in range(SHAPE[0]):
        Image.fromarray(image[z]).save(folder / f"slice_{z:03d}.png")
    page = page_of()
    page.goto("/")
    page.set_input_files("#folder-input", str(folder))
    page.wait_for_selector("#voxel-note[data-probed]")
    assert "no voxel size" in page.text_content("#voxel-note")
    for axis, value in zip("zyx", VOXEL, strict=True):
        page.fill(f"#up-vs-{axis}", f"{value:g}")
    page.select_option("#up-unit", "micrometer")
    page.fill("#job-name", "Ammonite 42")
    shot(page, "readme-04-voxel-size-typed")
    page.click("#upload-start")
    page.wait_for_url("**/job/*", timeout=120_000)
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    clone.wait_status(job_id, {"converted"}, 180)
    page.wait_for_function("() => document.querySelector('#image-meta').textContent"
                           ".includes('20 × 10 × 10 µm')", timeout=30_000)
    assert "(set by you)" in page.text_content("#image-meta")
    assert page.locator("#voxel-warning").is_hidden()
    shot(page, "readme-05-job-converted")

    # ---- annotate three classes with the mouse
    page.goto(f"/job/{job_id}/annotate#axis=z&index=8")
    page.wait_for_selector("#ann-viewport[data-loaded='z:8']")
    assert page.text_content("#ann-pos").startswith("z slice 9 / 24")
    assert "20 × 10 × 10 µm" in page.text_content("#ann-voxel")
    page.fill("#ann-new-class", "tooth")
    page.click("#ann-add-class")
    page.wait_for_function("() => window.ml4paleoAnnotator.classes.length === 3")
    page.fill("#ann-brush", "3")
    page.dispatch_event("#ann-brush", "input")
    for z in (8, 16):
        if z != 8:
            page.fill("#ann-index", str(z + 1))  # slices are numbered from 1
            page.dispatch_event("#ann-index", "change")
            page.wait_for_selector(f"#ann-viewport[data-loaded='z:{z}']")
        for k in (0, 1, 2):
            mask = truth[z] == k
            mask[:3] = mask[-3:] = False
            row, x0, x1 = _longest_run(mask)
            if x1 - x0 < 6:
                continue
            page.keyboard.press(str(k + 1))
            _stroke(page, row, x0 + 2, x1 - 2)
        _wait_saved(page)
    page.wait_for_selector("#ann-viewport[data-prediction]", timeout=90_000)
    shot(page, "readme-06-annotated")

    # ---- segment with clean-up, previewed on the slice first
    page.check("#ann-cleanup")
    page.fill("#ann-min-size", "30")
    page.dispatch_event("#ann-min-size", "change")
    page.check("#ann-clean-preview")
    page.wait_for_selector("#ann-viewport[data-cleanup]", timeout=60_000)
    assert "changes" in page.text_content("#ann-clean-info")
    shot(page, "readme-07-cleanup-preview")
    page.click("#ann-segment")
    page.wait_for_url(f"**/job/{job_id}/view**", timeout=600_000)
    rec = clone.wait_status(job_id, {"segmented"}, 60)
    seg_id = rec["segmentation_id"]
    seg = clone.get(f"/api/job/{job_id}/segmentation/{seg_id}").json()
    assert seg["cleanup"] == {"min_size": 30, "fill_holes": False}
    assert seg["name"].startswith("Segmentation 1 · background/structure/tooth · ")
    assert seg["unit"] == "micrometer" and seg["voxel_size"] == list(VOXEL)
    page.wait_for_selector("#seg-select option:checked", state="attached")
    assert page.text_content("#seg-select option:checked") == seg["name"]
    page.wait_for_timeout(1500)
    shot(page, "readme-08-segmentation-in-viewer")

    # ---- mesh (job page), then the 3D volume view
    page.goto(f"/job/{job_id}")
    page.click("#mesh-btn")
    clone.wait_status(job_id, {"meshed"}, 300)
    page.reload()
    page.wait_for_selector(f".result[data-segmentation='{seg_id}'] .report-pdf")
    shot(page, "readme-09-job-meshed")
    page.goto(f"/job/{job_id}/3d")
    page.wait_for_selector("#mesh-stage[data-loaded]", timeout=60_000)
    page.click(".tab[data-tab=volume]")
    page.wait_for_selector("#vol-canvas[data-loaded=true]", timeout=90_000)
    page.wait_for_timeout(2500)
    canvas = np.asarray(Image.open(io.BytesIO(page.locator("#vol-canvas").screenshot()))
                        .convert("RGB")).astype(int)
    background = np.array([31, 36, 48])  # NiiVue's backColor (0.12, 0.14, 0.19)
    drawn = np.abs(canvas - background).sum(axis=2) > 40
    assert drawn.mean() > 0.02, f"the volume view draws {drawn.mean():.1%} of the canvas"
    shot(page, "readme-10-3d-volume")
    assert "Coordinates in µm" in page.text_content("#unit-info")
    assert not page.js_errors, page.js_errors

    # ---- downloads: the report PDF (a page rendered), the statistics in micrometres
    page.goto(f"/job/{job_id}/download")
    pdf_row = page.wait_for_selector("#downloads-table tr[data-kind=report_pdf]")
    assert pdf_row.query_selector(".size").text_content() == "made on request"
    meshes_row = page.wait_for_selector("#downloads-table tr[data-kind=meshes]")
    assert not meshes_row.query_selector(".size").text_content().startswith(("≈", "up to"))
    assert "Sizes, volumes and meshes are in µm" in page.text_content("#downloads-unit")
    shot(page, "readme-11-downloads")
    with page.expect_download(timeout=180_000) as dl:
        pdf_row.query_selector("a.btn.primary").click()
    pdf = tmp_path / "report.pdf"
    dl.value.save_as(pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf),
                    str(tmp_path / "report-page")], check=True, timeout=120)
    rendered = next(tmp_path.glob("report-page*.png"))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(rendered, ARTIFACTS / "readme-12-report-page1.png")
    pix = np.asarray(Image.open(rendered).convert("L"))
    assert pix.std() > 10 and (pix < 128).mean() > 0.005  # text and figures, not a blank page
    stats_url = page.get_attribute("#downloads-table tr[data-kind=stats] a.btn.primary", "href")
    raw = list(csv.DictReader(io.StringIO(page.request.get(stats_url).text())))
    from ml4paleo.meshing.stats import csv_header, row_key

    # the headers carry the typed unit (volume_um3, surface_area_um2, ...)
    assert raw and set(csv_header("micrometer")) <= set(raw[0]), list(raw[0])
    stats = [{row_key(k): v for k, v in r.items()} for r in raw]
    assert all(r["unit"] == "micrometer" for r in stats), stats
    voxel = VOXEL[0] * VOXEL[1] * VOXEL[2]
    for r in stats:
        assert float(r["volume"]) == pytest.approx(int(r["voxel_count"]) * voxel, rel=1e-6)
    # everything lives in the clone's ./data, resolved once
    assert (clone.root / "data" / "jobs" / job_id / "image.ome.zarr").is_dir()
