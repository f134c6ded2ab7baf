"""File formats ml4paleo writes: OME-Zarr images (NGFF 0.4, zarr format 2) and their metadata.

:mod:`~ml4paleo.formats.ngff` holds the NGFF metadata classes (multiscales, axes,
coordinate transformations, image-label) and refuses invalid metadata before anything is
written; :mod:`~ml4paleo.formats.omezarr` creates, opens and reads images;
:mod:`~ml4paleo.formats.pyramid` downsamples and builds the 2x pyramid through
:mod:`ml4paleo.blocks`; :mod:`~ml4paleo.formats.chunks` writes whole chunks directly.
"""

from __future__ import annotations

from .chunks import ChunkFiles
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
    open_image,
    pyramid_shapes,
    read_slice,
)
from .pyramid import build_pyramid, downsample2, pyramid_stages

__all__ = [
    "AXES",
    "NGFF_VERSION",
    "Axis",
    "ChunkFiles",
    "Dataset",
    "ImageLabel",
    "Multiscale",
    "NGFFError",
    "OmeImage",
    "build_pyramid",
    "chunk_shape",
    "create_image",
    "default_compressor",
    "downsample2",
    "image_label_metadata",
    "multiscales_metadata",
    "open_image",
    "pyramid_shapes",
    "pyramid_stages",
    "read_slice",
    "validate_attrs",
]
