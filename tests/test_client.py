"""Python client: helpers, then the whole pipeline against a real server on loopback.

The end-to-end part starts ``python main.py --port <free> --data <tmp>`` (web app and the
three runners) once for the module, with a local webhook receiver configured, and drives
it only through :class:`ml4paleo.client.Client`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests

from ml4paleo.client import (
    STATUS_ORDER,
    Client,
    ClientError,
    JobFailed,
    _label_slices,
    _upload_files,
    encode_label_mask,
)
from ml4paleo.jobs.statuses import PIPELINE_ORDER, reached

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def test_label_mask_round_trip():
    from ml4paleo.annotate import decode_label_mask

    plane = np.zeros((7, 9), np.uint8)
    plane[2:5, 3:8] = 2
    plane[0, 0] = 1
    encoded = encode_label_mask(plane)
    assert encoded["shape"] == [7, 9]
    decoded = decode_label_mask(encoded, (7, 9), n_classes=2)
    np.testing.assert_array_equal(decoded, plane)
    with pytest.raises(ValueError, match="2-D"):
        encode_label_mask(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="0..255"):
        encode_label_mask(np.full((2, 2), 300))


def test_label_slices_from_volume_and_mapping():
    vol = np.zeros((4, 5, 6), np.uint8)
    vol[1, 2, 3] = 1
    vol[3, 0, 0] = 2
    assert [i for i, _ in _label_slices(vol, 0)] == [1, 3]
    assert [i for i, _ in _label_slices(vol, 2)] == [0, 3]
    assert _label_slices(vol, 1).__next__()[1].shape == (4, 6)
    assert [i for i, _ in _label_slices({5: np.ones((2, 2)), 1: np.ones((2, 2))}, 0)] == [1, 5]
    with pytest.raises(ValueError, match="volume"):
        list(_label_slices(np.zeros((3, 3)), 0))


def test_reached_follows_pipeline_order():
    assert reached("converted", {"converted"})
    assert reached("segmenting", {"converted"})  # passed while we were not looking
    assert not reached("converting", {"converted"})
    assert not reached("segment_error", {"segmented"})
    assert reached("meshed", {"segmented", "meshed"})
    assert reached("something_new", {"something_new"})  # unknown names match themselves
    assert not reached("something_new", {"converted"})
    # the client waits along the status rules' own order (no copy of its own)
    assert STATUS_ORDER == tuple(s.value for s in PIPELINE_ORDER)


def test_upload_file_listing(tmp_path):
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "b.tif").write_bytes(b"bb")
    (tmp_path / "scan" / "sub").mkdir()
    (tmp_path / "scan" / "sub" / "a.tif").write_bytes(b"a")
    (tmp_path / "scan" / ".DS_Store").write_bytes(b"x")
    files = _upload_files(tmp_path / "scan", tmp_path)
    assert [(name, size) for _, name, size in files] == [("b.tif", 2), ("sub__a.tif", 1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        _upload_files(tmp_path / "empty", tmp_path)
    with pytest.raises(FileNotFoundError):
        _upload_files(tmp_path / "missing", tmp_path)
    arr = _upload_files(np.arange(24, dtype=np.uint16).reshape(2, 3, 4), tmp_path)
    np.testing.assert_array_equal(np.load(arr[0][0]), np.arange(24).reshape(2, 3, 4))


def test_unreachable_server_and_bad_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ClientError) as info:
        client.status("x" * 22)
    assert info.value.status_code is None
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:5000")


# ----------------------------------------------------------------------------- live server
class _Hooks:
    def __init__(self):
        self.events: list[dict] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_job(self, job_id):
        return [e["event"] for e in self.events if e["job_id"] == job_id]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("server-data")
    hooks = _Hooks()
    port = _free_port()
    env = dict(os.environ)
    env.update({
        "ML4PALEO_POLL_INTERVAL": "0.2",
        "ML4PALEO_WORKERS": "1",
        "ML4PALEO_WEBHOOK_URL": hooks.url,
        "PYTHONUNBUFFERED": "1",
    })
    log_path = data / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the teardown
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--data", str(data)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/api/jobs", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield {"url": url, "data": data, "hooks": hooks, "proc": proc, "log": log_path}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    hooks.server.shutdown()


@pytest.fixture(scope="module")
def phantom():
    from ml4paleo.phantom import make_phantom

    return make_phantom((32, 48, 48), seed=3)


def _server_log(server) -> str:
    return Path(server["log"]).read_text()[-4000:]


def test_full_pipeline(server, phantom, tmp_path):
    image, truth = phantom
    client = Client(server["url"], timeout=30)
    job = client.create_job("client e2e", "npy")
    sent = []
    client.upload(job, image, chunk_size=20_000, progress=lambda d, t: sent.append((d, t)))
    assert sent[-1][0] == sent[-1][1] == image.nbytes + 128  # .npy header + data
    assert len(sent) > 3  # really chunked

    seen = list(client.wait(job, until="converted", timeout=60, poll=0.2))
    assert seen[-1]["status"] == "converted", _server_log(server)
    assert {r["status"] for r in seen} <= {"uploaded", "converting", "converted"}
    record = client.record(job)
    assert tuple(record["metadata"]["shape"]) == image.shape

    # label three full z slices with the truth (0 = unlabelled, k + 1 = class k)
    slices = {z: truth[z] + 1 for z in (6, 16, 26)}
    answers = client.submit_labels(job, slices, classes=["matrix", "bone", "tooth"])
    assert len(answers) == 3
    assert [c["name"] for c in client.classes(job)] == ["matrix", "bone", "tooth"]

    trained = client.train(job)
    models = client.models(job)
    assert [m["id"] for m in models] == [trained["model_id"]]
    assert models[0]["chosen"]

    # a full model trained on the runner (held-out metrics), then the whole volume
    client.segment(job, train=True)
    final = client.wait_for(job, "segmented", timeout=90, poll=0.3)
    assert final["status"] == "segmented", _server_log(server)
    client.mesh(job, formats=["stl", "obj"], smooth="strong")
    final = client.wait_for(job, "meshed", timeout=90, poll=0.3)
    assert final["status"] == "meshed"

    out = tmp_path / "out"
    nifti = client.download(job, "nifti", out)
    import nibabel

    labels = np.asarray(nibabel.load(nifti).dataobj)
    if labels.shape != truth.shape:  # NIfTI is (x, y, z)
        labels = labels.transpose(2, 1, 0)
    accuracy = float((labels == truth).mean())
    assert accuracy > 0.85, accuracy

    stats = client.download(job, "stats", out / "stats.csv")
    rows = list(csv.DictReader(io.StringIO(stats.read_text())))
    assert {int(r["label"]) for r in rows} >= {1, 2}
    assert {r["surface"] for r in rows} == {"smooth-strong"}  # the choice reached the runner
    # downloads are the user's files: their umask, not a temp file's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stats.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp left

    meshes = client.download(job, "meshes", out)
    names = zipfile.ZipFile(meshes).namelist()
    assert any(n.endswith(".stl") for n in names) and any(n.endswith(".obj") for n in names)

    for kind in ("zarr", "png", "tiff", "image-zarr", "model", "model.json"):
        path = client.download(job, kind, out)
        assert path.is_file() and path.stat().st_size > 0, kind
        if path.suffix == ".zip":
            assert zipfile.ZipFile(path).testzip() is None
    meta = json.loads((out / f"{job}-model-json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["matrix", "bone", "tooth"]
    assert 0.5 < meta["metrics"]["accuracy"] <= 1
    assert len(client.models(job)) == 2 and final["model_id"] != trained["model_id"]

    everything = client.download_all(job, tmp_path / "all")
    assert len(everything) >= 10
    report = client.download(job, "report.pdf", out)
    assert report.read_bytes().startswith(b"%PDF")
    page = client.download(job, "report.html", out).read_text()
    assert "client e2e" in page and "tooth" in page and "metric: accuracy" in page

    listed = client.jobs(status="meshed")
    assert job in [j.get("id", j.get("job_id")) for j in listed]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "meshed" not in server["hooks"].for_job(job):
        time.sleep(0.2)
    assert server["hooks"].for_job(job) == ["converted", "segmented", "meshed"]


def test_folder_upload_and_failed_conversion(server, tmp_path):
    import tifffile

    client = Client(server["url"])
    stack = np.random.default_rng(0).integers(0, 60000, (6, 20, 30), dtype=np.uint16)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(stack):
        tifffile.imwrite(folder / f"slice_{i:02d}.tif", plane)
    job = client.create_job("tiff folder", "image_stack")
    client.upload(job, folder, chunk_size=700)
    record = client.wait_for(job, "converted", timeout=60, poll=0.2)
    assert record["status"] == "converted"
    assert tuple(client.record(job)["metadata"]["shape"]) == stack.shape

    bad = client.create_job("not a scan", "npy")
    garbage = tmp_path / "volume.npy"
    garbage.write_bytes(b"this is not a numpy file" * 10)
    client.upload(bad, garbage)
    with pytest.raises(JobFailed) as info:
        for _ in client.wait(bad, until="converted", timeout=60, poll=0.2):
            pass
    assert info.value.status == "convert_error"
    assert "volume.npy" in info.value.error
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not server["hooks"].for_job(bad):
        time.sleep(0.2)
    assert server["hooks"].for_job(bad) == ["convert_error"]


def test_dicom_receive_to_catalogue(server, tmp_path):
    """A series sent with C-STORE becomes a job, is converted by the running server, and
    the catalogue finds it by the DICOM fields kept from conversion."""
    from test_dicom_listen import make_series, send

    from ml4paleo.config import Settings
    from ml4paleo.dicom_listen import DicomReceiver

    uid, folder = make_series(tmp_path / "series", n=5, expected=5, description="Jaw CT")
    receiver = DicomReceiver(Settings(data_dir=server["data"]), port=_free_port(),
                             host="127.0.0.1", idle_seconds=60)
    with receiver:
        assert send(sorted(folder.glob("*.dcm")), receiver.port) == [0] * 5
        (job,) = receiver.wait_for_jobs(1, timeout=10)
    client = Client(server["url"])
    record = client.wait_for(job, "converted", timeout=60, poll=0.2)
    assert record["status"] == "converted", _server_log(server)
    assert tuple(client.record(job)["metadata"]["shape"]) == (5, 16, 16)
    found = client.jobs(modality="CT", series_uid=uid)
    assert [j["id"] for j in found] == [job]
    assert found[0]["name"] == "Jaw CT" and found[0]["manufacturer"] == "TestScan"
    assert client.jobs(modality="MR", series_uid=uid) == []
    table = client.jobs_csv(tmp_path / "jobs.csv", series_uid=uid)
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["id"] for r in rows] == [job] and rows[0]["modality"] == "CT"
    everything = client.jobs(per_page=1, all_pages=True)
    assert job in [j["id"] for j in everything] and len(everything) >= 4


def test_upload_retries_a_lost_chunk(server, monkeypatch):
    """A chunk whose connection drops is sent again; the upload arrives byte-exact."""
    client = Client(server["url"])
    job = client.create_job("flaky network", "npy")
    data = np.arange(6 * 10 * 12, dtype=np.uint16).reshape(6, 10, 12)
    real = client.session.request
    calls = {"n": 0}

    def flaky(method, url, **kwargs):
        if url.endswith("/api/upload"):
            calls["n"] += 1
            if calls["n"] in (2, 3):  # the second chunk fails twice
                raise requests.ConnectionError("connection reset by peer")
        return real(method, url, **kwargs)

    monkeypatch.setattr(client.session, "request", flaky)
    monkeypatch.setattr("ml4paleo.client.time.sleep", lambda s: None)
    client.upload(job, data, chunk_size=500)
    assert calls["n"] == -(-(data.nbytes + 128) // 500) + 2
    uploaded = server["data"] / "jobs" / job / "upload" / "volume.npy"
    np.testing.assert_array_equal(np.load(uploaded), data)


def test_http_errors_are_client_errors(server):
    client = Client(server["url"])
    with pytest.raises(ClientError) as info:
        client.status("A" * 22)
    assert info.value.status_code == 404
    assert "no job" in info.value.message
    job = client.create_job("too early", "npy")
    with pytest.raises(ClientError) as info:
        client.segment(job)
    assert info.value.status_code == 409
    with pytest.raises(ClientError) as info:
        client.upload_complete(job)  # nothing uploaded
    assert info.value.status_code == 400
    with pytest.raises(ClientError) as info:
        client.create_job("x", "no-such-type")
    assert info.value.status_code == 400 and "source_type" in info.value.message


def test_api_key(server):
    """Runs last: once a key exists the server requires it."""
    from ml4paleo.keys import add_key

    _, secret = add_key(server["data"], "client-test")
    with pytest.raises(ClientError) as info:
        Client(server["url"]).jobs()
    assert info.value.status_code == 401
    assert isinstance(Client(server["url"], api_key=secret).jobs(), list)
