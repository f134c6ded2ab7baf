"""Files behind a volume: a folder or a zip, listed and opened the same way.

Also what a folder or zip holds (image slices, DICOM, ...), and the zip safety checks.
"""

from __future__ import annotations

import abc
import os
import posixpath
import zipfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from ._base import InputError, log, natural_key

IMAGE_EXTS = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
              ".bmp": "bmp"}
DICOM_EXTS = {".dcm", ".dicom", ".ima"}
# Sidecar files scanners write next to slices; skipped (and listed in the metadata).
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "dicomdir"}

# Zip-bomb limits: declared sizes are enforced by zipfile while reading, so checking them
# up front is enough.
MAX_ZIP_TOTAL_BYTES = 1 << 40  # 1 TiB uncompressed
MAX_ZIP_RATIO = 100.0  # overall uncompressed / compressed
ZIP_RATIO_MIN_BYTES = 32 << 20  # ratio only matters past this much data
MAX_ZIP_MEMBERS = 1_000_000
MAX_MEMBER_RATIO = 100.0  # one large entry on its own (a bomb hidden among normal files)
MEMBER_RATIO_MIN_BYTES = 128 << 20
MAX_MEMBER_READ = 4 << 30  # entries read whole into memory (slices, DICOM files)


_ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json", ".zattrs")


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a Zarr group or array (v2 or v3 metadata)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in _ZARR_MARKERS)


def ext_of(name: str) -> str:
    """Lower-case extension, ``.nii.gz`` counted as one."""
    low = name.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return posixpath.splitext(low)[1]


def is_hidden(rel: str) -> bool:
    parts = rel.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in JUNK_NAMES


class FileSource(abc.ABC):
    """A set of files addressed by ``/``-separated relative names."""

    root: Path
    names: list[str]

    @abc.abstractmethod
    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    @abc.abstractmethod
    def size(self, name: str) -> int:
        raise NotImplementedError

    @abc.abstractmethod
    def display(self, name: str) -> str:
        """Name to show in messages."""
        raise NotImplementedError

    def local_path(self, name: str) -> Path | None:
        """A real file path, when there is one (not inside a zip)."""
        return None

    def head(self, name: str, n: int = 132) -> bytes:
        with self.open(name) as fh:
            return fh.read(n)

    def close(self) -> None:  # noqa: B027 - a no-op is right for sources holding no handle
        """Release open handles (nothing to do for plain folders)."""


class DirSource(FileSource):
    """Every non-hidden file under a folder (recursively), naturally sorted."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
            rel_dir = os.path.relpath(dirpath, self.root)
            for f in filenames:
                rel = f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/")
                if not is_hidden(rel):
                    names.append(rel)
        self.names = sorted(names, key=natural_key)

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size

    def display(self, name: str) -> str:
        return str(self.root / name)

    def local_path(self, name: str) -> Path | None:
        return self.root / name


class ZipSource(FileSource):
    """Members of a zip archive, checked for unsafe paths and zip bombs on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.root)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{self.root}: not a readable zip file ({exc})") from exc
        try:
            infos = self._zip.infolist()
            check_zip_members(self.root, infos)
        except BaseException:
            self._zip.close()
            raise
        self._infos = {i.filename: i for i in infos if not i.is_dir()}
        self.names = sorted((n for n in self._infos if not is_hidden(n)), key=natural_key)

    def open(self, name: str) -> BinaryIO:
        try:
            return self._zip.open(self._infos[name])
        except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
            raise InputError(f"{self.display(name)}: cannot read zip entry ({exc})") from exc

    def read(self, name: str) -> bytes:
        if self._infos[name].file_size > MAX_MEMBER_READ:
            raise InputError(f"{self.display(name)}: zip entry too large to read ({self._infos[name].file_size} bytes)")
        try:
            with self._zip.open(self._infos[name]) as fh:
                return fh.read()
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise InputError(f"{self.display(name)}: corrupt zip entry ({exc})") from exc

    def size(self, name: str) -> int:
        return self._infos[name].file_size

    def display(self, name: str) -> str:
        return f"{self.root}:{name}"

    def close(self) -> None:
        self._zip.close()


def check_zip_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Reject path traversal, absolute names and zip bombs (by declared sizes).

    Raises
    ------
    InputError
        Naming the zip and the offending entry.
    """
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InputError(f"{path}: too many zip entries ({len(infos)})")
    total = compressed = 0
    for info in infos:
        name = info.filename
        norm = name.replace("\\", "/")
        if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/"):
            raise InputError(f"{path}: unsafe zip entry {name!r} (absolute path or '..')")
        total += info.file_size
        compressed += info.compress_size
        if (info.file_size > MEMBER_RATIO_MIN_BYTES
                and info.file_size > MAX_MEMBER_RATIO * max(info.compress_size, 1)):
            raise InputError(
                f"{path}: zip entry {name!r} expands {info.file_size // max(info.compress_size, 1)}:1 "
                f"to {info.file_size} bytes (zip bomb?)"
            )
    if total > MAX_ZIP_TOTAL_BYTES:
        raise InputError(f"{path}: zip declares {total} uncompressed bytes (zip bomb?)")
    if total > ZIP_RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * max(compressed, 1):
        ratio = total / max(compressed, 1)
        raise InputError(
            f"{path}: zip compression ratio {ratio:.0f}:1 exceeds {MAX_ZIP_RATIO:.0f}:1 (zip bomb?)"
        )


def is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def classify(source: FileSource) -> tuple[str, list[str], list[str]]:
    """What a folder / zip holds.

    Returns
    -------
    (kind, names, ignored)
        ``kind`` is ``"image_stack"``, ``"tiff"`` (one multi-page TIFF), ``"dicom"`` or
        ``"single"`` (exactly one other file, e.g. a NIfTI or a zip, to open on its own);
        ``names`` the files that make up the volume (naturally sorted); ``ignored`` the rest.

    Raises
    ------
    InputError
        When nothing usable is found.
    """
    names = source.names
    where = source.root
    if not names:
        raise InputError(f"{where}: empty (no files found)")
    images: dict[tuple[str, str], list[str]] = {}
    dicoms: list[str] = []
    others: list[str] = []
    for n in names:
        ext = ext_of(n)
        if ext in IMAGE_EXTS:
            images.setdefault((posixpath.dirname(n), IMAGE_EXTS[ext]), []).append(n)
        elif ext in DICOM_EXTS:
            dicoms.append(n)
        else:
            others.append(n)
    # Files without a telling extension may be DICOM (scanners often write no extension).
    unknown = [n for n in others if ext_of(n) in ("",) or ext_of(n)[1:].isdigit()]
    if unknown and not images:
        for n in unknown:
            try:
                if is_dicom_head(source.head(n)):
                    dicoms.append(n)
            except OSError:
                continue
    dicoms = sorted(set(dicoms), key=natural_key)
    best_images: list[str] = max(images.values(), key=len) if images else []
    if dicoms and len(dicoms) >= len(best_images):
        chosen, kind = dicoms, "dicom"
    elif best_images:
        chosen = best_images
        kind = "image_stack"
        if len(chosen) == 1 and IMAGE_EXTS[ext_of(chosen[0])] == "tiff":
            kind = "tiff"
    else:
        single = [n for n in names if ext_of(n) in (".nii", ".nii.gz", ".npy", ".zip")]
        if len(single) == 1 and isinstance(source, DirSource):
            return "single", single, [n for n in names if n != single[0]]
        listed = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        raise InputError(
            f"{where}: no image slices (TIFF/PNG/JPG/BMP), DICOM, NIfTI or .npy files found ({listed})"
        )
    chosen_set = set(chosen)
    ignored = [n for n in names if n not in chosen_set]
    if ignored:
        kinds = Counter(ext_of(n) or "(no extension)" for n in ignored)
        log.info("%s: ignoring %d other file(s): %s", where, len(ignored), dict(kinds))
    return kind, chosen, ignored


class OneFileSource(FileSource):
    """A single file, addressed by its name."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        self.names = [self.root.name]

    def open(self, name: str) -> BinaryIO:
        return open(self.root, "rb")

    def size(self, name: str) -> int:
        return self.root.stat().st_size

    def display(self, name: str) -> str:
        return str(self.root)

    def local_path(self, name: str) -> Path | None:
        return self.root
