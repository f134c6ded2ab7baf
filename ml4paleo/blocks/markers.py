"""Done-markers: empty files that record finished blocks, so an interrupted run resumes.

The scheduler (:func:`ml4paleo.blocks.run`) owns them: it skips blocks already marked
and marks each block after its function returned, so block functions never look at
markers themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ml4paleo._fs import is_temp_name

from .grid import Block

__all__ = ["DoneMarkers"]


class DoneMarkers:
    """Empty files named after finished blocks (:attr:`Block.name`) in one folder.

    Parameters
    ----------
    folder : path
        Folder for the marker files (created on demand).

    Examples
    --------
    >>> import tempfile
    >>> from ml4paleo.blocks import block_grid
    >>> markers = DoneMarkers(tempfile.mkdtemp())
    >>> first, second = block_grid((4,), 2)
    >>> markers.mark(first)
    >>> markers.is_done(first), markers.is_done(second)
    (True, False)
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def is_done(self, block: Block) -> bool:
        """Whether ``block`` was marked done."""
        return (self.folder / block.name).exists()

    def done(self, blocks: Iterable[Block]) -> set[int]:
        """Positions in ``blocks`` of those marked done (one folder listing)."""
        try:
            names = {n for n in os.listdir(self.folder) if not is_temp_name(n)}
        except FileNotFoundError:
            return set()
        return {i for i, b in enumerate(blocks) if b.name in names}

    def mark(self, block: Block) -> None:
        """Record ``block`` as done (after its output is fully written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / block.name).touch()

    def clear(self) -> None:
        """Forget every marker."""
        if self.folder.exists():
            for p in self.folder.iterdir():
                p.unlink(missing_ok=True)
            self.folder.rmdir()
