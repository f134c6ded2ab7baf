"""Flask test-client tests of the web app's pages, data, download, catalogue and OpenAPI
routes, including hostile input (traversal, unknown ids, malformed JSON, XSS names)."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from ml4paleo.formats import build_pyramid, create_image
from webapp import create_app


def _make_image(path, data, voxel_size=(2.0, 1.0, 1.0), label=False, extra=None):
    img = create_image(path, data.shape, data.dtype, chunks=32, voxel_size=voxel_size,
                       unit="micrometer", label=label, extra_attrs=extra)
    img.array[:] = data
    build_pyramid(img)
    return img


def _force(store, job_id, **fields):
    """Set fields (the status too) as the runners would have left them."""
    return store.update(job_id, lambda r: r.update(fields))


@pytest.fixture
def volume():
    z, y, x = np.mgrid[0:40, 0:80, 0:100]
    image = ((x * 7 + y * 3 + z * 11) % 1000).astype(np.uint16)
    labels = np.zeros(image.shape, np.uint8)
    labels[10:30, 20:60, 30:70] = 1
    labels[15:25, 30:50, 40:60] = 2
    return image, labels


@pytest.fixture
def app(tmp_path):
    app = create_app(data_dir=tmp_path / "data", max_upload_bytes=4096)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    return app.extensions["ml4paleo_store"]


@pytest.fixture
def job(store, volume):
    """A converted job with one segmentation, its meshes and stats."""
    image, labels = volume
    rec = store.create("Fossil <b>skull</b>", "dicom")
    jid = rec["id"]
    root = store.job_dir(jid)
    _make_image(root / "image.ome.zarr", image,
                extra={"source_type": "dicom", "source": {"modality": "CT",
                                                          "manufacturer": "ACME"}})
    seg_id = "seg1"
    seg = root / "segmentations" / seg_id
    _make_image(seg / "labels.ome.zarr", labels, label=True)
    (seg / "meshes").mkdir()
    import trimesh

    box = trimesh.creation.box(extents=(4, 5, 6))
    box.export(seg / "meshes" / "1.stl")
    box.export(seg / "meshes" / "1.obj")
    (seg / "stats.csv").write_text("label,voxels\n1,100\n2,50\n")
    _force(store, jid, status="segmented", segmentations=[seg_id], segmentation_id=seg_id,
           metadata={"shape": list(image.shape), "dtype": "uint16",
                     "voxel_size": [2.0, 1.0, 1.0], "unit": "micrometer",
                     "source": {"modality": "CT", "manufacturer": "ACME",
                                "manufacturer_model": "Scan 9000", "series_uid": "1.2.3"}})
    return jid, seg_id


def _png(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.data[:200]
    assert resp.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.data)))


# ------------------------------------------------------------------ pages
def test_pages_render_and_escape_job_names(client, job):
    jid, _ = job
    for url in ("/", "/about", f"/job/{jid}", f"/job/{jid}/viewer", f"/job/{jid}/3d",
                f"/job/{jid}/download"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert b"https://" not in r.data.replace(b"https://github", b""), f"external URL in {url}"
    body = client.get(f"/job/{jid}").data
    assert b"<b>skull</b>" not in body and b"&lt;b&gt;skull&lt;/b&gt;" in body


def test_unknown_and_hostile_job_ids_are_404(client):
    for url in ("/job/%2E%2E/annotations/jobs.json", "/job/..", "/job/nope",
                "/job/" + "a" * 30 + "/viewer", "/job/%2E%2E/3d"):
        assert client.get(url).status_code == 404, url
    for url in ("/api/job/%2E%2E", "/api/job/nope/outputs", "/api/job/nope/image",
                "/api/job/nope/slice", "/api/job/../zarr/.zattrs",
                "/api/job/nope/segmentation/x/zarr/.zattrs", "/api/job/nope/downloads"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "error" in r.get_json()


def test_traversal_inside_a_job_is_refused(client, job):
    jid, seg = job
    bad = ["..%2Fjob.json", "%2E%2E/job.json", "../../job.json", "0/../../job.json",
           "/etc/passwd", "..\\job.json", "..", ""]
    for key in bad:
        r = client.get(f"/api/job/{jid}/zarr/{key}", follow_redirects=True)
        assert r.status_code in (400, 404), key
        assert b'"status"' not in r.data
    for url in (f"/api/job/{jid}/segmentation/..%2F..%2F/zarr/.zattrs",
                f"/api/job/{jid}/segmentation/%2E%2E/obj/job.json",
                f"/api/job/{jid}/segmentation/{seg}/obj/..%2Fstats.csv",
                f"/api/job/{jid}/segmentation/{seg}/obj/../../../job.json",
                f"/api/job/{jid}/segmentation/%2E%2E/download/zarr",
                f"/api/job/{jid}/meshes/..%2F..%2F/download"):
        assert client.get(url).status_code in (400, 404), url


# ------------------------------------------------------------------ data routes
def test_job_record_outputs_and_image_info(client, job):
    jid, seg = job
    rec = client.get(f"/api/job/{jid}").get_json()
    assert rec["status"] == "segmented" and rec["job_id"] == jid
    avail = rec["available"]
    assert avail["image"]["exists"] and avail["image"]["bytes"] > 0
    (entry,) = avail["segmentations"]
    assert entry["id"] == seg and entry["labels"] and entry["stats"]
    assert {m["file"] for m in entry["meshes"]} == {"1.stl", "1.obj"}
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["shape"] == [40, 80, 100] and info["dtype"] == "uint16"
    assert info["voxel_size"] == [2.0, 1.0, 1.0] and info["unit"] == "micrometer"
    assert info["levels"][1]["shape"] == [20, 40, 50]
    assert info["source"]["modality"] == "CT" and info["source_type"] == "dicom"
    assert 0 <= info["intensity"]["p_low"] < info["intensity"]["p_high"] <= 999


def test_raw_zarr_keys(client, job, store):
    jid, seg = job
    attrs = client.get(f"/api/job/{jid}/zarr/.zattrs")
    assert attrs.status_code == 200 and "multiscales" in attrs.get_json()
    zarray = client.get(f"/api/job/{jid}/zarr/0/.zarray").get_json()
    assert zarray["shape"] == [40, 80, 100]
    chunk = client.get(f"/api/job/{jid}/zarr/0/0/0/0")
    assert chunk.data == (store.job_dir(jid) / "image.ome.zarr/0/0/0/0").read_bytes()
    assert client.get(f"/api/job/{jid}/zarr/0/9/9/9").status_code == 404
    seg_attrs = client.get(f"/api/job/{jid}/segmentation/{seg}/zarr/.zattrs").get_json()
    assert "image-label" in seg_attrs
    stl = client.get(f"/api/job/{jid}/segmentation/{seg}/obj/1.stl")
    assert stl.status_code == 200 and len(stl.data) > 84


def test_slice_tiles_match_the_volume(client, job, volume):
    jid, seg = job
    image, labels = volume
    plane = _png(client.get(f"/api/job/{jid}/slice?axis=z&index=12&level=0&window=0,1000"))
    expected = np.clip(image[12].astype(np.float32) * 255 / 1000, 0, 255).astype(np.uint8)
    assert plane.shape == (80, 100)
    assert np.abs(plane.astype(int) - expected).max() <= 1
    tile = _png(client.get(f"/api/job/{jid}/slice?axis=x&index=50&level=0&tile=0,1"
                           "&tile_size=32&window=0,1000"))
    assert tile.shape == (32, 32)  # (z, y) plane, second tile along y
    exp_tile = np.clip(image[0:32, 32:64, 50] * 255.0 / 1000, 0, 255).astype(np.uint8)
    assert np.abs(tile.astype(int) - exp_tile).max() <= 1
    flat = _png(client.get(f"/api/job/{jid}/slice?axis=z&index=0&window=500,500"))
    assert np.array_equal(flat, np.where(image[0] >= 500, 255, 0))
    small = _png(client.get(f"/api/job/{jid}/slice?axis=y&index=40&level=1"))
    assert small.shape == (20, 50)
    lab = _png(client.get(f"/api/job/{jid}/segmentation/{seg}/slice?axis=z&index=20"))
    assert np.array_equal(lab, labels[20])
    assert set(np.unique(lab)) == {0, 1, 2}


def test_slices_follow_a_replaced_image(client, job, store):
    """Slices reuse the opened image only while its metadata is the same: a re-converted
    image (other shape, other values) answers at once, and so does a deleted one."""
    import shutil

    jid, _ = job
    path = store.job_dir(jid) / "image.ome.zarr"
    assert client.get(f"/api/job/{jid}/slice?axis=z&index=45").status_code == 404
    assert _png(client.get(f"/api/job/{jid}/slice?axis=z&index=12")).shape == (80, 100)
    shutil.rmtree(path)
    assert client.get(f"/api/job/{jid}/slice?axis=z&index=12").status_code == 404
    _make_image(path, np.full((50, 30, 20), 700, np.uint16))
    plane = _png(client.get(f"/api/job/{jid}/slice?axis=z&index=45&window=0,1000"))
    assert plane.shape == (30, 20) and np.all(plane == 178)  # 700 * 255 / 1000
    info = client.get(f"/api/job/{jid}/image").get_json()
    assert info["shape"] == [50, 30, 20] and info["intensity"]["max"] == 700.0


@pytest.mark.parametrize("query", [
    "axis=w", "axis=z&index=-1", "axis=z&index=abc", "index=", "level=-1",
    "window=1", "window=a,b", "window=nan,inf", "tile=1", "tile_size=5",
    "tile_size=999999",
])
def test_slice_bad_parameters_are_400(client, job, query):
    jid, seg = job
    assert client.get(f"/api/job/{jid}/slice?{query}").status_code == 400, query
    if "window" not in query:
        r = client.get(f"/api/job/{jid}/segmentation/{seg}/slice?{query}")
        assert r.status_code == 400, query


@pytest.mark.parametrize("query", ["axis=z&index=40", "level=9", "tile=99,0"])
def test_slices_beyond_the_image_are_404(client, job, query):
    """A plane, level or tile the image does not have is a resource that does not exist."""
    jid, seg = job
    for url in (f"/api/job/{jid}/slice?{query}", f"/api/job/{jid}/segmentation/{seg}/slice?{query}"):
        r = client.get(url)
        assert r.status_code == 404 and r.is_json and "no " in r.get_json()["error"], url


# ------------------------------------------------------------------ downloads
def test_downloads_stream_and_cache(client, job, store, volume):
    jid, seg = job
    listing = client.get(f"/api/job/{jid}/downloads").get_json()["downloads"]
    urls = {d["url"] for d in listing}
    assert f"/api/job/{jid}/segmentation/{seg}/download/zarr" in urls
    assert f"/api/job/{jid}/meshes/{seg}/download" in urls
    assert f"/api/job/{jid}/image/download/tiff" in urls
    assert all(d["bytes"] > 0 for d in listing if d["size_kind"] != "unknown")
    assert {d["kind"] for d in listing if d["size_kind"] == "unknown"} == {"report_pdf",
                                                                        "report_html"}

    r = client.get(f"/api/job/{jid}/segmentation/{seg}/download/zarr")
    assert r.status_code == 200 and r.is_streamed
    data = r.get_data()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert any(n.endswith(".zattrs") for n in names) and any(n.endswith("0/.zarray") for n in names)
    cached = store.job_dir(jid) / "exports" / f"segmentation-{seg}-zarr.zarr.zip"
    assert cached.read_bytes() == data
    again = client.get(f"/api/job/{jid}/segmentation/{seg}/download/zarr")
    assert again.get_data() == data and again.headers["Content-Length"] == str(len(data))

    meshes = zipfile.ZipFile(io.BytesIO(client.get(f"/api/job/{jid}/meshes/{seg}/download")
                                        .get_data())).namelist()
    assert any(n.endswith("1.stl") for n in meshes)
    pngs = zipfile.ZipFile(io.BytesIO(
        client.get(f"/api/job/{jid}/segmentation/{seg}/download/png").get_data()))
    slices = sorted(n for n in pngs.namelist() if n.endswith(".png"))
    assert len(slices) == 40
    mid = np.asarray(Image.open(io.BytesIO(pngs.read(slices[20]))))
    assert np.array_equal(mid, volume[1][20])
    stats = client.get(f"/api/job/{jid}/segmentation/{seg}/download/stats")
    assert stats.status_code == 200 and b"label" in stats.get_data()

    import gzip
    import tempfile

    import nibabel as nib

    nii = client.get(f"/api/job/{jid}/segmentation/{seg}/download/nifti").get_data()
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as fh:
        fh.write(nii)
        fh.flush()
        vol = nib.load(fh.name)
        assert sorted(vol.shape) == sorted((40, 80, 100))
    assert gzip.decompress(nii)[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")

    for url in (f"/api/job/{jid}/segmentation/{seg}/download/exe",
                f"/api/job/{jid}/image/download/meshes",
                f"/api/job/{jid}/segmentation/nope/download/zarr",
                f"/api/job/{jid}/meshes/nope/download"):
        assert client.get(url).status_code == 404, url


def test_previews_are_small_nifti(client, job):
    import gzip

    jid, seg = job
    for url in (f"/api/job/{jid}/preview/image.nii.gz",
                f"/api/job/{jid}/segmentation/{seg}/preview.nii.gz"):
        r = client.get(url)
        assert r.status_code == 200
        header = gzip.decompress(r.data)[:348]
        dims = np.frombuffer(header[40:56], "<i2")
        assert list(dims[1:4]) == [100, 80, 40]


def test_new_annotation_keeps_existing_results_on_offer(client, store, job):
    jid, seg = job
    store.record_annotation(jid)  # segmented -> annotated
    assert client.get(f"/api/job/{jid}/status").get_json()["status"] == "annotated"
    urls = {d["url"] for d in client.get(f"/api/job/{jid}/downloads").get_json()["downloads"]}
    assert f"/api/job/{jid}/meshes/{seg}/download" in urls
    assert client.get(f"/api/job/{jid}/outputs").get_json()["segmentations"][0]["labels"]


# ------------------------------------------------------------------ job actions
def test_delete_retry_cancel(client, store, job):
    jid, _ = job
    assert client.post(f"/api/job/{jid}/retry", json={}).status_code == 409
    other = store.create("failing", "image_stack")["id"]
    _force(store, other, status="convert_error", error="boom")
    r = client.post(f"/api/job/{other}/retry", json={})
    assert r.status_code == 200 and r.get_json()["status"] == "uploaded"
    r = client.post(f"/api/job/{other}/cancel", json={})
    assert r.status_code == 200 and r.get_json()["status"] == "convert_error"
    assert client.post(f"/api/job/{other}/cancel", json={}).status_code == 409
    assert client.delete(f"/api/job/{jid}").get_json() == {"status": "deleted", "job_id": jid}
    assert client.get(f"/api/job/{jid}").status_code == 404
    assert client.delete(f"/api/job/{jid}").status_code == 404
    assert client.post(f"/api/job/{other}/delete").status_code == 200


def test_every_job_answer_carries_its_status_description(client, store, job):
    jid, seg = job
    table = client.get("/api/statuses").get_json()
    assert set(table["statuses"]) >= {"uploading", "meshing_queued", "mesh_error", "done"}
    assert table["order"][:3] == ["pending", "uploading", "uploaded"]
    assert table["stages"]["mesh"] == {"queued": "meshing_queued", "running": ["meshing"],
                                       "done": ["meshed"], "error": "mesh_error"}
    queued = table["statuses"]["meshing_queued"]
    assert (queued["busy"], queued["queued"], queued["running"], queued["phase"]) == \
        (True, True, False, "mesh")
    assert table["statuses"]["segment_error"]["retryable"] is True
    assert table["statuses"]["segmented"]["tone"] == "ok"

    segmented = table["statuses"]["segmented"]
    assert client.get(f"/api/job/{jid}/status").get_json()["state"] == segmented
    assert client.get(f"/api/job/{jid}").get_json()["state"] == segmented
    row = next(r for r in client.get("/api/jobs").get_json()["jobs"] if r["id"] == jid)
    assert row["state"] == segmented
    new = client.post("/api/job/new", json={"name": "x"}).get_json()
    assert new["state"]["status"] == "uploading" and new["state"]["active"] is True
    store.request_mesh(jid)
    state = client.get(f"/api/job/{jid}/status").get_json()["state"]
    assert state == queued
    cancelled = client.post(f"/api/job/{jid}/cancel", json={}).get_json()
    assert cancelled["status"] == "mesh_error" and cancelled["state"]["failed"] is True
    # the OpenAPI document lists the table too
    assert "/api/statuses" in client.get("/api/openapi.json").get_json()["paths"]


def test_a_running_job_with_a_lease_is_not_deleted(client, store, job):
    jid, _ = job
    _force(store, jid, status="meshing", lease={"owner": "r1", "expires_at": None})
    r = client.delete(f"/api/job/{jid}")
    assert r.status_code == 409 and "meshing" in r.get_json()["error"]
    _force(store, jid, status="meshing_queued", lease={"owner": None, "expires_at": None})
    assert client.delete(f"/api/job/{jid}").status_code == 200  # queued: nothing runs


def test_home_status_filter_comes_from_the_status_rules(client):
    from ml4paleo.jobs.statuses import status_filters

    page = client.get("/").get_data(as_text=True)
    for f in status_filters():
        assert f'<option value="{",".join(f["statuses"])}">{f["label"]}</option>' in page


# ------------------------------------------------------------------ catalogue
def test_catalogue_filters_sort_page_csv(client, store, job):
    from ml4paleo.workspace.segmentations import dir_size

    jid, _ = job
    ids = [store.create(f"scan {i}", "image_stack")["id"] for i in range(5)]
    store.set_fields(ids[0], name="=HYPERLINK(\"x\")")
    # a job folder's size is what its runner measured after its last step
    size = dir_size(store.job_dir(jid))
    store.set_fields(jid, disk_bytes=size)
    store.set_fields(ids[1], upload_bytes=1234)
    data = client.get("/api/jobs?per_page=2&page=2&sort=name").get_json()
    assert data["total"] == 6 and data["pages"] == 3 and len(data["jobs"]) == 2
    names = [j["name"] for j in client.get("/api/jobs?sort=name&per_page=100").get_json()["jobs"]]
    assert names == sorted(names, key=str.lower)
    assert [j["id"] for j in client.get("/api/jobs?modality=ct").get_json()["jobs"]] == [jid]
    assert client.get("/api/jobs?manufacturer=ACME&model=scan 9000&series_uid=1.2.3"
                      ).get_json()["total"] == 1
    assert client.get("/api/jobs?manufacturer=Other").get_json()["total"] == 0
    assert client.get("/api/jobs?voxel_size_min=0.5&voxel_size_max=1.5").get_json()["total"] == 1
    assert client.get("/api/jobs?voxel_size_max=0.5").get_json()["total"] == 0
    assert client.get("/api/jobs?status=segmented,meshed").get_json()["total"] == 1
    assert client.get("/api/jobs?status=uploading").get_json()["total"] == 5
    assert client.get("/api/jobs?q=scan 3").get_json()["total"] == 1
    row = client.get("/api/jobs?name=skull").get_json()["jobs"][0]
    assert row["bytes"] == size > 10000 and row["modality"] == "CT"
    assert row["shape"] == [40, 80, 100]
    assert client.get("/api/jobs?q=scan 1").get_json()["jobs"][0]["bytes"] == 1234
    by_size = client.get("/api/jobs?sort=-bytes&per_page=2").get_json()["jobs"]
    assert [r["id"] for r in by_size] == [jid, ids[1]]
    for bad in ("sort=secret", "page=0", "per_page=100000", "voxel_size_min=abc"):
        assert client.get(f"/api/jobs?{bad}").status_code == 400, bad
    # malformed filters are refused even when another filter leaves no job to test them on
    for bad in ("q=nomatch&voxel_size_min=true", "voxel_size_max=nan", "created_after=garbage",
                "status=none&created_before=2026-13-45"):
        for route in ("/api/jobs", "/api/jobs.csv"):
            r = client.get(f"{route}?{bad}")
            assert r.status_code == 400 and "error" in r.get_json(), (route, bad)
    assert client.get("/api/jobs?created_after=2000-01-01").get_json()["total"] == 6
    assert client.get("/api/jobs?created_before=2000-01-01T00:00:00Z").get_json()["total"] == 0
    text = client.get("/api/jobs.csv?sort=name").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6
    assert any(r["name"].startswith("'=HYPERLINK") for r in rows)
    skull = next(r for r in rows if r["id"] == jid)
    assert skull["manufacturer_model"] == "Scan 9000" and skull["voxel_size"] == "2.0x1.0x1.0"
    assert client.get("/api/jobs?format=csv").mimetype == "text/csv"


# ------------------------------------------------------------------ OpenAPI
def test_openapi_describes_every_route(app, client):
    spec = client.get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    import re

    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = spec["paths"][path][method.lower()]
            assert op["summary"] and op["responses"]
    slice_op = spec["paths"]["/api/job/{job_id}/slice"]["get"]
    assert {p["name"] for p in slice_op["parameters"]} >= {"job_id", "axis", "index", "window"}
    # answers as documented (schemathesis checks status codes and content types against it)
    assert list(slice_op["responses"]["200"]["content"]) == ["image/png"]
    assert "201" in spec["paths"]["/api/job/new"]["post"]["responses"]
    assert "409" in spec["paths"]["/api/job/{job_id}/annotate/info"]["get"]["responses"]
    assert "413" in spec["paths"]["/api/job/{job_id}/annotate/labels"]["post"]["responses"]


# ------------------------------------------------------------------ safety
def test_security_headers_and_no_cdn(client):
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "ml4paleo_csrf=" in r.headers.get("Set-Cookie", "")


def test_malformed_json_and_every_route_never_5xx(app, client, job):
    """Every route x method with hostile ids and malformed bodies answers < 500."""
    jid, seg = job
    values = {"job_id": ["nope", "%2E%2E", jid], "seg_id": ["..", "nope", seg],
              "path": ["..%2Fjob.json", ".zattrs", "a/b/c"], "kind": ["zarr", "exe"],
              "model_id": ["nope", ".."], "filename": ["..%2F..%2Fjob.json", "x.png"]}
    bodies = [dict(data="{not json", content_type="application/json"),
              dict(json=[1, 2]), dict(json={"name": 5, "job_id": {"x": 1}}),
              dict(data=b"\xff\xfe", content_type="text/plain")]
    import itertools
    import re

    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        names = re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule.rule)
        choices = [values.get(n, ["x"]) for n in names]
        for combo in itertools.islice(itertools.product(*choices), 12):
            url = rule.rule
            for n, v in zip(names, combo, strict=True):
                url = re.sub(r"<(?:[^:<>]+:)?" + n + ">", v, url)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                if method == "DELETE" and jid in url:
                    continue  # keep the job for the other combinations
                for body in bodies if method != "GET" else [{}]:
                    r = client.open(url, method=method, **body)
                    checked += 1
                    assert r.status_code < 500, (method, url, body, r.data[:300])
                    if url.startswith("/api/") and r.status_code >= 400:
                        assert r.is_json and "error" in r.get_json(), (method, url)
    assert checked > 200


def test_oversized_upload_is_413(client, store):
    jid = client.post("/api/job/new", json={"name": "big"}).get_json()["job_id"]
    r = client.post("/api/upload", headers={"X-Job-ID": jid},
                    data={"file": (io.BytesIO(b"x" * 5000), "a.png"),
                          "dztotalfilesize": "5000"})
    assert r.status_code == 413 and "limit" in r.get_json()["error"]
    # a whole request body above the limit is refused before it is read
    r = client.post("/api/upload", headers={"X-Job-ID": jid},
                    data={"file": (io.BytesIO(b"x" * (2 * 1024 * 1024)), "a.png")})
    assert r.status_code == 413 and r.is_json
    assert json.loads(client.get(f"/api/job/{jid}/status").data)["status"] == "uploading"


def test_overlong_file_names_are_404_not_500(client, job):
    """Names the file system refuses (ENAMETOOLONG) answer 404 like any missing file."""
    jid, seg = job
    (client.application.extensions["ml4paleo_store"].job_dir(jid) / "annotations").mkdir()
    for rel in ("x" * 300, "a/" * 3000 + "b", "y" * 256 + "/.zattrs"):
        for url in (f"/api/job/{jid}/zarr/{rel}", f"/api/job/{jid}/segmentation/{seg}/zarr/{rel}",
                    f"/api/job/{jid}/segmentation/{seg}/obj/{rel}",
                    f"/job/{jid}/annotations/{rel}"):
            r = client.get(url)
            assert r.status_code == 404, (url[:120], r.status_code, r.data[:200])
    assert client.get(f"/api/job/{jid}/zarr/.zattrs").status_code == 200
