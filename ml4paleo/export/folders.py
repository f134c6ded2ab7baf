"""Exports of folders as they are: an OME-Zarr folder, a meshes folder, a statistics CSV.

A *segmentation folder* (as a job keeps it) may be given instead of its meshes folder or
its statistics; the names inside it come from :class:`ml4paleo.workspace.JobPaths`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ml4paleo._fs import is_temp_name
from ml4paleo.formats import OmeImage
from ml4paleo.io import is_zarr_store
from ml4paleo.meshing import MESH_FORMATS, STATS_CSV, label_stats, stats_csv_text
from ml4paleo.workspace import JobPaths, SegmentationPaths

from .sinks import COPY_PIECE, Sink, add_file, open_zip

__all__ = ["segmentation_layout", "write_meshes", "write_stats", "write_zarr"]

ProgressCallback = Callable[[int, int], None]

_ZARR_META = {".zarray", ".zattrs", ".zgroup", "zarr.json", ".zmetadata"}


def segmentation_layout() -> dict[str, str]:
    """Names inside a segmentation folder: ``labels``, ``meshes`` and ``stats``.

    Read from :class:`~ml4paleo.workspace.SegmentationPaths` (the one place job files
    are named). ``labels`` is where a folder copied elsewhere (or a job of an older
    version) keeps its label image; a job's segmentations are labels of its image
    (:meth:`~ml4paleo.workspace.JobPaths.labels`), found by :func:`_labels_of`.
    """
    seg = SegmentationPaths("s")
    return {"labels": seg.labels.relative_to(seg.root).as_posix(),
            "meshes": seg.meshes.relative_to(seg.root).as_posix(),
            "stats": seg.stats.relative_to(seg.root).as_posix()}


def _labels_of(folder: Path) -> Path:
    """The label image of a segmentation folder: inside it, or its job's image's label."""
    inside = folder / segmentation_layout()["labels"]
    if is_zarr_store(inside):
        return inside
    job = JobPaths(folder.parent.parent)
    try:
        if job.segmentations == folder.parent:
            return job.labels(folder.name)
    except ValueError:
        pass
    return inside


def write_zarr(source: Any, sink: Sink, progress: ProgressCallback | None = None,
               **_: Any) -> Iterator[None]:
    """A zip of the OME-Zarr folder, the store at the zip's root.

    So the zip is a Zarr store as it is (``zarr.storage.ZipStore(path, mode="r")``,
    ome-zarr-py, fsspec ``zip::``); an image's ``labels/`` (its segmentations) come
    along. Chunks are stored as they are (already compressed); hidden work folders and
    temp files of writers are left out.
    """
    path = Path(source.path if isinstance(source, OmeImage) else source)
    if not is_zarr_store(path):
        raise ValueError(f"{path}: not a Zarr folder")
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not is_temp_name(d) and not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not is_temp_name(n))
    with open_zip(sink) as zf:
        yield
        for i, f in enumerate(files, start=1):
            arcname = f.relative_to(path).as_posix()
            yield from add_file(zf, f, arcname, compress=f.name in _ZARR_META)
            if progress is not None:
                progress(i, len(files))
            yield


def _mesh_folder(source: Path) -> Path:
    folder = source / segmentation_layout()["meshes"]
    return folder if folder.is_dir() else source


def write_meshes(source: Any, sink: Sink, progress: ProgressCallback | None = None,
                 **_: Any) -> Iterator[None]:
    """A zip of a meshes folder (or of a segmentation folder's) and its statistics CSV."""
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
    beside = folder.parent / segmentation_layout()["stats"]
    if not any(p.name == STATS_CSV for p in files) and beside.is_file():
        files.append(beside)
    with open_zip(sink) as zf:
        yield
        for i, f in enumerate(files, start=1):
            yield from add_file(zf, f, f"meshes/{f.name}", compress=True)
            if progress is not None:
                progress(i, len(files))
            yield


def write_stats(source: Any, sink: Sink, *, voxel_size: Any = None,
                progress: ProgressCallback | None = None, executor: Any = None,
                workers: int | None = None, **_: Any) -> Iterator[None]:
    """A statistics CSV: copied from a CSV or a segmentation folder, or computed from labels."""
    path = Path(source) if isinstance(source, str | os.PathLike) else None
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path is not None and path.is_dir() and not is_zarr_store(path):
        layout = segmentation_layout()
        for candidate in (path / layout["stats"], path / layout["meshes"] / STATS_CSV):
            if candidate.is_file():
                path = candidate
                break
        else:
            if is_zarr_store(_labels_of(path)):
                path = _labels_of(path)
            else:
                raise ValueError(f"{path}: no {layout['stats']} and no {layout['labels']} to "
                                 "compute it from")
    if path is not None and path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: not a CSV file")
        with open(path, "rb") as fh:
            while chunk := fh.read(COPY_PIECE):
                sink.write(chunk)
                yield
        return
    rows = label_stats(path if path is not None else source, voxel_size=voxel_size,
                       progress=progress, executor=executor, workers=workers)
    sink.write(stats_csv_text(rows).encode())
    yield
