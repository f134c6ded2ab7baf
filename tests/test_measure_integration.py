"""Morphometry wired into the product: ``ml4paleo measure``, the notebook verb, the job step
(through the runner), the HTTP routes and the report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import ml4paleo
from ml4paleo.cli import main as cli_main

THICK = 6  # plate thickness, voxels


def _plate(shape=(32, 40, 40), z0=10, thick=THICK) -> np.ndarray:
    vol = np.zeros(shape, np.uint8)
    vol[z0:z0 + thick, 4:-4, 4:-4] = 1
    return vol


def test_ml4paleo_measure_is_a_command_with_a_progress_bar(tmp_path):
    np.save(tmp_path / "plate.npy", _plate())
    out = tmp_path / "out"
    res = CliRunner().invoke(cli_main, [
        "measure", str(tmp_path / "plate.npy"), "-o", str(out), "--voxel-size", "0.5",
        "--unit", "millimeter", "--measures", "fractions,thickness,objects",
        "--chunk-size", "16", "--workers", "1"])
    assert res.exit_code == 0, res.output
    # the tqdm bar on stderr reached the end
    assert "measuring" in res.stderr and "100%" in res.stderr
    summary = json.loads((out / "morphometry.json").read_text())
    plate = summary["classes"][0]
    # thickness 6 voxels x 0.5 mm = 3 mm (mean within one voxel: edges are thinner)
    assert plate["thickness"]["max"] == pytest.approx(3.0)
    assert abs(plate["thickness"]["mean"] - 3.0) <= 0.5
    assert summary["unit"] == "millimeter"
    assert plate["bv"] == pytest.approx(THICK * 32 * 32 * 0.125)
    rows = list(csv.DictReader((out / "objects.csv").open()))
    assert len(rows) == 1 and rows[0]["class_name"] == "class 1"
    assert int(rows[0]["voxel_count"]) == THICK * 32 * 32
    assert "measure" in cli_main.list_commands(None)


def test_measure_is_a_notebook_verb():
    assert "measure" in ml4paleo.__all__
    m = ml4paleo.measure(_plate(), voxel_size=1.0, measures="thickness")
    assert m.by_value(1)["thickness"]["max"] == pytest.approx(THICK)
