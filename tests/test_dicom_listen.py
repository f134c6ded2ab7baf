"""DICOM receive: send generated series to the C-STORE SCP on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from ml4paleo.dicom_listen import STAGING_DIR, DicomReceiver
from ml4paleo.jobs import JobStore


def make_series(folder: Path, n: int = 5, description: str = "Ammonite CT",
                expected: int | None = None, size: int = 16, seed: int = 0,
                sop_class: str = CTImageStorage, rle: bool = False) -> tuple[str, Path]:
    """Write an ``n``-slice series (uint16, 0.5 mm pixels, 0.7 mm slices; CT by default)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series_uid, frame = generate_uid(), generate_uid(), generate_uid()
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{i:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.Modality = "CT" if sop_class == CTImageStorage else "MR"
        ds.PatientID = "FOSSIL-7"
        ds.PatientName = "Ammonite^Seven"
        ds.SeriesDescription = description
        ds.Manufacturer = "TestScan"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 0.7 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 0.7
        if expected is not None:
            ds.ImagesInAcquisition = expected
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(0, 4000, (size, size), dtype=np.uint16).tobytes()
        if rle:
            ds.compress(RLELossless)
        ds.save_as(folder / f"s{i:03d}.dcm", enforce_file_format=True)
    return series_uid, folder


def send(files: list[Path], port: int, ae_title: str = "ML4PALEO") -> list[int]:
    """C-STORE every file in one association; return the status codes."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    codes = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files]
    assoc.release()
    return codes


@pytest.fixture
def receiver(tmp_path):
    made = []

    def make(**kwargs):
        kwargs.setdefault("idle_seconds", 60)
        r = DicomReceiver(tmp_path / "data", port=_free_port(), host="127.0.0.1", **kwargs)
        r.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_expected_count_makes_job_at_release(tmp_path, receiver):
    r = receiver()  # idle 60 s: only the expected count can finish the series here
    uid, folder = make_series(tmp_path / "src", n=5, expected=5, description="Skull CT 0.7mm")
    t0 = time.monotonic()
    assert send(sorted(folder.glob("*.dcm")), r.port) == [0] * 5
    jobs = r.wait_for_jobs(1, timeout=10)
    assert len(jobs) == 1 and time.monotonic() - t0 < 10
    record = JobStore(tmp_path / "data").get(jobs[0])
    assert record["status"] == "uploaded"
    assert record["source_type"] == "dicom"
    assert record["name"] == "Skull CT 0.7mm"
    assert record["dicom_receive"]["series_uid"] == uid
    assert record["dicom_receive"]["calling_ae"] == "TESTSCU"
    upload = tmp_path / "data" / "jobs" / jobs[0] / "upload"
    received = sorted(upload.glob("*.dcm"))
    assert len(received) == 5
    # the instances are stored exactly as sent (pixel data and UIDs intact)
    originals = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in folder.glob("*")}
    for path in received:
        ds = pydicom.dcmread(path)
        assert ds.SeriesInstanceUID == uid
        np.testing.assert_array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)
    assert not any((tmp_path / "data" / STAGING_DIR).iterdir())


def test_idle_series_without_count_and_two_series(tmp_path, receiver):
    r = receiver(idle_seconds=0.6)
    uid_a, a = make_series(tmp_path / "a", n=3, description="Part A", seed=1)
    uid_b, b = make_series(tmp_path / "b", n=4, description="", seed=2)
    assert send(sorted(a.glob("*.dcm")) + sorted(b.glob("*.dcm")), r.port) == [0] * 7
    assert r.pending_series()  # nothing says the series are complete yet
    jobs = r.wait_for_jobs(2, timeout=10)
    assert len(jobs) == 2
    store = JobStore(tmp_path / "data")
    records = {store.get(j)["dicom_receive"]["series_uid"]: store.get(j) for j in jobs}
    assert records[uid_a]["name"] == "Part A"
    assert records[uid_b]["name"].startswith("CT FOSSIL-7 series")  # no description
    for uid, n in ((uid_a, 3), (uid_b, 4)):
        job_dir = tmp_path / "data" / "jobs" / records[uid]["id"]
        assert len(list((job_dir / "upload").glob("*.dcm"))) == n
        assert records[uid]["status"] == "uploaded"


def test_compressed_mr_series(tmp_path, receiver):
    """Another storage class (MR) in a compressed transfer syntax is stored as sent."""
    r = receiver()
    uid, folder = make_series(tmp_path / "mr", n=3, expected=3, description="MR RLE",
                              sop_class=MRImageStorage, rle=True)
    assert send(sorted(folder.glob("*.dcm")), r.port) == [0] * 3
    (job,) = r.wait_for_jobs(1, timeout=10)
    upload = tmp_path / "data" / "jobs" / job / "upload"
    stored = [pydicom.dcmread(p) for p in sorted(upload.glob("*.dcm"))]
    assert len(stored) == 3
    assert {ds.file_meta.TransferSyntaxUID for ds in stored} == {RLELossless}
    assert {ds.SOPClassUID for ds in stored} == {MRImageStorage}
    assert stored[0].pixel_array.shape == (16, 16)


def test_wrong_called_ae_is_rejected(tmp_path, receiver):
    from pynetdicom import AE

    r = receiver()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", r.port, ae_title="SOMEONE")
    assert assoc.is_rejected
    assert r.jobs == []


def test_staged_series_survives_restart(tmp_path):
    uid, folder = make_series(tmp_path / "src", n=3, description="Restarted")
    r = DicomReceiver(tmp_path / "data", port=_free_port(), host="127.0.0.1", idle_seconds=60)
    r.start()
    try:
        assert send(sorted(folder.glob("*.dcm")), r.port) == [0] * 3
    finally:
        r.stop()
    assert r.jobs == []
    staged = list((tmp_path / "data" / STAGING_DIR).iterdir())
    assert len(staged) == 1 and len(list(staged[0].glob("*.dcm"))) == 3
    again = DicomReceiver(tmp_path / "data", port=_free_port(), idle_seconds=0.2)
    assert again.pending_series()[0]["description"] == "Restarted"
    created = again.finish_idle(now=time.monotonic() + 1)
    assert len(created) == 1
    assert JobStore(tmp_path / "data").get(created[0])["name"] == "Restarted"


def test_bad_arguments():
    with pytest.raises(ValueError, match="AE title"):
        DicomReceiver("unused", ae_title="X" * 17)
    with pytest.raises(ValueError, match="idle_seconds"):
        DicomReceiver("unused", idle_seconds=0)


def test_cli_with_pynetdicom_storescu(tmp_path):
    """The real command line: ``ml4paleo dicom-listen`` + pynetdicom's ``storescu`` app."""
    port = _free_port()
    data = tmp_path / "data"
    _, folder = make_series(tmp_path / "src", n=4, expected=4, description="Via storescu")
    listener = subprocess.Popen(
        [sys.executable, "-c", "from ml4paleo.cli import main; main()", "dicom-listen", "--port", str(port),
         "--host", "127.0.0.1", "--ae-title", "ML4PALEO", "--data", str(data),
         "--idle-seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = listener.stdout.readline()
        assert "Listening as ML4PALEO" in line, line + listener.stderr.read()
        sent = subprocess.run(
            [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port),
             str(folder), "-aec", "ML4PALEO", "-cx"],
            capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        line = listener.stdout.readline()
        assert "Via storescu" in line
    finally:
        listener.terminate()
        listener.wait(timeout=10)
    records = JobStore(data).list()
    assert [r["name"] for r in records] == ["Via storescu"]
    assert len(list((data / "jobs" / records[0]["id"] / "upload").glob("*.dcm"))) == 4
