"""OME-NGFF 0.4 metadata as classes, checked before anything is written.

:class:`Multiscale` (with its :class:`Axis` list and :class:`Dataset` levels and their
coordinate transformations) and :class:`ImageLabel` build the ``multiscales`` and
``image-label`` attributes of an OME-Zarr group. :meth:`Multiscale.validate` and
:meth:`ImageLabel.validate` refuse metadata that breaks a MUST of the specification
(https://ngff.openmicroscopy.org/0.4/) with an :class:`NGFFError` naming the field, so
no viewer ever meets a malformed image written by ml4paleo.

Example
-------
>>> ms = Multiscale.pyramid(2, voxel_size=(2.0, 1.0, 1.0), unit="micrometer")
>>> ms.datasets[1].scale
(4.0, 2.0, 2.0)
>>> Multiscale.pyramid(1, voxel_size=(1.0, 0.0, 1.0))
Traceback (most recent call last):
...
ml4paleo.formats.ngff.NGFFError: multiscales[0].datasets[0]: scale values must be positive finite numbers, got [1.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml4paleo.world import WorldTransform

__all__ = [
    "AXES",
    "AXIS_TYPES",
    "NGFF_VERSION",
    "SPACE_UNITS",
    "TIME_UNITS",
    "Axis",
    "Dataset",
    "ImageLabel",
    "Multiscale",
    "NGFFError",
    "image_label_metadata",
    "multiscales_metadata",
    "validate_attrs",
]

NGFF_VERSION = "0.4"
#: ml4paleo's axes: every volume is (z, y, x)
AXES = ("z", "y", "x")
AXIS_TYPES = ("space", "time", "channel")
#: units the specification lists for space axes (UDUNITS-2 names)
SPACE_UNITS = frozenset({
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot",
    "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile",
    "millimeter", "nanometer", "parsec", "petameter", "picometer", "terameter", "yard",
    "yoctometer", "yottameter", "zeptometer", "zettameter",
})
TIME_UNITS = frozenset({
    "attosecond", "centisecond", "day", "decisecond", "exasecond", "femtosecond", "gigasecond",
    "hectosecond", "hour", "kilosecond", "megasecond", "microsecond", "millisecond", "minute",
    "nanosecond", "petasecond", "picosecond", "second", "terasecond", "yoctosecond",
    "yottasecond", "zeptosecond", "zettasecond",
})


class NGFFError(ValueError):
    """Metadata that is not valid OME-NGFF 0.4: the message names the field."""


def _numbers(values: Any, where: str, what: str, positive: bool = False) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise NGFFError(f"{where}: {what} values must be {kind}, got {_show(values)}")
    return out


def _show(values: Any) -> Any:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return values


@dataclass(frozen=True)
class Axis:
    """One axis: ``name``, ``type`` (space, time, channel or custom) and optional ``unit``."""

    name: str
    type: str | None = "space"
    unit: str | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.type is not None:
            out["type"] = self.type
        if self.unit:
            out["unit"] = self.unit
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "axis") -> Axis:
        if isinstance(data, str):  # NGFF 0.3 wrote bare names
            return cls(data, None, None)
        if not isinstance(data, Mapping) or "name" not in data:
            raise NGFFError(f"{where}: an axis must be an object with a 'name', got {data!r}")
        return cls(data["name"], data.get("type"), data.get("unit"))


@dataclass(frozen=True)
class Dataset:
    """One resolution level: the array's ``path`` and its ``scale`` (and ``translation``)."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        transforms: list[dict] = [{"type": "scale", "scale": list(self.scale)}]
        if self.translation is not None:
            transforms.append({"type": "translation", "translation": list(self.translation)})
        return {"path": self.path, "coordinateTransformations": transforms}

    @classmethod
    def from_dict(cls, data: Any, where: str = "dataset") -> Dataset:
        if not isinstance(data, Mapping) or not isinstance(data.get("path"), str):
            raise NGFFError(f"{where}: a dataset must be an object with a string 'path'")
        transforms = data.get("coordinateTransformations")
        if not isinstance(transforms, Sequence) or isinstance(transforms, str):
            raise NGFFError(f"{where}: 'coordinateTransformations' must be a list")
        types = [t.get("type") if isinstance(t, Mapping) else None for t in transforms]
        if types not in (["scale"], ["scale", "translation"]):
            raise NGFFError(f"{where}: coordinateTransformations must be one 'scale', optionally "
                            f"followed by one 'translation', got {types}")
        scale = transforms[0].get("scale")
        if not isinstance(scale, Sequence):
            raise NGFFError(f"{where}: the scale transformation needs a 'scale' list")
        translation = None
        if len(transforms) == 2:
            translation = transforms[1].get("translation")
            if not isinstance(translation, Sequence):
                raise NGFFError(f"{where}: the translation needs a 'translation' list")
            translation = tuple(translation)
        return cls(data["path"], tuple(scale), translation)


@dataclass(frozen=True)
class Multiscale:
    """One ``multiscales`` entry: axes, levels (highest resolution first) and how they were made.

    Attributes
    ----------
    axes : tuple of Axis
    datasets : tuple of Dataset
    name : str, optional
    type : str, optional
        Downscaling method (``"mean"``, ``"nearest"``, ...).
    version : str
    metadata : dict, optional
    """

    axes: tuple[Axis, ...]
    datasets: tuple[Dataset, ...]
    name: str | None = None
    type: str | None = None
    version: str = NGFF_VERSION
    metadata: dict | None = field(default=None, compare=False)

    @classmethod
    def pyramid(cls, levels: int, voxel_size: Sequence[float] | None = None,
                unit: str | None = None, name: str = "image", downscale: str = "mean",
                *, world: WorldTransform | None = None) -> Multiscale:
        """A validated 2x-per-level (z, y, x) pyramid with paths ``"0"``, ``"1"``, ...

        Parameters
        ----------
        levels : int
        voxel_size : 3 floats (z, y, x), optional
            Full-resolution voxel size, when no ``world`` is given (scale only, no
            translation: the grid at the origin without level offsets).
        unit : str, optional
            Axis unit; default the world's.
        name : str
        downscale : str
            How levels were made: ``"mean"`` (2x2x2 averages) or ``"nearest"`` (every
            second voxel, label images); it fixes each level's translation.
        world : WorldTransform, optional
            Where the voxels are: every level gets the world's scale and translation
            (:meth:`~ml4paleo.world.WorldTransform.ngff_scale_translation`; mean levels
            sit half a coarser voxel in, nearest levels on the voxel they copy). NGFF 0.4
            holds no rotation or flip: a world that is not axis-aligned with positive
            steps is written as its index-aligned approximation (the full affine goes in
            the ``ml4paleo`` ``world`` attribute).

        Raises
        ------
        NGFFError
            When ``levels`` < 1 or the voxel size is not three positive numbers.
        """
        if int(levels) < 1:
            raise NGFFError(f"multiscales[0]: a pyramid needs at least one level, got {levels}")
        if world is not None:
            rule = "nearest" if downscale == "nearest" else "mean"
            unit = unit or world.unit
            datasets = tuple(Dataset(str(i), *(tuple(v) for v in world.ngff_scale_translation(
                i, rule))) for i in range(int(levels)))
        else:
            vs = tuple(voxel_size) if voxel_size is not None else (1.0, 1.0, 1.0)
            datasets = tuple(Dataset(str(i), tuple(float(v) * 2**i for v in vs))
                             for i in range(int(levels)))
        axes = tuple(Axis(a, "space", unit or None) for a in AXES)
        return cls(axes, datasets, name, downscale).validate()

    def validate(self, where: str = "multiscales[0]") -> Multiscale:
        """Check the MUSTs of NGFF 0.4; return ``self``.

        Raises
        ------
        NGFFError
            Naming the first offending field.
        """
        if self.version != NGFF_VERSION:
            raise NGFFError(f"{where}: version must be {NGFF_VERSION!r}, got {self.version!r}")
        n = len(self.axes)
        if not 2 <= n <= 5:
            raise NGFFError(f"{where}: 2 to 5 axes are allowed, got {n}")
        names = [a.name for a in self.axes]
        if not all(isinstance(a, str) and a for a in names) or len(set(names)) != n:
            raise NGFFError(f"{where}: axis names must be unique non-empty strings, got {names}")
        kinds = [a.type for a in self.axes]
        space = kinds.count("space")
        if space not in (2, 3):
            raise NGFFError(f"{where}: 2 or 3 space axes are required, got {space} ({names})")
        if kinds.count("time") > 1 or sum(k not in ("space", "time") for k in kinds) > 1:
            raise NGFFError(f"{where}: at most one time and one channel (or custom) axis, "
                            f"got types {kinds}")
        rank = [0 if k == "time" else 2 if k == "space" else 1 for k in kinds]
        if rank != sorted(rank):
            raise NGFFError(f"{where}: axes must be ordered time, channel, space; got {names}")
        for a in self.axes:
            if a.unit is not None and not isinstance(a.unit, str):
                raise NGFFError(f"{where}: unit of axis {a.name!r} must be a string")
        if not self.datasets:
            raise NGFFError(f"{where}: at least one dataset (resolution level) is required")
        paths = [d.path for d in self.datasets]
        if len(set(paths)) != len(paths) or not all(p for p in paths):
            raise NGFFError(f"{where}: dataset paths must be unique and non-empty, got {paths}")
        for i, d in enumerate(self.datasets):
            here = f"{where}.datasets[{i}]"
            if len(d.scale) != n:
                raise NGFFError(f"{here}: scale has {len(d.scale)} values for {n} axes")
            _numbers(d.scale, here, "scale", positive=True)
            if d.translation is not None:
                if len(d.translation) != n:
                    raise NGFFError(f"{here}: translation has {len(d.translation)} values for "
                                    f"{n} axes")
                _numbers(d.translation, here, "translation")
        return self

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"version": self.version}
        if self.name is not None:
            out["name"] = self.name
        out["axes"] = [a.to_dict() for a in self.axes]
        out["datasets"] = [d.to_dict() for d in self.datasets]
        if self.type is not None:
            out["type"] = self.type
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "multiscales[0]") -> Multiscale:
        """Parse (and validate) one ``multiscales`` entry."""
        if not isinstance(data, Mapping):
            raise NGFFError(f"{where}: must be an object")
        axes = data.get("axes")
        datasets = data.get("datasets")
        if not isinstance(axes, Sequence) or isinstance(axes, str):
            raise NGFFError(f"{where}: 'axes' must be a list")
        if not isinstance(datasets, Sequence) or isinstance(datasets, str):
            raise NGFFError(f"{where}: 'datasets' must be a list")
        return cls(
            tuple(Axis.from_dict(a, f"{where}.axes[{i}]") for i, a in enumerate(axes)),
            tuple(Dataset.from_dict(d, f"{where}.datasets[{i}]") for i, d in enumerate(datasets)),
            data.get("name"), data.get("type"), data.get("version", ""), data.get("metadata"),
        ).validate(where)


@dataclass(frozen=True)
class ImageLabel:
    """The ``image-label`` attribute of a label image.

    Attributes
    ----------
    colors : tuple of dict
        ``{"label-value": int, "rgba": [r, g, b, a]}`` (0..255 each), unique label values.
    properties : tuple of dict
        ``{"label-value": int, ...}``: free-form properties per value.
    source : dict, optional
        ``{"image": "../../"}``: the image this labels.
    version : str
    """

    colors: tuple[dict, ...] = ()
    properties: tuple[dict, ...] = ()
    source: dict | None = None
    version: str = NGFF_VERSION

    def validate(self, where: str = "image-label") -> ImageLabel:
        """Check the MUSTs of NGFF 0.4; return ``self``.

        Raises
        ------
        NGFFError
        """
        if self.version != NGFF_VERSION:
            raise NGFFError(f"{where}: version must be {NGFF_VERSION!r}, got {self.version!r}")
        for key, entries in (("colors", self.colors), ("properties", self.properties)):
            seen = set()
            for i, entry in enumerate(entries):
                here = f"{where}.{key}[{i}]"
                value = entry.get("label-value") if isinstance(entry, Mapping) else None
                if not isinstance(value, int) or isinstance(value, bool):
                    raise NGFFError(f"{here}: 'label-value' must be an integer, got {value!r}")
                if value in seen:
                    raise NGFFError(f"{here}: label-value {value} appears twice")
                seen.add(value)
                if key == "colors":
                    rgba = entry.get("rgba")
                    if (not isinstance(rgba, Sequence) or len(rgba) != 4
                            or not all(isinstance(c, int) and not isinstance(c, bool)
                                       and 0 <= c <= 255 for c in rgba)):
                        raise NGFFError(f"{here}: 'rgba' must be four integers 0..255, got "
                                        f"{rgba!r}")
        if self.source is not None and not (isinstance(self.source, Mapping)
                                            and isinstance(self.source.get("image", ""), str)):
            raise NGFFError(f"{where}: 'source' must be an object with a string 'image'")
        return self

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"version": self.version}
        if self.colors:
            out["colors"] = [dict(c) for c in self.colors]
        if self.properties:
            out["properties"] = [dict(p) for p in self.properties]
        if self.source is not None:
            out["source"] = dict(self.source)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "image-label") -> ImageLabel:
        if not isinstance(data, Mapping):
            raise NGFFError(f"{where}: must be an object")
        return cls(tuple(data.get("colors") or ()), tuple(data.get("properties") or ()),
                   data.get("source"), data.get("version", "")).validate(where)


def multiscales_metadata(levels: int, voxel_size: Sequence[float], unit: str | None,
                         name: str = "image", downscale: str = "mean") -> dict:
    """NGFF 0.4 ``multiscales`` attribute for a 2x-per-level (z, y, x) pyramid.

    Raises
    ------
    NGFFError
        When the metadata would be invalid (no level, non-positive voxel size).
    """
    return {"multiscales": [Multiscale.pyramid(levels, voxel_size, unit, name, downscale).to_dict()]}


def image_label_metadata(colors: Sequence[dict] = (), properties: Sequence[dict] = (),
                         source: dict | None = None) -> dict:
    """A validated ``image-label`` attribute (see :class:`ImageLabel`)."""
    return ImageLabel(tuple(colors), tuple(properties), source).validate().to_dict()


def validate_attrs(attrs: Mapping[str, Any]) -> None:
    """Check the NGFF parts of a group's attributes (``multiscales``, ``image-label``).

    Raises
    ------
    NGFFError
        Naming the offending field.
    """
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        if not isinstance(ms, Sequence) or isinstance(ms, str) or not ms:
            raise NGFFError("multiscales: must be a non-empty list")
        for i, entry in enumerate(ms):
            Multiscale.from_dict(entry, f"multiscales[{i}]")
    if "image-label" in attrs:
        ImageLabel.from_dict(attrs["image-label"])
