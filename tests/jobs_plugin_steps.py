"""Test-only runner steps, loaded by runners through ``ML4PALEO_STEPS_PLUGIN=jobs_plugin_steps``.

They make a kill or a stop land mid-job deterministically. Behaviour is chosen by
environment variables so each runner process can act differently:

- ``ML4PALEO_TEST_MODE``: ``count`` (default) writes ``result.txt`` (the numbers
  0..N-1, one per tick, the file is renamed into place when complete) with
  ``ML4PALEO_TEST_TICKS`` progress ticks of ``ML4PALEO_TEST_TICK`` seconds;
  ``slow_real`` runs the real step (convert, segment, mesh) with a sleep at each progress
  tick (``ML4PALEO_TEST_TICK`` seconds; for segment only once it segments);
  ``fail`` raises RuntimeError; ``missing`` asks for a library function that does not exist;
  ``helper`` starts a ``sleep`` process that does not die with its parent (its pid goes to
  ``ML4PALEO_TEST_HELPER_PID``), then counts like ``count``.
- ``ML4PALEO_TEST_LOG``: a file to which ``start``/``end`` lines are appended
  (``<event> <job_id> <pid> <monotonic time>``).
"""

from __future__ import annotations

import os
import time

from ml4paleo.jobs import steps


def _log(event: str, job_id: str) -> None:
    path = os.environ.get("ML4PALEO_TEST_LOG")
    if path:
        line = f"{event} {job_id} {os.getpid()} {time.time():.6f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _tick() -> float:
    return float(os.environ.get("ML4PALEO_TEST_TICK", "0.05"))


def counting_step(ctx) -> dict:
    ticks = int(os.environ.get("ML4PALEO_TEST_TICKS", "20"))
    _log("start", ctx.job_id)
    tmp = ctx.job_dir / f".result.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        for i in range(ticks):
            time.sleep(_tick())
            fh.write(f"{i}\n")
            ctx.progress(i + 1, ticks)
    ctx.check()
    os.replace(tmp, ctx.job_dir / "result.txt")
    _log("end", ctx.job_id)
    return {"result_pid": os.getpid()}


def _slowed(step):
    def run(ctx) -> dict:
        _log("start", ctx.job_id)
        real = ctx.progress

        def slow_progress(done, total, *args, **kwargs):
            real(done, total, *args, **kwargs)
            if ctx.record.get("status") != "training":
                _log("tick", ctx.job_id)
                time.sleep(_tick())

        ctx.progress = slow_progress
        out = step(ctx)
        _log("end", ctx.job_id)
        return out

    return run


slow_real_convert = _slowed(steps.convert_step)


def failing_step(ctx) -> dict:
    _log("start", ctx.job_id)
    raise RuntimeError("the test step always fails")


def missing_step(ctx) -> dict:
    steps.library("ml4paleo.no_such_module", "convert", "conversion")
    return {}


def helper_step(ctx) -> dict:
    import subprocess

    helper = subprocess.Popen(["sleep", "300"])
    with open(os.environ["ML4PALEO_TEST_HELPER_PID"], "w") as fh:
        fh.write(str(helper.pid))
    return counting_step(ctx)


_MODES = {"count": counting_step, "helper": helper_step, "slow_real": slow_real_convert, "fail": failing_step,
          "missing": missing_step}


def _dispatch(ctx) -> dict:
    return _MODES[os.environ.get("ML4PALEO_TEST_MODE", "count")](ctx)


def _real_or_slowed(step):
    slowed = _slowed(step)
    return lambda ctx: (slowed if os.environ.get("ML4PALEO_TEST_MODE") == "slow_real"
                        else step)(ctx)


STEPS = {"convert": _dispatch, "segment": _real_or_slowed(steps.segment_step),
         "mesh": _real_or_slowed(steps.mesh_step)}
