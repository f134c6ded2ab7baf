"""Hand freed heap back to the operating system between big steps."""

from __future__ import annotations

__all__ = ["release_free_memory"]


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Training frees hundreds of MB of feature and fitting buffers, spread over the fitting
    threads' malloc arenas; glibc keeps them mapped, so without this a process that trains
    and then segments (the benchmark, a runner) carries them through the whole segmentation.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
