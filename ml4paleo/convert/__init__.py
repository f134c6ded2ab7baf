"""Any scan → OME-Zarr image (NGFF 0.4, zarr format 2), streamed with flat memory.

Conversion runs as stages of :mod:`ml4paleo.blocks`, so it runs on this process's
threads (the default), on local worker processes or on a Dask cluster alike:

1. slab blocks (:mod:`~ml4paleo.convert.slabs`): whole slices, two chunks thick, read
   once in order; they write the full-resolution level bit-exact in the source dtype
   (blosc-zstd, whole chunks encoded on a thread pool) and level 1 of the 2x pyramid,
   downsampled from the same slices while they are in memory;
2. the smaller levels (:func:`ml4paleo.formats.pyramid_stages`), each block starting as
   soon as the part of the level above it reads is written.

Everything goes to a hidden temporary sibling of ``dest`` that is renamed into place only
when complete. When one chunk-thick slab of whole slices would exceed ``memory_limit``,
slices are staged through a temporary file (page cache, not process memory).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml4paleo._fs import replace_dir, sweep_temps, temp_path
from ml4paleo._verbs import make_module_callable
from ml4paleo.blocks import Shared, Stage, block_grid, is_dask, overlapping, run
from ml4paleo.formats import (
    ChunkFiles,
    OmeImage,
    chunk_shape,
    create_image,
    default_compressor,
    open_image,
    pyramid_stages,
)
from ml4paleo.io import InputError, Volume, open_any
from ml4paleo.world import WorldTransform, normalize_unit

from .geometry import SIZE_WARNINGS, parse_voxel_size, set_voxel_size, voxel_size_status
from .slabs import BufferPool, SlabJob, write_slabs

log = logging.getLogger(__name__)

__all__ = ["CONVERT_CLEVEL", "DEFAULT_MEMORY_LIMIT", "InputError", "conversion_warnings",
           "convert", "parse_voxel_size", "set_voxel_size", "source_world", "voxel_size_status"]

ProgressCallback = Callable[[int, int], None]

#: Bytes of slab buffers per slab block: two chunk-thick slabs of whole slices when they
#: fit (the next one is read while the current one is compressed), else one, else slices
#: are staged through a temporary file.
DEFAULT_MEMORY_LIMIT = 320 << 20
#: zstd level of converted images: on noisy CT data level 1 encodes ~4x faster than level 3
#: for a ratio within ~8 % of it (1 MiB blosc blocks).
CONVERT_CLEVEL = 1
#: retries of a block after a transient error (I/O, a lost worker)
RETRIES = 2


def convert(
    source: str | os.PathLike | Volume | Any,
    dest: str | os.PathLike,
    *,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    chunks: int | Sequence[int] = 128,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    overwrite: bool = True,
    executor: Any = None,
) -> OmeImage:
    """Convert a scan to an OME-Zarr image with a 2x pyramid.

    Parameters
    ----------
    source : path, Volume or array
        Anything :func:`ml4paleo.io.open_any` opens (a slice folder, zip, TIFF, DICOM,
        NIfTI, ``.npy``, Zarr, an opened volume, a 3-D array).
    dest : path
        Output folder, e.g. ``scan.ome.zarr``.
    voxel_size : sequence of 3 floats, optional
        ``(z, y, x)`` physical voxel size; overrides the source's. 1.0 when neither has one.
    unit : str, optional
        Unit of the voxel size (NGFF name such as ``"micrometer"``); default the source's.
    chunks : int or 3 ints
        Chunk edge(s) of the full-resolution level.
    progress : callable, optional
        ``progress(done, total)`` over blocks: slab blocks, then pyramid blocks.
    workers : int, optional
        Threads a slab block decodes and compresses with (default: CPUs, 2..8 in this
        process; 1 per block on local processes or Dask, whose workers run blocks side
        by side).
    memory_limit : int
        Bytes of slab buffers per slab block (one slab = ``chunks`` slices). Two slabs when
        they fit (the next is read while the current is compressed), else one; when even
        one does not fit, slices are staged through a temporary file so memory stays flat.
    overwrite : bool
        Replace an existing ``dest`` once the new image is complete (else FileExistsError).
    executor : None, "threads", "serial", "processes", Dask address or Client
        Where the blocks run (see :func:`ml4paleo.blocks.run`). Default: this process
        (slab blocks one after another, pyramid blocks on its threads). Local processes
        and Dask workers reopen the source by its path (and must see ``dest``).

    Returns
    -------
    OmeImage
        The finished image (opened read-only) at ``dest``. Its ``ml4paleo`` attribute
        holds ``{"source_type", "source": {...source metadata}, "world": {...}, ...}``:
        the source's world transform (:func:`source_world`), whose NGFF scale and
        translation every level carries (for a rotated or flipped source, the
        axis-aligned approximation: NGFF 0.4 holds no rotation; the full affine is in
        ``world``).

    Raises
    ------
    InputError
        Bad input (one line naming the file); nothing is left at ``dest`` or beside it.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(f"{d}/scan.npy", np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6))
    >>> img = convert(f"{d}/scan.npy", f"{d}/scan.ome.zarr", voxel_size=(2, 1, 1), unit="micrometer")
    >>> img.shape, img.voxel_size, int(img.array[3, 4, 5])
    ((4, 5, 6), (2.0, 1.0, 1.0), 119)
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists")
    chunk = chunk_shape(chunks)
    if voxel_size is not None:
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) != 3 or any(not v > 0 for v in voxel_size):
            raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    if memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive, got {memory_limit}")
    own = not isinstance(source, Volume)
    volume = open_any(source)
    if own and workers:
        volume.workers = int(workers)
    dest.parent.mkdir(parents=True, exist_ok=True)
    swept = sweep_temps(dest.parent)
    if swept:
        log.info("removed %d temp file(s) left by killed writers in %s", swept, dest.parent)
    tmp = temp_path(dest)
    t0 = time.perf_counter()
    try:
        _convert_into(volume, tmp, dest, voxel_size, unit, chunk, progress, workers,
                      memory_limit, executor)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if own:
            volume.close()
    result = open_image(dest)
    log.info("converted %s -> %s (%s %s) in %.1f s", volume.path, dest, result.shape,
             result.dtype, time.perf_counter() - t0)
    return result


def source_world(volume: Volume, voxel_size: Sequence[float] | None = None,
                unit: str | None = None) -> WorldTransform:
    """The world transform a conversion of ``volume`` writes.

    The source's (:attr:`ml4paleo.io.Volume.world`: affine, frame, origin, unit), with
    ``voxel_size`` and ``unit`` overriding its voxel size and unit while its direction
    and origin are kept.
    """
    world = volume.world
    length_unit = normalize_unit(unit) if unit is not None else None
    if voxel_size is not None or length_unit is not None:
        world = world.with_voxel_size(voxel_size or world.voxel_size,
                                      unit=length_unit or world.unit)
    return world


def _attrs_and_size(volume: Volume, voxel_size, unit) -> tuple[dict, tuple, str | None]:
    if voxel_size is not None:
        size, size_from = voxel_size, "user"
        unit = unit if unit is not None else volume.unit
    elif volume.voxel_size is not None:
        size, size_from = volume.voxel_size, "source"
        unit = unit if unit is not None else volume.unit
    else:
        size, size_from = (1.0, 1.0, 1.0), "default"
    attrs: dict[str, Any] = {
        "source_type": volume.source_type,
        "source": {"name": volume.path.name, **volume.metadata},
        "source_voxel_size": None if volume.voxel_size is None else list(volume.voxel_size),
        "source_unit": volume.unit,
        "voxel_size_from": size_from,
        "warnings": conversion_warnings(volume, voxel_size, unit),
    }
    return attrs, size, unit


def conversion_warnings(volume: Volume, voxel_size: Sequence[float] | None = None,
                        unit: str | None = None) -> list[dict]:
    """The source's warnings (:meth:`ml4paleo.io.Volume.warnings`) that still hold for the
    converted image: a voxel size (and unit) given by the user replaces what the file
    lacked."""
    out = []
    for w in volume.warnings():
        code = w["code"]
        if voxel_size is not None and code in SIZE_WARNINGS - {"unit_assumed"}:
            continue
        if code == "unit_assumed" and unit is not None:
            continue
        if code == "voxel_size_unknown" and unit is None and voxel_size is not None:
            out.append({"code": "unit_assumed", "message": "the voxel size was given without "
                        "a unit: set the unit so measurements mean something"})
            continue
        out.append(w)
    return out


def _convert_into(volume, tmp, dest, voxel_size, unit, chunk, progress, workers, memory_limit,
                  executor) -> None:
    asked = (voxel_size, unit)  # what the caller gave (unit is resolved below)
    attrs, size, unit = _attrs_and_size(volume, voxel_size, unit)
    image = create_image(
        tmp, volume.shape, volume.dtype, chunks=chunk, voxel_size=size, unit=unit,
        name=volume.path.name, extra_attrs=attrs,
        compressor=default_compressor(clevel=CONVERT_CLEVEL),
        world=source_world(volume, voxel_size, unit),
    )
    local = executor in (None, "threads", "serial")
    threads = int(workers or volume.workers) if local else int(workers or 1)
    job = SlabJob(
        source=Shared(volume),
        level0=ChunkFiles(image.path / image.levels[0]),
        level1=ChunkFiles(image.path / image.levels[1]) if len(image.levels) > 1 else None,
        label=image.is_label,
        threads=threads,
        memory_limit=int(memory_limit),
        staging=str(dest),
        buffers=BufferPool(),
        decode_threads=None if local else threads,
    )
    cz = job.level0.chunks[0]
    slabs = block_grid(volume.shape, (2 * cz, volume.shape[1], volume.shape[2]))
    stages = [Stage(functools.partial(write_slabs, job=job), slabs, name="convert",
                    retries=RETRIES,
                    # in this process a slab block already uses every thread (and the memory)
                    max_in_flight=1 if local else None)]
    # level 2 on reads level 1, which the slab blocks write: 4x level-0 coordinates
    stages += pyramid_stages(image, 2, depends_on=overlapping(slabs, scale=4),
                             skip_empty=False, retries=RETRIES)
    if is_dask(executor) or executor == "processes":
        run_on, run_workers = executor, None
    else:
        run_on = "threads" if executor is None else executor
        run_workers = threads
    try:
        run(stages, executor=run_on, workers=run_workers, progress=progress)
    finally:
        job.buffers.clear()
    # readers learn some things while decoding (colour in a compressed zip member)
    late = conversion_warnings(volume, *asked)
    if late != attrs["warnings"]:
        extra = dict(image.group.attrs.get("ml4paleo") or {})  # keeps what else is stored
        extra.update(warnings=late, source={"name": volume.path.name, **volume.metadata})
        image.group.attrs["ml4paleo"] = extra


make_module_callable(__name__, convert)
