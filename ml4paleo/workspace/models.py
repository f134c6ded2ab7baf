"""A job's model versions: ``models/<model_id>/`` (model files + ``meta.json``).

The one model registry: the segment runner saves the models it trains here, the
annotator saves its preview model here, and models are imported from other jobs here.
A version appears under its final name only when complete (written beside it under a
temp name, then renamed), its ``meta.json`` always carries ``created_at``
(:func:`ml4paleo._fs.now_iso`) and ``source`` (how it was made), and it is listed on
the job record through the store's locked update (see :func:`record_model`).

Examples
--------
>>> import tempfile, pathlib
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> def fill(folder):
...     folder.mkdir()
...     _ = (folder / "meta.json").write_text('{"classes": ["a", "b"]}')
>>> model_id = reg.add(fill, source={"kind": "test"})
>>> reg.meta(model_id)["source"], reg.ids() == [model_id]
({'kind': 'test'}, True)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ml4paleo._fs import atomic_write, now_iso, replace_dir, temp_path
from ml4paleo.workspace.ids import new_id
from ml4paleo.workspace.names import assign_numbers, clean_name, default_name
from ml4paleo.workspace.paths import ID_RE, JobPaths, check_id, model_meta_file

__all__ = [
    "ModelNotFound",
    "ModelRegistry",
    "RecordUpdate",
    "choose_model",
    "record_model",
]

log = logging.getLogger(__name__)

#: ``update(fn)``: a locked read-modify-write of the job record (``JobStore.update`` bound
#: to a job id, or a runner's lease-checked ``JobContext.owned_update``)
RecordUpdate = Callable[[Callable[[dict], object]], dict]


class ModelNotFound(KeyError):
    """No model version with this id in the job (or the id is malformed)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not found"


class ModelRegistry:
    """The model versions of one job folder.

    Parameters
    ----------
    paths : JobPaths or path
        The job's paths (or its folder).
    """

    def __init__(self, paths: JobPaths | str | os.PathLike) -> None:
        self.paths = paths if isinstance(paths, JobPaths) else JobPaths(paths)

    # -- reading --------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of the finished model versions, oldest first (by ``created_at``, then id)."""
        root = self.paths.models
        if not root.is_dir():
            return []
        found = [p.name for p in root.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and ID_RE.match(p.name)]
        return sorted(found, key=lambda i: (str(self.meta(i).get("created_at") or ""), i))

    def exists(self, model_id: str) -> bool:
        """True when ``model_id`` is a well-formed id of a model folder of this job."""
        try:
            return self.paths.model(model_id).is_dir()
        except ValueError:
            return False

    def folder(self, model_id: str) -> Path:
        """The folder of model ``model_id``.

        Raises
        ------
        ModelNotFound
            When the id is malformed or no such model exists.
        """
        if not self.exists(model_id):
            raise ModelNotFound(f"no model {str(model_id)[:80]!r} in job {self.paths.job_id!r}")
        return self.paths.model(model_id)

    def meta(self, model_id: str) -> dict:
        """The model's ``meta.json`` ({} when missing or unreadable)."""
        try:
            return read_meta(self.paths.model_meta(model_id))
        except ValueError:
            return {}

    def numbers(self) -> dict[str, int]:
        """The number (from 1) of every model version of the job, in the order they were
        made (kept in ``meta.json``; older versions are numbered by their time)."""
        return assign_numbers((i, self.meta(i)) for i in self.ids())

    def name(self, model_id: str, number: int | None = None) -> str:
        """What people read: the name it was given, else ``Model <n> · <classes> · <when>``."""
        meta = self.meta(model_id)
        given = meta.get("name")
        if isinstance(given, str) and given.strip():
            return given
        if number is None:
            number = self.numbers().get(model_id)
        return default_name("Model", number, meta.get("classes") or [], meta.get("created_at"))

    def rename(self, model_id: str, name: str | None) -> dict:
        """Give model ``model_id`` a name (None or ``""``: back to the default name), written
        into its ``meta.json`` atomically. Returns the new metadata.

        Raises
        ------
        ModelNotFound
            For an unknown id; ValueError for an invalid name.
        """
        self.folder(model_id)
        clean = None if name is None or (isinstance(name, str) and not name.strip()) \
            else clean_name(name)
        meta = self.meta(model_id)
        meta.setdefault("number", self.numbers().get(model_id))
        if clean is None:
            meta.pop("name", None)
        else:
            meta["name"] = clean
        # plain json.dumps: metrics may hold NaN, as the model's own file may
        atomic_write(self.paths.model_meta(model_id), json.dumps(meta, indent=2))
        return meta

    def entry(self, model_id: str, record: dict | None = None, number: int | None = None
              ) -> dict:
        """A listing entry: id, number, name, created_at, classes, label counts, metrics,
        the per-dataset choice of configuration (``selection``: the chosen candidate and
        every candidate's held-out score; None for models trained without it), source, and
        whether the job record has it ``chosen`` (segments next) / ``current``."""
        meta = self.meta(model_id)
        record = record or {}
        if number is None:
            number = self.numbers().get(model_id)
        return {
            "id": model_id,
            "number": number,
            "name": self.name(model_id, number),
            "named": isinstance(meta.get("name"), str) and bool(meta["name"].strip()),
            "created_at": meta.get("created_at"),
            "classes": meta.get("classes", []),
            "label_counts": meta.get("label_counts", meta.get("counts")),
            "metrics": meta.get("metrics", {}),
            "selection": _selection_summary(meta.get("selection")),
            "source": meta.get("source"),
            "chosen": model_id == record.get("chosen_model_id"),
            "current": model_id == record.get("model_id"),
        }

    def list(self, record: dict | None = None) -> list[dict]:
        """Every model version with its metadata (:meth:`entry`), oldest first."""
        numbers = self.numbers()
        return [self.entry(i, record, numbers.get(i)) for i in self.ids()]

    def load(self, model_id: str, loader: Callable[[Path], Any]) -> Any:
        """``loader(folder)`` of model ``model_id`` (e.g. ``segmentation.Model.load``)."""
        return loader(self.folder(model_id))

    def write_zip(self, model_id: str, fh: IO[bytes]) -> None:
        """Write the model folder as a zip into ``fh`` (files under ``<model_id>/``;
        symlinks skipped, so nothing outside the folder is ever included)."""
        folder = self.folder(model_id)
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    zf.write(f, f"{model_id}/{f.relative_to(folder).as_posix()}")

    # -- writing --------------------------------------------------------------------------
    def add(self, fill: Callable[[Path], object], *, source: dict | None = None,
            model_id: str | None = None) -> str:
        """Create a new model version with ``fill(folder)`` and return its id.

        ``fill`` writes the model into a fresh temp folder (which it may create); the
        folder is renamed to ``models/<new id>`` only when ``fill`` returned and the
        ``meta.json`` (with ``source`` and ``created_at``) is written. On an exception
        nothing is left behind.

        ``model_id`` names the version instead of a new id; a version of that id is
        replaced (a retried training attempt writes the version its job reserved, so the
        job gets one version whatever the attempts).
        """
        model_id = new_id() if model_id is None else check_id(model_id, "model id")
        dest = self.paths.model(model_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest)
        try:
            fill(tmp)
            if not tmp.is_dir():
                raise ValueError(f"{tmp}: the model was not written")
            meta = read_meta(model_meta_file(tmp))
            if source is not None:
                meta["source"] = source
            meta.setdefault("created_at", now_iso())
            meta["number"] = max(self.numbers().values(), default=0) + 1
            meta.pop("name", None)  # an imported copy gets its own number and name
            # plain json.dumps: metrics may hold NaN, as the model's own file may
            atomic_write(model_meta_file(tmp), json.dumps(meta, indent=2))
            replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("job %s: model %s saved (%s)", self.paths.job_id, model_id,
                 (source or {}).get("kind", "model"))
        return model_id

    def save(self, model: Any, *, source: dict | None = None, model_id: str | None = None) -> str:
        """Save a trained model (anything with ``save(folder)``) as a new version (or as
        version ``model_id``, replacing it: see :meth:`add`)."""
        return self.add(model.save, source=source, model_id=model_id)

    def import_from(self, other: ModelRegistry, model_id: str, *,
                    load: Callable[[Path], Any]) -> str:
        """Copy model ``model_id`` of another job into this one as a new version.

        The source is first loaded with ``load`` (the engine's safe loader), so only a
        model in the trusted format is ever copied; symlinks are not copied.

        Raises
        ------
        ModelNotFound
            When the other job has no such model.
        ValueError
            When the model cannot be loaded (message says why).
        """
        src = other.folder(model_id)
        try:
            load(src)
        except Exception as exc:  # any failure means: not a model we trust
            raise ValueError(f"model {model_id!r} of job {other.paths.job_id!r} cannot be "
                             f"loaded: {exc}") from None
        return self.add(lambda target: shutil.copytree(src, target, ignore=_symlinks),
                        source={"kind": "import", "job_id": other.paths.job_id,
                                "model_id": model_id})


def _symlinks(folder: str, names: list[str]) -> list[str]:
    """``copytree`` ignore rule: links are never copied (nor what they point to)."""
    return [n for n in names if os.path.islink(os.path.join(folder, n))]


def read_meta(path: Path) -> dict:
    """A JSON object file, {} when missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_model(update: RecordUpdate, model_id: str, *, current: bool = False) -> dict:
    """List ``model_id`` on the job record (once); with ``current`` also make it the
    job's current model (``model_id``). Returns the record as written."""

    def apply(record: dict) -> None:
        models = list(record.get("models") or [])
        if model_id not in models:
            models.append(model_id)
        record["models"] = models
        if current:
            record["model_id"] = model_id

    return update(apply)


def choose_model(update: RecordUpdate, model_id: str) -> dict:
    """Make ``model_id`` the model that segments next (until new annotations arrive)."""
    return update(lambda r: r.update(model_id=model_id, chosen_model_id=model_id))


def _selection_summary(sel: Any) -> dict | None:
    """The listing's view of a model's ``meta["selection"]``: chosen name, channels pruned,
    each candidate's name and held-out score (or why it was skipped)."""
    if not isinstance(sel, dict):
        return None
    cands = [c for c in sel.get("candidates", []) if isinstance(c, dict)]
    pruning = sel.get("pruning") if isinstance(sel.get("pruning"), dict) else None
    return {
        "chosen": sel.get("chosen"),
        "method": sel.get("method"),
        "candidates": [{"name": c.get("name"), "score": c.get("score"), "skipped": c.get("skipped")}
                       for c in cands],
        "pruned": None if pruning is None else {"from": pruning.get("from"), "to": pruning.get("to"),
                                                "kept": pruning.get("kept")},
    }
