"""File formats ml4paleo writes: OME-Zarr images (NGFF 0.4, zarr format 2) and their metadata.

:mod:`~ml4paleo.formats.ngff` holds the NGFF metadata classes (multiscales, axes,
coordinate transformations, image-label) and refuses invalid metadata before anything is
written; :mod:`~ml4paleo.formats.omezarr` creates, opens and reads images;
:mod:`~ml4paleo.formats.pyramid` downsamples and builds the 2x pyramid through
:mod:`ml4paleo.blocks`; :mod:`~ml4paleo.formats.chunks` writes whole chunks directly; :mod:`~ml4paleo.formats.labels`
writes segmentations as NGFF label images (inside their image or standalone).
"""

from __future__ import annotations

from .chunks import ChunkFiles
from .labels import (
    LABELS_GROUP,
    add_labels,
    attach_labels,
    create_labels,
    find_label_image,
    label_classes,
    label_metadata,
    label_names,
    parent_image,
    register_label,
    set_label_classes,
    unregister_label,
)
from .ngff import (
    AXES,
    NGFF_VERSION,
    Axis,
    Dataset,
    ImageLabel,
    Multiscale,
    NGFFError,
    image_label_metadata,
    multiscales_metadata,
    validate_attrs,
)
from .omezarr import (
    OmeImage,
    chunk_shape,
    create_image,
    default_compressor,
    downsample_rule,
    image_world,
    open_image,
    pyramid_shapes,
    read_slice,
    update_extra_attrs,
)
from .pyramid import build_pyramid, downsample2, pyramid_stages

__all__ = [
    "AXES",
    "LABELS_GROUP",
    "NGFF_VERSION",
    "Axis",
    "ChunkFiles",
    "Dataset",
    "ImageLabel",
    "Multiscale",
    "NGFFError",
    "OmeImage",
    "add_labels",
    "attach_labels",
    "build_pyramid",
    "chunk_shape",
    "create_labels",
    "create_image",
    "default_compressor",
    "downsample2",
    "downsample_rule",
    "find_label_image",
    "image_label_metadata",
    "image_world",
    "label_classes",
    "label_metadata",
    "label_names",
    "multiscales_metadata",
    "open_image",
    "parent_image",
    "pyramid_shapes",
    "pyramid_stages",
    "read_slice",
    "register_label",
    "set_label_classes",
    "unregister_label",
    "update_extra_attrs",
    "validate_attrs",
]
