"""Where an export's bytes go: a write-only stream that can also hand them to a client."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["COPY_PIECE", "Sink", "add_bytes", "add_file", "open_zip"]

#: bytes copied (and streamed) at a time
COPY_PIECE = 1 << 20


class Sink(io.RawIOBase):
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


def open_zip(sink: Sink) -> zipfile.ZipFile:
    """A zip written front to back into ``sink`` (deflate level 1, ZIP64 allowed)."""
    return zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                           allowZip64=True)


def add_file(zf: zipfile.ZipFile, path: Path, arcname: str, compress: bool) -> Iterator[None]:
    """Copy one file into the zip in 1 MiB pieces, yielding after each."""
    info = zipfile.ZipInfo.from_file(path, arcname)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    if compress:
        info._compresslevel = 1  # Python 3.11/3.12 name; ignored by later versions
    with open(path, "rb") as src, zf.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
        while chunk := src.read(COPY_PIECE):
            dst.write(chunk)
            yield


def add_bytes(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    """Add one member holding ``data``."""
    zf.writestr(_member(name), data,
                compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
