"""The README's Python and CLI examples really run (on the phantom they generate)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(kind: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {kind} -->\s*```{kind}\n(.*?)```", text, re.S)
    assert match, f"README has no {kind} example marked for testing"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_then_cli_examples(tmp_path):
    """The Python example saved as ``example.py`` and run as ``python example.py``: a plain
    script without an ``if __name__ == "__main__":`` guard, whose segmentation and meshing
    start worker processes (they must not run the script again)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("ML4PALEO_WORKERS", None)  # the default: local worker processes
    script = _block("python")
    assert "__main__" not in script
    (tmp_path / "example.py").write_text(script)
    py = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert py.returncode == 0, py.stderr[-3000:]
    assert "held-out metrics" in py.stdout
    assert py.stdout.count("held-out metrics") == 1  # the workers did not run it again
    assert "BrokenProcessPool" not in py.stderr
    assert (tmp_path / "meshes" / "1.stl").stat().st_size > 1000

    # the CLI example reuses scan.npy / strokes.npy from the Python example; fresh outputs
    for name in ("scan.ome.zarr", "labels.ome.zarr", "meshes", "model", "morphometry"):
        subprocess.run(["rm", "-rf", str(tmp_path / name)], check=True)
    script = "set -euo pipefail\n" + _block("bash")
    cli = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-3000:]
    from ml4paleo.formats import open_image

    seg = open_image(tmp_path / "labels.ome.zarr")
    assert seg.voxel_size == (20.0, 10.0, 10.0) and seg.unit == "micrometer"
    truth = np.load(tmp_path / "scan.npy").shape
    assert seg.shape == truth
    assert (tmp_path / "meshes" / "1.glb").exists()
    import json

    summary = json.loads((tmp_path / "morphometry" / "morphometry.json").read_text())
    assert summary["unit"] == "micrometer" and summary["classes"]
    assert summary["classes"][0]["bv_tv"] > 0
    assert (tmp_path / "out" / "labels.nii.gz").exists()
    assert any(p.suffix == ".pdf" for p in (tmp_path / "report").iterdir())
