"""Closed-form eigenvalues of symmetric 3x3 and 2x2 matrices given element-wise (float32).

Written against an array module ``xp`` (numpy by default) so a GPU backend reuses them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["eigvalsh2", "eigvalsh3", "eigvalsh3_slabs"]


def eigvalsh3(
    a11: np.ndarray,
    a22: np.ndarray,
    a33: np.ndarray,
    a12: np.ndarray,
    a13: np.ndarray,
    a23: np.ndarray,
    *,
    xp: Any = np,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of symmetric 3x3 matrices given element-wise, in closed form.

    Trigonometric (Cardano) solution, vectorised, computed in float32.

    Returns
    -------
    tuple of ndarray
        ``(largest, middle, smallest)`` eigenvalues.

    Examples
    --------
    >>> e = eigvalsh3(*(np.array([v], np.float32) for v in (2, 3, 4, 0, 0, 0)))
    >>> [round(float(x[0]), 4) for x in e]
    [4.0, 3.0, 2.0]
    """
    f = np.float32
    a11, a22, a33, a12, a13, a23 = (xp.asarray(x, dtype=f) for x in (a11, a22, a33, a12, a13, a23))
    q = (a11 + a22 + a33) / f(3)
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p2 = b11 * b11 + b22 * b22 + b33 * b33 + f(2) * p1
    p = xp.sqrt(p2 / f(6))
    small = p <= np.finfo(f).tiny * f(1e6)
    inv_p = xp.where(small, f(0), f(1) / xp.where(small, f(1), p))
    # det(B) / 2 with B = (A - qI) / p
    det = (
        b11 * (b22 * b33 - a23 * a23)
        - a12 * (a12 * b33 - a23 * a13)
        + a13 * (a12 * a23 - b22 * a13)
    )
    r = det * inv_p * inv_p * inv_p / f(2)
    xp.clip(r, -1, 1, out=r)
    phi = xp.arccos(r) / f(3)
    two_p = f(2) * p
    e1 = q + two_p * xp.cos(phi)
    e3 = q + two_p * xp.cos(phi + f(2.0 * math.pi / 3.0))
    e2 = f(3) * q - e1 - e3
    return e1, e2, e3


def eigvalsh3_slabs(*parts: np.ndarray, xp: Any = np) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`eigvalsh3` over 3D arrays, a few planes at a time (bounded temporaries)."""
    shape = parts[0].shape
    outs = tuple(xp.empty(shape, np.float32) for _ in range(3))
    step = max(1, (1 << 19) // max(1, int(np.prod(shape[1:]))))
    for z0 in range(0, shape[0], step):
        sl = slice(z0, z0 + step)
        for o, e in zip(outs, eigvalsh3(*(p[sl] for p in parts), xp=xp), strict=True):
            o[sl] = e
    return outs


def eigvalsh2(
    a11: np.ndarray, a22: np.ndarray, a12: np.ndarray, *, xp: Any = np
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(largest, smallest)`` of symmetric 2x2 matrices, element-wise."""
    half_tr = (a11 + a22) * np.float32(0.5)
    d = xp.sqrt(((a11 - a22) * np.float32(0.5)) ** 2 + a12 * a12)
    return half_tr + d, half_tr - d
