"""The low-level filters behind every feature, selectable by name.

A :class:`FilterBackend` owns the array module (``xp``), the Gaussian passes and the finite
differences. Feature families (:mod:`ml4paleo.features.families`) are written against it,
so another backend (a GPU one on CuPy, say) is one file that subclasses
:class:`FilterBackend`, implements the Gaussian passes, and adds one line to
:data:`BACKENDS` (or calls :func:`register_backend`).

Cropping helpers here are plain slicing and work on any backend's arrays.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .kernels import TRUNCATE, gaussian_kernel, kernel_radius

__all__ = [
    "BACKENDS",
    "FilterBackend",
    "NumpyBackend",
    "backend_names",
    "crop",
    "crop_axis",
    "crop_to",
    "get_backend",
    "register_backend",
]

#: backend name -> ``"module:attribute"`` of its class (imported when first asked for)
BACKENDS: dict[str, str] = {
    "numpy": "ml4paleo.features.backend:NumpyBackend",
}
_EXTRA: dict[str, Callable[[], FilterBackend]] = {}
_INSTANCES: dict[str, FilterBackend] = {}


# ----------------------------------------------------------------------------- slicing
def crop(arr: Any, margin: Sequence[int]) -> Any:
    """``arr`` without ``margin[a]`` voxels on both sides of each axis ``a``."""
    sl = tuple(slice(m, arr.shape[i] - m) for i, m in enumerate(margin))
    return arr[sl]


def crop_axis(arr: Any, axis: int, m: int) -> Any:
    """``arr`` without ``m`` voxels on both sides of ``axis``."""
    sl = [slice(None)] * arr.ndim
    sl[axis] = slice(m, arr.shape[axis] - m)
    return arr[tuple(sl)]


def crop_to(arr: Any, shape: Sequence[int]) -> Any:
    """The centre of ``arr`` with ``shape`` (margins split evenly)."""
    return crop(arr, [(s - t) // 2 for s, t in zip(arr.shape, shape, strict=True)])


# ----------------------------------------------------------------------------- backends
class FilterBackend(abc.ABC):
    """Gaussian smoothing and finite differences on one kind of array.

    Subclasses implement :meth:`gaussian1d`, :meth:`gaussian1d_valid` and
    :meth:`gaussian_filter`; :meth:`smooth`, :meth:`diff1` and :meth:`diff2` are written
    once here on top of them and slicing.

    Attributes
    ----------
    name : str
        The name :func:`get_backend` knows it by.
    xp : module
        Its array module (``numpy`` here; ``cupy`` for a GPU backend).
    """

    name: str = ""
    xp: Any = np

    def asarray(self, data: np.ndarray) -> Any:
        """``data`` as a float32 array of this backend (no copy when already one)."""
        return self.xp.asarray(data).astype(np.float32, copy=False)

    def to_numpy(self, x: Any) -> np.ndarray:
        """A backend array as a numpy array (no copy for numpy)."""
        return np.asarray(x)

    @abc.abstractmethod
    def gaussian1d(self, x: Any, sigma: float, axis: int) -> Any:
        """Gaussian along ``axis`` (mirror boundary, same shape, float32)."""

    @abc.abstractmethod
    def gaussian1d_valid(self, x: Any, sigma: float, axis: int) -> Any:
        """'Valid' Gaussian along ``axis``: the output is one kernel radius shorter each side."""

    @abc.abstractmethod
    def gaussian_filter(self, x: Any, sigmas: Sequence[float]) -> Any:
        """N-D Gaussian (mirror boundary, same shape, float32); a sigma of 0 skips that axis."""

    def smooth(self, data: Any, sigmas: Sequence[float], keep: Sequence[int],
               centre: Sequence[int]) -> Any:
        """Gaussian of ``data`` keeping only ``keep`` voxels of margin around the centre.

        ``data`` is ``centre`` plus a symmetric margin. Each 1D pass crops its axis first to
        what the kernel needs, so later passes touch less data, and is a 'valid' weighted sum
        (:meth:`gaussian1d_valid`: the same arithmetic for a voxel whatever block holds it);
        only a margin too thin for the kernel falls back to the mirrored :meth:`gaussian1d`.
        """
        radii = [kernel_radius(s) if s > 0 else 0 for s in sigmas]
        out = data
        for a in range(3):
            # crop every axis to what the passes still to come need (this one included)
            need = [keep[b] + (radii[b] if b >= a else 0) for b in range(3)]
            halo = [(out.shape[b] - centre[b]) // 2 for b in range(3)]
            window = tuple(slice(h - n, out.shape[b] - (h - n)) if h > n else slice(None)
                           for b, (h, n) in enumerate(zip(halo, need, strict=True)))
            if sigmas[a] > 0 and halo[a] >= need[a]:
                out = self.gaussian1d_valid_window(out, sigmas[a], a, window)
                continue
            out = out[window]
            if sigmas[a] > 0:
                out = self.gaussian1d(out, sigmas[a], a)
                out = crop_axis(out, a, (out.shape[a] - centre[a]) // 2 - keep[a])
        return crop(out, [max(0, (out.shape[b] - centre[b]) // 2 - keep[b]) for b in range(3)])

    def gaussian1d_valid_window(self, x: Any, sigma: float, axis: int,
                                window: Sequence[slice]) -> Any:
        """:meth:`gaussian1d_valid` of ``x[window]`` (backends may read the window in place)."""
        return self.gaussian1d_valid(x[tuple(window)], sigma, axis)

    def diff1(self, x: Any, axis: int) -> Any:
        """Central difference along ``axis``, shrinking that axis by 2 (one voxel each side)."""
        n = x.shape[axis]
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis] = slice(2, n)
        lo[axis] = slice(0, n - 2)
        return (x[tuple(hi)] - x[tuple(lo)]) * np.float32(0.5)

    def diff2(self, x: Any, axis: int) -> Any:
        """Second difference along ``axis``, shrinking that axis by 2."""
        n = x.shape[axis]
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        c = [slice(None)] * 3
        a[axis], b[axis], c[axis] = slice(2, n), slice(1, n - 1), slice(0, n - 2)
        return x[tuple(a)] - np.float32(2) * x[tuple(b)] + x[tuple(c)]


class NumpyBackend(FilterBackend):
    """numpy arrays; compiled 'valid' Gaussian passes (:mod:`ml4paleo.features.compiled`),
    scipy.ndimage where the mirrored boundary is needed (the default)."""

    name = "numpy"
    xp = np

    def gaussian1d(self, x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
        return ndi.gaussian_filter1d(x, sigma, axis=axis, mode="reflect", truncate=TRUNCATE,
                                     output=np.float32)

    def gaussian1d_valid(self, x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
        from .compiled import correlate_valid

        return correlate_valid(x, gaussian_kernel(sigma), axis)

    def gaussian1d_valid_window(self, x: np.ndarray, sigma: float, axis: int,
                                window: Sequence[slice]) -> np.ndarray:
        from .compiled import correlate_valid

        if not x.flags.c_contiguous:
            return correlate_valid(x[tuple(window)], gaussian_kernel(sigma), axis)
        return correlate_valid(x, gaussian_kernel(sigma), axis, window=window)

    def gaussian_filter(self, x: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
        return ndi.gaussian_filter(x, list(sigmas), mode="reflect", truncate=TRUNCATE,
                                   output=np.float32)


def register_backend(name: str, factory: Callable[[], FilterBackend]) -> None:
    """Make a backend selectable by ``name`` (e.g. from a plugin)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a backend needs a name")
    _EXTRA[name] = factory
    _INSTANCES.pop(name, None)


def backend_names() -> list[str]:
    """Names :func:`get_backend` accepts."""
    return sorted(set(BACKENDS) | set(_EXTRA))


def get_backend(backend: str | FilterBackend | None = None) -> FilterBackend:
    """The backend called ``backend`` (default ``"numpy"``); an instance is returned as is.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or a backend whose
        dependencies are not installed.
    """
    if isinstance(backend, FilterBackend):
        return backend
    name = backend or "numpy"
    inst = _INSTANCES.get(name)
    if inst is not None:
        return inst
    if name in _EXTRA:
        inst = _EXTRA[name]()
    elif name in BACKENDS:
        module, attr = BACKENDS[name].split(":")
        try:
            inst = getattr(importlib.import_module(module), attr)()
        except ImportError as exc:
            raise ValueError(f"feature backend {name!r} is not available ({exc})") from exc
    else:
        raise ValueError(f"unknown feature backend {name!r}; known: {backend_names()}")
    _INSTANCES[name] = inst
    return inst
