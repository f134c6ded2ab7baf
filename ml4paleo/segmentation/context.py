"""Auto-context: the second stage's extra channels, stage-1 probabilities smoothed at a few scales.

"A bright spot inside bone is bone, the same spot in rock is a mineral grain." The stage-1
probabilities for the context are evaluated on a coarser global grid (every ``step``-th
voxel), smoothed there and interpolated back, so the second stage costs little more than
one forest evaluation. Everything is computed per box with the halo it needs
(:func:`context_halo`), so a blockwise segmentation equals a whole-volume one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml4paleo.blocks import pad_reflect
from ml4paleo.features import FeatureSettings, get_backend, kernel_radius

__all__ = ["ContextSettings", "ContextPlan", "context_features", "context_halo", "context_plan",
           "coarse_steps", "interpolate_coarse"]


@dataclass(frozen=True)
class ContextSettings:
    """Auto-context (second stage) settings.

    Attributes
    ----------
    sigmas : tuple of float
        Smoothing scales of the stage-1 probabilities, in coarse-grid voxels (0 = none).
    step : int
        Coarse grid step: stage 1 is evaluated at every ``step``-th voxel per axis.
    """

    sigmas: tuple[float, ...] = (0.0, 1.0)
    step: int = 2

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "step": self.step}

    @classmethod
    def from_dict(cls, d: dict) -> ContextSettings:
        return cls(tuple(float(s) for s in d["sigmas"]), int(d["step"]))

    @property
    def radius(self) -> int:
        """Kernel radius (coarse voxels) of the widest smoothing."""
        return kernel_radius(max(self.sigmas)) if max(self.sigmas) > 0 else 0


def coarse_steps(ctx: ContextSettings, fs: FeatureSettings) -> tuple[int, int, int]:
    """Coarse-grid step per axis (z is never coarsened for 2D features)."""
    return (1 if fs.mode == "2d" else ctx.step, ctx.step, ctx.step)


def context_halo(ctx: ContextSettings, fs: FeatureSettings) -> tuple[int, int, int]:
    """Extra full-resolution halo the second stage needs around a block."""
    rc = ctx.radius
    out = []
    for a, s in enumerate(coarse_steps(ctx, fs)):
        if fs.mode == "2d" and a == 0:
            out.append(0)
        else:
            out.append(s * (rc + 1))
    return tuple(out)


@dataclass(frozen=True)
class ContextPlan:
    """Where the context of a write box comes from.

    Attributes
    ----------
    region : tuple of slice
        Full-resolution box (inside the volume) whose features are computed.
    coarse : tuple of slice
        The coarse voxels, as slices into ``region``.
    crange : list of (int, int)
        Coarse index range per axis, clipped to the volume.
    want : list of (int, int)
        Coarse range per axis before clipping (the rest is mirror-padded).
    """

    region: tuple[slice, ...]
    coarse: tuple[slice, ...]
    crange: list
    want: list

    def inner(self, write: tuple[slice, ...]) -> tuple[slice, ...]:
        """``write`` as slices into :attr:`region`."""
        return tuple(slice(b.start - r.start, b.stop - r.start)
                     for b, r in zip(write, self.region, strict=True))

    @property
    def coarse_shape(self) -> tuple[int, ...]:
        return tuple(c1 - c0 for c0, c1 in self.crange)


def context_plan(write: tuple[slice, ...], shape: Sequence[int], ctx: ContextSettings,
                 fs: FeatureSettings) -> ContextPlan:
    """Coarse-grid ranges for the context of a write box."""
    steps = coarse_steps(ctx, fs)
    rc = ctx.radius
    region, csel, crange, want = [], [], [], []
    for a, (w, n, s) in enumerate(zip(write, shape, steps, strict=True)):
        if fs.mode == "2d" and a == 0:
            region.append(w)
            csel.append(slice(None))
            crange.append((w.start, w.stop))
            want.append((w.start, w.stop))
            continue
        nc = (n + s - 1) // s
        w0 = w.start // s - rc
        w1 = (w.stop - 1) // s + 2 + rc
        c0, c1 = max(w0, 0), min(w1, nc)
        r0 = min(c0 * s, w.start)
        r1 = max((c1 - 1) * s + 1, w.stop)
        region.append(slice(r0, r1))
        csel.append(slice(c0 * s - r0, (c1 - 1) * s - r0 + 1, s))
        crange.append((c0, c1))
        want.append((w0, w1))
    return ContextPlan(tuple(region), tuple(csel), crange, want)


def context_features(p1c: np.ndarray, write: tuple[slice, ...], plan: ContextPlan,
                     ctx: ContextSettings, fs: FeatureSettings) -> np.ndarray:
    """Smooth the coarse stage-1 probabilities and interpolate them onto ``write``.

    p1c: (C, coarse shape) over the clipped coarse range. Returns (C * len(sigmas), N).
    """
    steps = coarse_steps(ctx, fs)
    pads = [(c0 - w0, w1 - c1) for (c0, c1), (w0, w1) in zip(plan.crange, plan.want, strict=True)]
    C = p1c.shape[0]
    if any(p != (0, 0) for p in pads):
        p1c = pad_reflect(p1c, [(0, 0)] + pads)
    wshape = tuple(w.stop - w.start for w in write)
    out = np.empty((C * len(ctx.sigmas), int(np.prod(wshape))), np.float32)
    backend = get_backend()
    k = 0
    for sigma in ctx.sigmas:
        for c in range(C):
            sm = p1c[c]
            if sigma > 0:
                sig = [0.0 if (fs.mode == "2d" and a == 0) else sigma for a in range(3)]
                sm = backend.gaussian_filter(sm, sig)
            out[k] = interpolate_coarse(sm, write, plan.want, steps).reshape(-1)
            k += 1
    return out


def interpolate_coarse(coarse: np.ndarray, write: tuple[slice, ...], want, steps) -> np.ndarray:
    """Linear interpolation of a coarse-grid array (covering ``want``) at the write voxels."""
    arr = coarse
    for a, (w, (w0, _), s) in enumerate(zip(write, want, steps, strict=True)):
        coords = np.arange(w.start, w.stop)
        if s == 1:
            idx = coords - w0
            arr = np.take(arr, idx, axis=a)
            continue
        lo = coords // s
        frac = ((coords - lo * s) / s).astype(np.float32)
        i0 = lo - w0
        a0 = np.take(arr, i0, axis=a)
        a1 = np.take(arr, i0 + 1, axis=a)
        shp = [1] * arr.ndim
        shp[a] = -1
        f = frac.reshape(shp)
        arr = a0 * (1 - f) + a1 * f
    return arr.astype(np.float32, copy=False)
