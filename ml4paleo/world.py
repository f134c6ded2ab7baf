"""Where a scan's voxels are: one world transform per image, read once and carried everywhere.

A :class:`WorldTransform` holds a 4x4 affine from voxel index to world coordinates, the
anatomical frame of those coordinates, their unit and where the transform came from.

Conventions (the writers of OME-Zarr, NIfTI, meshes and stats rely on them):

- **Index order.** ml4paleo arrays are ``(z, y, x)``; ``x`` is the fastest axis, NIfTI's
  ``i`` and DICOM's column index. The affine maps the index vector ``(x, y, z, 1)`` — NIfTI's
  ``(i, j, k, 1)`` — to world ``(X, Y, Z, 1)``, so a NIfTI affine is used as it is and ITK /
  SimpleITK's index order is the same. Column 0 is the world step of ``x + 1``, column 1 of
  ``y + 1``, column 2 of ``z + 1``, column 3 the world position of voxel ``(0, 0, 0)``'s centre.
  Everything on the index side of the API is ``(z, y, x)`` (:attr:`~WorldTransform.voxel_size`,
  :meth:`~WorldTransform.apply`'s input, NGFF scale/translation); world points are always
  ``(X, Y, Z)``.
- **Frame.** ``"RAS"`` (NIfTI, scanner: +X right, +Y anterior, +Z superior), ``"LPS"`` (DICOM
  patient: +X left, +Y posterior, +Z superior) or ``None`` for scans with no anatomical frame
  (slice stacks, ``.npy``: world = index x voxel size + origin). Exports that need a frame
  (NIfTI, ITK) treat ``None`` as RAS, so every export of one image agrees.
- **Unit.** An NGFF length unit name (``"millimeter"``, ``"micrometer"``, ...) or ``None`` for
  voxel units (nothing known).
- **Provenance.** ``source`` says where the affine came from (``"sform"``, ``"qform"``,
  ``"pixdim"``, ``"dicom"``, ``"voxel_size"``, ``"ngff"``); ``assumed`` names what was filled
  in by default (``"unit"``, ``"origin"``, ``"voxel_size"``, ``"z_spacing"``, ``"frame"``).

Only numpy is needed here: format readers pass in what their headers hold.

Example
-------
>>> import numpy as np
>>> from ml4paleo.world import WorldTransform
>>> w = WorldTransform.from_voxel_size((2.0, 0.5, 0.5), origin=(10.0, 0.0, 0.0),
...                                    unit="micrometer")
>>> w.apply([(1, 2, 3)]).tolist()                       # voxel z=1, y=2, x=3
[[11.5, 1.0, 2.0]]
>>> w.ngff_scale_translation(1)                          # mean-downsampled level 1
([4.0, 1.0, 1.0], [1.0, 0.25, 10.25])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["FRAMES", "LENGTH_UNITS", "ZARR_WORLD_KEY", "WorldTransform", "normalize_unit",
           "plane_orientation", "unit_factor"]

FRAMES = ("RAS", "LPS")
#: Key of the full-resolution transform (:meth:`WorldTransform.to_json`) inside the
#: ``ml4paleo`` attribute of an OME-Zarr image: ``attrs["ml4paleo"]["world"]``. Readers
#: derive pyramid levels from it with :meth:`WorldTransform.for_level`.
ZARR_WORLD_KEY = "world"

#: Metres per unit, for the NGFF length unit names (and a few common spellings).
LENGTH_UNITS: dict[str, float] = {
    "angstrom": 1e-10, "attometer": 1e-18, "centimeter": 1e-2, "decimeter": 1e-1,
    "exameter": 1e18, "femtometer": 1e-15, "foot": 0.3048, "gigameter": 1e9,
    "hectometer": 1e2, "inch": 0.0254, "kilometer": 1e3, "megameter": 1e6, "meter": 1.0,
    "micrometer": 1e-6, "mile": 1609.344, "millimeter": 1e-3, "nanometer": 1e-9,
    "parsec": 3.0856775814913673e16, "petameter": 1e15, "picometer": 1e-12,
    "terameter": 1e12, "yard": 0.9144, "yoctometer": 1e-24, "yottameter": 1e24,
    "zeptometer": 1e-21, "zettameter": 1e21,
}

_ALIASES = {
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "mm": "millimeter", "cm": "centimeter", "nm": "nanometer",
    "m": "meter", "metre": "meter", "millimetre": "millimeter", "micrometre": "micrometer",
    "nanometre": "nanometer", "centimetre": "centimeter", "a": "angstrom", "å": "angstrom",
}
_SOURCES = ("sform", "qform", "pixdim", "dicom", "voxel_size", "ngff")
_ASSUMED = ("unit", "origin", "voxel_size", "z_spacing", "frame")
#: NIfTI xform codes written for transforms that did not come from a NIfTI file
_XFORM_SCANNER, _XFORM_ALIGNED = 1, 2
_NIFTI_UNITS = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}
_NIFTI_UNIT_NAMES = {"meter": "meter", "millimeter": "mm", "micrometer": "micron"}
_JSON_VERSION = 1
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def normalize_unit(unit: str | None) -> str | None:
    """The NGFF length unit name for ``unit`` (``"um"`` -> ``"micrometer"``), None if unknown.

    Examples
    --------
    >>> normalize_unit("micron"), normalize_unit("Millimeter"), normalize_unit("pixel")
    ('micrometer', 'millimeter', None)
    """
    if unit is None:
        return None
    name = str(unit).strip()
    low = name.lower()
    if low in LENGTH_UNITS:
        return low
    return _ALIASES.get(low, _ALIASES.get(name))


def unit_factor(unit: str | None, to: str | None) -> float:
    """How many ``to`` make one ``unit`` (``unit_factor("millimeter", "micrometer") == 1000``).

    Raises
    ------
    ValueError
        When either is not a length unit of :data:`LENGTH_UNITS`, or only one is None.
    """
    if unit == to:
        return 1.0
    for u in (unit, to):
        if u not in LENGTH_UNITS:
            raise ValueError(f"unknown length unit {u!r} (expected one of: millimeter, "
                             f"micrometer, nanometer, meter, ...)")
    return LENGTH_UNITS[unit] / LENGTH_UNITS[to]  # type: ignore[index]


def _frozen(a: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got {arr.tolist()}")
    arr.setflags(write=False)
    return arr


def _check_affine(a: Any, what: str = "affine") -> np.ndarray:
    arr = _frozen(a, (4, 4), what)
    if not np.allclose(arr[3], (0, 0, 0, 1)):
        raise ValueError(f"{what}: last row must be (0, 0, 0, 1), got {arr[3].tolist()}")
    if np.linalg.matrix_rank(arr[:3, :3]) < 3:
        raise ValueError(f"{what}: singular (a voxel axis has no extent in the world)")
    return arr


def _usable(affine: Any) -> np.ndarray | None:
    """``affine`` as a float array when it is a valid transform, else None."""
    if affine is None:
        return None
    try:
        return np.array(_check_affine(affine))
    except ValueError:
        return None


def _axis_codes(affine: np.ndarray, frame: str) -> str:
    """Anatomical direction each index axis (x, y, z) points to, like ``nibabel.aff2axcodes``."""
    ras = affine if frame == "RAS" else _FLIP_XY @ affine
    rzs = ras[:3, :3] / np.linalg.norm(ras[:3, :3], axis=0)
    # nearest orthogonal matrix, then the greedy largest-component match nibabel uses
    u, _, vt = np.linalg.svd(rzs)
    r = u @ vt
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    codes = []
    for axis in range(3):
        col = r[:, axis]
        out = int(np.argmax(np.abs(col)))
        codes.append(labels[out][1 if col[out] > 0 else 0])
        r[out, :] = 0
    return "".join(codes)


class WorldTransform:
    """Voxel index -> world coordinates of one image (immutable).

    Parameters
    ----------
    affine : (4, 4) array-like
        Maps ``(x, y, z, 1)`` voxel indices (NIfTI ``i, j, k``) to world ``(X, Y, Z, 1)``.
    frame : {"RAS", "LPS"} or None
        Anatomical frame of the world coordinates; None when the scan has none.
    unit : str or None
        NGFF length unit of the world coordinates; None for voxel units.
    source : str
        Where the affine came from: ``"sform"``, ``"qform"``, ``"pixdim"``, ``"dicom"``,
        ``"voxel_size"`` or ``"ngff"``.
    assumed : iterable of str
        What was filled in by default: ``"unit"``, ``"origin"``, ``"voxel_size"``,
        ``"z_spacing"``, ``"frame"``.
    sform_code, qform_code : int or None
        The NIfTI codes of the source file (None when it was not a NIfTI).
    qform : (4, 4) array-like, optional
        The NIfTI qform when the file had one (``qform_code > 0``), kept so an export can
        write both back; same index convention and unit as ``affine``.

    Notes
    -----
    Build one with :meth:`from_voxel_size`, :meth:`from_nifti`, :meth:`from_dicom`,
    :meth:`from_ngff` or :meth:`from_json`. Derived transforms (:meth:`for_level`,
    :meth:`in_unit`, :meth:`to_ras`, ...) are new objects.
    """

    __slots__ = ("_affine", "_frame", "_unit", "_source", "_assumed", "_sform_code",
                 "_qform_code", "_qform")

    def __init__(
        self,
        affine: Any,
        *,
        frame: str | None = None,
        unit: str | None = None,
        source: str = "voxel_size",
        assumed: Iterable[str] = (),
        sform_code: int | None = None,
        qform_code: int | None = None,
        qform: Any = None,
    ) -> None:
        if frame not in (None, *FRAMES):
            raise ValueError(f"frame must be 'RAS', 'LPS' or None, got {frame!r}")
        if unit is not None and unit not in LENGTH_UNITS:
            raise ValueError(f"unit must be an NGFF length unit (e.g. 'millimeter') or None, "
                             f"got {unit!r}")
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
        assumed = frozenset(assumed)
        if not assumed <= set(_ASSUMED):
            raise ValueError(f"assumed may hold {_ASSUMED}, got {sorted(assumed)}")
        s = object.__setattr__
        s(self, "_affine", _check_affine(affine))
        s(self, "_frame", frame)
        s(self, "_unit", unit)
        s(self, "_source", source)
        s(self, "_assumed", assumed)
        s(self, "_sform_code", None if sform_code is None else int(sform_code))
        s(self, "_qform_code", None if qform_code is None else int(qform_code))
        s(self, "_qform", None if qform is None else _check_affine(qform, "qform"))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"WorldTransform is immutable (cannot set {name!r})")

    def __reduce__(self):
        return (_rebuild, (self.to_json(),))

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_voxel_size(
        cls,
        voxel_size: Sequence[float] | None,
        origin: Sequence[float] | None = None,
        *,
        unit: str | None = None,
        frame: str | None = None,
        source: str = "voxel_size",
        assumed: Iterable[str] = (),
    ) -> WorldTransform:
        """An axis-aligned grid: world = index x voxel size + origin.

        Parameters
        ----------
        voxel_size : 3 floats (z, y, x) or None
            None: unknown, 1 each (recorded in ``assumed``).
        origin : 3 floats (X, Y, Z), optional
            World position of voxel ``(0, 0, 0)``'s centre; 0 (assumed) when None.
        unit, frame, source, assumed
            As in :class:`WorldTransform`.

        Raises
        ------
        ValueError
            When the voxel size is not three positive finite numbers.
        """
        flags = set(assumed)
        if voxel_size is None:
            voxel_size = (1.0, 1.0, 1.0)
            flags.add("voxel_size")
        vs = [float(v) for v in voxel_size]
        if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
            raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {vs}")
        if origin is None:
            origin = (0.0, 0.0, 0.0)
            flags.add("origin")
        affine = np.diag([vs[2], vs[1], vs[0], 1.0])
        affine[:3, 3] = _frozen(origin, (3,), "origin")
        return cls(affine, frame=frame, unit=unit, source=source, assumed=flags)

    @classmethod
    def from_nifti(cls, header: Any) -> WorldTransform:
        """The transform a NIfTI-1/2 header defines, chosen by its codes.

        The sform when ``sform_code > 0``, else the qform when ``qform_code > 0``, else
        pixdim alone (NIfTI "method 1": ``diag(pixdim)``, origin 0 — what ITK reads; nibabel
        instead centres such an image). A coded affine that is unusable (singular, not
        finite) is skipped for the next one; ``source`` says which was used. Both codes are
        kept, and the qform too when present and usable.
        Units ``unknown`` are read as millimetre (what ITK, SimpleITK and nibabel users
        assume) and recorded in ``assumed``.

        Parameters
        ----------
        header : nibabel Nifti1Header / Nifti2Header
            Or anything with ``get_sform(coded=True)``, ``get_qform(coded=True)``,
            ``get_zooms()`` and ``get_xyzt_units()``.

        Raises
        ------
        ValueError
            When the chosen affine is singular or not finite, or the unit is not a length.
        """
        sform, scode = header.get_sform(coded=True)
        qform, qcode = header.get_qform(coded=True)
        scode, qcode = int(scode or 0), int(qcode or 0)
        space_unit = str(header.get_xyzt_units()[0])
        flags: set[str] = set()
        if space_unit in _NIFTI_UNITS:
            unit = _NIFTI_UNITS[space_unit]
        elif space_unit == "unknown":
            unit = "millimeter"
            flags.add("unit")
        else:
            raise ValueError(f"NIfTI spatial unit {space_unit!r} is not a length")
        kept_qform = _usable(qform) if qcode > 0 else None
        kept_sform = _usable(sform) if scode > 0 else None
        if kept_sform is not None:
            affine, source = kept_sform, "sform"
        elif kept_qform is not None:
            affine, source = kept_qform, "qform"
        else:
            zooms = [float(z) for z in header.get_zooms()[:3]] + [1.0] * 3
            zooms = [z if z > 0 and math.isfinite(z) else 1.0 for z in zooms[:3]]
            affine, source = np.diag([*zooms, 1.0]), "pixdim"
            flags.add("origin")
        return cls(affine, frame="RAS", unit=unit, source=source, assumed=flags,
                   sform_code=scode, qform_code=qcode, qform=kept_qform)

    @classmethod
    def from_dicom(
        cls,
        position: Sequence[float],
        orientation: Sequence[float],
        pixel_spacing: Sequence[float],
        slice_step: Sequence[float] | float,
        *,
        assumed: Iterable[str] = (),
    ) -> WorldTransform:
        """The LPS transform of a DICOM series (millimetre).

        Parameters
        ----------
        position : 3 floats
            ImagePositionPatient of the first slice (after sorting along the normal).
        orientation : 6 floats
            ImageOrientationPatient: the row direction (towards increasing column index,
            i.e. +x) then the column direction (towards increasing row index, +y).
        pixel_spacing : 2 floats
            PixelSpacing as DICOM stores it: (between rows, between columns) = (dy, dx).
        slice_step : 3 floats or float
            Vector from one slice's position to the next (handles gantry tilt), or a
            distance along the normal ``row x column``.

        Raises
        ------
        ValueError
            When the orientation is not two unit-ish, non-parallel vectors, a spacing is not
            positive, or the slice step is zero.
        """
        iop = np.asarray(orientation, float)
        if iop.shape != (6,):
            raise ValueError(f"ImageOrientationPatient must hold 6 numbers, got {iop.tolist()}")
        row, col = iop[:3], iop[3:]
        nr, nc = np.linalg.norm(row), np.linalg.norm(col)
        if nr < 1e-6 or nc < 1e-6:
            raise ValueError(f"ImageOrientationPatient has a zero vector: {iop.tolist()}")
        row, col = row / nr, col / nc
        normal = np.cross(row, col)
        if np.linalg.norm(normal) < 1e-6:
            raise ValueError(f"ImageOrientationPatient rows and columns are parallel: "
                             f"{iop.tolist()}")
        normal /= np.linalg.norm(normal)
        dy, dx = (float(v) for v in pixel_spacing)
        if not (dx > 0 and dy > 0):
            raise ValueError(f"PixelSpacing must be positive, got {[dy, dx]}")
        step = np.asarray(slice_step, float)
        step = normal * float(step) if step.ndim == 0 else step
        if step.shape != (3,) or np.linalg.norm(step) == 0:
            raise ValueError(f"slice step must be a non-zero distance or 3-vector, got {step}")
        affine = np.eye(4)
        affine[:3, 0] = row * dx
        affine[:3, 1] = col * dy
        affine[:3, 2] = step
        affine[:3, 3] = _frozen(position, (3,), "ImagePositionPatient")
        return cls(affine, frame="LPS", unit="millimeter", source="dicom", assumed=assumed)

    @classmethod
    def from_ngff(
        cls,
        scale: Sequence[float],
        translation: Sequence[float] | None = None,
        *,
        unit: str | None = None,
    ) -> WorldTransform:
        """An NGFF 0.4 ``scale`` (+ ``translation``) of the three ``(z, y, x)`` space axes."""
        origin = None if translation is None else [float(v) for v in translation][::-1]
        return cls.from_voxel_size(scale, origin, unit=unit, source="ngff")

    @classmethod
    def from_json(cls, data: dict) -> WorldTransform:
        """Rebuild from :meth:`to_json` output.

        Raises
        ------
        ValueError
            When ``data`` is not a transform ml4paleo wrote.
        """
        if not isinstance(data, dict) or "affine" not in data:
            raise ValueError("world transform JSON must be an object with an 'affine'")
        version = data.get("version", _JSON_VERSION)
        if version != _JSON_VERSION:
            raise ValueError(f"world transform JSON version {version} is not supported "
                             f"(this ml4paleo reads version {_JSON_VERSION})")
        return cls(
            data["affine"], frame=data.get("frame"), unit=data.get("unit"),
            source=data.get("source", "voxel_size"), assumed=data.get("assumed", ()),
            sform_code=data.get("sform_code"), qform_code=data.get("qform_code"),
            qform=data.get("qform"),
        )

    # -- what it holds ----------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """4x4 (read-only): ``(x, y, z, 1)`` index -> world ``(X, Y, Z, 1)``."""
        return self._affine

    @property
    def frame(self) -> str | None:
        return self._frame

    @property
    def unit(self) -> str | None:
        return self._unit

    @property
    def source(self) -> str:
        return self._source

    @property
    def assumed(self) -> frozenset[str]:
        return self._assumed

    @property
    def sform_code(self) -> int | None:
        return self._sform_code

    @property
    def qform_code(self) -> int | None:
        return self._qform_code

    @property
    def qform(self) -> np.ndarray | None:
        return self._qform

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """World length of one voxel step along ``(z, y, x)`` (the affine's column norms)."""
        n = np.linalg.norm(self._affine[:3, :3], axis=0)
        return (float(n[2]), float(n[1]), float(n[0]))

    @property
    def origin(self) -> tuple[float, float, float]:
        """World ``(X, Y, Z)`` of voxel ``(0, 0, 0)``'s centre."""
        return tuple(float(v) for v in self._affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit columns: world direction of ``x + 1``, ``y + 1``, ``z + 1`` (ITK order)."""
        m = self._affine[:3, :3]
        return m / np.linalg.norm(m, axis=0)

    @property
    def orientation(self) -> str | None:
        """Axis codes like ``"RAS"``, ``"LAS"``, ``"LPS"``: where x, y, z point to.

        The convention of ``nibabel.aff2axcodes`` (``"L"`` = increasing x goes to the
        patient's left), independent of the frame; None when there is no frame.
        """
        return None if self._frame is None else _axis_codes(self._affine, self._frame)

    @property
    def affine_zyx(self) -> np.ndarray:
        """4x4 mapping ``(z, y, x, 1)`` to world ``(Z, Y, X, 1)`` (napari / scipy order)."""
        p = np.eye(4)[[2, 1, 0, 3]]
        return p @ self._affine @ p

    def is_axis_aligned(self, tol: float = 1e-6) -> bool:
        """True when each index axis runs along the same-numbered world axis (any sign)."""
        d = self.direction
        return bool(np.all(np.abs(d - np.diag(np.diag(d))) <= tol))

    def ngff_is_exact(self, tol: float = 1e-6) -> bool:
        """True when NGFF 0.4 scale + translation express this transform exactly."""
        return self.is_axis_aligned(tol) and bool(np.all(np.diag(self.direction) > 0))

    # -- using it ---------------------------------------------------------------------------
    def apply(self, points_zyx: Any) -> np.ndarray:
        """World ``(X, Y, Z)`` of voxel positions given as ``(z, y, x)`` (fractional allowed).

        Parameters
        ----------
        points_zyx : (3,) or (N, 3) array-like

        Returns
        -------
        ndarray, float64, same leading shape as the input.
        """
        p = np.asarray(points_zyx, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ValueError(f"points must be (..., 3) in (z, y, x) order, got shape {p.shape}")
        return p[..., ::-1] @ self._affine[:3, :3].T + self._affine[:3, 3]

    def index_of(self, points_xyz: Any) -> np.ndarray:
        """Fractional voxel ``(z, y, x)`` of world points ``(X, Y, Z)`` (inverse of :meth:`apply`)."""
        p = np.asarray(points_xyz, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ValueError(f"points must be (..., 3) in (X, Y, Z) order, got shape {p.shape}")
        inv = np.linalg.inv(self._affine)
        return (p @ inv[:3, :3].T + inv[:3, 3])[..., ::-1]

    def _derive(self, *, left: np.ndarray | None = None, right: np.ndarray | None = None,
                **changes: Any) -> WorldTransform:
        """A new transform ``left @ A @ right`` (applied to the qform too)."""
        def tf(a):
            if a is None:
                return None
            out = a
            if left is not None:
                out = left @ out
            if right is not None:
                out = out @ right
            return out

        kw = dict(frame=self._frame, unit=self._unit, source=self._source,
                  assumed=self._assumed, sform_code=self._sform_code,
                  qform_code=self._qform_code, qform=tf(self._qform))
        kw.update(changes)
        return WorldTransform(tf(self._affine), **kw)

    def cropped(self, start_zyx: Sequence[float]) -> WorldTransform:
        """The transform of a sub-volume whose voxel ``(0, 0, 0)`` is ``start_zyx`` here.

        Examples
        --------
        >>> w = WorldTransform.from_voxel_size((2.0, 1.0, 0.5))
        >>> [float(v) for v in w.cropped((1, 2, 4)).origin]
        [2.0, 2.0, 2.0]
        """
        start = [float(v) for v in start_zyx]
        if len(start) != 3:
            raise ValueError(f"start_zyx needs 3 numbers (z, y, x), got {start}")
        shift = np.eye(4)
        shift[:3, 3] = start[::-1]
        return self._derive(right=shift)

    def for_level(self, level: int, downsample: str = "mean") -> WorldTransform:
        """The transform of pyramid level ``level`` (each level halves every axis).

        Parameters
        ----------
        level : int
            0 = full resolution.
        downsample : {"mean", "nearest"}
            ``"mean"``: a level-n voxel averages 2^n full-resolution voxels per axis, so its
            centre sits (2^n - 1) / 2 voxels in; ``"nearest"`` (every 2^n-th voxel, as label
            pyramids are made): no offset.
        """
        f = _level_factor(level, downsample)
        right = np.diag([f[0], f[0], f[0], 1.0])
        right[:3, 3] = f[1]
        return self._derive(right=right)

    def ngff_scale_translation(
        self, level: int = 0, downsample: str = "mean"
    ) -> tuple[list[float], list[float]]:
        """NGFF 0.4 ``scale`` and ``translation`` of pyramid ``level``, in (z, y, x) order.

        Exact when :meth:`ngff_is_exact`; otherwise the index-aligned approximation (the
        grid at the origin with its voxel sizes, direction dropped), which is all NGFF 0.4
        can hold — the full affine goes in the ``ml4paleo`` ``world`` attribute.

        Parameters
        ----------
        level, downsample
            As in :meth:`for_level`.
        """
        factor, offset = _level_factor(level, downsample)
        vs = self.voxel_size
        scale = [v * factor for v in vs]
        # inexact (flipped / rotated): voxel (0, 0, 0) stays where it is, axes along +z +y +x
        origin_zyx = list(self.origin)[::-1]
        translation = [o + offset * v for o, v in zip(origin_zyx, vs, strict=True)]
        return scale, translation

    def ngff_transformations(self, level: int = 0, downsample: str = "mean") -> list[dict]:
        """``coordinateTransformations`` of an NGFF 0.4 dataset: a scale then a translation."""
        scale, translation = self.ngff_scale_translation(level, downsample)
        return [{"type": "scale", "scale": scale},
                {"type": "translation", "translation": translation}]

    def with_voxel_size(self, voxel_size: Sequence[float], unit: str | None = None
                        ) -> WorldTransform:
        """Same direction and origin, columns rescaled to ``voxel_size`` (z, y, x).

        For a user's override of a scan's voxel size; the origin keeps its numbers.
        """
        vs = [float(v) for v in voxel_size]
        if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
            raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {vs}")
        cur = self.voxel_size
        right = np.diag([vs[2] / cur[2], vs[1] / cur[1], vs[0] / cur[0], 1.0])
        assumed = self._assumed - {"voxel_size", "z_spacing"}
        if unit is not None and unit != self._unit:
            assumed = assumed - {"unit"}
        return self._derive(right=right, unit=unit if unit is not None else self._unit,
                            assumed=assumed)

    def in_unit(self, unit: str) -> WorldTransform:
        """The same transform with world coordinates in ``unit``.

        Raises
        ------
        ValueError
            When this transform is in voxel units (``unit`` None) or ``unit`` is unknown.
        """
        if self._unit is None:
            raise ValueError(f"cannot express voxel units in {unit!r}: the voxel size is unknown")
        f = unit_factor(self._unit, unit)
        left = np.diag([f, f, f, 1.0])
        return self._derive(left=left, unit=unit)

    def _as_frame(self, frame: str) -> WorldTransform:
        if self._frame == frame:
            return self
        assumed = self._assumed | ({"frame"} if self._frame is None else set())
        if self._frame is None and frame == "RAS":
            return self._derive(frame="RAS", assumed=assumed)
        start = self if self._frame is not None else self._derive(frame="RAS", assumed=assumed)
        return start._derive(left=_FLIP_XY, frame=frame, assumed=assumed)

    def to_ras(self) -> WorldTransform:
        """In RAS (NIfTI); a frameless transform is taken as RAS (``"frame"`` assumed)."""
        return self._as_frame("RAS")

    def to_lps(self) -> WorldTransform:
        """In LPS (DICOM, ITK); a frameless transform is taken as RAS first."""
        return self._as_frame("LPS")

    def to_nifti(self, unit: str = "millimeter") -> dict:
        """What a NIfTI export writes: RAS affines in ``unit``, codes and ``xyzt_units``.

        Returns
        -------
        dict
            ``sform`` and ``qform`` (4x4 ndarrays in (i, j, k) = (x, y, z) index order),
            ``sform_code``, ``qform_code`` (the source's when it was a NIfTI, else 1 =
            scanner for DICOM and 2 = aligned otherwise), ``xyzt_units`` (``"mm"``,
            ``"micron"``, ``"meter"`` or ``"unknown"`` for voxel units). Use as
            ``hdr.set_sform(d["sform"], d["sform_code"])``,
            ``hdr.set_qform(d["qform"], d["qform_code"])``,
            ``hdr.set_xyzt_units(d["xyzt_units"])``.
        """
        ras = self.to_ras()
        if ras.unit is not None:
            if unit not in _NIFTI_UNIT_NAMES:
                raise ValueError(f"NIfTI stores metre, millimetre or micrometre, not {unit!r}")
            ras = ras.in_unit(unit)
            units = _NIFTI_UNIT_NAMES[unit]
        else:
            units = "unknown"
        if self._sform_code is not None or self._qform_code is not None:
            scode, qcode = self._sform_code or 0, self._qform_code or 0
            if scode == 0 and qcode == 0:  # pixdim only: write it as a coded affine
                scode = qcode = _XFORM_ALIGNED
        else:
            scode = qcode = _XFORM_SCANNER if self._source == "dicom" else _XFORM_ALIGNED
        qform = ras.qform if ras.qform is not None else ras.affine
        return {"sform": np.array(ras.affine), "qform": np.array(qform), "sform_code": scode,
                "qform_code": qcode, "xyzt_units": units}

    def to_sitk(self, unit: str = "millimeter") -> dict:
        """Origin, spacing and direction for a SimpleITK / ITK image (LPS, ``unit``).

        Returns
        -------
        dict
            ``origin`` and ``spacing`` (3 floats, x y z), ``direction`` (9 floats, row-major
            3x3 with unit columns). Use with ``img.SetOrigin``, ``SetSpacing``,
            ``SetDirection`` on ``sitk.GetImageFromArray(array_zyx)``.

        Raises
        ------
        ValueError
            When the grid is sheared (ITK directions are orthonormal).
        """
        lps = self.to_lps()
        if lps.unit is not None:
            lps = lps.in_unit(unit)
        d = lps.direction
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError("the voxel grid is sheared (e.g. gantry tilt); ITK cannot hold "
                             "a non-orthogonal direction")
        vs = lps.voxel_size
        return {"origin": lps.origin, "spacing": (vs[2], vs[1], vs[0]),
                "direction": tuple(float(v) for v in d.ravel())}

    def to_json(self) -> dict:
        """A JSON-able dict; :meth:`from_json` reads it back exactly.

        ``voxel_size``, ``origin`` and ``orientation`` are included for people reading the
        file; they are recomputed from ``affine`` on reading.
        """
        out: dict[str, Any] = {
            "version": _JSON_VERSION,
            "affine": self._affine.tolist(),
            "index_order": "xyz",
            "frame": self._frame,
            "unit": self._unit,
            "source": self._source,
            "assumed": sorted(self._assumed),
            "voxel_size": list(self.voxel_size),
            "origin": list(self.origin),
            "orientation": self.orientation,
        }
        if self._sform_code is not None:
            out["sform_code"] = self._sform_code
        if self._qform_code is not None:
            out["qform_code"] = self._qform_code
        if self._qform is not None:
            out["qform"] = self._qform.tolist()
        return out

    # -- comparison -------------------------------------------------------------------------
    def allclose(self, other: WorldTransform, atol: float = 1e-6) -> bool:
        """Same frame and unit, affines equal within ``atol`` (world units)."""
        return (self._frame == other.frame and self._unit == other.unit
                and bool(np.allclose(self._affine, other.affine, rtol=0, atol=atol)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorldTransform):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self._affine.tobytes(), self._frame, self._unit))

    def __repr__(self) -> str:
        vs = ", ".join(f"{v:.6g}" for v in self.voxel_size)
        org = ", ".join(f"{v:.6g}" for v in self.origin)
        extra = f" assumed={sorted(self._assumed)}" if self._assumed else ""
        return (f"<WorldTransform frame={self._frame} orientation={self.orientation} "
                f"voxel_size(zyx)=({vs}) origin(xyz)=({org}) unit={self._unit} "
                f"source={self._source}{extra}>")


def _level_factor(level: int, downsample: str) -> tuple[float, float]:
    """(voxel size factor, offset in full-resolution voxels) of pyramid level ``level``."""
    level = int(level)
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    if downsample not in ("mean", "nearest"):
        raise ValueError(f"downsample must be 'mean' or 'nearest', got {downsample!r}")
    f = float(2**level)
    return f, ((f - 1.0) / 2.0 if downsample == "mean" else 0.0)


def _rebuild(data: dict) -> WorldTransform:
    return WorldTransform.from_json(data)


#: anatomical letter -> its opposite
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
#: anatomical axis of a letter
_ANAT_AXIS = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}
#: view named by the anatomical axis of the plane's normal -> (screen up, screen right),
#: as 3D Slicer shows them (radiological: the patient's right on the screen's left)
_VIEWS = {"SI": ("axial", "A", "L"), "AP": ("coronal", "S", "L"), "LR": ("sagittal", "S", "P")}


def plane_orientation(orientation: str | None) -> dict[str, dict] | None:
    """How to show the three planes of an image with axis codes ``orientation`` (e.g.
    ``"RAS"``: where index x, y, z point) so they look as 3D Slicer shows them: axial with
    anterior up, coronal and sagittal with superior up, the patient's right on the left.

    A plane of normal ``z`` has rows along ``y`` and columns along ``x`` (for ``y``: rows
    ``z``, columns ``x``; for ``x``: rows ``z``, columns ``y``), drawn with row 0 at the
    top and column 0 on the left unless flipped.

    Parameters
    ----------
    orientation : str or None
        :attr:`WorldTransform.orientation`; None (no anatomical frame) gives None.

    Returns
    -------
    dict or None
        Per plane (``"z"``, ``"y"``, ``"x"``): ``view`` (``"axial"``, ``"coronal"``,
        ``"sagittal"``), ``rows`` / ``cols`` (where increasing row / column index points),
        ``flip_rows`` / ``flip_cols`` (flip them for the standard view), ``transpose``
        (the standard view has the columns vertical: an oblique storage order), and the
        letters at the ``top``, ``bottom``, ``left`` and ``right`` edges once flipped
        (rows stay vertical).

    Examples
    --------
    >>> p = plane_orientation("RAS")
    >>> p["y"]["view"], p["y"]["flip_rows"], p["y"]["flip_cols"], p["y"]["top"], p["y"]["left"]
    ('coronal', True, True, 'S', 'R')
    >>> plane_orientation(None) is None
    True
    """
    if not orientation or len(orientation) != 3 or any(c not in _OPPOSITE for c in orientation):
        return None
    code = {0: orientation[2], 1: orientation[1], 2: orientation[0]}  # array dim -> letter
    out = {}
    for axis, name in ((0, "z"), (1, "y"), (2, "x")):
        r, c = (d for d in range(3) if d != axis)
        view, up, right = _VIEWS[_ANAT_AXIS[code[axis]]]
        rows, cols = code[r], code[c]
        transpose = _ANAT_AXIS[rows] != _ANAT_AXIS[up]
        # increasing rows go down the screen: flip when they point up; columns go right
        flip_rows = rows == up if not transpose else False
        flip_cols = cols != right if not transpose else False
        top = rows if flip_rows else _OPPOSITE[rows]
        left = cols if flip_cols else _OPPOSITE[cols]
        out[name] = {"view": view, "rows": rows, "cols": cols, "flip_rows": flip_rows,
                     "flip_cols": flip_cols, "transpose": transpose, "top": top,
                     "bottom": _OPPOSITE[top], "left": left, "right": _OPPOSITE[left]}
    return out
