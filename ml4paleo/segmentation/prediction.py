"""Class probabilities of a box or a slice of a volume with a trained model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4paleo.blocks import default_workers
from ml4paleo.features import n_features
from ml4paleo.io import open_any

from .boxes import features_for_box
from .classifiers import CASCADE, CONFIDENCE
from .context import context_features, context_plan
from .model import Model

__all__ = ["CASCADE", "CONFIDENCE", "predict_box", "predict_slice"]


def predict_box(array: Any, box: tuple[slice, ...], model: Model, voxel_size=None,
                threads: int = 1, cascade: Sequence[int] = CASCADE,
                confidence: float = CONFIDENCE) -> np.ndarray:
    """Class probabilities (C, *box shape) float32 for one box of the volume.

    Reads exactly the halo the model needs; the result does not depend on how the volume is
    cut into boxes. ``cascade`` / ``confidence``: early exit per voxel (see
    :meth:`ml4paleo.segmentation.classifiers.Forest.predict_proba`; default :data:`CASCADE`,
    what :func:`~ml4paleo.segmentation.segment` uses); ``cascade=()`` runs every tree
    (exact forest means).
    """
    kw = {"threads": threads, "cascade": cascade, "confidence": confidence}
    fs = model.feature_settings
    vs = model.voxel_size if model.voxel_size is not None else voxel_size
    shape = tuple(array.shape)
    bshape = tuple(b.stop - b.start for b in box)
    if model.context is None:
        X, _ = features_for_box(array, box, fs, vs)
        return model.forests[0].predict_proba(X.T, **kw).T.reshape(model.n_classes, *bshape)
    plan = context_plan(box, shape, model.context, fs)
    F = n_features(fs)
    n_ctx = model.n_classes * len(model.context.sigmas)
    X, Xc = features_for_box(array, plan.region, fs, vs, plan.coarse, plan.inner(box),
                             extra_rows=n_ctx)
    p1c = model.forests[0].predict_proba(Xc.T, **kw).T.reshape(model.n_classes, *plan.coarse_shape)
    del Xc
    X[F:] = context_features(p1c, box, plan, model.context, fs)
    return model.forests[1].predict_proba(X.T, **kw).T.reshape(model.n_classes, *bshape)


def predict_slice(model: Model, image: Any, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities of one slice (for the browser preview).

    Returns
    -------
    labels2d : ndarray uint8
        Class index per pixel (0 = background).
    probabilities : ndarray float32 (C, H, W)
    """
    arr = open_any(image)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < arr.shape[axis]:
        raise IndexError(f"slice {index} outside 0..{arr.shape[axis] - 1} along axis {axis}")
    box = [slice(0, n) for n in arr.shape]
    box[axis] = slice(index, index + 1)
    # every tree: exact probabilities for the preview (one slice is cheap)
    p = predict_box(arr, tuple(box), model, arr.voxel_size, threads=default_workers(), cascade=())
    p = np.take(p, 0, axis=axis + 1)
    return np.argmax(p, axis=0).astype(np.uint8), p
