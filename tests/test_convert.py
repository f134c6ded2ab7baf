"""Conversion to OME-Zarr: bit-exact round trips, atomic output, CLI errors, flat memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scan_samples import dicom_bytes, ramp_volume, write_dicom_series, write_slices

from ml4paleo.cli import main
from ml4paleo.convert import convert
from ml4paleo.formats import downsample2, open_image, pyramid_shapes
from ml4paleo.io import InputError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _make_source(kind: str, root: Path) -> tuple[Path, np.ndarray, tuple | None, str | None]:
    """(source path, expected (z, y, x) array, expected voxel size, unit)."""
    if kind == "png8":
        vol = ramp_volume((20, 33, 41), np.uint8)
        write_slices(root / "png", vol, "png")
        return root / "png", vol, None, None
    if kind == "tif16-zip":
        vol = ramp_volume((21, 30, 26), np.uint16)
        paths = write_slices(root / "tif", vol, "tif")
        with zipfile.ZipFile(root / "tif.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for p in paths:
                zf.write(p, p.name)
        return root / "tif.zip", vol, None, None
    if kind == "multipage":
        vol = ramp_volume((19, 35, 30), np.uint16)
        tifffile.imwrite(root / "s.tif", vol, compression="zlib", imagej=True,
                         resolution=(1 / 0.7, 1 / 0.7), metadata={"spacing": 1.4, "unit": "micron"})
        return root / "s.tif", vol, (1.4, 0.7, 0.7), "micrometer"
    if kind == "dicom":
        raw = ramp_volume((18, 24, 20), np.uint16)
        write_dicom_series(root / "ct", raw, spacing_z=0.8, spacing=(0.3, 0.3), slope=1, intercept=-1024)
        return root / "ct", (raw.astype(np.int32) - 1024).astype(np.int16), (0.8, 0.3, 0.3), "millimeter"
    if kind == "nifti":
        import nibabel as nib

        xyz = np.random.default_rng(2).random((22, 17, 25), dtype=np.float32)
        img = nib.Nifti1Image(xyz, np.diag([0.1, 0.2, 0.3, 1]))
        img.header.set_xyzt_units("mm")
        nib.save(img, root / "s.nii.gz")
        return root / "s.nii.gz", xyz.transpose(2, 1, 0), (0.3, 0.2, 0.1), "millimeter"
    if kind == "npy":
        vol = ramp_volume((23, 19, 29), np.uint16).astype(np.int32) - 900
        np.save(root / "s.npy", vol)
        return root / "s.npy", vol, None, None
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["png8", "tif16-zip", "multipage", "dicom", "nifti", "npy"])
def test_convert_roundtrip_bit_exact_with_pyramid(tmp_path, kind):
    source, expected, voxel_size, unit = _make_source(kind, tmp_path)
    calls = []
    out = tmp_path / "out" / "image.ome.zarr"
    img = convert(source, out, chunks=16, progress=lambda d, t: calls.append((d, t)))
    assert img.dtype == expected.dtype
    np.testing.assert_array_equal(img.array[:], expected)
    np.testing.assert_allclose(img.voxel_size, voxel_size or (1.0, 1.0, 1.0), rtol=1e-6)
    assert img.unit == unit
    shapes = pyramid_shapes(expected.shape)
    assert len(img.levels) == len(shapes) >= 1
    if len(shapes) > 1:
        np.testing.assert_array_equal(img.level(1)[:], downsample2(expected, label=False))
    attrs = img.attrs["ml4paleo"]
    assert attrs["source_type"] == {"png8": "image_stack", "tif16-zip": "image_stack",
                                    "multipage": "tiff"}.get(kind, kind)
    assert isinstance(attrs["source"], dict)
    json.dumps(img.attrs)  # JSON-able
    zarray = json.loads((out / "0" / ".zarray").read_text())
    assert zarray["compressor"]["cname"] == "zstd" and zarray["chunks"] == [16, 16, 16]
    # progress: starts at 0, never decreases, ends at total
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert _leftovers(out.parent) == []


def test_voxel_size_override_and_replace_existing(tmp_path):
    vol = ramp_volume((10, 70, 14), np.uint16)  # > 64 along y: two pyramid levels
    np.save(tmp_path / "a.npy", vol)
    dest = tmp_path / "a.ome.zarr"
    convert(tmp_path / "a.npy", dest, voxel_size=(5, 2, 2), unit="micrometer")
    img = open_image(dest)
    assert img.voxel_size == (5.0, 2.0, 2.0) and img.unit == "micrometer"
    assert img.level_scale(1) == (10.0, 4.0, 4.0)
    assert img.attrs["ml4paleo"]["voxel_size_from"] == "user"
    np.save(tmp_path / "b.npy", vol[:5])
    convert(tmp_path / "b.npy", dest)
    assert open_image(dest).shape == (5, 70, 14)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("memory_limit", [1024, 1 << 30])
@pytest.mark.parametrize("chunk", [16, 15])  # odd chunks: level 1 built afterwards from level 0
def test_staged_and_in_memory_paths_are_bit_exact(tmp_path, memory_limit, chunk):
    vol = ramp_volume((37, 70, 45), np.uint16)
    np.save(tmp_path / "v.npy", vol)
    # a 1 KiB "memory limit" forces slices through the band-staging files
    img = convert(tmp_path / "v.npy", tmp_path / "v.ome.zarr", chunks=chunk, memory_limit=memory_limit)
    np.testing.assert_array_equal(img.array[:], vol)
    np.testing.assert_array_equal(img.level(1)[:], downsample2(vol, label=False))
    assert _leftovers(tmp_path) == []


def test_failure_midway_leaves_nothing_and_keeps_old_dest(tmp_path):
    vol = ramp_volume((40, 20, 20), np.uint16)
    paths = write_slices(tmp_path / "s", vol, "png")
    data = paths[35].read_bytes()
    paths[35].write_bytes(data[: len(data) - 40])  # header intact, pixels truncated
    dest = tmp_path / "out.ome.zarr"
    dest.mkdir()
    (dest / "marker").write_text("old")
    with pytest.raises(InputError, match=r"img36\.png"):
        convert(tmp_path / "s", dest, chunks=8)
    assert (dest / "marker").read_text() == "old"
    assert _leftovers(tmp_path) == []


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_local_processes_give_the_same_files(tmp_path):
    vol = ramp_volume((40, 150, 140), np.uint16)  # 3 slab blocks, pyramid levels 1 and 2
    np.save(tmp_path / "v.npy", vol)
    ref = convert(tmp_path / "v.npy", tmp_path / "a.ome.zarr", chunks=8)
    assert len(ref.levels) == 3
    got = convert(tmp_path / "v.npy", tmp_path / "b.ome.zarr", chunks=8, executor="processes",
                  workers=2, memory_limit=4096)  # staged slabs, on two worker processes
    assert _tree(tmp_path / "a.ome.zarr") == _tree(tmp_path / "b.ome.zarr")
    np.testing.assert_array_equal(got.array[:], vol)
    assert _leftovers(tmp_path) == []


def test_unknown_executor_is_refused_and_leaves_nothing(tmp_path):
    np.save(tmp_path / "v.npy", ramp_volume((4, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="unknown executor"):
        convert(tmp_path / "v.npy", tmp_path / "v.ome.zarr", executor="gpu")
    assert not (tmp_path / "v.ome.zarr").exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_output(tmp_path):
    from dask.distributed import Client, LocalCluster

    vol = ramp_volume((40, 150, 140), np.uint16)
    write_slices(tmp_path / "s", vol, "tif")  # a slice folder: reopened once per worker
    ref = convert(tmp_path / "s", tmp_path / "a.ome.zarr", chunks=8)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        convert(tmp_path / "s", tmp_path / "b.ome.zarr", chunks=8, executor=client)
        res = CliRunner().invoke(main, ["convert", str(tmp_path / "s"), str(tmp_path / "c.ome.zarr"),
                                        "--chunks", "8", "--scheduler", cluster.scheduler_address,
                                        "-q"])
        assert res.exit_code == 0, res.output
    want = _tree(ref.path)
    assert _tree(tmp_path / "b.ome.zarr") == want
    assert _tree(tmp_path / "c.ome.zarr") == want
    assert _leftovers(tmp_path) == []


# -- CLI -------------------------------------------------------------------------------------
def test_cli_convert_and_info(tmp_path):
    vol = ramp_volume((9, 10, 11), np.uint16)
    write_slices(tmp_path / "s", vol, "tif")
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(tmp_path / "s"), str(tmp_path / "o.ome.zarr"),
                               "--voxel-size", "3", "1.5", "1.5", "--unit", "micrometer", "--chunks", "8"])
    assert res.exit_code == 0, res.output
    assert "Wrote" in res.stdout and "3 x 1.5 x 1.5 micrometer" in res.stdout
    img = open_image(tmp_path / "o.ome.zarr")
    np.testing.assert_array_equal(img.array[:], vol)
    assert img.array.chunks == (8, 8, 8)
    res = runner.invoke(main, ["info", str(tmp_path / "s")])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["shape"] == [9, 10, 11] and info["dtype"] == "uint16"
    assert info["source_type"] == "image_stack"
    res = runner.invoke(main, ["convert", str(tmp_path / "s"), str(tmp_path / "o.ome.zarr")])
    assert res.exit_code == 1 and "already exists" in res.stderr


def _bad_truncated(root: Path) -> tuple[Path, str]:
    paths = write_slices(root / "stack", ramp_volume((6, 16, 16), np.uint16), "tif")
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) // 2])
    return root / "stack", "img5.tif"


def _bad_size(root: Path) -> tuple[Path, str]:
    from PIL import Image

    write_slices(root / "stack", ramp_volume((6, 16, 16), np.uint8), "png")
    Image.fromarray(np.zeros((16, 15), np.uint8)).save(root / "stack" / "img4.png")
    return root / "stack", "img4.png"


def _bad_empty(root: Path) -> tuple[Path, str]:
    (root / "empty").mkdir()
    return root / "empty", "empty"


def _bad_not_image(root: Path) -> tuple[Path, str]:
    write_slices(root / "stack", ramp_volume((4, 8, 8), np.uint8), "png")
    (root / "stack" / "img2.png").write_text("hello, I am a text file")
    return root / "stack", "img2.png"


def _bad_text_file(root: Path) -> tuple[Path, str]:
    (root / "notes.txt").write_text("not a scan")
    return root / "notes.txt", "notes.txt"


def _bad_zip_traversal(root: Path) -> tuple[Path, str]:
    with zipfile.ZipFile(root / "evil.zip", "w") as zf:
        zf.writestr("scan/img1.png", b"x")
        zf.writestr("scan/../../img2.png", b"x")
    return root / "evil.zip", "evil.zip"


def _bad_zip_absolute(root: Path) -> tuple[Path, str]:
    with zipfile.ZipFile(root / "abs.zip", "w") as zf:
        zf.writestr("/tmp/img1.png", b"x")
    return root / "abs.zip", "abs.zip"


def _bad_zip_bomb(root: Path) -> tuple[Path, str]:
    with zipfile.ZipFile(root / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(3):
            zf.writestr(f"img{k}.tif", bytes(24 << 20))
    return root / "bomb.zip", "bomb.zip"


def _bad_dicom_no_pixels(root: Path) -> tuple[Path, str]:
    (root / "dicom").mkdir()
    for k in range(3):
        (root / "dicom" / f"IM{k}").write_bytes(
            dicom_bytes(np.zeros((8, 8), np.uint16), instance=k, with_pixels=False)
        )
    return root / "dicom", "dicom"


BAD_INPUTS = {
    "truncated": _bad_truncated,
    "size_mismatch": _bad_size,
    "empty_folder": _bad_empty,
    "non_image_in_stack": _bad_not_image,
    "non_image_file": _bad_text_file,
    "zip_traversal": _bad_zip_traversal,
    "zip_absolute": _bad_zip_absolute,
    "zip_bomb": _bad_zip_bomb,
    "dicom_no_pixels": _bad_dicom_no_pixels,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_cli_bad_input_one_line_no_traceback_nothing_left(tmp_path, case):
    source, name = BAD_INPUTS[case](tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "scan.ome.zarr"
    res = CliRunner().invoke(main, ["convert", str(source), str(dest), "--chunks", "8"])
    assert res.exit_code == 1
    assert isinstance(res.exception, SystemExit)  # a clean exit, not an escaped exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ") and name in lines[0]
    assert "Traceback" not in res.output
    assert list(out_dir.iterdir()) == []


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    source, name = _bad_size(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "from ml4paleo.cli import main; main()", "convert", str(source), str(tmp_path / "o.zarr")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


# -- memory ----------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ml4paleo.convert import convert

    def peak_rss():  # VmHWM: this process's own peak (ru_maxrss carries the parent's over exec)
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))

    marks, totals = {}, set()

    def progress(done, total):
        marks.setdefault(done, peak_rss())
        totals.add(total)

    before = peak_rss()
    img = convert(sys.argv[1], sys.argv[2], chunks=64, workers=2, progress=progress)
    print(json.dumps({"before": before, "marks": marks, "end": peak_rss(),
                      "total": totals.pop(), "shape": list(img.shape)}))
    """
)


def test_memory_stays_flat_for_a_stack_much_larger_than_a_chunk(tmp_path):
    shape = (512, 1024, 512)  # 512 MiB of uint16 = 8 slabs of 64 slices; a 64^3 chunk is 0.5 MiB
    src = tmp_path / "big.npy"
    arr = np.lib.format.open_memmap(src, mode="w+", dtype=np.uint16, shape=shape)
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], 64):
        arr[z : z + 64] = rng.integers(0, 4096, size=(64,) + shape[1:], dtype=np.uint16)
    arr.flush()
    sample = np.array(arr[300, 500:510, 100:110])
    del arr
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "o.zarr")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["shape"] == list(shape)
    stack = int(np.prod(shape)) * 2
    half = stats["marks"][str(stats["total"] // 2)]  # peak after half of the blocks
    growth = stats["end"] - stats["before"]
    print(f"peak RSS growth {growth >> 20} MiB for a {stack >> 20} MiB stack; "
          f"{(stats['end'] - half) >> 20} MiB of it in the second half")
    assert growth < 0.6 * stack  # well below the data size ...
    assert stats["end"] - half < (32 << 20)  # ... and flat: the second half adds ~nothing
    np.testing.assert_array_equal(open_image(tmp_path / "o.zarr").array[300, 500:510, 100:110],
                                  sample)


def test_temp_debris_of_a_killed_conversion_is_swept(tmp_path):
    import socket

    vol = ramp_volume((6, 8, 8), np.uint8)
    np.save(tmp_path / "a.npy", vol)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    debris = tmp_path / f".a.ome.zarr.tmp-{host}-{dead}-0badf00d"
    (debris / "0").mkdir(parents=True)
    alive = tmp_path / f".a.ome.zarr.tmp-{host}-{os.getpid()}-00000000"  # a live converter's
    alive.mkdir()
    convert(tmp_path / "a.npy", tmp_path / "a.ome.zarr")
    assert not debris.exists() and alive.exists()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32])
def test_pyramid_downsampling_is_the_rounded_2x2x2_mean(dtype):
    block = (np.random.default_rng(1).random((7, 9, 11)) * 120 - (0 if dtype == np.uint8 or
             dtype == np.uint16 else 60)).astype(dtype)
    padded = np.pad(block, [(0, 1), (0, 1), (0, 1)], mode="edge")  # odd axes repeat the edge
    mean = padded.reshape(4, 2, 5, 2, 6, 2).astype(np.float64).mean(axis=(1, 3, 5))
    out = downsample2(block, label=False)
    assert out.dtype == dtype and out.shape == (4, 5, 6)
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(out, np.rint(mean).astype(dtype))
    else:
        np.testing.assert_allclose(out, mean, rtol=1e-6, atol=1e-5)
