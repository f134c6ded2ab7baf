"""Sniff what a path holds and open it with the right reader: :func:`open_volume`."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from ._base import InputError, Volume
from ._sources import (
    DICOM_EXTS,
    IMAGE_EXTS,
    DirSource,
    FileSource,
    OneFileSource,
    ZipSource,
    classify,
    ext_of,
    is_dicom_head,
    is_zarr_store,
)

__all__ = ["detect_source_type", "open_volume"]


def _plan(path: Path, depth: int = 0) -> tuple[str, Callable[..., Volume], FileSource | None]:
    """Find what ``path`` is and how to open it, without reading pixel data."""
    from ._arrays import NiftiVolume, NpyVolume, ZarrVolume
    from ._dicom import DicomVolume
    from ._stack import ImageStackVolume, TiffVolume

    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if is_zarr_store(path):
            return "zarr", lambda **kw: ZarrVolume(path, **kw), None
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            # an uploaded folder arrives one level down (upload/scan.zarr/, upload/slices/)
            if depth > 2:
                raise InputError(f"{path}: too deeply nested")
            return _plan(entries[0], depth + 1)
        source = DirSource(path)
        if not source.names:
            raise InputError(f"{path}: empty folder (no files found)")
        kind, names, ignored = classify(source)
        if kind == "single":
            if depth > 2:
                raise InputError(f"{path}: too deeply nested")
            return _plan(path / names[0], depth + 1)
        return _stack_plan(kind, source, names, ignored, DicomVolume, ImageStackVolume, TiffVolume)
    ext = ext_of(path.name)
    if ext in (".nii", ".nii.gz"):
        return "nifti", lambda **kw: NiftiVolume(path, **kw), None
    if ext == ".npy":
        return "npy", lambda **kw: NpyVolume(path, **kw), None
    if ext == ".zip":
        zsource = ZipSource(path)
        try:
            kind, names, ignored = classify(zsource)
        except BaseException:
            zsource.close()
            raise
        return _stack_plan(kind, zsource, names, ignored, DicomVolume, ImageStackVolume, TiffVolume)
    single = OneFileSource(path)
    if ext in (".tif", ".tiff"):
        return "tiff", lambda **kw: TiffVolume(single, path.name, **kw), single
    if ext in IMAGE_EXTS:
        return "image_stack", lambda **kw: ImageStackVolume(single, [path.name], [], **kw), single
    try:
        head = single.head(path.name)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    if ext in DICOM_EXTS or is_dicom_head(head):
        return "dicom", lambda **kw: DicomVolume(single, [path.name], [], **kw), single
    raise InputError(
        f"{path}: unsupported file type (expected image slices, a zip, TIFF, DICOM, NIfTI, .npy or Zarr)"
    )


def _stack_plan(kind, source, names, ignored, dicom_cls, stack_cls, tiff_cls):
    if kind == "dicom":
        return "dicom", lambda **kw: dicom_cls(source, names, ignored, **kw), source
    if kind == "tiff":
        return "tiff", lambda **kw: tiff_cls(source, names[0], **kw), source
    return "image_stack", lambda **kw: stack_cls(source, names, ignored, **kw), source


def detect_source_type(path: str | os.PathLike) -> str:
    """What kind of scan ``path`` holds.

    Returns
    -------
    str
        One of ``"image_stack"``, ``"tiff"``, ``"dicom"``, ``"nifti"``, ``"npy"``, ``"zarr"``.

    Raises
    ------
    InputError
        When ``path`` does not exist or holds nothing ml4paleo can read.
    """
    kind, _, files = _as_input_error(Path(path), _plan, Path(path))
    if files is not None:
        files.close()
    return kind


def _as_input_error(path: Path, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with any failure of a reader reported as the
    :class:`InputError` it is: a header a library cannot parse, a negative size, an
    unreadable file. Memory errors and a full disk stay what they are."""
    try:
        return fn(*args, **kwargs)
    except (InputError, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:
        raise InputError(f"{path}: not a readable scan ({type(exc).__name__}: {exc})") from exc


def open_volume(source: str | os.PathLike, *, workers: int | None = None) -> Volume:
    """Open a scan lazily as a ``(z, y, x)`` :class:`Volume`.

    Parameters
    ----------
    source : path
        A folder of slices, a zip, a multi-page TIFF, a DICOM folder/zip/file, a NIfTI,
        a ``.npy``, a Zarr / OME-Zarr, or a folder holding one of these.
    workers : int, optional
        Threads used to decode slices in parallel (default: CPUs, 2..8).

    Returns
    -------
    Volume
        Headers are read and checked; pixels are read on indexing / :meth:`Volume.read_slab`.

    Raises
    ------
    InputError
        A one-line message naming the file and the problem (missing, empty folder, not an
        image, size mismatch, unsafe zip, no DICOM pixel data, ...).
    """
    path = Path(source)
    kind, opener, files = _as_input_error(path, _plan, path)
    try:
        volume = _as_input_error(path, opener, workers=workers)
    except BaseException:
        if files is not None:
            files.close()
        raise
    volume.source_type = kind
    return volume
