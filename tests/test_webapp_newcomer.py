"""The newcomer's path through the web app (issue 16): the default relative data folder,
the report on offer, voxel sizes from the browser, resumable uploads, names, messages."""

from __future__ import annotations

import numpy as np
import pytest

from ml4paleo.omezarr import build_pyramid, create_image
from webapp import create_app


def _make_image(path, data, voxel_size=(2.0, 1.0, 1.0), label=False, extra=None,
                unit="micrometer"):
    img = create_image(path, data.shape, data.dtype, chunks=32, voxel_size=voxel_size,
                       unit=unit, label=label, extra_attrs=extra)
    img.array[:] = data
    build_pyramid(img)
    return img


def _volume():
    z, y, x = np.mgrid[0:24, 0:40, 0:48]
    image = ((x * 7 + y * 3 + z * 11) % 256).astype(np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[4:20, 8:32, 8:40] = 1
    labels[8:16, 12:28, 16:32] = 2
    return image, labels


def _segmented_job(store, name="Skull 42"):
    image, labels = _volume()
    jid = store.create(name, "npy")["id"]
    root = store.job_dir(jid)
    _make_image(root / "image.ome.zarr", image, extra={"source_type": "npy", "source": {}})
    seg = root / "segmentations" / "seg1"
    _make_image(seg / "labels.ome.zarr", labels, label=True)
    store.update(jid, lambda r: r.update(status="segmented", segmentations=["seg1"],
                                         segmentation_id="seg1"))
    return jid, "seg1"


# ------------------------------------------------------------------ 1. relative ./data
def test_relative_data_folder_serves_previews_and_reports(tmp_path, monkeypatch):
    """``--data ./data`` (the README's default): every file route answers 200, also
    when the working directory is not the web app's folder."""
    monkeypatch.chdir(tmp_path)
    app = create_app(data_dir="data")
    settings = app.config["ML4PALEO_SETTINGS"]
    assert settings.data_dir == tmp_path / "data" and settings.data_dir.is_absolute()
    client = app.test_client()
    store = app.extensions["ml4paleo_store"]
    jid, seg = _segmented_job(store)
    for url in (f"/api/job/{jid}/preview/image.nii.gz",
                f"/api/job/{jid}/segmentation/{seg}/preview.nii.gz",
                f"/api/job/{jid}/segmentation/{seg}/report.html",
                f"/api/job/{jid}/segmentation/{seg}/report.pdf"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.data[:300])
        if url.endswith(".nii.gz"):
            import gzip

            import nibabel as nib

            nii = nib.Nifti1Image.from_bytes(gzip.decompress(r.data))
            assert nii.shape == (48, 40, 24), url  # (x, y, z)
        elif url.endswith(".pdf"):
            assert r.data[:5] == b"%PDF-"
        else:
            assert b"Skull 42" in r.data


def test_settings_data_dir_absolute_everywhere(tmp_path, monkeypatch):
    from ml4paleo.config import Settings

    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == tmp_path / "data"
    assert Settings.from_env({"ML4PALEO_DATA": "scans"}).data_dir == tmp_path / "scans"
    assert Settings().with_overrides(data_dir="x/../y").data_dir == tmp_path / "y"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings(data_dir="~/d").data_dir == tmp_path / "home" / "d"
