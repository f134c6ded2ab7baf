"""Slices too big for memory: spread into cells of a temporary file, read back cell by cell.

When one chunk-thick slab of whole slices does not fit the memory limit (e.g. 128 slices
of 4000 x 4000 uint16 = 4 GiB), a slab block's slices are written into a temporary file
laid out cell-major: a cell is the block's depth x two chunk rows x two chunk columns,
stored contiguously, so one read returns it. A cell holds eight level-0 chunks and
downsamples to one level-1 chunk, and the file lives in the page cache, not in the
process's memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["CellStager"]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class CellStager:
    """A temporary raw file of ``(nz, cell_y, cell_x)`` cells covering ``nz`` slices.

    Parameters
    ----------
    path : path
        The file to create (a temp name from :func:`ml4paleo._fs.temp_path`); removed by
        :meth:`close`.
    nz, ny, nx : int
        Slices held and their size.
    cell_y, cell_x : int
        Cell edge (edge cells are smaller).
    dtype : dtype
        Voxel type.

    Examples
    --------
    >>> import tempfile, numpy as np, os
    >>> vol = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    >>> with CellStager(os.path.join(tempfile.mkdtemp(), "s"), 2, 5, 7, 4, 4, vol.dtype) as st:
    ...     for z, plane in enumerate(vol):
    ...         st.put(z, plane)
    ...     (y0, x0), cell = st.cell(3)
    >>> (y0, x0), bool((cell == vol[:, 4:5, 4:7]).all())
    ((4, 4), True)
    """

    def __init__(self, path: str | os.PathLike, nz: int, ny: int, nx: int, cell_y: int,
                 cell_x: int, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.nz = int(nz)
        self.dtype = np.dtype(dtype)
        self.cells = [(y0, min(y0 + cell_y, ny), x0, min(x0 + cell_x, nx))
                      for y0 in range(0, ny, cell_y) for x0 in range(0, nx, cell_x)]
        self.offsets = []
        offset = 0
        for y0, y1, x0, x1 in self.cells:
            self.offsets.append(offset)
            offset += self.nz * (y1 - y0) * (x1 - x0) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def put(self, zi: int, plane: np.ndarray) -> None:
        """Store slice ``zi`` (0-based within the file) of every cell."""
        for (y0, y1, x0, x1), off in zip(self.cells, self.offsets, strict=True):
            tile = np.ascontiguousarray(plane[y0:y1, x0:x1], dtype=self.dtype)
            _pwrite_all(self.fd, memoryview(tile).cast("B"), off + zi * tile.nbytes)

    def cell(self, c: int) -> tuple[tuple[int, int], np.ndarray]:
        """``((y0, x0), data)`` of cell ``c``: data is ``(nz, rows, cols)``."""
        y0, y1, x0, x1 = self.cells[c]
        shape = (self.nz, y1 - y0, x1 - x0)
        buf = bytearray(int(np.prod(shape)) * self.dtype.itemsize)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = os.preadv(self.fd, [view[got:]], self.offsets[c] + got)
            if n <= 0:
                raise OSError(f"{self.path}: short read")
            got += n
        return (y0, x0), np.frombuffer(buf, self.dtype).reshape(shape)

    def close(self) -> None:
        """Close and delete the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> CellStager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
