"""Bad uploads fail once with a clear reason: reader failures are InputErrors (never
retried), decoded sizes are checked from headers before decoding (decompression bombs),
and the reasons name files relative to the job, never server paths."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import nibabel as nib
import numpy as np
import pytest

from ml4paleo.config import Settings
from ml4paleo.io import DecodeLimits, InputError, check_decode_limits, open_any
from ml4paleo.jobs import JobStore
from ml4paleo.jobs.runner import run_runner


def _png(width: int, height: int) -> bytes:
    """An 8-bit gray PNG of zeros (what a bomb is made of: tiny, decodes huge)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _bomb(path, n=24, size=8192) -> int:
    png = _png(size, size)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"slice{i:03d}.png", png)
    return path.stat().st_size


def _job(store: JobStore, name: str, data: bytes) -> str:
    job_id = store.create("bad", "auto")["id"]
    (store.job_dir(job_id) / "upload" / name).write_bytes(data)
    store.mark_uploaded(job_id)
    return job_id


def _negative_nifti() -> bytes:
    buf = io.BytesIO()
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4))
    img.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    raw = bytearray(buf.getvalue())
    struct.pack_into("<h", raw, 42, -5)  # dim[1] = -5
    return bytes(raw)


def test_a_nifti_with_a_negative_dimension_fails_once_with_the_reason(tmp_path):
    data = tmp_path / "data"
    store = JobStore(data)
    job_id = _job(store, "scan.nii", _negative_nifti())
    with pytest.raises(InputError, match="invalid volume dimensions"):
        open_any(store.job_dir(job_id) / "upload" / "scan.nii")
    run_runner("convert", Settings(data_dir=data, poll_interval=0.01, max_attempts=3), once=True)
    rec = store.get(job_id)
    assert rec["status"] == "convert_error"
    assert rec["attempts"] == 1  # not "failed 3 time(s)"
    assert rec["error"].startswith("scan.nii: invalid volume dimensions (6, 5, -5)")
    assert str(tmp_path) not in rec["error"] and "failed" not in rec["error"]
    starts = [h for h in rec["history"] if "started" in h["message"]]
    assert len(starts) == 1


def test_unparseable_reader_input_is_an_input_error(tmp_path):
    """Whatever a reader library raises on a broken header becomes an InputError naming
    the file (so the runner never retries it)."""
    bad = tmp_path / "scan.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz', }   \n")
    with pytest.raises(InputError, match="scan.npy"):
        open_any(bad)
    tif = tmp_path / "page.tif"
    tif.write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(InputError, match="page.tif"):
        open_any(tif)


def test_the_png_zip_bomb_is_refused_from_its_headers(tmp_path, monkeypatch):
    """24 stored 8192 x 8192 PNGs of zeros are ~1.5 MB and decode to 1.5 GiB: refused by
    the decoded / stored ratio from the PNG headers, before any slice is decoded."""
    bomb = tmp_path / "bomb.zip"
    size = _bomb(bomb)
    assert size < 2_000_000
    decoded = []
    real = __import__("ml4paleo.io._stack", fromlist=["decode_slice"]).decode_slice
    monkeypatch.setattr("ml4paleo.io._stack.decode_slice",
                        lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
    volume = open_any(bomb)
    assert volume.shape == (24, 8192, 8192) and volume.nbytes == 24 * 8192**2
    with pytest.raises(InputError, match="decompression bomb") as info:
        check_decode_limits(volume)
    assert "ML4PALEO_MAX_DECODE_RATIO" in str(info.value)
    volume.close()
    # through the runner: one attempt, nothing converted, nothing decoded
    data = tmp_path / "data"
    store = JobStore(data)
    job_id = _job(store, "bomb.zip", bomb.read_bytes())
    run_runner("convert", Settings(data_dir=data, poll_interval=0.01), once=True)
    rec = store.get(job_id)
    assert rec["status"] == "convert_error" and rec["attempts"] == 1
    assert "decompression bomb" in rec["error"] and rec["error"].startswith("bomb.zip: ")
    assert str(data) not in rec["error"]
    assert decoded == []
    assert not (store.job_dir(job_id) / "image.ome.zarr").exists()
    assert not [p for p in store.job_dir(job_id).iterdir() if ".tmp-" in p.name]


def test_decoded_size_limits_come_from_the_settings(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 30, 40), np.uint8))
    volume = open_any(tmp_path / "v.npy")
    check_decode_limits(volume, DecodeLimits.from_settings(Settings()))
    tight = Settings(max_slice_pixels=1000)
    with pytest.raises(InputError, match="40 x 30 pixels .* ML4PALEO_MAX_SLICE_PIXELS"):
        check_decode_limits(volume, DecodeLimits.from_settings(tight))
    with pytest.raises(InputError, match="4800 voxels .* ML4PALEO_MAX_VOLUME_VOXELS"):
        check_decode_limits(volume, DecodeLimits(max_volume_voxels=4000))
    # the ratio only counts past ratio_min_bytes: a small, well-compressed scan is fine
    assert volume.stored_bytes() > volume.nbytes
    check_decode_limits(volume, DecodeLimits(max_ratio=0.5, ratio_min_bytes=1 << 20))
    with pytest.raises(InputError, match="decompression bomb"):
        check_decode_limits(volume, DecodeLimits(max_ratio=0.5, ratio_min_bytes=0))
    volume.close()
    # from the environment, like every setting
    env = Settings.from_env({"ML4PALEO_MAX_SLICE_PIXELS": "99", "ML4PALEO_MIN_FREE_MB": "5"})
    assert env.max_slice_pixels == 99 and env.min_free_mb == 5
