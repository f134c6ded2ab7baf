"""Quantification report: HTML + PDF from a job folder, a segmentation folder, the CLI, the web route."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from click.testing import CliRunner

from ml4paleo._fs import atomic_write_json as write_json_atomic
from ml4paleo.formats import build_pyramid, create_image
from ml4paleo.jobs import JobStore
from ml4paleo.report import (
    ReportError,
    build_report,
    class_table,
    collect,
    montage_slices,
    render_meshes,
)

VOXEL = (0.02, 0.015, 0.015)
SEG = "segAAAAAAAAAAAAAAAAAAA1"


def _write(path, array, label):
    img = create_image(path, array.shape, array.dtype, chunks=32, voxel_size=VOXEL,
                       unit="millimeter", label=label)
    img.array[:] = array
    build_pyramid(img)
    return img


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A meshed job laid out as the runners leave it (phantom image + its truth labels)."""
    from ml4paleo.meshing import mesh
    from ml4paleo.phantom import make_phantom

    root = tmp_path_factory.mktemp("report-data")
    image, truth = make_phantom((40, 48, 48), seed=4)
    store = JobStore(root)
    record = store.create("Phantom <skull> & co", "npy")
    jd = store.job_dir(record["id"])
    _write(jd / "image.ome.zarr", image, label=False)
    seg_dir = jd / "segmentations" / SEG
    labels = _write(seg_dir / "labels.ome.zarr", truth, label=True)
    write_json_atomic(seg_dir / "segmentation.json", {"id": SEG, "model_id": "model1"})
    (jd / "models" / "model1").mkdir(parents=True)
    write_json_atomic(jd / "models" / "model1" / "meta.json", {
        "classes": [{"name": "matrix", "color": "#808080"}, {"name": "bone", "color": "#e6c229"},
                    {"name": "tooth", "color": "#d7263d"}],
        "metrics": {"accuracy": 0.9731, "per_class": {"bone": {"recall": 0.93}}},
        "created_at": "2026-11-21T22:00:00Z",
    })
    summary = mesh(labels, seg_dir / "meshes", formats=("stl",), stats_path=seg_dir / "stats.csv")
    store.set_fields(record["id"], segmentation_id=SEG, segmentations=[SEG], model_id="model1")
    return {"store": store, "id": record["id"], "dir": jd, "seg": seg_dir, "truth": truth,
            "stats": summary["stats"]}


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?!s)", data))


def test_report_from_job_folder(job, tmp_path):
    paths = build_report(job["dir"], tmp_path / "out")
    assert set(paths) == {"html", "pdf"}
    assert paths["pdf"].name == "Phantom_skull_co-report.pdf"
    page = paths["html"].read_text()
    # title escaped, class names from the model, model metrics shown
    assert "Phantom &lt;skull&gt; &amp; co" in page and "<skull>" not in page
    assert "bone" in page and "tooth" in page and "0.9731" in page and "0.93" in page
    # the table holds the meshing statistics in mm
    bone = next(r for r in job["stats"] if r["label"] == 1)
    voxels = int((job["truth"] == 1).sum())
    assert bone["voxel_count"] == voxels
    assert f"{voxels:,}".replace(",", " ") in page
    assert f"{bone['volume']:.4g}" in page
    assert "Volume (mm³)" in page
    # two embedded PNGs: montage and 3D view
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    pdf = paths["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF") and _pdf_pages(pdf) == 3


def test_class_table_values(job):
    data = collect(job["dir"])
    header, rows = class_table(data)
    assert header[3] == "Volume (mm³)"
    assert header[6] == "Surface (mm², smooth-light)"  # which surface was measured
    assert [r[0] for r in rows] == ["bone", "tooth"]
    tooth = int((job["truth"] == 2).sum())
    assert rows[1][2] == f"{tooth:,}".replace(",", " ")
    expected_volume = tooth * np.prod(VOXEL)
    assert float(rows[1][3]) == pytest.approx(expected_volume, rel=1e-3)
    share = 100 * tooth / job["truth"].size
    assert float(rows[1][4]) == pytest.approx(share, rel=1e-2)
    zs = montage_slices(data, 6)
    labelled = np.flatnonzero(job["truth"].any(axis=(1, 2)))
    assert len(zs) == 6 and labelled.min() <= min(zs) and max(zs) <= labelled.max()


def test_segmentation_folder_without_stats_or_meshes(job, tmp_path):
    """A bare segmentation folder: statistics computed with label_stats, no 3D view."""
    import shutil

    seg = tmp_path / "seg"
    shutil.copytree(job["seg"] / "labels.ome.zarr", seg / "labels.ome.zarr")
    data = collect(seg)
    assert data.mesh_files == {} and data.model is None
    counts = {r["label"]: r["voxel_count"] for r in data.stats}
    assert counts == {1: int((job["truth"] == 1).sum()), 2: int((job["truth"] == 2).sum())}
    assert render_meshes(data) is None
    paths = build_report(seg, tmp_path / "r.html", formats=("html",))
    page = paths["html"].read_text()
    assert "No meshes yet" in page and "label 1" in page
    assert list(paths) == ["html"] and paths["html"].name == "r.html"


def test_snapshot_decimates(job):
    data = collect(job["dir"])
    png = render_meshes(data, max_faces=400)
    assert png.startswith(b"\x89PNG")


def test_errors(tmp_path):
    store = JobStore(tmp_path)
    record = store.create("empty", "npy")
    with pytest.raises(ReportError, match="no segmentation"):
        collect(store.job_dir(record["id"]))
    with pytest.raises(ReportError, match="no such"):
        collect(tmp_path / "missing")
    with pytest.raises(ValueError, match="formats"):
        build_report(tmp_path, tmp_path / "x", formats=("docx",))


def test_cli(job, tmp_path):
    from ml4paleo.cli import main

    out = tmp_path / "cli" / "skull.pdf"
    result = CliRunner().invoke(main, ["report", str(job["dir"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF")
    assert "pdf:" in result.output and not (tmp_path / "cli" / "skull.html").exists()
    bad = CliRunner().invoke(main, ["report", str(tmp_path), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "Error:" in bad.output


def test_web_route(job):
    from webapp import create_app

    app = create_app(data_dir=job["store"].data_dir)
    client = app.test_client()
    url = f"/api/job/{job['id']}/segmentation/{SEG}/report"
    first = client.get(url + ".html")
    assert first.status_code == 200 and first.mimetype == "text/html"
    assert first.headers["Content-Type"] == "text/html; charset=utf-8"  # one charset
    assert b"tooth" in first.data
    cache = job["dir"] / "exports" / f"report-{SEG}.html"
    built = cache.stat().st_mtime_ns
    again = client.get(url + ".html")
    assert again.data == first.data and cache.stat().st_mtime_ns == built  # served from cache
    pdf = client.get(url + ".pdf?download=1")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF")
    assert "attachment" in pdf.headers["Content-Disposition"]
    missing = client.get(f"/api/job/{job['id']}/segmentation/segBBBBBBBBBBBBBBBBBBBB2/report.pdf")
    assert missing.status_code == 404 and "error" in missing.get_json()
    assert client.get(url + ".docx").status_code == 404


def test_web_route_refuses_big_unmeshed(job, monkeypatch):
    """Without stats.csv a big segmentation is not measured inside a request."""
    import shutil

    from webapp import create_app, reports

    seg2 = "segCCCCCCCCCCCCCCCCCCC3"
    shutil.copytree(job["seg"] / "labels.ome.zarr", job["dir"] / "segmentations" / seg2 /
                    "labels.ome.zarr")
    monkeypatch.setattr(reports, "MAX_VOXELS_WITHOUT_STATS", 1000)
    client = create_app(data_dir=job["store"].data_dir).test_client()
    answer = client.get(f"/api/job/{job['id']}/segmentation/{seg2}/report.html")
    assert answer.status_code == 409 and "mesh it first" in answer.get_json()["error"]
