"""The pipeline steps the runners run, one module per job kind.

A step module of this package defines ``KIND`` (the runner stage it serves, a key of
:data:`ml4paleo.jobs.statuses.STAGES`) and ``run(ctx)``: a function of a
:class:`~ml4paleo.jobs.context.JobContext` that calls the library on the job's files
(through :mod:`ml4paleo.workspace`) and returns the fields to store with the finished
status. Every such module is found here (:data:`STEPS`), so a new job kind costs one
file here plus its stage in the status table. Steps never import the runner.

Modules: :mod:`.convert`, :mod:`.segment` (train + segment), :mod:`.mesh`,
:mod:`.measure` (morphometry), and
:mod:`.common` (helpers).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ml4paleo.jobs.context import JobContext
from ml4paleo.jobs.statuses import STAGES
from ml4paleo.jobs.steps.common import executor, jsonable, library
from ml4paleo.jobs.steps.convert import image_metadata
from ml4paleo.jobs.steps.convert import run as convert_step
from ml4paleo.jobs.steps.measure import run as measure_step
from ml4paleo.jobs.steps.mesh import run as mesh_step
from ml4paleo.jobs.steps.segment import run as segment_step

Step = Callable[[JobContext], "dict | None"]

__all__ = ["STEPS", "Step", "convert_step", "executor", "get_step", "image_metadata",
           "jsonable", "library", "measure_step", "mesh_step", "segment_step"]


def _discover() -> dict[str, Step]:
    found: dict[str, Step] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind, run = getattr(module, "KIND", None), getattr(module, "run", None)
        if kind is None or run is None:
            continue  # a helper module
        if kind not in STAGES:
            raise RuntimeError(f"{module.__name__}: KIND {kind!r} is not a runner stage "
                               f"({', '.join(STAGES)})")
        if kind in found:
            raise RuntimeError(f"two steps for job kind {kind!r}")
        found[kind] = run
    return found


#: job kind -> step function
STEPS: dict[str, Step] = _discover()


def get_step(kind: str) -> Step:
    """The step of job kind ``kind``.

    Raises
    ------
    ValueError
        When no step serves ``kind``.
    """
    try:
        return STEPS[kind]
    except KeyError:
        raise ValueError(f"no step for job kind {kind!r}; known: {', '.join(STEPS)}") from None
