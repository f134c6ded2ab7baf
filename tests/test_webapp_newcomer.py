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


@pytest.fixture
def app(tmp_path):
    app = create_app(data_dir=tmp_path / "data")
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    return app.extensions["ml4paleo_store"]


# ------------------------------------------------------------------ 2. report on offer, sizes
def test_downloads_offer_the_report_and_honest_sizes(client, store):
    import io
    import zipfile

    jid, seg = _segmented_job(store)
    listing = client.get(f"/api/job/{jid}/downloads").get_json()["downloads"]
    reports = {d["kind"]: d for d in listing if d["kind"].startswith("report")}
    assert set(reports) == {"report_pdf", "report_html"}
    pdf = reports["report_pdf"]
    assert pdf["size_kind"] == "unknown" and pdf["bytes"] is None
    assert pdf["group"].startswith("Segmentation 1") and pdf["segmentation_id"] == seg
    r = client.get(pdf["url"])
    assert r.status_code == 200 and r.data[:5] == b"%PDF-"
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert client.get(pdf["view_url"]).headers.get("Content-Disposition", "").startswith(
        "inline")

    estimates = {(d["group"], d["kind"]): d for d in listing}
    for d in listing:
        if d["kind"].startswith("report"):
            continue
        data = client.get(d["url"]).get_data()
        if d["size_kind"] == "at_most":
            assert len(data) <= d["bytes"], d
        elif d["size_kind"] == "about":
            # metadata files are deflated: a few KB at most, whatever the size
            assert abs(len(data) - d["bytes"]) <= 0.05 * len(data) + 2048, (d, len(data))
        else:
            assert d["size_kind"] == "exact" and len(data) == d["bytes"], d
    after = client.get(f"/api/job/{jid}/downloads").get_json()["downloads"]
    for d in after:  # cached now (reports too): exact
        assert d["size_kind"] == "exact", d
        assert d["bytes"] > 0
    zarr = client.get(estimates[("image", "zarr")]["url"]).get_data()
    assert any(n.endswith(".zattrs") for n in zipfile.ZipFile(io.BytesIO(zarr)).namelist())


# ------------------------------------------------------------------ 5. names
def _fill_model(folder):
    import json

    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"classes": [{"name": "matrix"},
                                                              {"name": "bone"}]}))


def test_results_have_names_and_can_be_renamed(client, store):
    from ml4paleo.workspace import JobPaths, ModelRegistry

    jid, seg = _segmented_job(store, "Skull 42")
    out = client.get(f"/api/job/{jid}/outputs").get_json()
    assert out["segmentations"][0]["name"].startswith("Segmentation 1")
    r = client.post(f"/api/job/{jid}/segmentation/{seg}/rename", json={"name": "Best <b>"})
    assert r.status_code == 200 and r.get_json()["segmentation"]["name"] == "Best <b>"
    assert client.get(f"/api/job/{jid}/segmentation/{seg}").get_json()["name"] == "Best <b>"
    listing = client.get(f"/api/job/{jid}/downloads").get_json()["downloads"]
    assert {d["group"] for d in listing} == {"image", "Best <b>"}
    assert client.post(f"/api/job/{jid}/segmentation/{seg}/rename",
                       json={"name": "x\x01"}).status_code == 400
    assert client.post(f"/api/job/{jid}/segmentation/nope/rename",
                       json={"name": "x"}).status_code == 404
    assert client.post(f"/api/job/{jid}/segmentation/{seg}/rename", json={}).status_code == 400

    reg = ModelRegistry(JobPaths(store.job_dir(jid)))
    mid = reg.add(_fill_model, source={"kind": "train"})
    r = client.post(f"/api/job/{jid}/models/{mid}/rename", json={"name": "Forest A"})
    assert r.status_code == 200 and r.get_json()["model"]["name"] == "Forest A"
    assert client.post(f"/api/job/{jid}/models/nope/rename",
                       json={"name": "x"}).status_code == 404


def test_models_across_jobs_by_job_name(client, store):
    from ml4paleo.workspace import JobPaths, ModelRegistry

    a, _ = _segmented_job(store, "Skull 42")
    b, _ = _segmented_job(store, "Jaw 7")
    ModelRegistry(JobPaths(store.job_dir(a))).add(_fill_model, source={"kind": "train"})
    ModelRegistry(JobPaths(store.job_dir(b))).add(_fill_model, source={"kind": "train"})
    models = client.get("/api/models").get_json()["models"]
    assert {m["job_name"] for m in models} == {"Skull 42", "Jaw 7"}
    skull = next(m for m in models if m["job_id"] == a)
    assert skull["label"].startswith("Skull 42 · Model 1 · matrix/bone")
    assert skull["classes"] == ["matrix", "bone"]
    others = client.get(f"/api/models?exclude_job={b}").get_json()["models"]
    assert [m["job_id"] for m in others] == [a]
