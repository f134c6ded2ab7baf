"""Progress callbacks for the CLI."""

from __future__ import annotations

from .run import ProgressCallback

__all__ = ["tqdm_progress"]


def tqdm_progress(desc: str, disable: bool | None = False) -> ProgressCallback:
    """A ``progress(done, total)`` callback that drives a tqdm bar (for the CLI).

    ``disable=None`` hides the bar when stderr is not a terminal.
    """
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="block", disable=disable)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
