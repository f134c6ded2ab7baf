"""Local thickness (largest inscribed ball, Hildebrand & Rüegsegger 1997), in physical units.

Definition (BoneJ's, after Dougherty & Kunzelmann 2007, on the voxel grid): every voxel
centre ``c`` of the structure is the centre of a ball whose radius ``r(c)`` is the
physical distance to the nearest voxel centre *outside* the structure (the Euclidean
distance transform). The ball holds the voxels ``{q : |q - c| <= r(c)}`` of the
structure. The local thickness of a voxel ``p`` is the diameter ``2 r(c)`` of the
largest such ball that holds ``p``.

Worth knowing when comparing numbers:

- Distances are measured between voxel centres, as in BoneJ: an axis-aligned plate
  ``n`` voxels thick measures ``n + 1`` voxels when ``n`` is odd and ``n`` when ``n`` is
  even; a digital ball of radius ``R`` centred on a voxel measures about ``2 R`` at its
  centre. porespy reports radii (in voxels) of the same construction.
- Anisotropic voxels are handled exactly: all distances are physical (``voxel_size``
  ``(z, y, x)``), where BoneJ assumes isotropic voxels.
- Outside the array is *unknown*, not background: a structure cut by the volume border
  is not thinned there (as with scipy's and porespy's distance transforms).
- Balls are capped at ``max_thickness / 2``: a structure thicker than ``max_thickness``
  is reported as ``max_thickness``, and the result says it was clipped. The cap is what
  lets blocks be processed with a finite halo and still give the whole-volume answer.

Algorithm (no per-voxel Python loop, no painting of every voxel's ball):

1. ``r`` by a separable, windowed min-convolution of the per-axis costs ``(k s)^2`` —
   an exact distance transform capped at the maximum, computed with explicit minima so
   a block and the whole volume give bit-identical radii.
2. Only *ridge* centres are kept: a ball whose voxel set lies inside the voxel set of a
   neighbour's ball with at least the same radius adds nothing. The test is Dougherty's
   discrete one (a table of the farthest voxel of each digital ball size as seen from
   each of the 18 face and edge neighbours), generalised to anisotropic voxels. (Corner
   neighbours prune few more centres than they cost to test.)
3. Ridge balls are painted: small ones offset by offset (for each offset ``o`` of
   length ``L``, every ridge centre with ``r >= L`` raises the thickness at ``c + o`` —
   one vectorised gather/maximum/scatter per offset, never two writes to one voxel),
   large ones as one x-interval per row through a sparse table (two updates per row
   instead of one per voxel). Balls at the cap are one distance pass, not painted.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ThicknessResult",
    "ball_offsets",
    "check_voxel_size",
    "inscribed_radius",
    "local_thickness",
    "paint_balls",
    "radius_squared",
    "ridge_mask",
    "thickness_halo",
    "thickness_in_window",
    "window_voxels",
]


@dataclass(frozen=True)
class ThicknessResult:
    """Local thickness of one binary structure.

    Attributes
    ----------
    thickness : numpy.ndarray
        float32, physical units; 0 outside the structure.
    clipped : bool
        True when some voxel reached ``max_thickness`` (thicker parts are capped).
    max_thickness : float
        The cap used.
    """

    thickness: np.ndarray
    clipped: bool
    max_thickness: float


def check_voxel_size(voxel_size: Sequence[float] | float) -> tuple[float, float, float]:
    """``voxel_size`` as three positive finite floats ``(z, y, x)``.

    Raises
    ------
    ValueError
        When it is not one or three positive finite numbers.
    """
    if isinstance(voxel_size, int | float | np.number):
        voxel_size = (float(voxel_size),) * 3
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x), got {vs}")
    return vs


def window_voxels(max_radius: float, voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Voxels per axis a ball of ``max_radius`` reaches from its centre, ``floor(r / s)``."""
    return tuple(int(math.floor(max_radius / s + 1e-9)) for s in voxel_size)


def thickness_halo(max_thickness: float, voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Halo (voxels per axis) a block needs for :func:`thickness_in_window` to be exact.

    A voxel's thickness depends on ridge centres up to ``max_thickness / 2`` away, whose
    radii depend on voxels up to ``max_thickness / 2`` further, plus one neighbour for
    the ridge test.
    """
    vs = check_voxel_size(voxel_size)
    w = window_voxels(float(max_thickness) / 2.0, vs)
    return tuple(2 * wi + 3 for wi in w)


def _min_convolve(values: np.ndarray, axis: int, cost: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``out[p] = min_k cost[|k|] + values[p + k]`` for ``p`` in ``[lo, hi)`` along ``axis``."""
    n = values.shape[axis]
    take = [slice(None)] * values.ndim
    take[axis] = slice(lo, hi)
    out = values[tuple(take)].copy()
    tmp = np.empty_like(out)
    for k in range(1, len(cost)):
        for kk in (k, -k):
            # output positions p (relative to lo) whose source p + kk lies in [0, n)
            p0, p1 = max(lo, -kk), min(hi, n - kk)
            if p0 >= p1:
                continue
            dst = [slice(None)] * values.ndim
            src = [slice(None)] * values.ndim
            dst[axis] = slice(p0 - lo, p1 - lo)
            src[axis] = slice(p0 + kk, p1 + kk)
            t = tmp[tuple(dst)]
            np.add(values[tuple(src)], cost[k], out=t)
            np.minimum(out[tuple(dst)], t, out=out[tuple(dst)])
    return out


def inscribed_radius(
    mask: np.ndarray,
    voxel_size: Sequence[float] | float = 1.0,
    max_radius: float | None = None,
    inner: Sequence[slice] | None = None,
) -> np.ndarray:
    """Radius of the ball centred at each voxel of ``mask``: the distance to the outside.

    The radius is the physical distance from the voxel centre to the nearest voxel
    centre not in ``mask`` (the Euclidean distance transform); voxels outside the array
    do not count as outside the mask.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        3-D structure ``(z, y, x)``.
    voxel_size : float or 3 floats
        Physical voxel size ``(z, y, x)``.
    max_radius : float, optional
        Cap on the radius (it also bounds the work); default: the array's diagonal.
    inner : tuple of 3 slices, optional
        Only compute this region of ``mask`` (the rest of ``mask`` is context).

    Returns
    -------
    numpy.ndarray
        float64 radii of the ``inner`` region, 0 outside ``mask``.

    Examples
    --------
    >>> m = np.zeros((1, 1, 7), bool); m[0, 0, 1:6] = True
    >>> inscribed_radius(m, 2.0)[0, 0].tolist()
    [0.0, 2.0, 4.0, 6.0, 4.0, 2.0, 0.0]
    """
    return np.sqrt(radius_squared(mask, voxel_size, max_radius, inner))


def radius_squared(
    mask: np.ndarray,
    voxel_size: Sequence[float] | float = 1.0,
    max_radius: float | None = None,
    inner: Sequence[slice] | None = None,
) -> np.ndarray:
    """Squared :func:`inscribed_radius`, capped at ``max_radius ** 2``.

    Sums are formed as ``((kx sx)^2 + (ky sy)^2) + (kz sz)^2``, exactly as
    :func:`ball_offsets` forms squared offset lengths, so a voxel lying exactly on a
    ball's sphere is inside it whichever block computes it.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {mask.shape}")
    vs = check_voxel_size(voxel_size)
    if max_radius is None:
        max_radius = math.sqrt(sum((n * s) ** 2 for n, s in zip(mask.shape, vs, strict=True)))
    if not max_radius > 0:
        raise ValueError(f"max_radius must be positive, got {max_radius}")
    region = tuple(slice(*sl.indices(n)[:2]) for sl, n in
                   zip(inner or (slice(None),) * 3, mask.shape, strict=True))
    cap = float(max_radius) ** 2
    # windows: the cost of reaching k voxels away, up to the first cost beyond the cap
    costs = []
    for s in vs:
        k = np.arange(0, int(max_radius / s) + 2)
        c = (k * s) ** 2
        costs.append(c[: int(np.searchsorted(c, cap, side="left")) + 1])
    # stages crop as they go: x keeps the rows the y and z stages read, and so on
    wz, wy = len(costs[0]) - 1, len(costs[1]) - 1
    zlo, zhi = max(region[0].start - wz, 0), min(region[0].stop + wz, mask.shape[0])
    ylo, yhi = max(region[1].start - wy, 0), min(region[1].stop + wy, mask.shape[1])
    d2 = _row_cost(mask[zlo:zhi, ylo:yhi], costs[2], region[2].start, region[2].stop, cap)
    d2 = _min_convolve(d2, 1, _trim(costs[1], d2), region[1].start - ylo, region[1].stop - ylo)
    d2 = _min_convolve(d2, 0, _trim(costs[0], d2), region[0].start - zlo, region[0].stop - zlo)
    np.minimum(d2, cap, out=d2)
    d2[~mask[region]] = 0.0
    return d2


def _row_cost(mask: np.ndarray, cost: np.ndarray, lo: int, hi: int, cap: float) -> np.ndarray:
    """Stage x: cost of the nearest voxel outside ``mask`` along each row, for x in [lo, hi).

    Uses running indices of the previous / next outside voxel (two accumulates) instead
    of one pass per window offset.
    """
    n = mask.shape[2]
    idx = np.arange(n, dtype=np.int64)
    big = np.int64(4 * n + 4)
    prev = np.where(mask, -big, idx)
    np.maximum.accumulate(prev, axis=2, out=prev)
    nxt = np.where(mask, big, idx)
    nxt = np.minimum.accumulate(nxt[:, :, ::-1], axis=2)[:, :, ::-1]
    k = np.minimum(idx - prev, nxt - idx)[:, :, lo:hi]
    lut = np.full(int(big) + n + 1, cap)
    m = min(len(cost), len(lut))
    lut[:m] = np.minimum(cost[:m], cap)
    return lut[np.minimum(k, len(lut) - 1)]


def _trim(cost: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Drop the costs that cannot improve any value (all values are below them)."""
    top = float(values.max()) if values.size else 0.0
    return cost[: int(np.searchsorted(cost, top, side="left")) + 1]


# face neighbours first (they prune most), then edges
_NEIGHBOURS = tuple(sorted((o for o in itertools.product((-1, 0, 1), repeat=3)
                            if 0 < sum(map(abs, o)) <= 2), key=lambda o: sum(map(abs, o))))


def _squared_length(off: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """``((ox sx)^2 + (oy sy)^2) + (oz sz)^2`` — the order :func:`radius_squared` sums in."""
    sz, sy, sx = voxel_size
    return ((off[:, 2] * sx) ** 2 + (off[:, 1] * sy) ** 2) + (off[:, 0] * sz) ** 2


@functools.cache
def _offsets(max_radius: float, voxel_size: tuple[float, float, float]):
    win = window_voxels(max_radius, voxel_size)
    axes = [np.arange(-w, w + 1) for w in win]
    grid = np.meshgrid(*axes, indexing="ij")
    off = np.stack([g.ravel() for g in grid], axis=1)
    length2 = _squared_length(off, voxel_size)
    keep = length2 <= float(max_radius) ** 2 * (1 + 1e-12)  # callers cut exactly
    off, length2 = off[keep], length2[keep]
    order = np.argsort(length2, kind="stable")
    return off[order], length2[order]


def ball_offsets(max_radius: float, voxel_size: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets ``(n, 3)`` within ``max_radius``, by length, and squared lengths."""
    return _offsets(float(max_radius), check_voxel_size(voxel_size))


@functools.cache
def _containment_lut(max_radius: float, voxel_size: tuple[float, float, float]):
    """Digital ball sizes, and for each neighbour the radius a ball there needs to hold one.

    ``levels[i]`` is the i-th distinct squared offset length; ``need[j][i]`` is the
    squared distance of the voxel of the ball of size ``levels[i]`` farthest from
    neighbour ``_NEIGHBOURS[j]``.
    """
    off, length2 = _offsets(max_radius, voxel_size)
    levels, first = np.unique(length2, return_index=True)
    last = np.r_[first[1:] - 1, len(length2) - 1]
    need = []
    for o in _NEIGHBOURS:
        far = _squared_length(off - np.asarray(o), voxel_size)
        need.append(np.maximum.accumulate(far)[last])
    return levels, need


def ridge_mask(radius_sq: np.ndarray, voxel_size: Sequence[float] | float = 1.0,
               max_radius: float | None = None) -> np.ndarray:
    """Centres whose digital ball is not inside a neighbour's (at least as large) ball.

    Parameters
    ----------
    radius_sq : numpy.ndarray
        Squared radii from :func:`radius_squared` (0 = not in the structure).
    voxel_size : float or 3 floats
        ``(z, y, x)``.
    max_radius : float, optional
        The cap used for the radii (default: their maximum).

    Returns
    -------
    numpy.ndarray of bool
        The centres to paint. Centres on the array border keep missing neighbours.
    """
    vs = check_voxel_size(voxel_size)
    keep = radius_sq > 0
    if not keep.any():
        return keep
    top = math.sqrt(float(radius_sq.max())) if max_radius is None else float(max_radius)
    levels, need = _containment_lut(top, vs)
    level = np.searchsorted(levels, radius_sq, side="right") - 1
    np.maximum(level, 0, out=level)
    shape = radius_sq.shape
    for o, lut in zip(_NEIGHBOURS, need, strict=True):
        dst = tuple(slice(max(-oi, 0), n - max(oi, 0)) for oi, n in zip(o, shape, strict=True))
        src = tuple(slice(max(oi, 0), n + min(oi, 0)) for oi, n in zip(o, shape, strict=True))
        holds = radius_sq[src] >= np.maximum(lut[level[dst]], radius_sq[dst])
        keep[dst] &= ~holds
    return keep


def paint_balls(
    shape: Sequence[int],
    centres: np.ndarray,
    radius_sq: np.ndarray,
    voxel_size: Sequence[float],
) -> np.ndarray:
    """``out[p] = max 2 r_c`` over balls with ``|p - c|^2 <= r_c^2``; float32 of ``shape``.

    ``centres`` are ``(n, 3)`` integer indices into ``shape`` and ``radius_sq`` their
    squared radii; balls are clipped to ``shape``. Small balls are painted voxel offset
    by voxel offset; large ones row by row (:func:`_paint_rows`). Both are exact and give
    identical arrays.
    """
    shape = tuple(int(s) for s in shape)
    vs = check_voxel_size(voxel_size)
    if len(radius_sq) == 0:
        return np.zeros(shape, np.float32)
    radius_sq = np.asarray(radius_sq, np.float64)
    max_r = math.sqrt(float(radius_sq.max()))
    win = window_voxels(max_r * (1.0 + 1e-12), vs)
    padded = tuple(n + 2 * w for n, w in zip(shape, win, strict=True))
    strides = np.array([padded[1] * padded[2], padded[2], 1], np.int64)
    idx = ((np.asarray(centres) + np.asarray(win)) * strides).sum(axis=1)
    # largest first; equal radii in memory order, so updates sweep the array
    order = np.lexsort((idx, -radius_sq))
    r2, idx = radius_sq[order], idx[order]
    value = (2.0 * np.sqrt(r2)).astype(np.float32)
    if win[2] >= _ROWS_FROM:
        flat = _paint_rows(padded, strides, win, idx, r2, value, vs)
    else:
        flat = _paint_offsets(padded, strides, idx, r2, value, vs)
    crop = tuple(slice(w, w + n) for w, n in zip(win, shape, strict=True))
    return flat.reshape(padded)[crop].copy()


#: balls reaching this many voxels along x are painted row by row
_ROWS_FROM = 6


def _paint_offsets(padded, strides, idx, r2, value, vs) -> np.ndarray:
    """One gather/maximum/scatter per voxel offset, for the centres whose ball holds it."""
    flat = np.zeros(int(np.prod(padded)), np.float32)
    offsets, length2 = _offsets(math.sqrt(float(r2[0])), vs)
    keep = length2 <= float(r2[0])
    flat_off = offsets[keep] @ strides
    counts = np.searchsorted(-r2, -length2[keep], side="right")  # centres with r^2 >= L^2
    target = np.empty(len(idx), np.int64)
    got = np.empty(len(idx), np.float32)
    for off, n in zip(flat_off.tolist(), counts.tolist(), strict=True):
        if n == 0:
            break  # lengths ascend: no centre reaches further
        t, g = target[:n], got[:n]
        np.add(idx[:n], off, out=t)
        np.take(flat, t, out=g)
        np.maximum(g, value[:n], out=g)
        flat[t] = g
    return flat


def _paint_rows(padded, strides, win, idx, r2, value, vs) -> np.ndarray:
    """Paint each ball as x-intervals, one per row it crosses, through a sparse table.

    An interval of length ``L`` is two (possibly overlapping) runs of ``2^k`` voxels,
    ``k = floor(log2 L)``: level ``k`` records the value at both run starts, and levels are
    pushed down (``2^k`` = two halves of ``2^(k-1)``) at the end. A ball then costs two
    updates per row instead of one per voxel. For one row offset the half-width ``w`` of
    each centre's interval only decreases along the centres (sorted by radius), so the
    centres with equal ``w`` form runs, and inside a run no two updates hit one voxel.
    """
    size = int(np.prod(padded))
    sz, sy, sx = vs
    wx = win[2]
    kmax = int(math.floor(math.log2(2 * wx + 1)))
    level_of = [int(math.floor(math.log2(2 * w + 1))) for w in range(wx + 1)]
    levels: list[np.ndarray | None] = [None] * (kmax + 1)
    neg = -r2
    dxs = np.arange(wx + 1)
    for dz in range(-win[0], win[0] + 1):
        for dy in range(-win[1], win[1] + 1):
            # squared lengths along the row, summed as _squared_length sums them
            row = ((dxs * sx) ** 2 + (dy * sy) ** 2) + (dz * sz) ** 2
            # reach[h] = centres whose interval is at least h wide on each side
            reach = np.searchsorted(neg, -row, side="right").tolist()
            if reach[0] == 0:
                continue
            reach.append(0)
            shift = int(dz * strides[0] + dy * strides[1])
            for half in range(wx, -1, -1):
                a, b = reach[half + 1], reach[half]
                if a == b:
                    continue
                k = level_of[half]
                lvl = levels[k]
                if lvl is None:
                    lvl = levels[k] = np.zeros(size, np.float32)
                v = value[a:b]
                t = idx[a:b] + (shift - half)
                lvl[t] = np.maximum(np.take(lvl, t), v)
                if half:
                    t = t + (2 * half + 1 - (1 << k))
                    lvl[t] = np.maximum(np.take(lvl, t), v)
    for k in range(kmax, 0, -1):
        hi = levels[k]
        if hi is None:
            continue
        lo = levels[k - 1]
        if lo is None:
            lo = levels[k - 1] = np.zeros(size, np.float32)
        step = 1 << (k - 1)
        np.maximum(lo, hi, out=lo)
        np.maximum(lo[step:], hi[:-step], out=lo[step:])
        levels[k] = None
    return levels[0] if levels[0] is not None else np.zeros(size, np.float32)


def thickness_in_window(
    mask: np.ndarray,
    voxel_size: Sequence[float] | float,
    max_thickness: float,
    write: Sequence[slice] | None = None,
) -> np.ndarray:
    """Local thickness of the ``write`` region of ``mask``, the rest being context.

    Equal to the whole-array result on ``write`` when ``mask`` extends at least
    :func:`thickness_halo` voxels beyond it on every side (or to the volume border).

    Returns
    -------
    numpy.ndarray
        float32 thickness of the ``write`` region (0 outside the structure).
    """
    mask = np.asarray(mask, bool)
    vs = check_voxel_size(voxel_size)
    max_r = float(max_thickness) / 2.0
    write = tuple(slice(*sl.indices(n)[:2]) for sl, n in
                  zip(write or (slice(None),) * 3, mask.shape, strict=True))
    w = window_voxels(max_r, vs)
    # centres whose ball can reach the write region, plus one for the ridge test
    region = tuple(slice(max(sl.start - wi - 1, 0), min(sl.stop + wi + 1, n))
                   for sl, wi, n in zip(write, w, mask.shape, strict=True))
    r2 = radius_squared(mask, vs, max_r, inner=region)
    keep = ridge_mask(r2, vs, max_r)
    crop = tuple(slice(a.start - r.start, a.stop - r.start) for a, r in zip(write, region, strict=True))
    # Balls at the cap all have the same radius: their union is the set of voxels within
    # max_r of a capped centre, one distance pass instead of painting (a plateau of capped
    # centres has no ridge to prune). Same sums as the painting, so ties agree.
    cap = max_r ** 2
    capped = r2 >= cap
    top = None
    if capped.any():
        near2 = radius_squared(~capped, vs, max_r * (1.0 + 1e-6), inner=crop)
        top = near2 <= cap
        keep &= ~capped
    shape = tuple(sl.stop - sl.start for sl in region)
    thickness = paint_balls(shape, np.argwhere(keep), r2[keep], vs)
    out = thickness[crop]
    if top is not None:
        out[top] = np.float32(max_thickness)
    out[~mask[write]] = 0.0
    return np.ascontiguousarray(out)


def local_thickness(
    mask: np.ndarray,
    voxel_size: Sequence[float] | float = 1.0,
    max_thickness: float | None = None,
) -> ThicknessResult:
    """Local thickness of a binary structure held in memory.

    Parameters
    ----------
    mask : numpy.ndarray of bool
        Structure ``(z, y, x)``.
    voxel_size : float or 3 floats
        Physical voxel size ``(z, y, x)``.
    max_thickness : float, optional
        Cap on the thickness (physical units); default: the array's diagonal (no cap).

    Returns
    -------
    ThicknessResult

    Examples
    --------
    >>> m = np.zeros((10, 4, 4), bool); m[2:8] = True     # a plate 6 voxels thick
    >>> res = local_thickness(m, voxel_size=(0.5, 1.0, 1.0))
    >>> float(res.thickness[m].min()), float(res.thickness[m].max()), res.clipped
    (3.0, 3.0, False)
    """
    mask = np.asarray(mask, bool)
    vs = check_voxel_size(voxel_size)
    if max_thickness is None:
        cap = 2.0 * math.sqrt(sum((n * s) ** 2 for n, s in zip(mask.shape, vs, strict=True)))
        user_cap = False
    else:
        cap = float(max_thickness)
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"max_thickness must be a positive number, got {max_thickness}")
        user_cap = True
    thickness = thickness_in_window(mask, vs, cap)
    clipped = bool(user_cap and np.any(thickness >= np.float32(cap)))
    return ThicknessResult(thickness, clipped, cap)
