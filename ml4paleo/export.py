"""Downloads: OME-Zarr, PNG and TIFF stacks, meshes (zips), NIfTI and statistics CSV.

Every export is produced by one writer that streams into a sink as it goes, never
holding the whole result in memory.  :func:`export` writes it to a file (temp + rename);
:func:`stream_export` yields the bytes to a client *while* writing them to a temp file
that becomes the cache only when complete, so a failed or interrupted export never leaves
a file that is later served as complete.

Kinds
-----
``zarr``
    Zip of the OME-Zarr folder (chunks stored as they are: already compressed).
``png``
    Zip of one PNG per z slice: 8-bit, windowed to the 1-99.5 percentiles of a sample
    for images; label values (8-bit, or 16-bit when the dtype needs it) for label images.
``tiff``
    Zip of one 16-bit TIFF per z slice (ImageJ metadata with the voxel size).
``meshes``
    Zip of a meshes folder (``<label>.stl|obj|ply|glb``) and its ``stats.csv``.
``nifti``
    One ``.nii.gz`` with the voxel size in the header, written slab by slab.
``stats``
    The per-label statistics CSV (copied, or computed from a label image).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo._verbs import make_module_callable

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

#: kind -> (file suffix, mimetype, description)
EXPORT_KINDS: dict[str, tuple[str, str, str]] = {
    "zarr": ("zarr.zip", "application/zip", "OME-Zarr folder (zip)"),
    "png": ("png.zip", "application/zip", "stack of PNG slices (zip)"),
    "tiff": ("tiff.zip", "application/zip", "stack of 16-bit TIFF slices (zip)"),
    "meshes": ("meshes.zip", "application/zip", "meshes of every label and stats.csv (zip)"),
    "nifti": ("nii.gz", "application/gzip", "NIfTI-1 volume with the voxel size"),
    "stats": ("csv", "text/csv", "per-label statistics (CSV)"),
}

_CHUNK = 1 << 20
_ZARR_META = {".zarray", ".zattrs", ".zgroup", "zarr.json", ".zmetadata"}
_SAMPLE_VOXELS = 8_000_000
_SLAB_BYTES = 128 * 1024**2
_NIFTI_UNITS = {
    "meter": ("meter", 1.0),
    "m": ("meter", 1.0),
    "centimeter": ("mm", 10.0),
    "millimeter": ("mm", 1.0),
    "mm": ("mm", 1.0),
    "micrometer": ("micron", 1.0),
    "micron": ("micron", 1.0),
    "um": ("micron", 1.0),
    "µm": ("micron", 1.0),
    "nanometer": ("micron", 1e-3),
    "nm": ("micron", 1e-3),
}
_IMAGEJ_UNITS = {"micrometer": "micron", "millimeter": "mm", "nanometer": "nm", "meter": "m",
                 "centimeter": "cm"}


# --------------------------------------------------------------------------- sinks


class _Sink(io.RawIOBase):
    """Write-only, non-seekable stream: appends to a file and keeps the new bytes.

    ``zipfile`` sees it cannot seek and writes data descriptors after each member, so a
    zip can be produced strictly front to back.
    """

    def __init__(self, fh: Any, keep: bool) -> None:
        self._fh = fh
        self._keep = keep
        self._buf = bytearray()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._fh.write(data)
        if self._keep:
            self._buf += data
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        """The bytes written since the last call."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, time.localtime()[:6])
    info.external_attr = 0o644 << 16
    return info


def _zip(sink: _Sink) -> zipfile.ZipFile:
    return zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                           allowZip64=True)


def _add_file(zf: zipfile.ZipFile, path: Path, arcname: str, compress: bool) -> Iterator[None]:
    """Copy one file into the zip in 1 MiB pieces, yielding after each."""
    info = zipfile.ZipInfo.from_file(path, arcname)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    if compress:
        info._compresslevel = 1  # Python 3.11/3.12 name; ignored by later versions
    with open(path, "rb") as src, zf.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            yield


def _add_bytes(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    zf.writestr(_member(name), data,
                compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)


# --------------------------------------------------------------------------- volumes


@dataclass
class _Volume:
    """A volume to export: full-resolution array, voxel size, label flag, sample source."""

    name: str
    array: Any
    voxel_size: tuple[float, float, float]
    unit: str | None
    label: bool
    levels: list[Any]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)


def _open_volume(source: Any, label: bool | None, level: int = 0) -> _Volume:
    from ml4paleo.meshing import _is_zarr_folder, _voxel_size
    from ml4paleo.omezarr import OmeImage, open_image

    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        name = _stem(path)
        if _is_zarr_folder(path):
            source = open_image(path)
        elif path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r")
            return _checked(_Volume(name, arr, (1.0, 1.0, 1.0), None, bool(label), [arr]))
        else:
            try:
                from ml4paleo.io import open_volume
            except ImportError as exc:
                raise ValueError(f"{path}: unsupported source (use an OME-Zarr image)") from exc
            vol = open_volume(path)
            vs = _voxel_size(getattr(vol, "voxel_size", None))
            return _checked(_Volume(name, vol, vs, getattr(vol, "unit", None), bool(label), [vol]))
    if isinstance(source, OmeImage):
        if not 0 <= level < len(source.levels):
            raise ValueError(f"{source.path}: level {level} outside 0..{len(source.levels) - 1}")
        is_label = "image-label" in source.attrs if label is None else bool(label)
        levels = [source.level(i) for i in range(level, len(source.levels))]
        return _checked(_Volume(_stem(Path(source.path)), levels[0], source.level_scale(level),
                                source.unit, is_label, levels))
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        vs = _voxel_size(getattr(source, "voxel_size", None))
        return _checked(_Volume("volume", source, vs, getattr(source, "unit", None), bool(label),
                                [source]))
    raise ValueError(f"cannot export {type(source).__name__}: give a path or an OME-Zarr image")


def _checked(vol: _Volume) -> _Volume:
    if len(vol.shape) != 3:
        raise ValueError(f"{vol.name}: expected a 3D (z, y, x) volume, got shape {vol.shape}")
    if vol.dtype.kind not in "biuf":
        raise ValueError(f"{vol.name}: cannot export dtype {vol.dtype}")
    return vol


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".nii.gz", ".nii", ".npy", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "volume"
    return name or "volume"


def _slabs(vol: _Volume) -> Iterator[tuple[int, np.ndarray]]:
    """(z0, slab) pieces of the volume: whole chunks along z when they fit in memory."""
    z, y, x = vol.shape
    chunks = getattr(vol.array, "chunks", None)
    cz = int(chunks[0]) if chunks else 8
    per_slice = max(1, y * x * vol.dtype.itemsize)
    step = max(1, min(cz, _SLAB_BYTES // per_slice))
    for z0 in range(0, z, step):
        yield z0, np.asarray(vol.array[z0 : min(z0 + step, z)])


def _sample(vol: _Volume) -> np.ndarray:
    """A few million voxels spread over the volume, for percentiles (never the whole)."""
    for arr in vol.levels:
        if int(np.prod(arr.shape)) <= _SAMPLE_VOXELS:
            return np.asarray(arr[...]).ravel()
    arr = vol.levels[-1]
    z, y, x = (int(s) for s in arr.shape)
    n_slices = min(z, 16)
    stride = max(1, int(np.ceil(np.sqrt(y * x * n_slices / _SAMPLE_VOXELS))))
    picks = np.unique(np.linspace(0, z - 1, n_slices).round().astype(int))
    return np.concatenate([np.asarray(arr[int(k), ::stride, ::stride]).ravel() for k in picks])


def _window(vol: _Volume, window: Any) -> tuple[float, float]:
    if window is not None:
        lo, hi = (float(v) for v in window)
    else:
        sample = _sample(vol).astype(np.float64)
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return 0.0, 1.0
        lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def to_uint8(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Window ``data`` linearly to 0..255 (``lo`` -> 0, ``hi`` -> 255, clipped)."""
    scaled = (data.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _label_slice(vol: _Volume, data: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    limit = np.iinfo(out_dtype).max
    if data.size and (int(data.max()) > limit or int(data.min()) < 0):
        raise ValueError(
            f"{vol.name}: label values outside 0..{limit} cannot be written as {out_dtype} slices"
        )
    return data.astype(out_dtype)


def _readme(vol: _Volume, kind: str) -> bytes:
    text = (
        f"ml4paleo export ({kind}) of {vol.name}\n"
        f"shape (z, y, x): {vol.shape}\n"
        f"voxel size (z, y, x): {vol.voxel_size} {vol.unit or 'voxel units'}\n"
        f"{'label image' if vol.label else 'image'}, source dtype {vol.dtype}\n"
        "One file per z slice, numbered from 0; see metadata.json for the value mapping.\n"
    )
    return text.encode()


def _digits(n: int) -> int:
    return max(5, len(str(max(n - 1, 0))))


# --------------------------------------------------------------------------- writers


def _write_zarr(source: Any, sink: _Sink, progress: ProgressCallback | None = None,
                **_: Any) -> Iterator[None]:
    from ml4paleo.meshing import _is_zarr_folder
    from ml4paleo.omezarr import OmeImage

    path = Path(source.path if isinstance(source, OmeImage) else source)
    if not _is_zarr_folder(path):
        raise ValueError(f"{path}: not a Zarr folder")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for n in sorted(names):
            if ".tmp-" in n or n.startswith(".tmp"):
                continue
            files.append(Path(root) / n)
    top = path.name
    with _zip(sink) as zf:
        yield
        for i, f in enumerate(files, start=1):
            arcname = f"{top}/{f.relative_to(path).as_posix()}"
            yield from _add_file(zf, f, arcname, compress=f.name in _ZARR_META)
            if progress is not None:
                progress(i, len(files))
            yield


def _write_png(source: Any, sink: _Sink, *, label: bool | None = None, level: int = 0,
               window: Any = None, progress: ProgressCallback | None = None,
               **_: Any) -> Iterator[None]:
    import imagecodecs

    vol = _open_volume(source, label, level)
    n = vol.shape[0]
    digits = _digits(n)
    with _zip(sink) as zf:
        _add_bytes(zf, f"{vol.name}/README.txt", _readme(vol, "png"), compress=True)
        yield
        if vol.label:
            out_dtype = np.dtype(np.uint8 if vol.dtype.itemsize == 1 else np.uint16)
            meta = {"mapping": "label values", "png_dtype": str(out_dtype)}
        else:
            lo, hi = _window(vol, window)
            meta = {"mapping": "value = lo + png / 255 * (hi - lo)", "window": [lo, hi],
                    "png_dtype": "uint8"}
        for z0, slab in _slabs(vol):
            for k, plane in enumerate(slab):
                if vol.label:
                    img = _label_slice(vol, plane, out_dtype)
                else:
                    img = to_uint8(plane, lo, hi)
                data = imagecodecs.png_encode(np.ascontiguousarray(img), level=3)
                _add_bytes(zf, f"{vol.name}/z{z0 + k:0{digits}d}.png", bytes(data), compress=False)
                if progress is not None:
                    progress(z0 + k + 1, n)
                yield
        _add_bytes(zf, f"{vol.name}/metadata.json", _metadata(vol, meta), compress=True)
        yield


def _metadata(vol: _Volume, extra: dict) -> bytes:
    meta = {"source": vol.name, "shape_zyx": list(vol.shape), "voxel_size_zyx": list(vol.voxel_size),
            "unit": vol.unit, "label": vol.label, "source_dtype": str(vol.dtype), **extra}
    return json.dumps(meta, indent=2).encode()


def _uint16_mapping(vol: _Volume) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """How source values become uint16, and the inverse written to metadata.json."""
    dt = vol.dtype
    if vol.label:
        return (lambda a: _label_slice(vol, a, np.dtype(np.uint16))), {"mapping": "label values"}
    if dt.kind == "b" or (dt.kind == "u" and dt.itemsize <= 2):
        return (lambda a: a.astype(np.uint16)), {"mapping": "value = tiff"}
    if dt.kind == "i" and dt.itemsize <= 2:
        offset = 2 ** (8 * dt.itemsize - 1)
        return (
            lambda a: (a.astype(np.int32) + offset).astype(np.uint16),
            {"mapping": f"value = tiff - {offset}", "offset": -offset},
        )
    sample = _sample(vol).astype(np.float64)
    sample = sample[np.isfinite(sample)]
    lo, hi = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    scale = (hi - lo) / 65535.0

    def rescale(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((a.astype(np.float64) - lo) / scale), 0, 65535).astype(np.uint16)

    return rescale, {"mapping": "value = offset + tiff * scale (clipped to the sampled range)",
                     "offset": lo, "scale": scale}


def _write_tiff(source: Any, sink: _Sink, *, label: bool | None = None, level: int = 0,
                progress: ProgressCallback | None = None, **_: Any) -> Iterator[None]:
    import tifffile

    vol = _open_volume(source, label, level)
    n = vol.shape[0]
    digits = _digits(n)
    sz, sy, sx = vol.voxel_size
    unit = _IMAGEJ_UNITS.get(vol.unit or "", vol.unit or "pixel")
    with _zip(sink) as zf:
        _add_bytes(zf, f"{vol.name}/README.txt", _readme(vol, "tiff"), compress=True)
        yield
        convert, meta = _uint16_mapping(vol)
        for z0, slab in _slabs(vol):
            for k, plane in enumerate(slab):
                buf = io.BytesIO()
                tifffile.imwrite(buf, convert(plane), imagej=True, resolution=(1.0 / sx, 1.0 / sy),
                                 metadata={"spacing": sz, "unit": unit})
                _add_bytes(zf, f"{vol.name}/z{z0 + k:0{digits}d}.tif", buf.getvalue(), compress=True)
                if progress is not None:
                    progress(z0 + k + 1, n)
                yield
        _add_bytes(zf, f"{vol.name}/metadata.json", _metadata(vol, meta), compress=True)
        yield


def _mesh_folder(source: Path) -> Path:
    if (source / "meshes").is_dir():
        return source / "meshes"
    return source


def _write_meshes(source: Any, sink: _Sink, progress: ProgressCallback | None = None,
                  **_: Any) -> Iterator[None]:
    from ml4paleo.meshing import MESH_FORMATS

    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such meshes folder")
    folder = _mesh_folder(source)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lstrip(".").lower() in (*MESH_FORMATS, "csv")
        and not p.name.startswith(".")
    )
    if not any(p.suffix != ".csv" for p in files):
        raise ValueError(f"{folder}: no mesh files ({', '.join(MESH_FORMATS)}) to export")
    if not any(p.name == "stats.csv" for p in files) and (folder.parent / "stats.csv").is_file():
        files.append(folder.parent / "stats.csv")
    with _zip(sink) as zf:
        yield
        for i, f in enumerate(files, start=1):
            yield from _add_file(zf, f, f"meshes/{f.name}", compress=True)
            if progress is not None:
                progress(i, len(files))
            yield


def nifti_header(shape_zyx, dtype, voxel_size_zyx, unit: str | None):
    """A NIfTI-1 header for a ``(z, y, x)`` volume stored as ``(x, y, z)``.

    Voxel ``(i, j, k)`` = ``(x, y, z)`` has its centre at ``(x * sx, y * sy, z * sz)``,
    the same convention as the OME-Zarr scale and the meshes.
    """
    import nibabel as nib

    z, y, x = (int(s) for s in shape_zyx)
    sz, sy, sx = (float(v) for v in voxel_size_zyx)
    nifti_unit, factor = _NIFTI_UNITS.get((unit or "").lower(), ("unknown", 1.0))
    zooms = (sx * factor, sy * factor, sz * factor)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((x, y, z))
    hdr.set_data_dtype(np.dtype(dtype).newbyteorder("<"))
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units(xyz=nifti_unit)
    affine = np.diag([*zooms, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    return hdr


def _write_nifti(source: Any, sink: _Sink, *, label: bool | None = None, level: int = 0,
                 progress: ProgressCallback | None = None, **_: Any) -> Iterator[None]:
    vol = _open_volume(source, label, level)
    dtype = vol.dtype
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    dtype = dtype.newbyteorder("<")
    hdr = nifti_header(vol.shape, dtype, vol.voxel_size, vol.unit)
    n = vol.shape[0]
    # NIfTI stores x fastest, then y, then z: exactly the C order of a (z, y, x) array,
    # so slices are appended as they come.
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(hdr.binaryblock)
        gz.write(b"\x00" * (352 - len(hdr.binaryblock)))  # no extensions
        yield
        for z0, slab in _slabs(vol):
            for k, plane in enumerate(slab):
                gz.write(np.ascontiguousarray(plane, dtype=dtype).tobytes())
                if progress is not None:
                    progress(z0 + k + 1, n)
                yield
    yield


def _write_stats(source: Any, sink: _Sink, *, voxel_size: Any = None,
                 progress: ProgressCallback | None = None, **_: Any) -> Iterator[None]:
    from ml4paleo.meshing import _is_zarr_folder, label_stats, write_stats_csv

    path = Path(source) if isinstance(source, str | os.PathLike) else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path is not None and path.is_dir() and not _is_zarr_folder(path):
        for candidate in (path / "stats.csv", path / "meshes" / "stats.csv"):
            if candidate.is_file():
                path = candidate
                break
        else:
            if _is_zarr_folder(path / "labels.ome.zarr"):
                path = path / "labels.ome.zarr"
            else:
                raise ValueError(f"{path}: no stats.csv and no labels.ome.zarr to compute it from")
    if path is not None and path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: not a CSV file")
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                sink.write(chunk)
                yield
        return
    rows = label_stats(path if path is not None else source, voxel_size=voxel_size,
                       progress=progress)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ml4paleo-stats-") as tmp:
        csv_path = write_stats_csv(rows, Path(tmp) / "stats.csv")
        sink.write(csv_path.read_bytes())
    yield


_WRITERS: dict[str, Callable[..., Iterator[None]]] = {
    "zarr": _write_zarr,
    "png": _write_png,
    "tiff": _write_tiff,
    "meshes": _write_meshes,
    "nifti": _write_nifti,
    "stats": _write_stats,
}


def _writer(kind: str) -> Callable[..., Iterator[None]]:
    if kind not in _WRITERS:
        raise ValueError(f"unknown export kind {kind!r}: use one of {', '.join(_WRITERS)}")
    return _WRITERS[kind]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def default_filename(kind: str, source: Any) -> str:
    """File name for an export, e.g. ``labels.png.zip`` or ``labels.nii.gz``."""
    suffix = EXPORT_KINDS[kind][0] if kind in EXPORT_KINDS else kind
    if kind == "meshes":
        return "meshes.zip"
    name = _stem(Path(getattr(source, "path", source))) if isinstance(
        source, str | os.PathLike) or hasattr(source, "path") else "volume"
    if kind == "stats":
        return "stats.csv"
    return f"{name}.{suffix}"


def export(kind: str, source: Any, dest: str | os.PathLike, **options: Any) -> Path:
    """Export ``source`` as ``kind`` to the file ``dest`` (written atomically).

    Parameters
    ----------
    kind : str
        ``"zarr"``, ``"png"``, ``"tiff"``, ``"meshes"``, ``"nifti"`` or ``"stats"``.
    source : path or OmeImage
        An OME-Zarr image / label image (zarr, png, tiff, nifti; stats computes the
        statistics), a meshes folder or a segmentation folder holding ``meshes/``
        (meshes), a ``stats.csv`` or a segmentation folder (stats).
    dest : path
        Output file; when an existing folder (or a string ending in ``/``, created if
        missing), the file is created inside it with :func:`default_filename`.
    **options
        ``label`` (bool: treat as a label image; default from the OME-Zarr metadata),
        ``level`` (pyramid level, default 0), ``window`` ((lo, hi) for 8-bit PNG of an
        image; default: the 1 and 99.5 percentiles of a sample), ``voxel_size`` (stats
        computed from labels), ``progress`` (``progress(done, total)``).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError, FileNotFoundError
        Unknown kind, missing or unsuitable source.

    Examples
    --------
    >>> import numpy as np, tempfile, zipfile
    >>> from pathlib import Path
    >>> from ml4paleo.omezarr import create_image
    >>> tmp = Path(tempfile.mkdtemp())
    >>> img = create_image(tmp / "seg.ome.zarr", (3, 8, 8), np.uint8, label=True, pyramid=False)
    >>> img.array[1, 2:4, 2:4] = 2
    >>> out = export("png", tmp / "seg.ome.zarr", tmp)
    >>> out.name, len(zipfile.ZipFile(out).namelist())
    ('seg.png.zip', 5)
    """
    writer = _writer(kind)
    as_folder = isinstance(dest, str) and dest.endswith(("/", os.sep))
    dest = Path(dest)
    if as_folder:
        dest.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        dest = dest / default_filename(kind, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        with open(tmp, "wb") as fh:
            sink = _Sink(fh, keep=False)
            for _ in writer(source, sink, **options):
                pass
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _is_fresh(cache: Path, source: Any) -> bool:
    if not cache.is_file():
        return False
    path = getattr(source, "path", source)
    if isinstance(path, str | os.PathLike) and Path(path).exists():
        return cache.stat().st_mtime >= Path(path).stat().st_mtime
    return True


def stream_export(kind: str, source: Any, cache_path: str | os.PathLike,
                  **options: Any) -> Iterator[bytes]:
    """Yield the export's bytes as they are produced, caching the complete result.

    The bytes go to a temp file beside ``cache_path`` and to the caller at the same time;
    the temp file is renamed to ``cache_path`` only when the export is complete.  An
    error, or the caller closing the generator early (client gone), deletes the temp
    file.  When ``cache_path`` exists and is not older than ``source``, it is streamed.

    Parameters
    ----------
    kind, source, **options
        As for :func:`export`.
    cache_path : path
        Where the complete export is kept for repeat downloads.

    Yields
    ------
    bytes
        Consecutive pieces of the file (a zip, a ``.nii.gz`` or a CSV).

    Raises
    ------
    ValueError, FileNotFoundError
        On the first ``next()``: unknown kind, missing or unsuitable source.
    """
    writer = _writer(kind)
    cache = Path(cache_path)
    if _is_fresh(cache, source):
        try:
            fh = open(cache, "rb")
        except FileNotFoundError:  # replaced or purged in between: build it again
            pass
        else:
            with fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
            return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(cache)
    try:
        with open(tmp, "wb") as fh:
            sink = _Sink(fh, keep=True)
            for _ in writer(source, sink, **options):
                data = sink.take()
                if data:
                    yield data
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cache)  # complete: the cache is valid from here on
        data = sink.take()
        if data:
            yield data
    finally:
        tmp.unlink(missing_ok=True)


def read_stats_csv(path: str | os.PathLike) -> list[dict]:
    """Read a statistics CSV written by :func:`ml4paleo.meshing.write_stats_csv`."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


make_module_callable(__name__, export)
