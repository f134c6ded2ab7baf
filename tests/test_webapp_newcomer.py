"""The newcomer's path through the web app (issue 16): the default relative data folder,
the report on offer, voxel sizes from the browser, resumable uploads, names, messages."""

from __future__ import annotations

import numpy as np
import pytest

from ml4paleo.formats import build_pyramid, create_image
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
            assert b"Skull 42" in r.data and b"Segmentation 1" in r.data


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


# ------------------------------------------------------------------ 3. voxel size
def test_voxel_size_typed_at_upload_is_used_by_the_conversion(client, store):
    import io as _io

    from ml4paleo.config import Settings
    from ml4paleo.jobs.runner import run_runner

    r = client.post("/api/job/new", json={"name": "ammonite", "voxel_size": [25, 12.5, 12.5],
                                          "unit": "µm"})
    assert r.status_code == 201, r.data
    jid = r.get_json()["job_id"]
    assert r.get_json()["convert_options"] == {"voxel_size": [25.0, 12.5, 12.5],
                                               "unit": "micrometer"}
    buf = _io.BytesIO()
    np.save(buf, _volume()[0])
    up = client.post("/api/upload", data={"job_id": jid, "file": (_io.BytesIO(buf.getvalue()),
                                                                  "scan.npy")})
    assert up.status_code == 200, up.data
    assert client.post("/api/job/status/upload-complete", json={"job_id": jid}).status_code == 200
    run_runner("convert", Settings(data_dir=store.data_dir, poll_interval=0.05), once=True)
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["voxel_size"] == [25.0, 12.5, 12.5] and info["unit"] == "micrometer"
    assert info["voxel_size_status"] == {"state": "known", "source": "user", "assumed": [],
                                         "message": None}
    assert not [w for w in info["warnings"] if w["code"] == "voxel_size_unknown"]
    for bad in ({"voxel_size": [1, 2], "unit": "um"}, {"voxel_size": [1, 2, 3]},
                {"voxel_size": [1, -2, 3], "unit": "um"}, {"voxel_size": [1, 2, 3],
                                                           "unit": "parsec-ish"}):
        assert client.post("/api/job/new", json=bad).status_code == 400, bad


def test_voxel_size_set_afterwards_updates_image_labels_and_world(client, store):
    import json

    from ml4paleo.formats import open_image, validate_attrs
    from ml4paleo.io import open_any
    from ml4paleo.workspace import JobPaths, SegmentationRegistry

    jid, seg = _segmented_job(store)
    paths = JobPaths(store.job_dir(jid))
    segs = SegmentationRegistry(paths)
    segs.write_meta(seg, model_id="m")
    segs.write_stats(seg, [{"label": 1, "volume": 8.0, "unit": "micrometer"}])
    client.get(f"/api/job/{jid}/preview/image.nii.gz")
    assert any(paths.exports.iterdir())
    chunk = (paths.image / "0" / "0" / "0" / "0").read_bytes()

    r = client.post(f"/api/job/{jid}/voxel-size", json={"voxel_size": [0.05, 0.025, 0.025],
                                                       "unit": "mm"})
    assert r.status_code == 200, r.data
    assert r.get_json()["unit"] == "millimeter"
    for path, rule_offset in ((paths.image, 0.5), (paths.labels(seg), 0.0)):
        attrs = json.loads((path / ".zattrs").read_text())
        validate_attrs(attrs)
        ms = attrs["multiscales"][0]
        assert {a["unit"] for a in ms["axes"]} == {"millimeter"}
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.05, 0.025, 0.025]
        assert attrs["ml4paleo"]["voxel_size_from"] == "user"
        world = attrs["ml4paleo"]["world"]
        assert world["unit"] == "millimeter" and world["voxel_size"] == [0.05, 0.025, 0.025]
        with open_any(path) as vol:
            assert vol.voxel_size == (0.05, 0.025, 0.025) and vol.unit == "millimeter"
        if len(ms["datasets"]) > 1:  # a mean level sits half a coarse voxel in, labels not
            t = ms["datasets"][1]["coordinateTransformations"][1]["translation"]
            assert t[0] == pytest.approx(rule_offset * 0.05)
    assert open_image(paths.image).voxel_size == (0.05, 0.025, 0.025)
    assert (paths.image / "0" / "0" / "0" / "0").read_bytes() == chunk  # no reconversion
    assert not any(paths.exports.iterdir())  # cached exports had the old size
    assert segs.describe(seg)["measurements_outdated"] is True
    record = store.get(jid)
    assert record["metadata"]["voxel_size"] == [0.05, 0.025, 0.025]
    assert record["history"][-1]["message"] == "voxel size set to 0.05 x 0.025 x 0.025 millimeter"
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["voxel_size_status"]["state"] == "known"
    assert client.get(f"/api/job/{jid}/segmentation/{seg}").get_json()["unit"] == "millimeter"

    assert client.post(f"/api/job/{jid}/voxel-size",
                       json={"voxel_size": [1, 1, 1], "unit": "furlong"}).status_code == 400
    store.update(jid, lambda r: r.update(status="meshing"))
    assert client.post(f"/api/job/{jid}/voxel-size",
                       json={"voxel_size": [1, 1, 1], "unit": "um"}).status_code == 409
    empty = store.create("nothing yet", "npy")["id"]
    assert client.post(f"/api/job/{empty}/voxel-size",
                       json={"voxel_size": [1, 1, 1], "unit": "um"}).status_code == 400


def test_probe_reads_the_voxel_size_from_the_first_file(client, tmp_path):
    import gzip
    import io as _io

    import nibabel as nib
    import tifffile

    buf = _io.BytesIO()
    tifffile.imwrite(buf, np.zeros((32, 32), np.uint16), imagej=True,
                     resolution=(1 / 12.5, 1 / 12.5), metadata={"unit": "um"})
    r = client.post("/api/probe", data={"file": (_io.BytesIO(buf.getvalue()), "slice_000.tif")})
    got = r.get_json()
    assert r.status_code == 200 and got["readable"]
    assert got["voxel_size"][1:] == [12.5, 12.5] and got["unit"] == "micrometer"
    assert "z_spacing" in got["assumed"]  # one slice says nothing about the spacing

    data = np.random.default_rng(0).integers(0, 1000, (96, 96, 64)).astype(np.int16)
    nii = nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1.0]))
    nii.header.set_xyzt_units("mm")
    head = gzip.compress(nii.to_bytes())[:200_000]  # the first part of a .nii.gz only
    r = client.post("/api/probe", data={"file": (_io.BytesIO(head), "brain.nii.gz")})
    got = r.get_json()
    assert got["voxel_size"] == pytest.approx([1.5, 0.8, 0.8]) and got["unit"] == "millimeter"

    r = client.post("/api/probe", data={"file": (_io.BytesIO(b"junk" * 10), "notes.npy")})
    assert r.status_code == 200 and r.get_json()["readable"] is False
    assert "/tmp" not in r.get_json()["reason"]
    assert client.post("/api/probe", data={}).status_code == 400


# ------------------------------------------------------------------ 4. resumable uploads
def test_unfinished_uploads_are_listed_and_resume_from_the_server_ranges(client, store):
    import io as _io

    payload = bytes(range(256)) * 64  # 16 KiB
    second = b"abc" * 100
    files = [{"path": "scan/a.bin", "size": len(payload), "last_modified": 1700000000000},
             {"path": "scan/b.bin", "size": len(second), "last_modified": None}]
    r = client.post("/api/job/new", json={"name": "big scan", "files": files})
    assert r.status_code == 201, r.data
    jid = r.get_json()["job_id"]

    def chunk(name, data, offset, total):
        return client.post("/api/upload", data={
            "job_id": jid, "fullPath": name, "dzchunkbyteoffset": str(offset),
            "dztotalfilesize": str(total), "dztotalchunkcount": "4",
            "file": (_io.BytesIO(data), name.rsplit("/", 1)[-1])})

    assert chunk("scan/a.bin", payload[:4096], 0, len(payload)).status_code == 200
    assert chunk("scan/a.bin", payload[4096:8192], 4096, len(payload)).status_code == 200
    # the tab is closed here; another page lists the upload
    ups = client.get("/api/uploads").get_json()["uploads"]
    assert [u["job_id"] for u in ups] == [jid]
    up = ups[0]
    assert up["name"] == "big scan" and up["total_bytes"] == len(payload) + len(second)
    assert up["received_bytes"] == 8192 and up["files_complete"] == 0
    assert up["files"][0] == {"path": "scan/a.bin", "given": "scan/a.bin", "size": len(payload),
                              "last_modified": 1700000000000, "received": 8192,
                              "complete": False}
    assert store.get(jid)["progress"] == pytest.approx(8192 / up["total_bytes"], abs=1e-4)
    # not done: upload-complete says what is missing
    r = client.post("/api/job/status/upload-complete", json={"job_id": jid})
    assert r.status_code == 400 and "incomplete" in r.get_json()["error"]
    # resume: the server says where to carry on
    st = client.get(f"/api/upload/status?job_id={jid}&filename=scan/a.bin").get_json()
    assert st["received_bytes"] == 8192
    assert chunk("scan/a.bin", payload[8192:], 8192, len(payload)).status_code == 200
    r = client.post("/api/job/status/upload-complete", json={"job_id": jid})
    assert r.status_code == 400 and "not uploaded yet" in r.get_json()["error"]
    assert chunk("scan/b.bin", second, 0, len(second)).status_code == 200
    r = client.post("/api/job/status/upload-complete", json={"job_id": jid})
    assert r.status_code == 200, r.data
    assert (store.job_dir(jid) / "upload" / "scan" / "a.bin").read_bytes() == payload
    assert client.get("/api/uploads").get_json()["uploads"] == []

    for bad in ([], [{"path": "../x", "size": -1}], [{"path": "a", "size": 1}] * 2, "x"):
        assert client.post("/api/job/new", json={"files": bad}).status_code == 400, bad


def test_cli_set_voxel_size(tmp_path):
    from click.testing import CliRunner

    from ml4paleo.cli import main
    from ml4paleo.formats import open_image

    _make_image(tmp_path / "scan.ome.zarr", _volume()[0], voxel_size=(1, 1, 1), unit=None)
    r = CliRunner().invoke(main, ["set-voxel-size", str(tmp_path / "scan.ome.zarr"),
                                  "--voxel-size", "20", "10", "10", "--unit", "um"])
    assert r.exit_code == 0, r.output
    assert "20 x 10 x 10 micrometer" in r.output
    img = open_image(tmp_path / "scan.ome.zarr")
    assert img.voxel_size == (20.0, 10.0, 10.0) and img.unit == "micrometer"
    r = CliRunner().invoke(main, ["set-voxel-size", str(tmp_path / "scan.ome.zarr"),
                                  "--voxel-size", "1", "1", "1", "--unit", "furlong"])
    assert r.exit_code == 1 and "length unit" in r.output
