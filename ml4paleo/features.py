"""Filter-bank features for voxel classification, computed per block with a halo.

One Gaussian per scale; gradient, Hessian, Laplacian of Gaussian and structure tensor are
finite differences of that smoothed volume (cheap and consistent between training and
prediction); 3x3 (or 2x2) symmetric eigenvalues in closed form, vectorised, float32.

A block is passed *with* its halo (see :func:`halo_for` and
:func:`ml4paleo.blocks.read_with_halo`) and the features of the centre are returned, so
features computed block by block equal features of the whole (halo-padded) volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

FAMILIES = ("gaussian", "gradient", "log", "dog", "hessian", "structure")
_TRUNCATE = 4.0


@dataclass(frozen=True)
class FeatureSettings:
    """Which filters at which scales.

    Attributes
    ----------
    scales : tuple of float
        Gaussian scales in voxels of the finest axis.
    families : tuple of str
        Subset of ``("gaussian", "gradient", "log", "dog", "hessian", "structure")``.
        The default leaves out the structure tensor: on the fossil phantom (whole volume,
        128 x 256 x 256) adding it lowered the Dice of the small dense class and cost time.
        ``dog`` is the difference between adjacent scales (the first against the raw data).
    eigen_min_scale : float
        Hessian and structure-tensor eigenvalues only at scales >= this (they are noise
        below it).
    structure_max_scale : float
        Structure-tensor eigenvalues only at scales <= this (its outer smoothing enlarges
        the halo; at large scales it added nothing on fossil phantoms).
    structure_outer : float
        Outer (integration) scale of the structure tensor as a fraction of the scale.
    raw : bool
        Include the unfiltered intensity.
    mode : str
        ``"3d"``, or ``"2d"`` to filter each z-slice on its own (very thin stacks).
    anisotropic : bool
        Scale sigma per axis by the voxel size (finer axes get more voxels of blur).
    """

    scales: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5)
    families: tuple[str, ...] = ("gaussian", "gradient", "log", "dog", "hessian")
    eigen_min_scale: float = 1.0
    structure_max_scale: float = 1.6
    structure_outer: float = 0.5
    raw: bool = True
    mode: str = "3d"
    anisotropic: bool = True
    _extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.scales or any(float(s) <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        if list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must be increasing, got {self.scales}")
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown feature families {sorted(unknown)}; known: {FAMILIES}")
        if self.mode not in ("3d", "2d"):
            raise ValueError(f"mode must be '3d' or '2d', got {self.mode!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "families", tuple(self.families))

    def to_dict(self) -> dict:
        """JSON-able form (inverse: :meth:`from_dict`)."""
        d = asdict(self)
        d.pop("_extra", None)
        d["scales"] = list(d["scales"])
        d["families"] = list(d["families"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSettings:
        """Build from :meth:`to_dict` output (unknown keys are rejected)."""
        names = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown feature settings {sorted(bad)}")
        d = dict(d)
        for k in ("scales", "families"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _radius(sigma: float) -> int:
    # scipy's gaussian_filter1d kernel radius for truncate=4
    return int(_TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def axis_sigmas(
    sigma: float, settings: FeatureSettings, voxel_size: Sequence[float] | None
) -> tuple[float, float, float]:
    """Per-axis sigma (voxels) for scale ``sigma``: finer axes blur more voxels."""
    vs = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    if settings.anisotropic:
        finest = min(vs)
        out = [sigma * finest / v for v in vs]
    else:
        out = [sigma] * 3
    if settings.mode == "2d":
        out[0] = 0.0
    return tuple(out)


def _scale_plan(settings: FeatureSettings):
    """Per scale: which derived features are computed there."""
    fam = set(settings.families)
    plan = []
    for s in settings.scales:
        eig = s >= settings.eigen_min_scale
        plan.append(
            {
                "sigma": s,
                "gaussian": "gaussian" in fam,
                "gradient": "gradient" in fam,
                "log": "log" in fam,
                "dog": "dog" in fam,
                "hessian": "hessian" in fam and eig,
                "structure": "structure" in fam and eig and s <= settings.structure_max_scale,
            }
        )
    return plan


def halo_for(settings: FeatureSettings, voxel_size: Sequence[float] | None = None) -> tuple[int, ...]:
    """Halo (voxels per axis) a block needs so its features equal whole-volume features.

    The Gaussian support (4 sigma) plus one voxel for the finite differences plus the
    structure tensor's outer smoothing where it is computed.
    """
    halo = [0, 0, 0]
    for p in _scale_plan(settings):
        sig = axis_sigmas(p["sigma"], settings, voxel_size)
        outer = axis_sigmas(p["sigma"] * settings.structure_outer, settings, voxel_size)
        for a in range(3):
            if settings.mode == "2d" and a == 0:
                continue
            h = _radius(sig[a]) + 1
            if p["structure"]:
                h += _radius(outer[a])
            halo[a] = max(halo[a], h)
    return tuple(halo)


def feature_names(settings: FeatureSettings) -> list[str]:
    """Names of the feature channels, in the order :func:`compute_features` returns them."""
    ndim = 2 if settings.mode == "2d" else 3
    names = ["raw"] if settings.raw else []
    for p in _scale_plan(settings):
        s = p["sigma"]
        if p["gaussian"]:
            names.append(f"gaussian_{s:g}")
        if p["dog"]:
            names.append(f"dog_{s:g}")
        if p["gradient"]:
            names.append(f"gradient_{s:g}")
        if p["log"]:
            names.append(f"log_{s:g}")
        if p["hessian"]:
            names += [f"hessian{i}_{s:g}" for i in range(ndim)]
        if p["structure"]:
            names += [f"structure{i}_{s:g}" for i in range(ndim)]
    return names


def n_features(settings: FeatureSettings) -> int:
    """Number of feature channels."""
    return len(feature_names(settings))


def eigvalsh3(
    a11: np.ndarray,
    a22: np.ndarray,
    a33: np.ndarray,
    a12: np.ndarray,
    a13: np.ndarray,
    a23: np.ndarray,
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
    a11, a22, a33, a12, a13, a23 = (np.asarray(x, dtype=f) for x in (a11, a22, a33, a12, a13, a23))
    q = (a11 + a22 + a33) / f(3)
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p2 = b11 * b11 + b22 * b22 + b33 * b33 + f(2) * p1
    p = np.sqrt(p2 / f(6))
    small = p <= np.finfo(f).tiny * f(1e6)
    inv_p = np.where(small, f(0), f(1) / np.where(small, f(1), p))
    # det(B) / 2 with B = (A - qI) / p
    det = (
        b11 * (b22 * b33 - a23 * a23)
        - a12 * (a12 * b33 - a23 * a13)
        + a13 * (a12 * a23 - b22 * a13)
    )
    r = det * inv_p * inv_p * inv_p / f(2)
    np.clip(r, -1, 1, out=r)
    phi = np.arccos(r) / f(3)
    two_p = f(2) * p
    e1 = q + two_p * np.cos(phi)
    e3 = q + two_p * np.cos(phi + f(2.0 * math.pi / 3.0))
    e2 = f(3) * q - e1 - e3
    return e1, e2, e3


def _eig3_slabs(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`eigvalsh3` over 3D arrays, a few planes at a time (bounded temporaries)."""
    shape = parts[0].shape
    outs = tuple(np.empty(shape, np.float32) for _ in range(3))
    step = max(1, (1 << 19) // max(1, int(np.prod(shape[1:]))))
    for z0 in range(0, shape[0], step):
        sl = slice(z0, z0 + step)
        for o, e in zip(outs, eigvalsh3(*(p[sl] for p in parts)), strict=True):
            o[sl] = e
    return outs


def eigvalsh2(
    a11: np.ndarray, a22: np.ndarray, a12: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(largest, smallest)`` of symmetric 2x2 matrices, element-wise."""
    half_tr = (a11 + a22) * np.float32(0.5)
    d = np.sqrt(((a11 - a22) * np.float32(0.5)) ** 2 + a12 * a12)
    return half_tr + d, half_tr - d


def _crop(arr: np.ndarray, margin: Sequence[int]) -> np.ndarray:
    sl = tuple(slice(m, arr.shape[i] - m) for i, m in enumerate(margin))
    return arr[sl]


def _smooth(
    data: np.ndarray, sig: Sequence[float], keep: Sequence[int], centre: Sequence[int]
) -> np.ndarray:
    """Gaussian of ``data`` keeping only ``keep`` voxels of margin around the centre.

    ``data`` is ``centre`` plus a symmetric margin. Each 1D pass crops its axis first to
    what the kernel needs, so later passes touch less data; a pass whose output is only a
    few planes thick is a direct weighted sum of planes (no wasted full-axis filtering).
    """
    out = data
    for a in range(3):
        halo = (out.shape[a] - centre[a]) // 2
        r = _radius(sig[a])
        need = keep[a] + r
        if halo > need:
            out = _crop_axis(out, a, halo - need)
        if sig[a] > 0:
            n_out = out.shape[a] - 2 * r
            if n_out <= 8:
                out = _valid_gauss_thin(out, sig[a], a)
            else:
                out = ndi.gaussian_filter1d(
                    out, sig[a], axis=a, mode="reflect", truncate=_TRUNCATE, output=np.float32
                )
        halo = (out.shape[a] - centre[a]) // 2
        if halo > keep[a]:
            out = _crop_axis(out, a, halo - keep[a])
    return out


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = _radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def _valid_gauss_thin(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """'Valid' Gaussian along ``axis`` as a weighted sum of planes (output r shorter each side)."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    n_out = x.shape[axis] - 2 * r
    xm = np.moveaxis(x, axis, 0)
    out = np.zeros((n_out, *xm.shape[1:]), np.float32)
    for j, w in enumerate(k):
        out += w * xm[j : j + n_out]
    return np.moveaxis(out, 0, axis)


def _crop_axis(arr: np.ndarray, axis: int, m: int) -> np.ndarray:
    sl = [slice(None)] * arr.ndim
    sl[axis] = slice(m, arr.shape[axis] - m)
    return arr[tuple(sl)]


def _d1(x: np.ndarray, axis: int) -> np.ndarray:
    """Central difference along ``axis``, shrinking that axis by 2 (one voxel each side)."""
    n = x.shape[axis]
    hi = [slice(None)] * 3
    lo = [slice(None)] * 3
    hi[axis] = slice(2, n)
    lo[axis] = slice(0, n - 2)
    return (x[tuple(hi)] - x[tuple(lo)]) * np.float32(0.5)


def _d2(x: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    a = [slice(None)] * 3
    b = [slice(None)] * 3
    c = [slice(None)] * 3
    a[axis], b[axis], c[axis] = slice(2, n), slice(1, n - 1), slice(0, n - 2)
    return x[tuple(a)] - np.float32(2) * x[tuple(b)] + x[tuple(c)]


def _crop_to(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return _crop(x, [(s - t) // 2 for s, t in zip(x.shape, shape, strict=True)])


def compute_features(
    block_with_halo: np.ndarray,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    halo: Sequence[int] | None = None,
) -> np.ndarray:
    """Features of the centre of a halo-padded block.

    Parameters
    ----------
    block_with_halo : ndarray (z, y, x)
        Intensities of the block grown by ``halo`` on every side (mirror-padded at the
        volume border, as :func:`ml4paleo.blocks.read_with_halo` does).
    settings : FeatureSettings, optional
        Filters and scales (default: ``FeatureSettings()``).
    voxel_size : sequence of 3 float, optional
        Physical voxel size (z, y, x) for per-axis sigmas.
    halo : sequence of 3 int, optional
        Halo present in ``block_with_halo``; default :func:`halo_for` (must be at least that).

    Returns
    -------
    ndarray, float32, shape (F, z, y, x)
        ``F = n_features(settings)`` channels for the block centre.

    Raises
    ------
    ValueError
        When the block is not 3D or the halo is smaller than the filters need.

    Examples
    --------
    >>> s = FeatureSettings(scales=(1.0,))
    >>> h = halo_for(s)
    >>> block = np.random.default_rng(0).random((8 + 2 * h[0], 8 + 2 * h[1], 8 + 2 * h[2]))
    >>> compute_features(block, s).shape
    (10, 8, 8, 8)
    """
    settings = settings or FeatureSettings()
    data = np.asarray(block_with_halo)
    centre, halo = _check_block(data, settings, voxel_size, halo)
    out = np.empty((n_features(settings), *centre), dtype=np.float32)
    for k, channel in enumerate(iter_features(data, settings, voxel_size, halo)):
        out[k] = channel
    return out


def _check_block(data, settings, voxel_size, halo):
    if data.ndim != 3:
        raise ValueError(f"block must be 3D (z, y, x), got shape {data.shape}")
    need = halo_for(settings, voxel_size)
    halo = tuple(int(h) for h in (halo if halo is not None else need))
    if len(halo) != 3 or any(h < n for h, n in zip(halo, need, strict=True)):
        raise ValueError(f"halo {halo} is smaller than the {need} these features need")
    centre = [s - 2 * h for s, h in zip(data.shape, halo, strict=True)]
    if any(c <= 0 for c in centre):
        raise ValueError(f"block of shape {data.shape} has no centre inside halo {halo}")
    return centre, halo


def iter_features(
    block_with_halo: np.ndarray,
    settings: FeatureSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    halo: Sequence[int] | None = None,
):
    """Yield the channels of :func:`compute_features` one by one (lower peak memory)."""
    settings = settings or FeatureSettings()
    data = np.asarray(block_with_halo)
    centre, halo = _check_block(data, settings, voxel_size, halo)
    data = data.astype(np.float32, copy=False)
    two_d = settings.mode == "2d"
    axes = (1, 2) if two_d else (0, 1, 2)
    if settings.raw:
        yield _crop(data, halo)
    prev = None  # previous scale's smoothed centre (for DoG)
    for p in _scale_plan(settings):
        sig = axis_sigmas(p["sigma"], settings, voxel_size)
        outer = axis_sigmas(p["sigma"] * settings.structure_outer, settings, voxel_size)
        deriv_margin = [0 if (two_d and a == 0) else 1 for a in range(3)]
        keep = list(deriv_margin)
        if p["structure"]:
            keep = [m + (_radius(outer[a]) if not (two_d and a == 0) else 0)
                    for a, m in enumerate(deriv_margin)]
        g = _smooth(data, sig, keep, centre)
        gc = _crop_to(g, centre)
        if p["gaussian"]:
            yield gc
        if p["dog"]:
            base = prev if prev is not None else _crop(data, halo)
            yield gc - base
        prev = gc
        need_grad = p["gradient"] or p["structure"]
        need_hess = p["log"] or p["hessian"]
        if need_grad:
            grads = []
            for a in axes:
                d = _d1(g, a)
                grads.append(d)
            if p["gradient"]:
                acc = np.zeros(centre, np.float32)
                for d in grads:
                    dc = _crop_to(d, centre)
                    acc += dc * dc
                yield np.sqrt(acc)
        if need_hess:
            gh = _crop_to(g, [c + 2 * m for c, m in zip(centre, deriv_margin, strict=True)])
            diag = [_crop_to(_d2(gh, a), centre) for a in axes]
            if p["log"]:
                yield sum(diag[1:], diag[0])
            if p["hessian"]:
                if two_d:
                    hyx = _crop_to(_d1(_d1(gh, 1), 2), centre)
                    e = eigvalsh2(diag[0], diag[1], hyx)
                else:
                    hzy = _crop_to(_d1(_d1(gh, 0), 1), centre)
                    hzx = _crop_to(_d1(_d1(gh, 0), 2), centre)
                    hyx = _crop_to(_d1(_d1(gh, 1), 2), centre)
                    e = _eig3_slabs(diag[0], diag[1], diag[2], hzy, hzx, hyx)
                for ev in e:
                    yield ev
        if p["structure"]:
            # gradients cover centre + outer margin; products smoothed at the outer scale
            shape_g = [c + 2 * (m - dm) for c, m, dm in zip(centre, keep, deriv_margin, strict=True)]
            gr = [_crop_to(d, shape_g) for d in grads]
            outer_keep = [0, 0, 0]
            prods = []
            n = len(gr)
            for i in range(n):
                for j in range(i, n):
                    prods.append(_smooth(gr[i] * gr[j], outer, outer_keep, centre))
            if two_d:
                e = eigvalsh2(prods[0], prods[2], prods[1])
            else:
                # order: zz, zy, zx, yy, yx, xx
                e = _eig3_slabs(prods[0], prods[3], prods[5], prods[1], prods[2], prods[4])
            for ev in e:
                yield _crop_to(ev, centre)
