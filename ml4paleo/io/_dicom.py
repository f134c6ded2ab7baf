"""DICOM series: one volume from many single-frame files or multi-frame files.

Slices are ordered by their position along the slice normal (ImagePositionPatient
projected on the cross product of ImageOrientationPatient's row and column cosines), not
by InstanceNumber; RescaleSlope / RescaleIntercept are applied (HU for CT). The volume's
:attr:`~ml4paleo.io.Volume.world` is the series' LPS affine (first slice's position, the
orientation, PixelSpacing and the step between slices), oblique and tilted series included.
JPEG Lossless, JPEG-LS and 12-bit JPEG decode through imagecodecs
(:mod:`ml4paleo.io.dicom_codecs`); Deflated Explicit VR files are inflated by pydicom.
"""

from __future__ import annotations

import io
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml4paleo.world import WorldTransform

from . import dicom_codecs
from ._base import InputError, Volume, log, to_gray
from ._sources import FileSource, ZipSource

_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00", b"\x7f\xe0\x00\x10")


@dataclass
class _Frame:
    name: str
    index: int | None  # frame number in a multi-frame file, None for single-frame files
    position: np.ndarray | None  # ImagePositionPatient (mm)
    instance: int
    slope: float
    intercept: float


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def read_header(source: FileSource, name: str) -> tuple[Any, bool]:
    """Parse a DICOM header (no pixel data) and tell whether pixel data follows.

    Raises
    ------
    InputError
        When the file is not DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    where = source.display(name)
    try:
        with source.open(name) as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "Rows" not in ds:
                    raise InputError(f"{where}: not a DICOM file") from None
            tail = fh.read(4)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: not a readable DICOM file ({_short(exc)})") from exc
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_deflated:
        has_pixels = "Rows" in ds
    else:
        has_pixels = tail in _PIXEL_TAGS
    return ds, has_pixels


def _first(ds: Any, *path: str) -> Any:
    """Walk nested sequences (first item of each) and return the last attribute or None."""
    node = ds
    for key in path:
        if node is None or key not in node:
            return None
        node = node[key].value
        if key.endswith("Sequence"):
            node = node[0] if node is not None and len(node) else None
    return node


def _iop(ds: Any) -> list[float] | None:
    """ImageOrientationPatient (file level, else the shared functional groups)."""
    iop = ds.get("ImageOrientationPatient") or _first(
        ds, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    if iop is None or len(iop) != 6:
        return None
    return [float(v) for v in iop]


def _orientation(ds: Any) -> np.ndarray | None:
    iop = _iop(ds)
    if iop is None:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    n = np.linalg.norm(normal)
    return normal / n if n > 0 else None


def _rescale(ds: Any, groups: Any = None) -> tuple[float, float]:
    """(slope, intercept): from the file, else the frame's or the shared functional groups."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        for item in (groups, shared[0] if shared else None):
            pvt = item.get("PixelValueTransformationSequence") if item is not None else None
            if pvt:
                slope, intercept = pvt[0].get("RescaleSlope"), pvt[0].get("RescaleIntercept")
                break
    return float(slope if slope is not None else 1.0), float(intercept if intercept is not None else 0.0)


def _frames_of(name: str, ds: Any, normal: np.ndarray | None) -> list[_Frame]:
    instance = int(ds.get("InstanceNumber") or 0)
    nframes = int(ds.get("NumberOfFrames") or 1)
    if nframes <= 1:
        ipp = ds.get("ImagePositionPatient")
        pos = np.asarray(ipp, float) if ipp is not None and len(ipp) == 3 else None
        slope, intercept = _rescale(ds)
        return [_Frame(name, None, pos, instance, slope, intercept)]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    base = ds.get("ImagePositionPatient")
    offsets = ds.get("GridFrameOffsetVector")
    step = ds.get("SpacingBetweenSlices") or _first(
        ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "SpacingBetweenSlices"
    )
    frames = []
    for k in range(nframes):
        pos = None
        groups = per_frame[k] if per_frame is not None and k < len(per_frame) else None
        if groups is not None:
            ipp = _first(groups, "PlanePositionSequence", "ImagePositionPatient")
            if ipp is not None and len(ipp) == 3:
                pos = np.asarray(ipp, float)
        if pos is None and base is not None and normal is not None:
            if offsets is not None and len(offsets) == nframes:
                pos = np.asarray(base, float) + float(offsets[k]) * normal
            elif step:
                pos = np.asarray(base, float) + k * float(step) * normal
        slope, intercept = _rescale(ds, groups)
        frames.append(_Frame(name, k, pos, instance, slope, intercept))
    return frames


def _raw_dtype(ds: Any) -> np.dtype:
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return np.dtype(np.float32)
    bits = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if bits <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    return np.dtype(np.int32 if signed else np.uint32)


def _stored_range(ds: Any, raw: np.dtype) -> tuple[float, float]:
    if raw.kind == "f":
        return -np.inf, np.inf
    bits = int(ds.get("BitsStored") or raw.itemsize * 8)
    if raw.kind == "i":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _output_dtype(raw: np.dtype, lo: float, hi: float, frames: list[_Frame]) -> tuple[np.dtype, bool]:
    """Voxel type after rescaling, and whether rescaling changes anything."""
    if all(f.slope == 1.0 and f.intercept == 0.0 for f in frames):
        return raw, False
    integral = all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames)
    if not integral or raw.kind == "f":
        return np.dtype(np.float32), True
    ends = [v * f.slope + f.intercept for f in frames for v in (lo, hi)]
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= min(ends) and max(ends) <= info.max:
            return np.dtype(dt), True
    return np.dtype(np.float64), True


class DicomVolume(Volume):
    """The largest DICOM series among a set of files, slices sorted along the normal."""

    source_type = "dicom"

    def __init__(self, source: FileSource, names: list[str], ignored: list[str], **kw: Any):
        dicom_codecs.register()
        self.source = source
        headers: dict[str, Any] = {}
        without_pixels = []
        for name in names:
            ds, has_pixels = read_header(source, name)
            if has_pixels and "Rows" in ds and "Columns" in ds:
                headers[name] = ds
            else:
                without_pixels.append(name)
        if not headers:
            raise InputError(
                f"{source.root}: no DICOM image with pixel data ({len(names)} DICOM file(s) "
                f"without pixels, e.g. {names[0]})"
            )
        by_series: dict[tuple, list[str]] = defaultdict(list)
        for name, ds in headers.items():
            key = (str(ds.get("SeriesInstanceUID", "")), int(ds.Rows), int(ds.Columns))
            by_series[key].append(name)
        counts = {k: sum(int(headers[n].get("NumberOfFrames") or 1) for n in v) for k, v in by_series.items()}
        chosen_key = max(counts, key=lambda k: (counts[k], len(by_series[k])))
        series_names = by_series[chosen_key]
        others = []
        for key, members in by_series.items():
            if key == chosen_key:
                continue
            ds = headers[members[0]]
            others.append({
                "series_uid": key[0], "series_description": str(ds.get("SeriesDescription", "")),
                "modality": str(ds.get("Modality", "")), "slices": counts[key],
                "rows": key[1], "columns": key[2],
            })
        first = headers[series_names[0]]
        self._stored = sum(int(source.size(n)) for n in series_names)
        if others:
            log.warning(
                "%s: %d DICOM series found; using the largest (%s, %d slices)",
                source.root, len(by_series), chosen_key[0], counts[chosen_key],
            )
        normal = _orientation(first)
        frames: list[_Frame] = []
        for name in series_names:
            frames.extend(_frames_of(name, headers[name], normal))
        meta: dict[str, Any] = {
            "container": "zip" if isinstance(source, ZipSource) else "folder",
            "files": len(series_names),
            "modality": str(first.get("Modality", "")),
            "manufacturer": str(first.get("Manufacturer", "")),
            "manufacturer_model": str(first.get("ManufacturerModelName", "")),
            "series_uid": chosen_key[0],
            "study_uid": str(first.get("StudyInstanceUID", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "station": str(first.get("StationName", "")),
            "body_part": str(first.get("BodyPartExamined", "")),
            "transfer_syntax": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")),
            "series_count": len(by_series),
            "other_series": others,
            "files_without_pixels": len(without_pixels),
            "ignored_count": len(ignored),
        }
        if others:
            meta["note"] = (
                f"{len(by_series)} series found; converted the largest ({counts[chosen_key]} slices)"
            )
        # order: position along the normal > InstanceNumber > file name (already natural order)
        dist = None
        if normal is not None and all(f.position is not None for f in frames):
            dist = np.array([float(f.position @ normal) for f in frames])
            if len(frames) > 1 and np.ptp(dist) == 0:
                dist = None  # every slice claims the same position: positions are useless
        if dist is not None:
            order = np.argsort(dist, kind="stable")
            meta["sorted_by"] = "position"
        else:
            order = np.argsort([f.instance for f in frames], kind="stable")
            meta["sorted_by"] = "instance_number"
            log.warning("%s: no slice positions; ordered by InstanceNumber", source.root)
        self._frames = [frames[i] for i in order]
        dz = None
        meta["non_uniform_spacing"] = False
        if dist is not None and len(frames) > 1:
            gaps = np.diff(dist[order])
            dz = float(np.median(gaps))
            spread = float(gaps.max() - gaps.min())
            meta["slice_spacing_min"] = round(float(gaps.min()), 6)
            meta["slice_spacing_max"] = round(float(gaps.max()), 6)
            if spread > max(0.01 * abs(dz), 1e-3):
                meta["non_uniform_spacing"] = True
                log.warning(
                    "%s: non-uniform slice spacing (%.4g..%.4g mm); using the median %.4g mm",
                    source.root, gaps.min(), gaps.max(), dz,
                )
            if dz <= 0:
                dz = None
        z_measured = dz is not None
        if dz is None:
            thick = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or _first(
                first, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "SliceThickness"
            )
            dz = float(thick) if thick else None
        spacing = first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or _first(
            first, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence", "PixelSpacing"
        )
        voxel_size = world = None
        if spacing is not None and len(spacing) == 2:
            dy, dx = float(spacing[0]), float(spacing[1])
            voxel_size = (dz if dz else dy, dy, dx)
            world = self._world_of(first, normal, dist is not None, voxel_size,
                                   z_assumed=not z_measured)
            if world is None:
                log.info("%s: no ImagePositionPatient / ImageOrientationPatient; world "
                         "coordinates are voxel size x index", source.root)
                world = WorldTransform.from_voxel_size(
                    voxel_size, unit="millimeter", assumed=() if z_measured else ("z_spacing",))
        raw = _raw_dtype(first)
        lo, hi = _stored_range(first, raw)
        dtype, self._rescaled = _output_dtype(raw, lo, hi, self._frames)
        slopes = {(f.slope, f.intercept) for f in self._frames}
        if len(slopes) == 1:
            meta["rescale_slope"], meta["rescale_intercept"] = next(iter(slopes))
        else:
            meta["rescale_varies"] = True
        self._samples = int(first.get("SamplesPerPixel") or 1)
        meta["rgb_reduced_to_gray"] = self._samples > 1
        if self._samples > 1:
            log.warning("%s: colour DICOM, reduced to one channel (luma)", source.root)
        self._rows, self._cols = int(first.Rows), int(first.Columns)
        self._cache_lock = threading.Lock()
        self._cache: tuple[str, bytes] | None = None
        ts = getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", None)
        self._deflated = bool(ts is not None and ts.is_deflated)
        self._plugin = dicom_codecs.PLUGIN if ts is not None and dicom_codecs.uses_plugin(ts) else ""
        super().__init__(source.root, (len(self._frames), self._rows, self._cols), dtype,
                         voxel_size=voxel_size, unit="millimeter" if voxel_size else None,
                         metadata=meta, world=world, **kw)

    def _world_of(self, first: Any, normal: np.ndarray | None, positioned: bool,
                  voxel_size: tuple[float, float, float], *, z_assumed: bool
                  ) -> WorldTransform | None:
        """The LPS affine of the sorted series, None without position and orientation."""
        iop = _iop(first)
        start = self._frames[0].position
        if iop is None or normal is None or start is None:
            return None
        dz, dy, dx = voxel_size
        step = normal * dz
        if positioned and len(self._frames) > 1:
            # the direction from the first slice to the last (a gantry tilt shears it off
            # the normal), scaled so that consecutive slices are dz apart along the normal
            run = self._frames[-1].position - start
            along = float(run @ normal)
            if along > 0:
                step = run * (dz / along)
        try:
            return WorldTransform.from_dicom(start, iop, (dy, dx), step,
                                             assumed=("z_spacing",) if z_assumed else ())
        except ValueError as exc:
            log.warning("%s: unusable DICOM geometry (%s); world coordinates are voxel size x "
                        "index", self.source.root, exc)
            return None

    def _src(self, frame: _Frame) -> Any:
        path = self.source.local_path(frame.name)
        if path is not None:
            return str(path)
        if frame.index is None:
            return io.BytesIO(self.source.read(frame.name))
        with self._cache_lock:  # multi-frame member of a zip: keep its bytes for the next frames
            if self._cache is None or self._cache[0] != frame.name:
                self._cache = (frame.name, self.source.read(frame.name))
            return io.BytesIO(self._cache[1])

    def _decode(self, z: int) -> np.ndarray:
        import pydicom
        import pydicom.uid
        from pydicom.pixels import pixel_array

        f = self._frames[z]
        where = self.source.display(f.name)
        try:
            src = self._src(f)
            if self._deflated:  # pixel_array's own file parser does not inflate
                src = pydicom.dcmread(src)
            arr = pixel_array(src, index=f.index, decoding_plugin=self._plugin)
        except InputError:
            raise
        except Exception as exc:
            if "missing dependencies" in str(exc) or "no decoder" in str(exc).lower():
                uid = self.metadata.get("transfer_syntax", "")
                name = getattr(pydicom.uid.UID(uid), "name", uid) if uid else "unknown"
                raise InputError(
                    f"{where}: no decoder installed for the {name} transfer syntax ({uid})"
                ) from exc
            raise InputError(f"{where}: cannot decode DICOM pixel data ({_short(exc)})") from exc
        if self._samples > 1 and arr.ndim == 3:
            arr = to_gray(arr)[0]
        if arr.shape != (self._rows, self._cols):
            raise InputError(
                f"{where}: pixel data of shape {arr.shape}, expected {(self._rows, self._cols)}"
            )
        if not self._rescaled:
            return arr.astype(self.dtype, copy=False)
        if self.dtype.kind == "i":
            return (arr.astype(np.int64) * int(f.slope) + int(f.intercept)).astype(self.dtype)
        return (arr.astype(np.float64) * f.slope + f.intercept).astype(self.dtype)

    def _read_slab(self, z0: int, z1: int, rows: slice, cols: slice, out=None) -> np.ndarray:
        if out is None:
            out = np.empty((z1 - z0, rows.stop - rows.start, cols.stop - cols.start), self.dtype)

        def work(z: int) -> None:
            out[z - z0] = self._decode(z)[rows, cols]

        self._map(work, range(z0, z1))
        return out

    def stored_bytes(self) -> int | None:
        """Bytes of the DICOM files of the series read."""
        return self._stored

    def close(self) -> None:
        super().close()
        self._cache = None
        self.source.close()

