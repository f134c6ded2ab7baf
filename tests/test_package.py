"""Package-level guarantees: the notebook verbs, and a library that never needs Flask."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import numpy as np
import pytest

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


def test_cli_offers_entry_point_commands_only_when_used():
    from importlib.metadata import EntryPoint

    import click
    from click.testing import CliRunner

    from ml4paleo.cli import COMMANDS_GROUP, PluginGroup, load_plugin_commands

    @click.group(cls=PluginGroup)
    def group() -> None:
        pass

    @group.command("mine")
    def mine() -> None:
        click.echo("own command")

    points = [EntryPoint("serve", "webapp.serve:serve_command", COMMANDS_GROUP),
              EntryPoint("broken", "no_such_module_here:cmd", COMMANDS_GROUP),
              EntryPoint("mine", "webapp.serve:serve_command", COMMANDS_GROUP)]
    assert load_plugin_commands(group, points) == ["serve", "broken"]  # own ones kept
    assert "serve" not in group.commands  # nothing imported yet
    runner = CliRunner()
    result = runner.invoke(group, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--data", "--no-runners", "--threads"):
        assert option in result.output
    assert runner.invoke(group, ["mine"]).output == "own command\n"
    result = runner.invoke(group, ["broken"])
    assert result.exit_code != 0 and "No such command" in result.output
    assert runner.invoke(group, ["--help"]).output.count("serve") == 1


def test_pyproject_registers_serve_and_the_installed_metadata_agrees():
    import tomllib
    from importlib.metadata import entry_points
    from pathlib import Path

    from ml4paleo.cli import COMMANDS_GROUP

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[COMMANDS_GROUP] == {"serve": "webapp.serve:serve_command"}
    installed = {ep.name: ep.value for ep in entry_points(group=COMMANDS_GROUP)}
    if not installed:
        pytest.skip("the installed ml4paleo metadata predates the ml4paleo.commands entry "
                    "points: reinstall (pip install -e .) to get `ml4paleo serve`")
    assert installed == declared[COMMANDS_GROUP]
