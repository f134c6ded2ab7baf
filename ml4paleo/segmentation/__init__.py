"""Voxel classification from a few labelled slices: label store, training, prediction.

Labels are one volume: 0 = unlabelled, value ``k + 1`` = class ``k`` (class 0 is the
background; :mod:`ml4paleo.classes`). Brush strokes, polygons and whole painted slices all
end up in it (:class:`LabelStore`).

The classifier is a random forest on the filter-bank features (:mod:`ml4paleo.features`),
trained on a class-balanced sample, in two *auto-context* stages (:mod:`.context`). Every
step is computed per block with the halo it needs, so a blockwise segmentation equals a
whole-volume one.

Modules: :mod:`.labels` (LabelStore), :mod:`.classifiers` (the Classifier protocol, the
random forest, the pickle-free stage file), :mod:`.model` (Model, save/load),
:mod:`.context` (auto-context), :mod:`.boxes` (features of a box), :mod:`.training`
(sampling, held-out metrics, train), :mod:`.prediction` (predict_box, predict_slice),
:mod:`.blockwise` (segment: the whole volume block by block), :mod:`.postprocess`,
:mod:`.interactive` (InteractiveSession), :mod:`.memory`.
"""

from __future__ import annotations

from ml4paleo.classes import ERASE

from .blockwise import segment
from .classifiers import CLASSIFIERS, Classifier, Forest
from .context import ContextSettings, context_halo
from .interactive import InteractiveSession
from .labels import LabelStore
from .model import MODEL_FORMAT, Model
from .postprocess import plane_island_size, postprocess_labels, preview_plane
from .prediction import CASCADE, CONFIDENCE, predict_box, predict_slice
from .training import PREVIEW, TrainSettings, train

__all__ = [
    "CASCADE",
    "CLASSIFIERS",
    "CONFIDENCE",
    "ERASE",
    "MODEL_FORMAT",
    "PREVIEW",
    "Classifier",
    "ContextSettings",
    "Forest",
    "InteractiveSession",
    "LabelStore",
    "Model",
    "TrainSettings",
    "context_halo",
    "plane_island_size",
    "postprocess_labels",
    "predict_box",
    "predict_slice",
    "preview_plane",
    "segment",
    "train",
]
