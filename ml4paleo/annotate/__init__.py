"""The annotation studio's library side: masks in, overlays out, one job's annotate loop.

Everything the web annotator needs that is not HTTP. Label convention
(:mod:`ml4paleo.classes`): in a label mask ``0`` = unlabelled and ``k + 1`` = class ``k``
(class 0 = background); predictions are class indices ``k``.

Modules: :mod:`.codecs` (base64 / data URL / PNG / RLE / raw masks, polygons),
:mod:`.overlays` (display windows, class / label / uncertainty overlays, PNGs, thumbnails),
:mod:`.legacy` (the original API's filmstrip cut-outs), :mod:`.planes` (axes, indices,
plane shapes), :mod:`.session` (:class:`JobAnnotator`: submit -> write -> record -> retrain
-> preview), :mod:`.pool` (:class:`SessionPool`, the per-job LRU), :mod:`.errors`.

Examples
--------
>>> import numpy as np
>>> labels = np.array([[0, 1], [2, 2]], dtype=np.uint8)
>>> decode_label_mask(encode_rle(labels), (2, 2)).tolist()
[[0, 1], [2, 2]]
"""

from __future__ import annotations

from .codecs import (
    MAX_MASK_PIXELS,
    MAX_PAYLOAD_CHARS,
    decode_base64,
    decode_data_url,
    decode_image_array,
    decode_label_mask,
    decode_png,
    encode_raw_plane,
    encode_rle,
    legacy_mask_to_labels,
    rasterize_polygons,
)
from .errors import AnnotationConflict, AnnotationError, AnnotationNotFound
from .legacy import (
    FILMSTRIP_SHAPE_ZYX,
    cutout_region,
    filmstrip,
    filmstrip_slice,
    random_cutout,
    read_cutout,
    sample_metadata_for_z,
    validate_sample_metadata,
    zinfo_header,
)
from .overlays import (
    apply_window,
    class_overlay,
    data_url,
    display_window,
    encode_png,
    label_overlay,
    legacy_prediction_png,
    png_base64,
    thumbnail,
    uncertainty_from_probabilities,
    uncertainty_overlay,
)
from .planes import AXIS_NAMES, parse_axis, parse_index, plane_shape
from .pool import SessionPool
from .session import JobAnnotator

__all__ = [
    "AXIS_NAMES",
    "FILMSTRIP_SHAPE_ZYX",
    "MAX_MASK_PIXELS",
    "MAX_PAYLOAD_CHARS",
    "AnnotationConflict",
    "AnnotationNotFound",
    "AnnotationError",
    "JobAnnotator",
    "SessionPool",
    "apply_window",
    "class_overlay",
    "cutout_region",
    "data_url",
    "decode_base64",
    "decode_data_url",
    "decode_image_array",
    "decode_label_mask",
    "decode_png",
    "display_window",
    "encode_png",
    "encode_raw_plane",
    "encode_rle",
    "filmstrip",
    "filmstrip_slice",
    "label_overlay",
    "legacy_mask_to_labels",
    "legacy_prediction_png",
    "parse_axis",
    "parse_index",
    "plane_shape",
    "png_base64",
    "random_cutout",
    "rasterize_polygons",
    "read_cutout",
    "sample_metadata_for_z",
    "thumbnail",
    "uncertainty_from_probabilities",
    "uncertainty_overlay",
    "validate_sample_metadata",
    "zinfo_header",
]
