"""Decoded-size limits of a scan, checked from its headers before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import InputError, Volume

__all__ = ["DecodeLimits", "check_decode_limits"]

_MiB = 1024 * 1024


@dataclass(frozen=True)
class DecodeLimits:
    """How large a scan may decode to.

    Parameters
    ----------
    max_slice_pixels : int
        Pixels of one ``(y, x)`` slice.
    max_volume_voxels : int
        Voxels of the whole volume.
    max_ratio : float
        Decoded bytes per byte of the files the volume comes from (a decompression bomb:
        a small PNG or a gzipped NIfTI that expands a thousandfold) ...
    ratio_min_bytes : int
        ... checked once the decoded volume is larger than this (small scans of mostly
        empty space compress well and are harmless).

    Examples
    --------
    >>> DecodeLimits.from_settings(None).max_ratio
    200.0
    """

    max_slice_pixels: int = 16384 * 16384
    max_volume_voxels: int = 1 << 37
    max_ratio: float = 200.0
    ratio_min_bytes: int = 256 * _MiB

    @classmethod
    def from_settings(cls, settings) -> DecodeLimits:
        """The limits of a :class:`ml4paleo.config.Settings` (defaults for None)."""
        if settings is None:
            return cls()
        return cls(int(settings.max_slice_pixels), int(settings.max_volume_voxels),
                   float(settings.max_decode_ratio), int(settings.decode_ratio_min_bytes))


def check_decode_limits(volume: Volume, limits: DecodeLimits | None = None) -> None:
    """Refuse a volume that would decode to more than ``limits`` allow.

    Only the volume's header facts are used (shape, dtype, the sizes of its files), so a
    decompression bomb is refused before a pixel of it is decoded.

    Raises
    ------
    InputError
        Naming the source, the size found and the limit (and its setting).
    """
    limits = limits or DecodeLimits()
    z, y, x = volume.shape
    name = volume.path
    if y * x > limits.max_slice_pixels:
        raise InputError(f"{name}: slices of {x} x {y} pixels exceed the limit of "
                         f"{limits.max_slice_pixels} pixels per slice "
                         "(setting ML4PALEO_MAX_SLICE_PIXELS)")
    voxels = z * y * x
    if voxels > limits.max_volume_voxels:
        raise InputError(f"{name}: {z} x {y} x {x} = {voxels} voxels exceed the limit of "
                         f"{limits.max_volume_voxels} voxels (setting ML4PALEO_MAX_VOLUME_VOXELS)")
    decoded = volume.nbytes
    stored = volume.stored_bytes()
    if stored is not None and decoded > limits.ratio_min_bytes \
            and decoded > limits.max_ratio * max(int(stored), 1):
        raise InputError(
            f"{name}: {stored / _MiB:.1f} MiB of files would decode to {decoded / _MiB:.0f} MiB "
            f"({decoded / max(int(stored), 1):.0f}:1, the limit is {limits.max_ratio:.0f}:1; "
            "a decompression bomb? setting ML4PALEO_MAX_DECODE_RATIO)")
