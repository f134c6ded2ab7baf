"""Package-level guarantees: the notebook verbs, and a library that never needs Flask."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import numpy as np

import ml4paleo


def test_verbs_work_even_after_their_modules_are_imported(tmp_path):
    import ml4paleo.convert  # noqa: F401  (binds the module to ml4paleo.convert)
    import ml4paleo.export  # noqa: F401

    vol = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    np.save(tmp_path / "v.npy", vol)
    img = ml4paleo.convert(tmp_path / "v.npy", tmp_path / "v.ome.zarr", voxel_size=(2, 1, 1))
    np.testing.assert_array_equal(img.array[:], vol)
    out = ml4paleo.export("tiff", tmp_path / "v.ome.zarr", tmp_path / "v.zip")
    assert out.stat().st_size > 0
    for verb in ("train", "segment", "predict_slice", "mesh", "open_volume", "Client"):
        assert callable(getattr(ml4paleo, verb))


def test_library_never_imports_flask():
    names = [
        m.name
        for m in pkgutil.walk_packages(ml4paleo.__path__, "ml4paleo.")
        if not m.name.endswith("__main__")
    ]
    assert "ml4paleo.segmentation" in names and "ml4paleo.jobs.runner" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = [m for m in sys.modules if m == 'flask' or m.startswith('webapp')]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
