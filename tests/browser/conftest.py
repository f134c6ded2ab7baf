"""Browser test fixtures: the real app (``main.py`` + its runners) on a temp data
dir, and headless Chromium pages through Playwright. Every test here is marked
``browser``. Screenshots go to ``test-artifacts/`` (see :func:`shot`).

Fixtures for other browser tests (e.g. the annotation studio):

- ``live_server`` (session): ``.url``, ``.data_dir``, ``.store`` (a JobStore on the
  same data dir), ``.seed_job(name, image)`` -> job id of a converted job,
  ``.seed_phantom_job(name, shape)`` -> (job id, phantom) of a large one built chunk by chunk;
- ``browser`` (session): a Playwright Chromium browser;
- ``page``: a fresh page (1400x900, downloads allowed, ``base_url`` = the server) whose
  ``page.js_errors`` lists uncaught page errors and console errors.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("ML4PALEO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/<name>.png`` and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path

    _store: object = None

    @property
    def store(self):
        """One JobStore for the tests (constructing one sweeps temp files: do it once)."""
        if self._store is None:
            from ml4paleo.jobs import JobStore

            self._store = JobStore(self.data_dir)
        return self._store

    def seed_job(self, name: str, image: np.ndarray, voxel_size=(1.0, 1.0, 1.0)) -> str:
        """A job in status ``converted`` holding ``image`` (z, y, x) with its pyramid."""
        from ml4paleo.formats import build_pyramid, create_image
        from ml4paleo.jobs.steps import image_metadata

        store = self.store
        job_id = store.create(name, "npy")["id"]
        dest = store.job_dir(job_id) / "image.ome.zarr"
        img = create_image(dest, image.shape, image.dtype, chunks=64, voxel_size=voxel_size,
                           unit="micrometer", extra_attrs={"source_type": "npy", "source": {}})
        img.array[:] = image
        build_pyramid(img)
        meta = image_metadata(dest)

        def converted(record: dict) -> None:
            record.update(status="converted", progress=1.0, metadata=meta,
                          message="seeded by a test")

        store.update(job_id, converted)
        return job_id

    def seed_phantom_job(self, name: str, shape, dtype: str = "uint8", tile=128,
                         chunks=128, seed: int = 0):
        """A converted job holding a large :class:`~ml4paleo.phantom.TiledPhantom` written
        chunk by chunk (never whole in memory); returns ``(job_id, phantom)``."""
        from ml4paleo.jobs.steps import image_metadata
        from ml4paleo.phantom import TiledPhantom

        phantom = TiledPhantom(shape, tile=tile, seed=seed, dtype=dtype)
        job_id = self.store.create(name, "npy")["id"]
        dest = self.store.job_dir(job_id) / "image.ome.zarr"
        phantom.write_image(dest, chunks=chunks, voxel_size=(1.0, 1.0, 1.0), unit="micrometer",
                            extra_attrs={"source_type": "npy", "source": {}})
        meta = image_metadata(dest)
        self.store.update(job_id, lambda r: r.update(status="converted", progress=1.0,
                                                     metadata=meta, message="seeded by a test"))
        return job_id, phantom

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """``python main.py`` (waitress + convert/segment/mesh/measure runners) on a temp data dir."""
    if not (ROOT / "webapp" / "static" / "vendor" / "three" / "three.module.js").is_file():
        if shutil.which("npm") is None:
            pytest.fail("webapp/static/vendor is missing and npm is not installed; "
                        "run scripts/vendor.sh")
        subprocess.run(["bash", str(ROOT / "scripts" / "vendor.sh")], check=True, cwd=ROOT)
    data_dir = tmp_path_factory.mktemp("browser-data")
    port = _free_port()
    log_path = data_dir.parent / "server.log"
    env = dict(os.environ, ML4PALEO_POLL_INTERVAL="0.3", ML4PALEO_WORKERS="1",
               ML4PALEO_CHUNK_SIZE="64", PYTHONUNBUFFERED="1")
    env.pop("ML4PALEO_DATA", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--host", "127.0.0.1", "--port", str(port),
             "--data", str(data_dir)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, proc, log_path)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"main.py exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/api/openapi.json", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"main.py did not answer within 60 s:\n{server.log_tail()}")
        time.sleep(0.3)
    # the runners sweep stray temp files when they start; let them finish starting so
    # the sweep cannot meet a job a test is creating at that moment
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if all(f"{kind} runner " in text and "started on" in text
               for kind in ("convert", "segment", "mesh", "measure")) \
                and text.count("started on") >= 4:
            break
        time.sleep(0.2)
    server.store  # noqa: B018 -- build (and sweep) once, now
    yield server
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1400, "height": 900},
                                  accept_downloads=True, base_url=live_server.url)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.js_errors = []
    pg.on("pageerror", lambda exc: pg.js_errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda msg: msg.type == "error" and pg.js_errors.append(
        f"console: {msg.text}"))
    yield pg
    context.close()
