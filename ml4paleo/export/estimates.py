"""How big an export will be before it is built: exact, about, or at most.

A download list shows a size for every export, but building a 20 GB PNG stack to learn
its size is out of the question. :func:`estimate_size` says what can be known without
building it, and how well it is known:

- ``"exact"``: the file exists (a cached export, a statistics CSV);
- ``"about"``: within a few per cent (a Zarr zip stores the already compressed chunks as
  they are: the folder's size plus the zip's per-file headers);
- ``"at_most"``: an upper bound (PNG, TIFF, NIfTI and mesh zips compress, by how much
  depends on the data: the bound is the uncompressed size plus headers).

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "stats.csv").write_text("label,voxels\\n1,10\\n")
>>> estimate_size("stats", d / "stats.csv")
(19, 'exact')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.io import is_zarr_store, open_any

from .folders import segmentation_layout

__all__ = ["SIZE_KINDS", "estimate_size", "folder_files"]

#: how well a size is known (see the module docstring)
SIZE_KINDS = ("exact", "about", "at_most")
#: zip local header + data descriptor + central directory entry, bytes, besides the
#: member's name (twice)
_ZIP_ENTRY = 30 + 16 + 46
#: per-slice container overhead bounds (PNG chunks / TIFF tags and ImageJ metadata)
_PNG_SLICE_OVERHEAD = 1024
_TIFF_SLICE_OVERHEAD = 4096
_NIFTI_HEADER = 352 + 64


def folder_files(path: Path) -> list[Path]:
    """Every file below ``path`` (hidden temp files of writers included: a bound)."""
    out = []
    for root, _dirs, names in os.walk(path):
        out.extend(Path(root) / n for n in names)
    return out


def _zip_bytes(files: list[Path], base: Path | None = None, prefix: str = "") -> int:
    """Size of a zip storing ``files`` as they are, named ``prefix + path below base``."""
    total = 22  # end of central directory
    for f in files:
        name = prefix + (f.relative_to(base).as_posix() if base is not None else f.name)
        try:
            total += f.stat().st_size + _ZIP_ENTRY + 2 * len(name.encode())
        except OSError:
            continue
    return total


def _deflate_bound(n: int) -> int:
    """zlib's worst case for ``n`` bytes of incompressible input."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def estimate_size(kind: str, source: Any, *, label: bool | None = None) -> tuple[int, str]:
    """The size of export ``kind`` of ``source`` and how well it is known.

    Parameters
    ----------
    kind : str
        An export kind of :mod:`ml4paleo.export` (``zarr``, ``png``, ``tiff``, ``nifti``,
        ``meshes``, ``stats``).
    source : path
        What the export is made of: an OME-Zarr image / label image, a meshes folder, a
        statistics CSV.
    label : bool, optional
        Whether an image is a label image (default: from its metadata).

    Returns
    -------
    (bytes, how) : tuple
        ``how`` is one of :data:`SIZE_KINDS`.

    Raises
    ------
    ValueError
        For an unknown kind; FileNotFoundError when ``source`` is missing.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path.name}: nothing to export (yet)")
    if kind == "stats":
        if path.is_file():
            return path.stat().st_size, "exact"
        # computed from a label image: a few lines of numbers per label
        return 4096, "at_most"
    if kind == "meshes":
        files = [f for f in folder_files(path) if not f.name.startswith(".")]
        beside = path.parent / segmentation_layout()["stats"]
        if beside.is_file():
            files.append(beside)
        total = 22
        for f in files:
            total += _deflate_bound(f.stat().st_size) + _ZIP_ENTRY + 2 * (len(f.name) + 16)
        return total, "at_most"
    if kind == "zarr":
        if not is_zarr_store(path):
            raise FileNotFoundError(f"{path.name}: not a Zarr folder")
        return _zip_bytes(folder_files(path), path, path.name + "/"), "about"
    if kind not in ("png", "tiff", "nifti"):
        raise ValueError(f"unknown export kind {kind!r}")
    vol = open_any(path)
    try:
        nz, ny, nx = vol.shape
        is_label = bool(vol.metadata.get("label")) if label is None else bool(label)
        itemsize = vol.dtype.itemsize
    finally:
        vol.close()
    if kind == "png":
        # images: 8-bit windowed; labels: 8 or 16-bit values; +1 filter byte per row
        b = (1 if itemsize == 1 else 2) if is_label else 1
        per_slice = _deflate_bound(ny * (nx * b + 1)) + _PNG_SLICE_OVERHEAD
        return _zip_bytes([]) + nz * (per_slice + _ZIP_ENTRY + 80) + 8192, "at_most"
    if kind == "tiff":
        b = 2 if itemsize <= 2 else itemsize
        per_slice = _deflate_bound(ny * nx * b + _TIFF_SLICE_OVERHEAD)
        return _zip_bytes([]) + nz * (per_slice + _ZIP_ENTRY + 80) + 8192, "at_most"
    raw = int(np.prod((nz, ny, nx), dtype=np.int64)) * itemsize
    # gzip adds its own header and trailer to zlib's bound
    return _deflate_bound(raw + _NIFTI_HEADER) + 32, "at_most"
