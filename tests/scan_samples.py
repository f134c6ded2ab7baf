"""Generators of small scans in every input format, for tests of ml4paleo.io / convert."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def ramp_volume(shape=(12, 20, 24), dtype=np.uint16, seed=0) -> np.ndarray:
    """Random voxels whose slice index is recoverable (each slice has its own offset)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    top = min(info.max, 4000) if info.max > 255 else 200
    vol = rng.integers(0, top // 2, size=shape).astype(dtype)
    vol += (np.arange(shape[0]) * (top // 2 // shape[0])).astype(dtype)[:, None, None]
    return vol


def write_slices(folder: Path, vol: np.ndarray, ext: str, stem: str = "img", pad: bool = False) -> list[Path]:
    """One file per z slice, named ``img1 .. imgN`` (unpadded: natural sort matters)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z, plane in enumerate(vol):
        name = f"{stem}{z + 1:04d}.{ext}" if pad else f"{stem}{z + 1}.{ext}"
        path = folder / name
        if ext in ("tif", "tiff"):
            import tifffile

            tifffile.imwrite(path, plane)
        elif ext == "jpg":
            Image.fromarray(plane).save(path, quality=95)
        else:
            Image.fromarray(plane).save(path)
        paths.append(path)
    return paths


def dicom_bytes(
    pixels: np.ndarray,
    *,
    position=(0.0, 0.0, 0.0),
    orientation=(1, 0, 0, 0, 1, 0),
    spacing=(0.5, 0.4),
    instance: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.2",
    slope: float | None = None,
    intercept: float | None = None,
    description: str = "test series",
    transfer_syntax: str | None = None,
    with_pixels: bool = True,
    frames_positions=None,
) -> bytes:
    """A CT DICOM file (single frame, or multi-frame when ``pixels`` is 3D)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (
        CTImageStorage,
        EnhancedCTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    multi = pixels.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage if multi else CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Anon^Fossil"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scan 3000"
    ds.StationName = "CT01"
    ds.SeriesDescription = description
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.ImageOrientationPatient = list(orientation)
    if multi:
        ds.NumberOfFrames = pixels.shape[0]
        per_frame = []
        for pos in frames_positions:
            item = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = list(pos)
            item.PlanePositionSequence = Sequence([pp])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
        shared = Dataset()
        po = Dataset()
        po.ImageOrientationPatient = list(orientation)
        shared.PlaneOrientationSequence = Sequence([po])
        if slope is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept = slope, intercept
            shared.PixelValueTransformationSequence = Sequence([pvt])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
    else:
        ds.ImagePositionPatient = list(position)
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if transfer_syntax is not None and with_pixels:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_dicom_series(
    folder: Path,
    raw: np.ndarray,
    *,
    spacing_z: float | list[float] = 1.5,
    orientation=(1, 0, 0, 0, 1, 0),
    origin=(10.0, -20.0, 5.0),
    seed: int = 0,
    names: str = "IM{:05d}",
    **kw,
) -> list[float]:
    """Write ``raw`` (z, y, x) as one file per slice, positioned along the normal.

    File names and InstanceNumbers are shuffled relative to the slice position, so only
    sorting by position recovers the order. Returns the slice positions along the normal.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    gaps = [spacing_z] * (len(raw) - 1) if np.isscalar(spacing_z) else list(spacing_z)
    dists = np.concatenate([[0.0], np.cumsum(gaps)])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(raw))
    for k, z in enumerate(perm):
        pos = np.asarray(origin) + dists[z] * normal
        data = dicom_bytes(raw[z], position=tuple(pos), orientation=orientation,
                           instance=int(len(raw) - k), **kw)
        (folder / names.format(k)).write_bytes(data)
    return list(dists)
