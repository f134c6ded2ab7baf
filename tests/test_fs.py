"""ml4paleo._fs: atomic writes leave the old file or the new one, never a half file."""

from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest

from ml4paleo._fs import (
    atomic_dir,
    atomic_write,
    atomic_write_json,
    atomic_writer,
    is_temp_name,
    now_iso,
    parse_iso,
    sweep_temps,
    temp_path,
)
from ml4paleo.io import InputError, open_any


def test_atomic_write_replaces_and_keeps_umask(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "one")
    atomic_write(p, b"two")
    assert p.read_text() == "two"
    umask = os.umask(0o022)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(RuntimeError), atomic_writer(p, "w") as fh:
        fh.write('{"v": 2')
        raise RuntimeError("crash mid-write")
    assert p.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(ValueError):
        atomic_write_json(p, {"v": float("nan")})


def test_atomic_dir_swaps_whole_folders(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyError), atomic_dir(dest) as tmp:
        (tmp / "b").write_text("2")
        raise KeyError("fail")
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    with atomic_dir(dest) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sweep_removes_only_dead_writers_temps(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = temp_path(tmp_path / "x.json")
    mine.write_text("live")
    orphan = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    orphan.write_text("dead")
    (tmp_path / ".hidden").write_text("not a temp")
    assert is_temp_name(mine.name) and not is_temp_name(".hidden")
    assert sweep_temps(tmp_path) == 1
    assert mine.exists() and not orphan.exists() and (tmp_path / ".hidden").exists()


def test_now_iso_round_trips():
    stamp = now_iso()
    assert stamp.endswith("Z") and parse_iso(stamp).tzinfo is not None


def test_open_any_is_the_one_coercer(tmp_path):
    import ml4paleo

    data = (np.arange(20 * 130 * 140) % 251).astype(np.uint16).reshape(20, 130, 140)
    np.save(tmp_path / "a.npy", data)
    image = ml4paleo.convert(tmp_path / "a.npy", tmp_path / "a.ome.zarr",
                             voxel_size=(2, 1, 1), unit="micrometer")
    for source in (tmp_path / "a.ome.zarr", str(tmp_path / "a.ome.zarr"), image):
        vol = open_any(source)
        assert vol.shape == data.shape and vol.voxel_size == (2.0, 1.0, 1.0)
        assert vol.unit == "micrometer" and np.array_equal(vol[3:5], data[3:5])
        again = pickle.loads(pickle.dumps(vol))  # a reference, reopened
        assert np.array_equal(again[:, 7], data[:, 7])
    coarse = open_any(image, level=1)
    assert coarse.voxel_size == (4.0, 2.0, 2.0) and coarse.shape == (10, 65, 70)
    arr = open_any(data, voxel_size=3)
    assert arr.voxel_size == (3.0, 3.0, 3.0)
    assert np.array_equal(pickle.loads(pickle.dumps(arr))[:], data)
    assert open_any(tmp_path / "a.npy").source_type == "npy"
    with pytest.raises(InputError):
        open_any(np.zeros((3, 3)))
    with pytest.raises(InputError):
        open_any(tmp_path / "missing.npy")
    with pytest.raises(InputError):
        open_any(object())
