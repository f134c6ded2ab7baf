"""A trained model: its stages, what they need to run, its metadata; saved without pickles."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ml4paleo import _fs
from ml4paleo.features import FeatureSettings, feature_names, halo_for, n_features

from .classifiers import load_stages, save_stages
from .context import ContextSettings, context_halo

__all__ = ["FOREST_FILE", "META_FILE", "MODEL_FORMAT", "Model"]

MODEL_FORMAT = "ml4paleo-forest-1"
#: file names inside a model folder
FOREST_FILE = "forest.npz"
META_FILE = "meta.json"


@dataclass
class Model:
    """A trained classifier (one or two stages) with what it needs to run and its metadata.

    Attributes
    ----------
    forests : list of Classifier
        Stage 1 (image features) and optionally stage 2 (features + context); random
        forests (:class:`~ml4paleo.segmentation.classifiers.Forest`) unless trained with
        another ``TrainSettings.classifier``.
    feature_settings : FeatureSettings
    context : ContextSettings or None
        None for a one-stage model.
    classes : list of dict
        ``{"name", "color"}`` per class; position = class index.
    voxel_size : tuple of float or None
        Voxel size the features were computed with.
    meta : dict
        Metadata: metrics, label counts, timings, created_at, ...
    """

    forests: list
    feature_settings: FeatureSettings
    context: ContextSettings | None
    classes: list
    voxel_size: tuple | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def halo(self) -> tuple[int, int, int]:
        """Full halo a block needs (features + context)."""
        h1 = halo_for(self.feature_settings, self.voxel_size)
        if self.context is None:
            return h1
        h2 = context_halo(self.context, self.feature_settings)
        return tuple(a + b for a, b in zip(h1, h2, strict=True))

    def without_unused_channels(self) -> Model:
        """This model computing only the image channels some split of some stage uses.

        Exact: its predictions equal this model's (a channel no split reads cannot change
        a prediction), at the cost of fewer channels (and often a smaller halo). Returns
        ``self`` when every channel is used or a stage cannot report what it uses.
        """
        names = feature_names(self.feature_settings)
        F = len(names)
        used: set[int] = set()
        for stage in self.forests:
            if not hasattr(stage, "used_features"):
                return self
            used |= {int(j) for j in stage.used_features() if j < F}
        keep = sorted(used) or [0]
        if len(keep) == F:
            return self
        fs = self.feature_settings.with_channels([names[j] for j in keep])
        stages = [self.forests[0].remap_features(keep)]
        for stage in self.forests[1:]:  # the context channels follow the image channels
            stages.append(stage.remap_features(keep + list(range(F, stage.n_features))))
        meta = {**self.meta, "feature_settings": fs.to_dict(),
                "unused_channels_dropped": {"from": F, "to": len(keep)}}
        return Model(stages, fs, self.context, self.classes, self.voxel_size, meta)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``forest.npz`` + ``meta.json`` into ``folder`` (no pickled objects)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_stages(folder / FOREST_FILE, self.forests)
        meta = dict(self.meta)
        meta.update(
            {
                "format": MODEL_FORMAT,
                "classes": self.classes,
                "feature_settings": self.feature_settings.to_dict(),
                "context": self.context.to_dict() if self.context else None,
                "voxel_size": list(self.voxel_size) if self.voxel_size else None,
                "stages": [f.describe() for f in self.forests],
            }
        )
        meta.setdefault("created_at", _fs.now_iso())
        _fs.atomic_write_json(folder / META_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Model:
        """Read a model written by :meth:`save` (also by earlier versions of ml4paleo).

        Raises
        ------
        FileNotFoundError
            When the folder lacks ``meta.json`` or ``forest.npz``.
        ValueError
            When the folder does not hold a valid model (message names the folder).
        """
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists() or not (folder / FOREST_FILE).exists():
            raise FileNotFoundError(f"{folder}: not a model folder (needs {META_FILE} and {FOREST_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError(f"unknown model format {meta.get('format')!r}")
            fs = FeatureSettings.from_dict(meta["feature_settings"])
            ctx = ContextSettings.from_dict(meta["context"]) if meta.get("context") else None
            specs = [(str(s.get("kind", "forest")), int(s["n_features"]), int(s["n_classes"]))
                     for s in meta["stages"]]
            stages = load_stages(folder / FOREST_FILE, specs)
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as exc:
            raise ValueError(f"{folder}: invalid model ({exc})") from exc
        vs = tuple(meta["voxel_size"]) if meta.get("voxel_size") else None
        nf = n_features(fs)
        if specs[0][1] != nf or (ctx and specs[1][1] != nf + len(meta["classes"]) * len(ctx.sigmas)):
            raise ValueError(f"{folder}: invalid model (feature count does not match settings)")
        return cls(stages, fs, ctx, meta["classes"], vs, meta)
