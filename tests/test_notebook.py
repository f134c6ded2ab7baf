"""The quickstart notebook runs from top to bottom and produces what it shows."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel must be this interpreter (the venv), whatever kernelspecs are installed
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    assert NATIVE_KERNEL_NAME == "python3"
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    accuracy = float(text.split("voxel accuracy vs truth:")[1].split()[0])
    assert accuracy > 0.85, text
    # the overlay figure and the per-class table were displayed
    kinds = [k for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             for k in o.get("data", {})]
    assert "image/png" in kinds and "text/html" in kinds
    table = next(o["data"]["text/html"] for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if "text/html" in o.get("data", {}))
    assert "<td>bone</td>" in table and "<td>tooth</td>" in table

    out = tmp_path / "quickstart_output"
    assert (out / "scan.ome.zarr").is_dir()
    assert (out / "segmentation" / "stats.csv").is_file()
    assert sorted(p.name for p in (out / "segmentation" / "meshes").glob("*.stl")) == \
        ["1.stl", "2.stl"]
    reports = sorted(p.suffix for p in (out / "report").iterdir())
    assert reports == [".html", ".pdf"]
