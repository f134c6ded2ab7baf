"""Messages a user can act on (issue 16, item 7): no server paths, Retry only where it
helps, reader warnings reaching the job record and the UI, status text in step with the
badge, intensity ranges from full resolution, files with the user's umask."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml4paleo.config import Settings
from ml4paleo.jobs import JobStore, Status
from ml4paleo.jobs.runner import run_runner
from webapp import create_app


@pytest.fixture
def app(tmp_path):
    app = create_app(data_dir=tmp_path / "data")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app) -> JobStore:
    return app.extensions["ml4paleo_store"]


def _settings(store: JobStore) -> Settings:
    return Settings(data_dir=store.data_dir, poll_interval=0.05, chunk_size=32, workers=1)


def _upload(store: JobStore, files: dict[str, bytes], name="scan") -> str:
    jid = store.create(name, "auto")["id"]
    for rel, data in files.items():
        path = store.job_dir(jid) / "upload" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    store.mark_uploaded(jid)
    return jid


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_photo() -> bytes:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # clearly colour
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ----------------------------------------------------------------- warnings in the UI
def test_a_jpeg_photo_converts_with_warnings_the_page_shows(client, store):
    jid = _upload(store, {"holiday.jpg": _jpeg_photo()})
    run_runner("convert", _settings(store), once=True)
    record = store.get(jid)
    assert record["status"] == Status.CONVERTED.value, record.get("error")
    codes = [w["code"] for w in record["warnings"]]
    assert codes[:2] == ["single_image", "colour_reduced"] and "voxel_size_unknown" in codes
    assert "(3 warnings)" in record["message"]
    for w in record["warnings"]:
        assert str(store.data_dir) not in w["message"] and "holiday.jpg" in w["message"]
    status = client.get(f"/api/job/{jid}/status").get_json()
    assert [w["code"] for w in status["warnings"]] == codes
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["voxel_size_status"]["state"] == "unknown"
    assert "in voxels" in info["voxel_size_status"]["message"]
    assert info["shape"] == [1, 48, 64]


def test_assumed_units_of_a_nifti_are_a_warning(client, store):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)
    nii = nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]))
    nii.header.set_xyzt_units("unknown")
    jid = _upload(store, {"brain.nii.gz": nii.to_bytes() and _gz(nii)})
    run_runner("convert", _settings(store), once=True)
    record = store.get(jid)
    assert record["status"] == Status.CONVERTED.value, record.get("error")
    assert [w["code"] for w in record["warnings"]] == ["unit_assumed"]
    assert "millimeter was assumed" in record["warnings"][0]["message"]
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["voxel_size_status"]["state"] == "assumed"
    assert info["voxel_size"] == [2.0, 0.5, 0.5]


def _gz(nii) -> bytes:
    import gzip

    return gzip.compress(nii.to_bytes())


# ----------------------------------------------------------------- errors: paths, retry
def test_mixed_sizes_error_names_files_not_server_paths_and_offers_no_retry(client, store):
    files = {f"stack/s_{i:02d}.png": _png(np.full((32, 40), i * 10, np.uint8))
             for i in range(4)}
    files["stack/s_02.png"] = _png(np.zeros((30, 40), np.uint8))
    jid = _upload(store, files)
    run_runner("convert", _settings(store), once=True)
    record = store.get(jid)
    assert record["status"] == Status.CONVERT_ERROR.value
    for text in (record["error"], record["message"], record["last_error"]):
        assert str(store.data_dir) not in text and "/jobs/" not in text, text
    assert "stack/s_02.png" in record["error"] and "expected 40x32" in record["error"]
    assert record["error_kind"] == "input"
    status = client.get(f"/api/job/{jid}/status").get_json()
    assert status["state"]["retryable"] is True  # the status could be retried ...
    assert status["retry_helps"] is False  # ... but it would fail the same way
    assert client.get(f"/api/job/{jid}").get_json()["retry_helps"] is False


def test_a_crash_is_retryable_and_a_retry_clears_the_kind(client, store, monkeypatch):
    from ml4paleo.jobs import runner

    def crash(ctx):
        raise OSError("disk hiccup")

    monkeypatch.setattr(runner, "get_step", lambda kind: crash)
    jid = _upload(store, {"a.npy": b"x"})
    settings = Settings(data_dir=store.data_dir, poll_interval=0.01, max_attempts=1)
    run_runner("convert", settings, once=True)
    record = store.get(jid)
    assert record["status"] == Status.CONVERT_ERROR.value and record["error_kind"] == "failed"
    assert client.get(f"/api/job/{jid}/status").get_json()["retry_helps"] is True
    store.retry(jid)
    assert store.get(jid)["error_kind"] is None
    store.cancel(jid)
    assert store.get(jid)["error_kind"] == "cancelled"
    assert client.get(f"/api/job/{jid}/status").get_json()["retry_helps"] is True


# ----------------------------------------------------------------- status text vs badge
def test_status_message_follows_the_status_while_progress_is_written(store):
    from ml4paleo.jobs.context import JobContext
    from ml4paleo.jobs.runner import new_owner, try_claim
    from ml4paleo.jobs.statuses import STAGES

    jid = store.create("s", "npy")["id"]
    store.update(jid, lambda r: r.update(status=Status.TRAINING_QUEUED.value,
                                         request={"train": True}))
    owner = new_owner("segment")
    settings = _settings(store)
    outcome, record = try_claim(store, jid, STAGES["segment"], owner, settings)
    ctx = JobContext(store, record, STAGES["segment"], owner, settings, threading.Event())
    ctx.message("training a model on the annotations")
    ctx.progress(1, 2)
    ctx.flush(False)
    assert store.get(jid)["message"] == "training a model on the annotations"
    ctx.set_status(Status.SEGMENTING, "segmenting the whole image")
    ctx.progress(1, 3)  # the heartbeat writes progress (and the message) again
    ctx.flush(True)
    rec = store.get(jid)
    assert rec["status"] == "segmenting" and rec["message"] == "segmenting the whole image"


# ----------------------------------------------------------------- intensity range
def test_intensity_range_comes_from_full_resolution(client, store):
    from ml4paleo.formats import build_pyramid, create_image

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (64, 128, 128)).astype(np.uint8)
    jid = store.create("noise", "npy")["id"]
    img = create_image(store.job_dir(jid) / "image.ome.zarr", data.shape, data.dtype,
                       chunks=32, voxel_size=(1, 1, 1), unit="micrometer")
    img.array[:] = data
    build_pyramid(img)
    coarse = np.asarray(img.level(len(img.levels) - 1)[:])
    assert coarse.max() < 240  # means of noise: what the page showed before
    store.update(jid, lambda r: r.update(status="converted"))
    stats = client.get(f"/api/job/{jid}/image").get_json()["intensity"]
    assert stats["min"] == 0 and stats["max"] == 255
    assert stats["p_high"] >= 250 and stats["p_low"] <= 5


def test_intensity_sample_is_bounded(tmp_path):
    from ml4paleo.formats import create_image
    from ml4paleo.preview import sample_level0

    img = create_image(tmp_path / "a.ome.zarr", (64, 64, 64), "uint8", chunks=16)
    img.array[:] = 7
    got = sample_level0(img, max_voxels=16**3 * 5)
    assert got.size == 16**3 * 5 and set(np.unique(got)) == {7}
    assert np.array_equal(sample_level0(img, max_voxels=16**3 * 5),
                          sample_level0(img, max_voxels=16**3 * 5))


# ----------------------------------------------------------------- umask
def _modes(root: Path) -> dict[str, int]:
    out = {}
    for p in root.rglob("*"):
        if not p.is_symlink():
            out[str(p.relative_to(root))] = p.stat().st_mode & 0o777
    return out


def test_cli_outputs_and_client_downloads_follow_the_umask(tmp_path):
    """Every file the README's commands write (and the client downloads) is 0644 / 0755
    under umask 022, not 0600: others on a lab server can read results."""
    import subprocess
    import sys

    from ml4paleo.phantom import make_phantom, scribble_labels

    scan, truth = make_phantom((24, 48, 48), seed=0)
    np.save(tmp_path / "scan.npy", scan)
    np.save(tmp_path / "strokes.npy", scribble_labels(truth, slices=3))
    commands = [
        "convert scan.npy scan.ome.zarr --voxel-size 20 10 10 --unit micrometer",
        "train scan.ome.zarr strokes.npy -o model --classes matrix,bone,tooth",
        "segment scan.ome.zarr --model model -o labels.ome.zarr --chunk-size 32",
        "mesh labels.ome.zarr -o meshes --formats stl,glb --chunk-size 32",
        "export nifti labels.ome.zarr out/",
        "export png scan.ome.zarr out/",
        "report labels.ome.zarr -o report",
    ]
    env = dict(os.environ, ML4PALEO_WORKERS="1")
    script = ("import os, sys; os.umask(0o022); from ml4paleo.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    for cmd in commands:
        r = subprocess.run([sys.executable, "-c", script, *cmd.split()], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    modes = _modes(tmp_path)
    bad = {k: oct(m) for k, m in modes.items() if (m & 0o044) != 0o044}
    assert not bad, bad
