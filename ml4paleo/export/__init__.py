"""Downloads: OME-Zarr, PNG and TIFF stacks, meshes (zips), NIfTI and statistics CSV.

Every export is produced by one writer that streams into a sink as it goes, never
holding the whole result in memory. :func:`export` writes it to a file (temp + rename);
:func:`stream_export` yields the bytes to a client *while* writing them to a temp file
that becomes the cache only when complete, so a failed or interrupted export never leaves
a file that is later served as complete. Slab work (PNG, TIFF, NIfTI) runs through
:mod:`ml4paleo.blocks` (in this process by default; ``executor=`` a Dask cluster).

Kinds
-----
``zarr``
    Zip of the OME-Zarr folder, the store at the zip's root (a Zarr ``ZipStore`` as it is;
    an image's ``labels/`` come along), chunks stored as they are (already compressed).
``png``
    Zip of one PNG per z slice: 8-bit, windowed to the 1-99.5 percentiles of a sample
    for images; label values (8-bit, or 16-bit when the dtype needs it) for label images;
    the pixel size in each file's ``pHYs`` chunk.
``tiff``
    Zip of one TIFF per z slice (ImageJ metadata with the voxel size): 8-bit for 8-bit
    sources, else 16-bit.
``meshes``
    Zip of a meshes folder (``<label>.stl|obj|ply|glb``) and its ``stats.csv``.
``nifti``
    One ``.nii.gz`` on the source's world (sform/qform and their codes; labels with
    intent ``NIFTI_INTENT_LABEL``), written slab by slab.
``stats``
    The per-label statistics CSV (copied, or computed from a label image).

Modules: :mod:`~ml4paleo.export.sinks`, :mod:`~ml4paleo.export.volumes`,
:mod:`~ml4paleo.export.stacks` (PNG, TIFF), :mod:`~ml4paleo.export.nifti`,
:mod:`~ml4paleo.export.folders` (zarr, meshes, stats), :mod:`~ml4paleo.export.estimates`
(sizes before building).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ml4paleo._fs import atomic_writer
from ml4paleo._verbs import make_module_callable
from ml4paleo.meshing import STATS_CSV
from ml4paleo.meshing import read_stats_csv as meshing_read_stats_csv

from .estimates import SIZE_KINDS, estimate_size
from .folders import write_meshes, write_stats, write_zarr
from .nifti import nifti_header, write_nifti
from .sinks import COPY_PIECE, Sink
from .stacks import write_png, write_tiff
from .volumes import stem, to_uint8

__all__ = [
    "EXPORT_KINDS",
    "SIZE_KINDS",
    "WRITERS",
    "cached_export",
    "default_filename",
    "estimate_bytes",
    "estimate_size",
    "export",
    "is_cached",
    "nifti_header",
    "read_stats_csv",
    "stream_export",
    "to_uint8",
]

#: kind -> (file suffix, mimetype, description)
EXPORT_KINDS: dict[str, tuple[str, str, str]] = {
    "zarr": ("zarr.zip", "application/zip", "OME-Zarr store (zip, the store at its root)"),
    "png": ("png.zip", "application/zip", "stack of PNG slices (zip)"),
    "tiff": ("tiff.zip", "application/zip", "stack of 8/16-bit TIFF slices (zip)"),
    "meshes": ("meshes.zip", "application/zip", "meshes of every label and stats.csv (zip)"),
    "nifti": ("nii.gz", "application/gzip", "NIfTI-1 volume on the scan's affine"),
    "stats": ("csv", "text/csv", "per-label statistics (CSV)"),
}

#: kind -> writer: ``writer(source, sink, **options)`` is a generator that writes the
#: export into ``sink``, yielding after each piece
WRITERS: dict[str, Callable[..., Iterator[None]]] = {
    "zarr": write_zarr,
    "png": write_png,
    "tiff": write_tiff,
    "meshes": write_meshes,
    "nifti": write_nifti,
    "stats": write_stats,
}


def _writer(kind: str) -> Callable[..., Iterator[None]]:
    if kind not in WRITERS:
        raise ValueError(f"unknown export kind {kind!r}: use one of {', '.join(WRITERS)}")
    return WRITERS[kind]


def default_filename(kind: str, source: Any) -> str:
    """File name for an export, e.g. ``labels.png.zip`` or ``labels.nii.gz``."""
    suffix = EXPORT_KINDS[kind][0] if kind in EXPORT_KINDS else kind
    if kind == "meshes":
        return "meshes.zip"
    name = stem(Path(getattr(source, "path", source))) if isinstance(
        source, str | os.PathLike) or hasattr(source, "path") else "volume"
    if kind == "stats":
        return STATS_CSV
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
        computed from labels), ``progress`` (``progress(done, total)``), ``executor`` and
        ``workers`` (where slab blocks run, see :func:`ml4paleo.blocks.run`; default this
        process).

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
    >>> from ml4paleo.formats import create_image
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
    with atomic_writer(dest, "wb") as fh:
        sink = Sink(fh, keep=False)
        for _ in writer(source, sink, **options):
            pass
    return dest


def is_cached(cache: str | os.PathLike, source: Any) -> bool:
    """True when the export file ``cache`` exists and is not older than ``source``."""
    return _is_fresh(Path(cache), source)


def _changed_at(path: Path) -> float:
    """When ``path`` last changed, as far as an export of it can tell: the folder, its
    metadata and its NGFF ``labels`` (a segmentation added to an image changes its zip)."""
    times = [path.stat().st_mtime]
    for part in (".zattrs", "labels", "labels/.zattrs"):
        try:
            times.append((path / part).stat().st_mtime)
        except OSError:
            pass
    return max(times)


def _is_fresh(cache: Path, source: Any) -> bool:
    if not cache.is_file():
        return False
    path = getattr(source, "path", source)
    if isinstance(path, str | os.PathLike) and Path(path).exists():
        return cache.stat().st_mtime >= _changed_at(Path(path))
    return True


def stream_export(kind: str, source: Any, cache_path: str | os.PathLike,
                  **options: Any) -> Iterator[bytes]:
    """Yield the export's bytes as they are produced, caching the complete result.

    The bytes go to a temp file beside ``cache_path`` and to the caller at the same time;
    the temp file is renamed to ``cache_path`` only when the export is complete. An
    error, or the caller closing the generator early (client gone), deletes the temp
    file. When ``cache_path`` exists and is not older than ``source``, it is streamed.

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
                while chunk := fh.read(COPY_PIECE):
                    yield chunk
            return
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(cache, "wb") as fh:  # complete: renamed to the cache on leaving
        sink = Sink(fh, keep=True)
        for _ in writer(source, sink, **options):
            data = sink.take()
            if data:
                yield data
    data = sink.take()
    if data:
        yield data


def estimate_bytes(kind: str, source: Any) -> int:
    """An upper estimate, in bytes, of the ``kind`` export of ``source`` (from its files and
    header, nothing decoded): what a caller checks free disk space against before building
    it. The number of :func:`~ml4paleo.export.estimates.estimate_size`, which also says how
    well it is known."""
    _writer(kind)
    return estimate_size(kind, getattr(source, "path", source))[0]


def cached_export(kind: str, source: Any, cache_path: str | os.PathLike,
                  **options: Any) -> Path:
    """The complete ``kind`` export of ``source`` at ``cache_path``: the cached file when
    it is not older than ``source``, else built now (atomically: temp file, then rename).

    For servers: the file is complete before its first byte is sent, so a download is
    never cut short by a failure half-way (a full disk, a corrupt chunk); serve it with
    its length.

    Raises
    ------
    ValueError, FileNotFoundError
        Unknown kind, missing or unsuitable source.
    OSError
        ``ENOSPC`` when the disk fills while building (nothing is left behind).
    """
    cache = Path(cache_path)
    if _is_fresh(cache, source):
        return cache
    return export(kind, source, cache, **options)


def read_stats_csv(path: str | os.PathLike) -> list[dict]:
    """Read a statistics CSV written by :func:`ml4paleo.meshing.write_stats_csv`.

    Rows keyed like :data:`ml4paleo.meshing.STATS_COLUMNS` (``volume``, not
    ``volume_mm3``), values as the CSV's strings; any version's headers.
    """
    return meshing_read_stats_csv(path)


make_module_callable(__name__, export)
