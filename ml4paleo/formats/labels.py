"""NGFF label images: segmentations that viewers open with their image, names and colours.

A segmentation is an OME-Zarr *label image* (NGFF 0.4 "labels"): value ``k`` = class ``k``
(0 = background), an ``image-label`` attribute with a colour per value (the UI's class
colours, :func:`ml4paleo.classes.ngff_colors`) and properties naming each value's class
(:func:`ml4paleo.classes.ngff_properties`), nearest-downsampled pyramid levels, and the
image's world transform (so the label voxels sit on the image's voxels in every viewer).

It lives either

- **inside its image**, as ``<image>/labels/<name>/``, listed in ``<image>/labels/.zattrs``
  (``{"labels": [name, ...]}``) and pointing back with ``source: {"image": "../../"}``:
  ome-zarr-py, napari-ome-zarr and other NGFF readers open image and segmentation
  together (:func:`create_labels` does this whenever the path is ``<image>/labels/<name>``;
  :func:`add_labels` names it for you); or
- **standalone** anywhere else (the CLI's ``segment -o labels.ome.zarr``), with the same
  metadata; ``source`` then gives the image's path relative to the label image when the
  image is known.

Example
-------
>>> import tempfile
>>> from ml4paleo.formats import create_image
>>> d = tempfile.mkdtemp()
>>> img = create_image(d + "/scan.ome.zarr", (4, 8, 8), "uint16", chunks=8)
>>> lab = add_labels(img, "seg1", classes=["matrix", "bone"])
>>> label_names(img.path), [c["name"] for c in label_classes(lab)]
(['seg1'], ['matrix', 'bone'])
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo._fs import atomic_write_json
from ml4paleo.classes import (
    ClassError,
    class_list,
    ngff_colors,
    ngff_properties,
    validate_classes,
)
from ml4paleo.world import ZARR_WORLD_KEY, WorldTransform

from .ngff import Dataset, ImageLabel, Multiscale, NGFFError
from .omezarr import OmeImage, create_image, open_image, update_extra_attrs

log = logging.getLogger(__name__)

__all__ = [
    "LABELS_GROUP",
    "add_labels",
    "attach_labels",
    "create_labels",
    "find_label_image",
    "label_classes",
    "label_metadata",
    "label_names",
    "parent_image",
    "register_label",
    "set_label_classes",
    "unregister_label",
]

#: the group of an image that holds its label images (NGFF 0.4)
LABELS_GROUP = "labels"
#: where the image is, seen from a label image inside it
INSIDE_SOURCE = "../../"


def label_metadata(classes: Sequence[dict | str] | None, *, n_classes: int = 0,
                   source: str | None = None) -> ImageLabel:
    """The ``image-label`` of a segmentation with these classes (value ``k`` = class ``k``).

    Parameters
    ----------
    classes : list of dict or str, optional
        ``{"name", "color"}`` (or names), class 0 first; missing ones get
        :func:`ml4paleo.classes.class_list` defaults.
    n_classes : int
        At least this many classes.
    source : str, optional
        Relative path of the image (``"../../"`` inside it).

    Raises
    ------
    ml4paleo.classes.ClassError
        Bad class names or colours.
    """
    cls = class_list(classes, n_classes)
    return ImageLabel(tuple(ngff_colors(cls)), tuple(ngff_properties(cls)),
                      None if source is None else {"image": source}).validate()


def parent_image(path: str | os.PathLike) -> Path | None:
    """The image a label image at ``path`` sits inside (``<image>/labels/<name>``), else None."""
    path = Path(path)
    group = path.parent
    image = group.parent
    if group.name != LABELS_GROUP or not path.name:
        return None
    if (image / ".zattrs").is_file():
        try:
            attrs = json.loads((image / ".zattrs").read_text())
        except (OSError, ValueError):
            return None
        if isinstance(attrs, dict) and "multiscales" in attrs:
            return image
    return None


def _image_of(image: Any) -> OmeImage | None:
    if image is None or isinstance(image, OmeImage):
        return image
    return open_image(image)


def create_labels(
    path: str | os.PathLike,
    shape: Sequence[int] | None = None,
    dtype: Any = np.uint8,
    *,
    classes: Sequence[dict | str] | None = None,
    world: WorldTransform | None = None,
    image: OmeImage | str | os.PathLike | None = None,
    chunks: int | Sequence[int] = 128,
    pyramid: bool = True,
    name: str | None = None,
    extra_attrs: dict | None = None,
    register: bool = True,
    overwrite: bool = True,
) -> OmeImage:
    """Create an empty NGFF label image (all levels allocated, zeros).

    Parameters
    ----------
    path : path
        Where to write. ``<image>/labels/<name>`` makes it a label of that image (listed
        in the image's ``labels`` group, ``source`` ``"../../"``); anywhere else a
        standalone label image.
    shape : 3 ints, optional
        ``(z, y, x)``; default the image's.
    dtype : dtype
        Label type (uint8 up to 255 classes).
    classes : list of dict or str, optional
        Class names and colours, class 0 (background) first; written as ``colors`` and
        ``properties`` (and ``classes`` in the ``ml4paleo`` attribute).
    world : WorldTransform, optional
        Default: the image's (level 0), else voxel units.
    image : OmeImage or path, optional
        The image these labels belong to (found from ``path`` when it is inside one).
        Its shape must match; a standalone label image records its relative path as
        ``source``.
    chunks, pyramid, overwrite
        As for :func:`~ml4paleo.formats.create_image` (levels are nearest-downsampled).
    name : str, optional
        Multiscale name (default: the folder's name without ``.ome.zarr``).
    extra_attrs : dict, optional
        More entries of the ``ml4paleo`` attribute.
    register : bool
        List it in the image's ``labels/.zattrs`` now (False: call
        :func:`register_label` once its data are written, so readers never list a
        half-written segmentation).

    Returns
    -------
    OmeImage

    Raises
    ------
    ValueError
        Shape differs from the image's, bad classes, bad metadata; nothing is written.
    """
    path = Path(path)
    inside = parent_image(path)
    img = _image_of(image if image is not None else inside)
    if shape is None:
        if img is None:
            raise ValueError(f"{path}: give the label image's shape or the image it labels")
        shape = img.shape
    shape = tuple(int(s) for s in shape)
    if img is not None and tuple(img.shape) != shape:
        raise ValueError(f"{path}: labels of shape {shape} do not fit image {img.path} of "
                         f"shape {tuple(img.shape)}")
    if world is None and img is not None:
        world = img.world
    if inside is not None and img is not None and Path(img.path).resolve() == inside.resolve():
        source: str | None = INSIDE_SOURCE
    elif img is not None:
        source = Path(os.path.relpath(Path(img.path).resolve(), path.resolve())).as_posix() + "/"
    else:
        source = None
    extra = dict(extra_attrs or {})
    try:
        if classes is not None:
            cls = class_list(classes, 0)
            meta = label_metadata(cls, source=source)
            extra["classes"] = cls
        else:  # names unknown (yet): set_label_classes() adds them
            meta = ImageLabel(source=None if source is None else {"image": source}).validate()
    except ClassError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    label_name = name or path.name.removesuffix(".ome.zarr").removesuffix(".zarr") or "labels"
    out = create_image(path, shape, dtype, chunks=chunks, name=label_name, pyramid=pyramid,
                       label=True, label_metadata=meta, world=world, extra_attrs=extra,
                       overwrite=overwrite)
    if register and inside is not None:
        register_label(inside, path.name)
    return out


def add_labels(image: OmeImage | str | os.PathLike, name: str, dtype: Any = np.uint8, *,
               classes: Sequence[dict | str] | None = None, **kwargs: Any) -> OmeImage:
    """Create label image ``name`` inside ``image`` (``<image>/labels/<name>``, listed).

    ``kwargs`` as for :func:`create_labels`.
    """
    img = _image_of(image)
    if not name or "/" in name or name.startswith(".") or name in (".", ".."):
        raise ValueError(f"invalid label image name {name!r}")
    return create_labels(Path(img.path) / LABELS_GROUP / name, img.shape, dtype,
                         classes=classes, image=img, **kwargs)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock of the folder itself: no extra file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _labels_group(image: Path) -> Path:
    group = Path(image) / LABELS_GROUP
    group.mkdir(exist_ok=True)
    if not (group / ".zgroup").is_file():
        atomic_write_json(group / ".zgroup", {"zarr_format": 2})
    return group


def _read_attrs(group: Path) -> dict:
    try:
        attrs = json.loads((group / ".zattrs").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{group / '.zattrs'}: unreadable ({exc})") from exc
    return attrs if isinstance(attrs, dict) else {}


def label_names(image: OmeImage | str | os.PathLike) -> list[str]:
    """The label images listed in an image's ``labels`` group (``[]`` when none)."""
    path = Path(image.path if isinstance(image, OmeImage) else image)
    names = _read_attrs(path / LABELS_GROUP).get("labels") or []
    return [str(n) for n in names if isinstance(n, str)]


def register_label(image: OmeImage | str | os.PathLike, name: str) -> list[str]:
    """List ``name`` in the image's ``labels/.zattrs`` (idempotent, atomic, locked).

    Returns
    -------
    list of str
        The names listed now.
    """
    path = Path(image.path if isinstance(image, OmeImage) else image)
    group = _labels_group(path)
    with _locked(group):
        attrs = _read_attrs(group)
        names = [n for n in (attrs.get("labels") or []) if isinstance(n, str)]
        if name not in names:
            names.append(name)
            attrs["labels"] = names
            atomic_write_json(group / ".zattrs", attrs)
    return names


def unregister_label(image: OmeImage | str | os.PathLike, name: str) -> list[str]:
    """Drop ``name`` from the image's ``labels/.zattrs`` (its data are left alone)."""
    path = Path(image.path if isinstance(image, OmeImage) else image)
    group = path / LABELS_GROUP
    if not group.is_dir():
        return []
    with _locked(group):
        attrs = _read_attrs(group)
        names = [n for n in (attrs.get("labels") or []) if isinstance(n, str) and n != name]
        attrs["labels"] = names
        atomic_write_json(group / ".zattrs", attrs)
    return names


def find_label_image(image: OmeImage | str | os.PathLike, name: str) -> Path | None:
    """``<image>/labels/<name>`` when it exists and is listed, else None."""
    path = Path(image.path if isinstance(image, OmeImage) else image)
    if name in label_names(path) and (path / LABELS_GROUP / name / ".zattrs").is_file():
        return path / LABELS_GROUP / name
    return None


def label_classes(labels: OmeImage | str | os.PathLike | dict) -> list[dict] | None:
    """Class names and colours of a label image, class 0 first; None when it has none.

    Read from the ``image-label`` properties (``class`` / ``name``) and colours, else
    from the ``classes`` or ``model_classes`` ml4paleo wrote with older versions.

    Parameters
    ----------
    labels : OmeImage, path or attributes dict
    """
    if isinstance(labels, dict):
        attrs = labels
    else:
        attrs = labels.attrs if isinstance(labels, OmeImage) else open_image(labels).attrs
    extra = attrs.get("ml4paleo") if isinstance(attrs.get("ml4paleo"), dict) else {}
    for key in ("classes", "model_classes"):
        raw = extra.get(key)
        if raw:
            try:
                return validate_classes(raw)
            except ClassError:
                log.warning("label image classes unreadable in ml4paleo.%s; trying image-label",
                            key)
    il = attrs.get("image-label")
    if not isinstance(il, dict):
        return None
    props = {p.get("label-value"): p for p in il.get("properties") or []
             if isinstance(p, dict) and isinstance(p.get("label-value"), int)}
    colors = {c.get("label-value"): c.get("rgba") for c in il.get("colors") or []
              if isinstance(c, dict) and isinstance(c.get("label-value"), int)}
    if not props:
        return None
    out = []
    for k in range(max(props) + 1):
        p = props.get(k, {})
        name = p.get("class") or p.get("name") or ("background" if k == 0 else f"class {k}")
        rgba = colors.get(k)
        color = p.get("color")
        if not color and isinstance(rgba, list | tuple) and len(rgba) >= 3:
            color = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgba[:3]))
        out.append({"name": str(name), "color": color})
    try:
        return validate_classes(out)
    except ClassError:
        return class_list([{"name": f"class {k}"} for k in range(len(out))])


def attach_labels(
    labels: OmeImage | str | os.PathLike,
    *,
    classes: Sequence[dict | str] | None = None,
    image: OmeImage | str | os.PathLike | None = None,
    world: WorldTransform | None = None,
    register: bool = True,
) -> OmeImage:
    """Make a written label image a full NGFF label of ``image`` (metadata only; idempotent).

    For label images written by code that knows nothing of worlds and classes (older
    ml4paleo, other tools): the image's world becomes the labels' (NGFF scale and
    translation per level by the nearest rule, and ``attrs["ml4paleo"]["world"]``), the
    classes their ``colors`` and ``properties``, ``source`` points to the image, and a
    label image inside its image (``<image>/labels/<name>``) is listed there.

    Parameters
    ----------
    labels : OmeImage or path
        An existing label image (opened for writing).
    classes : list, optional
        Class names and colours (default: what it holds already).
    image : OmeImage or path, optional
        The image it labels (default: the one it sits inside, if any).
    world : WorldTransform, optional
        The scan's world when it is no OME-Zarr image (a NIfTI, a DICOM series...);
        default the image's, else what the labels hold.
    register : bool
        List it in the image's ``labels`` group when it sits inside it.

    Raises
    ------
    ValueError
        When the shapes differ or the metadata would be invalid (nothing is changed then).
    """
    lab = labels if isinstance(labels, OmeImage) else open_image(labels, mode="r+")
    path = Path(lab.path)
    inside = parent_image(path)
    img = _image_of(image if image is not None else inside)
    attrs = dict(lab.group.attrs)
    if img is not None and tuple(img.shape) != tuple(lab.shape):
        raise ValueError(f"{path}: labels of shape {tuple(lab.shape)} do not fit image "
                         f"{img.path} of shape {tuple(img.shape)}")
    if world is None:
        world = img.world if img is not None else lab.world
    if inside is not None and img is not None and Path(img.path).resolve() == inside.resolve():
        source: str | None = INSIDE_SOURCE
    elif img is not None:
        source = Path(os.path.relpath(Path(img.path).resolve(), path.resolve())).as_posix() + "/"
    else:
        il = attrs.get("image-label") if isinstance(attrs.get("image-label"), dict) else {}
        source = (il.get("source") or {}).get("image")
    if classes is None:
        classes = label_classes(attrs)
    try:
        cls = class_list(classes, 0) if classes is not None else None
        meta = (label_metadata(cls, source=source) if cls is not None else
                ImageLabel(source=None if source is None else {"image": source}).validate())
        ms = (attrs.get("multiscales") or [{}])[0]
        n_levels = len(ms.get("datasets") or lab.levels)
        multiscale = Multiscale.pyramid(n_levels, name=ms.get("name") or path.name,
                                        downscale="nearest", world=world)
        paths = [d["path"] for d in ms.get("datasets", [])] or list(lab.levels)
        multiscale = Multiscale(multiscale.axes, tuple(
            Dataset(p, d.scale, d.translation) for p, d in zip(paths, multiscale.datasets,
                                                               strict=True)),
            multiscale.name, multiscale.type).validate()
    except (ClassError, NGFFError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    extra = dict(attrs.get("ml4paleo") or {})
    extra[ZARR_WORLD_KEY] = world.to_json()
    if cls is not None:
        extra["classes"] = cls
    new = {**attrs, "multiscales": [multiscale.to_dict()], "image-label": meta.to_dict(),
           "ml4paleo": extra}
    lab.group.attrs.update(new)
    lab.attrs.clear()
    lab.attrs.update(new)
    if register and inside is not None:
        register_label(inside, path.name)
    return lab


def set_label_classes(labels: OmeImage | str | os.PathLike,
                      classes: Sequence[dict | str] | None) -> OmeImage:
    """(Re)write the class metadata of an existing label image (``colors``, ``properties``).

    For label images written without it (older ml4paleo, other tools); the ``source`` is
    kept (``"../../"`` set when the image sits inside its image).

    Raises
    ------
    ValueError
        Bad classes, or not a label image.
    """
    img = labels if isinstance(labels, OmeImage) else open_image(labels, mode="r+")
    il = img.attrs.get("image-label")
    source = (il or {}).get("source", {}).get("image") if isinstance(il, dict) else None
    if source is None and parent_image(img.path) is not None:
        source = INSIDE_SOURCE
    try:
        cls = class_list(classes, 0)
        meta = label_metadata(cls, source=source).to_dict()
    except (ClassError, NGFFError) as exc:
        raise ValueError(f"{img.path}: {exc}") from exc
    img.group.attrs["image-label"] = meta
    img.attrs["image-label"] = meta
    update_extra_attrs(img, classes=cls)
    return img
