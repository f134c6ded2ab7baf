"""Whole chunks of a zarr v2 level, encoded into (and decoded from) their files directly.

Conversion and pyramid building write every chunk of a level exactly once, whole, and
read levels back chunk by chunk. For such access zarr's per-chunk bookkeeping costs as
much CPU as the blosc encoding itself; :class:`ChunkFiles` encodes with the level's own
codec and writes the file zarr would write (same name, same bytes: the full-size chunk,
edge chunks padded with the fill value), and reads chunks back the same way.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from pathlib import Path

import numcodecs
import numpy as np

__all__ = ["ChunkFiles"]


class ChunkFiles:
    """Reads and writes whole chunks of one zarr v2 array made by :func:`create_image`.

    Parameters
    ----------
    folder : path
        The array's folder (holding ``.zarray``): C order, no filters, ``/`` or ``.``
        separated chunk keys.
    skip_empty : bool
        Do not write chunks that are all fill value (zarr's ``write_empty_chunks=False``;
        readers see the fill value either way).

    Raises
    ------
    ValueError
        When the array's layout is not one this writer reproduces.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from ml4paleo.formats import create_image
    >>> img = create_image(tempfile.mkdtemp() + "/a.zarr", (4, 4, 6), "uint8", chunks=4,
    ...                    pyramid=False)
    >>> w = ChunkFiles(img.path / "0")
    >>> w.write_chunk((0, 0, 1), np.full((4, 4, 2), 7, np.uint8))
    >>> int(img.array[0, 0, 5]), int(img.array[0, 0, 3]), w.read_chunk((0, 0, 1)).shape
    (7, 0, (4, 4, 4))
    """

    def __init__(self, folder: str | os.PathLike, *, skip_empty: bool = False) -> None:
        self.folder = Path(folder)
        self.skip_empty = bool(skip_empty)
        meta = json.loads((self.folder / ".zarray").read_text())
        ok = (meta.get("zarr_format") == 2 and meta.get("order") == "C" and not meta.get("filters")
              and meta.get("dimension_separator", ".") in ("/", ".") and meta.get("compressor"))
        if not ok:
            raise ValueError(f"{self.folder}: unexpected zarr layout {meta}")
        self.codec = numcodecs.get_codec(meta["compressor"])
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunks"])
        self.dtype = np.dtype(meta["dtype"])
        self.fill = meta.get("fill_value") or 0
        self.separator = meta.get("dimension_separator", ".")
        self._local = threading.local()

    def __reduce__(self):
        # the per-thread buffers stay behind: workers rebuild the writer from the folder
        return (type(self), (str(self.folder),), {"skip_empty": self.skip_empty})

    def __setstate__(self, state: dict) -> None:
        self.skip_empty = state["skip_empty"]

    def chunk_path(self, index: Sequence[int]) -> Path:
        """File of chunk ``index``."""
        if self.separator == ".":
            return self.folder / ".".join(map(str, index))
        return self.folder.joinpath(*map(str, index))

    def write_chunk(self, index: Sequence[int], block: np.ndarray) -> None:
        """Encode and write chunk ``index`` (``block``: the chunk, or its part inside the array)."""
        if self.skip_empty and not np.any(block != self.fill):
            self.chunk_path(index).unlink(missing_ok=True)
            return
        if block.shape != self.chunks:
            full = np.full(self.chunks, self.fill, self.dtype)
            full[tuple(slice(0, s) for s in block.shape)] = block
            block = full
        if not (block.flags.c_contiguous and block.dtype == self.dtype):
            # copy into this thread's reusable buffer rather than a fresh array per chunk
            buf = getattr(self._local, "buf", None)
            if buf is None:
                buf = self._local.buf = np.empty(self.chunks, self.dtype)
            buf[...] = block
            block = buf
        encoded = self.codec.encode(block)
        path = self.chunk_path(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(encoded)

    def read_chunk(self, index: Sequence[int]) -> np.ndarray:
        """Decode chunk ``index`` (full chunk shape; a missing chunk is all fill value)."""
        try:
            data = self.chunk_path(index).read_bytes()
        except FileNotFoundError:
            return np.full(self.chunks, self.fill, self.dtype)
        return np.frombuffer(self.codec.decode(data), self.dtype).reshape(self.chunks)

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """The values of ``region`` (one slice per axis, inside the array), read chunk by chunk.

        Only the chunks the region touches are opened; a missing chunk reads as the fill
        value. Much less bookkeeping than zarr's per-chunk machinery for regions that touch
        many chunks (a plane of a label volume: thousands, mostly missing).
        """
        bounds = [s.indices(n)[:2] for s, n in zip(region, self.shape, strict=True)]
        out = np.empty(tuple(max(b - a, 0) for a, b in bounds), self.dtype)
        if out.size == 0:
            return out
        spans = [range(a // c, -(-b // c)) for (a, b), c in zip(bounds, self.chunks, strict=True)]
        # flat chunk keys share one folder: list it once rather than failing to open every
        # chunk that was never written
        present = set(os.listdir(self.folder)) if self.separator == "." else None
        for index in itertools.product(*spans):
            if present is not None and ".".join(map(str, index)) not in present:
                out[tuple(slice(max(a, i * c) - a, min(b, (i + 1) * c) - a) for i, c, (a, b)
                          in zip(index, self.chunks, bounds, strict=True))] = self.fill
                continue
            src, dst = [], []
            for i, c, (a, b) in zip(index, self.chunks, bounds, strict=True):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            try:
                data = self.chunk_path(index).read_bytes()
            except FileNotFoundError:
                out[tuple(dst)] = self.fill
                continue
            chunk = np.frombuffer(self.codec.decode(data), self.dtype).reshape(self.chunks)
            out[tuple(dst)] = chunk[tuple(src)]
        return out

    def write_region(self, data: np.ndarray, origin: Sequence[int],
                     pool: Executor | None = None) -> list[Future] | None:
        """Write every chunk of ``data`` placed at ``origin`` (chunk aligned).

        With ``pool``, the chunks are queued on it and their futures returned (wait for
        them before reusing ``data``); without, they are written here.
        """
        if any(o % c for o, c in zip(origin, self.chunks, strict=True)):
            raise ValueError(f"origin {tuple(origin)} is not aligned to chunks {self.chunks}")
        jobs = []
        ranges = [range(0, n, c) for n, c in zip(data.shape, self.chunks, strict=True)]
        for dz in ranges[0]:
            for dy in ranges[1]:
                for dx in ranges[2]:
                    index = ((origin[0] + dz) // self.chunks[0], (origin[1] + dy) // self.chunks[1],
                             (origin[2] + dx) // self.chunks[2])
                    piece = data[dz : dz + self.chunks[0], dy : dy + self.chunks[1],
                                 dx : dx + self.chunks[2]]
                    jobs.append((index, piece))
        if pool is None:
            for index, piece in jobs:
                self.write_chunk(index, piece)
            return None
        return [pool.submit(self.write_chunk, index, piece) for index, piece in jobs]
