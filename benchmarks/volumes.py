"""Benchmark volumes with known truth, and the labels a user would give on them.

Every generator is ``fn(shape, seed) -> Vol`` (a named tuple ``(scan, truth, voxel_size,
class_names)``): ``scan`` is the simulated (or real) scan (z, y, x), ``truth`` the class per
voxel (0..C-1, class 0 is the background), ``voxel_size`` ``(z, y, x)``. Only ``phantom``
uses :mod:`ml4paleo.phantom`; the others are written independently of it so the engine is
judged on data it was not tuned on:

``phantom``
    ``ml4paleo.phantom.make_phantom`` (matrix / bone / tooth).
``fossil_iso``, ``fossil_aniso``
    :func:`fossil`, a second fossil generator (bone shells with trabecular interiors and
    dense teeth in layered sediment with pores and pyrite cubes), at two parameter settings:
    isotropic, dense struts, Gaussian noise; and (2, 1, 1) voxels, sparse thin struts, low
    contrast, Poisson noise, strong rings and cupping.
``rock``
    A porous rock from ``porespy.generators.blobs`` (pores / grains / a mineral phase),
    rendered at twice the resolution and averaged down (partial volume), blurred and noisy.
``texture``
    Three classes with the same mean and variance and the same gradient energy, differing
    only by the shape of their structure (isotropic grain, fibres along x, sheets normal to z).
``mri``
    A real scan shipped inside nilearn: the MNI152 2009c T1 template (197 x 233 x 189, 1 mm);
    truth = argmax of its grey-matter, white-matter and "other" (1 - GM - WM) probability maps.
``texture_st``
    A small constructed volume whose two classes differ only in how coherent their fibre
    orientation is over a neighbourhood (for a unit test of per-dataset configuration
    choice; see :func:`texture_coherence`).

Labels: :func:`stroke_labels` (a few curved brush strokes per class on a few slices, kept
~2 voxels away from class boundaries, as a user scribbles) and :func:`painted_labels`
(whole slices painted with the truth).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi


class Vol(NamedTuple):
    """A benchmark volume: scan, truth, voxel size (z, y, x) and class names."""

    scan: np.ndarray
    truth: np.ndarray
    voxel_size: tuple[float, float, float]
    class_names: tuple[str, ...]


# ----------------------------------------------------------------------------- helpers
def _noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise normalised to zero mean, unit variance (float32)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    n -= n.mean()
    return n / (n.std() + 1e-8)


def _grid(shape, voxel_size):
    """Physical coordinates (z, y, x) of the voxel centres (float32, broadcastable)."""
    return tuple(
        (np.arange(n, dtype=np.float32) * np.float32(v)).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, v) in enumerate(zip(shape, voxel_size, strict=True))
    )


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _ct(mu: np.ndarray, rng: np.random.Generator, voxel_size, *, blur: float = 1.0,
        cupping: float = 0.1, rings: int = 6, ring_amp: float = 0.02, noise: str = "gaussian",
        noise_level: float = 0.03, scale: float = 30000.0) -> np.ndarray:
    """Simulate a reconstructed CT of attenuation ``mu``: blur, cupping, rings, noise -> uint16.

    ``blur`` is the point-spread sigma in physical units of the finest axis. ``noise`` is
    ``"gaussian"`` (sigma ``noise_level`` in mu units) or ``"poisson"`` (counts with mean
    ``mu / noise_level**2`` per voxel: the same relative noise at mu = 1, signal-dependent).
    Rings are centred on the rotation axis (z) through the middle of the slice.
    """
    vs = np.asarray(voxel_size, np.float32)
    sig = blur * vs.min() / vs
    mu = ndi.gaussian_filter(mu.astype(np.float32), sig)
    nz, ny, nx = mu.shape
    _, yy, xx = _grid(mu.shape, (1, 1, 1))
    r = np.sqrt((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) / (0.5 * math.hypot(ny, nx))
    mu *= (1 - cupping / 2) + cupping * r**2
    ring = np.zeros(r.shape, np.float32)
    for _ in range(rings):
        r0 = rng.uniform(0.03, 0.95)
        ring += rng.uniform(-ring_amp, ring_amp) * np.exp(-(((r - r0) * 0.5 * math.hypot(ny, nx)) ** 2) / 0.5)
    mu += ring
    if noise == "poisson":
        lam = 1.0 / noise_level**2
        mu = rng.poisson(np.clip(mu, 0, None) * lam).astype(np.float32) / np.float32(lam)
    elif noise == "gaussian":
        mu += rng.normal(0, noise_level, mu.shape).astype(np.float32)
    else:
        raise ValueError(f"noise must be 'gaussian' or 'poisson', got {noise!r}")
    return np.clip(mu * scale + 2000, 0, 65535).astype(np.uint16)


# ----------------------------------------------------------------------------- volumes
def phantom(shape: Sequence[int] = (96, 192, 192), seed: int = 0) -> Vol:
    """``ml4paleo.phantom.make_phantom`` (the engine's own generator)."""
    from ml4paleo.phantom import CLASS_NAMES, make_phantom

    scan, truth = make_phantom(tuple(shape), seed=seed)
    return Vol(scan, truth, (1.0, 1.0, 1.0), tuple(CLASS_NAMES))


def fossil(shape: Sequence[int] = (96, 192, 192), seed: int = 0, *,
           voxel_size: Sequence[float] = (1.0, 1.0, 1.0), strut_width: float = 0.3,
           strut_scale: float = 2.5, bone_contrast: float = 0.16, dense_contrast: float = 0.22,
           noise: str = "gaussian", noise_level: float = 0.035, rings: int = 6,
           ring_amp: float = 0.02, cupping: float = 0.12, n_bones: int = 2,
           n_teeth: int = 4) -> Vol:
    """A fossil CT generator independent of :mod:`ml4paleo.phantom`.

    Geometry in physical units (so anisotropic voxels sample the same object): ``n_bones``
    rotated superellipsoid bones with a cortical shell of varying thickness around a
    trabecular interior (sheets where a band-pass random field is within ``strut_width``
    of zero, field scale ``strut_scale``) and a marrow cavity filled with sediment; ``n_teeth``
    dense conical teeth (dentine with an enamel cap) rooted in or beside the bones; a layered
    sediment matrix with dark pores and bright pyrite cubes (both labelled matrix).

    Classes: 0 matrix, 1 bone, 2 dense (teeth).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    ext = np.array(shape, np.float32) * np.array(vs, np.float32)
    zz, yy, xx = _grid(shape, vs)
    full = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)
    L = float(ext.min())
    bone = np.zeros(full, bool)
    cortex = np.zeros(full, bool)
    noise_sig = [strut_scale / v for v in vs]
    for b in range(n_bones):
        c = ext * rng.uniform(0.3, 0.7, 3).astype(np.float32)
        if n_bones > 1:  # spread the bones out along x
            c[2] = ext[2] * (b + 0.5) / n_bones
        R = _rotation(rng)
        radii = L * np.array([rng.uniform(0.22, 0.32), rng.uniform(0.18, 0.26), rng.uniform(0.6, 0.9)], np.float32)
        p = [zz - c[0], yy - c[1], xx - c[2]]
        u = [R[i, 0] * p[0] + R[i, 1] * p[1] + R[i, 2] * p[2] for i in range(3)]
        e = rng.uniform(2.0, 3.0)  # superellipsoid exponent: squarish cross-sections
        rho = (np.abs(u[0] / radii[0]) ** e + np.abs(u[1] / radii[1]) ** e) ** (1 / e)
        rho = np.maximum(rho, np.abs(u[2] / radii[2]) ** 4)
        rho = rho * (1 + 0.06 * _noise(rng, full, [6 / v for v in vs]))
        inside = rho < 1
        t = 0.18 + 0.06 * _noise(rng, full, [8 / v for v in vs])
        shell = inside & (rho > 1 - t)
        field = _noise(rng, full, noise_sig)
        trab = inside & ~shell & (np.abs(field) < strut_width) & (rho > 0.35 + 0.1 * rng.random())
        bone |= shell | trab
        cortex |= shell
        del rho, field, u, p
    teeth = np.zeros(full, bool)
    enamel = np.zeros(full, bool)
    for _ in range(n_teeth):
        base = ext * rng.uniform(0.2, 0.8, 3).astype(np.float32)
        d = rng.normal(size=3).astype(np.float32)
        d /= np.linalg.norm(d)
        h = L * rng.uniform(0.25, 0.4)
        r0 = L * rng.uniform(0.06, 0.1)
        p = [zz - base[0], yy - base[1], xx - base[2]]
        s = (p[0] * d[0] + p[1] * d[1] + p[2] * d[2]) / h  # 0 at the root, 1 at the tip
        perp2 = sum((p[i] - s * h * d[i]) ** 2 for i in range(3))
        cone = (s > 0) & (s < 1) & (perp2 < (r0 * np.clip(1 - s, 0, 1) ** 0.6 + 0.5) ** 2)
        teeth |= cone
        enamel |= cone & (s > 0.6)
        del p, s, perp2
    bone &= ~teeth
    truth = np.zeros(full, np.uint8)
    truth[bone] = 1
    truth[teeth] = 2

    # sediment: bedding layers along a random normal, slow drift, grain texture
    n = rng.normal(size=3).astype(np.float32)
    n /= np.linalg.norm(n)
    bed = np.sin((zz * n[0] + yy * n[1] + xx * n[2]) * (2 * np.pi / rng.uniform(10, 25)))
    mu = 0.40 + 0.02 * bed + 0.02 * _noise(rng, full, [12 / v for v in vs])
    mu += 0.015 * _noise(rng, full, [0.8 / v for v in vs])
    # pores (dark) and pyrite cubes (bright) in the matrix, labelled matrix
    pores = (_noise(rng, full, [1.5 / v for v in vs]) > 2.3) & (truth == 0)
    pyrite = np.zeros(full, bool)
    for _ in range(int(30 * np.prod(ext) / 96**3)):
        c = ext * rng.random(3).astype(np.float32)
        a = rng.uniform(0.8, 2.5)
        pyrite |= (np.abs(zz - c[0]) < a) & (np.abs(yy - c[1]) < a) & (np.abs(xx - c[2]) < a)
    pyrite &= truth == 0
    mu[pores] = 0.15
    mu[pyrite] = 0.40 + bone_contrast + dense_contrast + 0.1
    mu_bone = 0.40 + bone_contrast + 0.02 * _noise(rng, full, [3 / v for v in vs])
    mu[bone] = mu_bone[bone] + 0.3 * bone_contrast * cortex[bone]
    del mu_bone
    mu[teeth] = 0.40 + bone_contrast + dense_contrast
    mu[enamel] += 0.5 * dense_contrast
    scan = _ct(mu, rng, vs, blur=1.0, cupping=cupping, rings=rings, ring_amp=ring_amp,
               noise=noise, noise_level=noise_level)
    return Vol(scan, truth, vs, ("matrix", "bone", "dense"))


def fossil_iso(shape: Sequence[int] = (96, 192, 192), seed: int = 0) -> Vol:
    """:func:`fossil`: isotropic voxels, dense struts, good contrast, Gaussian noise."""
    return fossil(shape, seed)


def fossil_aniso(shape: Sequence[int] = (64, 192, 192), seed: int = 0) -> Vol:
    """:func:`fossil`: (2, 1, 1) voxels, sparse thin struts, low contrast, Poisson noise,
    strong rings and cupping."""
    return fossil(shape, seed, voxel_size=(2.0, 1.0, 1.0), strut_width=0.12, strut_scale=2.0,
                  bone_contrast=0.10, dense_contrast=0.12, noise="poisson", noise_level=0.045,
                  rings=10, ring_amp=0.04, cupping=0.25, n_bones=1, n_teeth=4)


def rock(shape: Sequence[int] = (96, 160, 160), seed: int = 0, *, porosity: float = 0.35,
         blobiness: float = 1.5, mineral_fraction: float = 0.2) -> Vol:
    """A porous rock from ``porespy.generators.blobs``: 0 pore, 1 grain, 2 mineral.

    Rendered at twice the resolution per axis; the truth is the majority phase of each
    2 x 2 x 2 block and the scan the block mean (partial volume), then blurred and noisy.
    """
    import porespy

    rng = np.random.default_rng(seed)
    fine = [2 * int(s) for s in shape]
    pore = porespy.generators.blobs(fine, porosity=porosity, blobiness=blobiness, seed=seed,
                                    periodic=False)
    # mineral patches: a coarser blob field inside the solid
    patch = porespy.generators.blobs(fine, porosity=1 - mineral_fraction, blobiness=0.6,
                                     seed=seed + 1, periodic=False)
    phase = np.ones(fine, np.uint8)
    phase[pore] = 0
    phase[~pore & ~patch] = 2
    del pore, patch
    mu_of = np.array([0.08, 0.45, 0.75], np.float32)
    mu_f = mu_of[phase] + 0.03 * _noise(rng, fine, 3.0) * (phase > 0)
    z, y, x = shape
    mu = mu_f.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5))
    del mu_f
    counts = np.stack([(phase == k).reshape(z, 2, y, 2, x, 2).sum(axis=(1, 3, 5)) for k in range(3)])
    # ties (4 / 4) go to the denser phase, like a threshold at half the contrast would
    truth = (2 - np.argmax(counts[::-1], axis=0)).astype(np.uint8)
    del counts, phase
    scan = _ct(mu, rng, (1, 1, 1), blur=0.8, cupping=0.08, rings=4, ring_amp=0.015,
               noise="gaussian", noise_level=0.06)
    return Vol(scan, truth, (1.0, 1.0, 1.0), ("pore", "grain", "mineral"))


def _matched_sigma(s_perp: float, s_par: float, n_perp: int) -> float:
    """Isotropic sigma with the same mean squared gradient as a field smoothed
    ``s_perp`` along ``n_perp`` axes and ``s_par`` along the others (E|d_i f|^2 ~ 1/s_i^2)."""
    n_par = 3 - n_perp
    energy = n_perp / s_perp**2 + n_par / s_par**2
    return math.sqrt(3 / energy)


def texture(shape: Sequence[int] = (80, 160, 160), seed: int = 0, *, s_perp: float = 1.2,
            s_par: float = 5.0, noise_level: float = 0.3) -> Vol:
    """Classes that differ by texture only: 0 isotropic grain, 1 fibres along x, 2 sheets
    normal to z; each texture has zero mean, unit variance and (to first order) the same
    mean squared gradient, so brightness and edge strength alone cannot tell them apart.
    Regions are a smooth random partition of the volume.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    a = _noise(rng, shape, 14)
    b = _noise(rng, shape, 14)
    truth = np.zeros(shape, np.uint8)
    truth[a > 0.35] = 1
    truth[(b > 0.45) & (a <= 0.35)] = 2
    fib = _noise(rng, shape, (s_perp, s_perp, s_par))
    # sheets: one fine axis (z); a finer sigma there gives them the fibres' gradient energy
    s_sheet = 1 / math.sqrt(2 / s_perp**2 - 1 / s_par**2)
    sheet = _noise(rng, shape, (s_sheet, s_par, s_par))
    iso = _noise(rng, shape, _matched_sigma(s_perp, s_par, 2))
    img = np.where(truth == 1, fib, np.where(truth == 2, sheet, iso))
    img += rng.normal(0, noise_level, shape).astype(np.float32)
    scan = np.clip(img * 6000 + 30000, 0, 65535).astype(np.uint16)
    return Vol(scan, truth, (1.0, 1.0, 1.0), ("isotropic", "fibres", "sheets"))


def texture_coherence(shape: Sequence[int] = (40, 80, 80), seed: int = 0, *,
                      s_perp: float = 1.0, s_par: float = 6.0, cell: float = 4.0,
                      noise_level: float = 0.2) -> Vol:
    """Two classes separable only by structure-tensor texture (orientation coherence).

    Both classes are made of the same fibres (a field smoothed ``s_perp`` across and
    ``s_par`` along the fibre), with identical mean, variance and, voxel by voxel, the
    same distribution of rotation-invariant point features (intensity, gradient magnitude,
    Hessian eigenvalues) -- class 1's fibres all run along x, class 0's run along x, y or z
    in random cells of about ``cell`` voxels. Only an orientation measure integrated over a
    neighbourhood (the structure tensor with an outer scale of a few voxels) tells them apart.
    Classes: 0 "incoherent", 1 "coherent".
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    truth = (_noise(rng, shape, 10) > 0.3).astype(np.uint8)
    fields = []
    for ax in range(3):
        sig = [s_perp] * 3
        sig[ax] = s_par
        fields.append(_noise(rng, shape, sig))
    # random orientation per cubic cell, blended over ~1 voxel so cell faces add no edges
    zi = (np.arange(shape[0]) // cell).astype(np.int32)[:, None, None]
    yi = (np.arange(shape[1]) // cell).astype(np.int32)[None, :, None]
    xi = (np.arange(shape[2]) // cell).astype(np.int32)[None, None, :]
    nc = [int(math.ceil(s / cell)) for s in shape]
    orient = rng.integers(0, 3, size=nc)
    cells = orient[zi, yi, xi]
    w = [ndi.gaussian_filter((cells == k).astype(np.float32), 1.0) for k in range(3)]
    norm = np.sqrt(sum(wk * wk for wk in w))
    incoh = sum(wk * f for wk, f in zip(w, fields, strict=True)) / norm
    del w, norm
    img = np.where(truth == 1, fields[2], incoh)
    img += rng.normal(0, noise_level, shape).astype(np.float32)
    scan = np.clip(img * 6000 + 30000, 0, 65535).astype(np.uint16)
    return Vol(scan, truth, (1.0, 1.0, 1.0), ("incoherent", "coherent"))


# nilearn ships the MNI152 2009c symmetric template and its tissue maps
_MNI = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni_dir() -> Path:
    """Folder of nilearn's bundled data (raises ImportError without nilearn)."""
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def mri(shape: Sequence[int] | None = None, seed: int = 0) -> Vol:
    """The real MNI152 2009c T1 template shipped in nilearn; 0 other, 1 grey, 2 white matter.

    ``shape`` (z, y, x), when given, is a centred crop (for quick runs); ``seed`` is unused
    (the scan is real). Truth: GM where P(GM) is the largest of P(GM), P(WM) and
    1 - P(GM) - P(WM); likewise WM; everything else (CSF, skull, scalp, air) is "other".
    """
    import nibabel as nib

    d = mni_dir()
    # NIfTI arrays are (x, y, z); ours are (z, y, x)
    t1 = np.asarray(nib.load(d / _MNI["t1"]).dataobj, np.float32).transpose(2, 1, 0)
    gm = np.asarray(nib.load(d / _MNI["gm"]).dataobj, np.float32).transpose(2, 1, 0) / 255
    wm = np.asarray(nib.load(d / _MNI["wm"]).dataobj, np.float32).transpose(2, 1, 0) / 255
    other = np.clip(1 - gm - wm, 0, 1)
    truth = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8)
    scan = np.clip(t1 * 200, 0, 65535).astype(np.uint16)
    if shape is not None:
        sl = tuple(slice(max((n - s) // 2, 0), max((n - s) // 2, 0) + s)
                   for n, s in zip(scan.shape, shape, strict=True))
        scan, truth = scan[sl], truth[sl]
    return Vol(np.ascontiguousarray(scan), np.ascontiguousarray(truth), (1.0, 1.0, 1.0),
               ("other", "grey matter", "white matter"))


#: the suite: name -> (generator, full shape, quick shape)
SUITE: dict[str, tuple[Callable[..., Vol], tuple[int, int, int] | None, tuple[int, int, int]]] = {
    "phantom": (phantom, (96, 192, 192), (48, 64, 64)),
    "fossil_iso": (fossil_iso, (96, 192, 192), (48, 64, 64)),
    "fossil_aniso": (fossil_aniso, (64, 192, 192), (32, 64, 64)),
    "rock": (rock, (96, 160, 160), (48, 64, 64)),
    "texture": (texture, (80, 160, 160), (48, 64, 64)),
    "mri": (mri, None, (48, 96, 96)),
}

#: extra volumes not in the default table
EXTRA = {"texture_st": (texture_coherence, (40, 80, 80), (32, 64, 64))}


def make(name: str, quick: bool = False, seed: int = 0) -> Vol:
    """Build suite volume ``name`` at its full (or quick) size."""
    table = {**SUITE, **EXTRA}
    if name not in table:
        raise ValueError(f"unknown volume {name!r}; known: {sorted(table)}")
    fn, full, small = table[name]
    return fn(small if quick else full, seed)


# ----------------------------------------------------------------------------- labels
def slice_indices(n: int, k: int) -> list[int]:
    """``k`` evenly spaced interior slice indices of an axis of length ``n``."""
    return [int(round(n * (j + 1) / (k + 1))) for j in range(k)]


def _stroke_path(rng, mask: np.ndarray, length: int) -> np.ndarray:
    """Centre line of one curved stroke inside ``mask``: a smooth random walk in heading."""
    pts = np.argwhere(mask)
    p = pts[rng.integers(len(pts))].astype(np.float64)
    heading = rng.uniform(0, 2 * np.pi)
    turn = 0.0
    out = []
    h, w = mask.shape
    for _ in range(length):
        iy, ix = int(round(p[0])), int(round(p[1]))
        out.append((iy, ix))
        turn = 0.8 * turn + rng.normal(0, 0.12)  # smooth curvature
        for _attempt in range(8):
            q = p + (math.sin(heading + turn), math.cos(heading + turn))
            qy, qx = int(round(q[0])), int(round(q[1]))
            if 0 <= qy < h and 0 <= qx < w and mask[qy, qx]:
                heading += turn
                p = q
                break
            heading += rng.uniform(0.6, 1.6) * rng.choice((-1, 1))  # bounce off the boundary
        else:
            break
    return np.array(out, np.int64)


def stroke_slice(truth2d: np.ndarray, rng: np.random.Generator, *, strokes: int = 3,
                 margin: int = 2, brush: int = 1, length: float = 0.25) -> np.ndarray:
    """Brush strokes on one slice: ``strokes`` curved lines per class present.

    Each stroke starts at a random voxel of the class eroded by ``margin`` (by less for
    classes too thin for it), wanders with smoothly changing heading for ``length`` times
    the slice's shorter side, and is painted with a disc brush of radius ``brush``,
    clipped to the eroded class (strokes stay ~``margin`` voxels off boundaries).
    Returns labels: 0 unlabelled, k + 1 class k.
    """
    out = np.zeros(truth2d.shape, np.uint8)
    n = max(8, int(length * min(truth2d.shape)))
    disk = ndi.generate_binary_structure(2, 1) if brush == 1 else (
        np.hypot(*np.mgrid[-brush:brush + 1, -brush:brush + 1]) <= brush)
    for c in np.unique(truth2d):
        mask = truth2d == c
        inner = None
        for m in range(margin, -1, -1):
            inner = ndi.binary_erosion(mask, iterations=m) if m else mask
            if inner.sum() >= 12:
                break
        if not inner.any():
            continue
        path = np.zeros(mask.shape, bool)
        for _ in range(strokes):
            pts = _stroke_path(rng, inner, n)
            path[pts[:, 0], pts[:, 1]] = True
        painted = ndi.binary_dilation(path, disk) & inner if brush else path
        out[painted] = c + 1
    return out


def stroke_labels(truth: np.ndarray, slices: int | Sequence[int] = 4, *, seed: int = 0,
                  axis: int = 0, **kw) -> np.ndarray:
    """A few brush strokes per class on ``slices`` planes normal to ``axis`` (see
    :func:`stroke_slice`); 0 = unlabelled, k + 1 = class k."""
    rng = np.random.default_rng(seed)
    idx = slice_indices(truth.shape[axis], slices) if isinstance(slices, int) else list(slices)
    labels = np.zeros(truth.shape, np.uint8)
    for i in idx:
        sl = [slice(None)] * 3
        sl[axis] = i
        labels[tuple(sl)] = stroke_slice(truth[tuple(sl)], rng, **kw)
    return labels


def painted_labels(truth: np.ndarray, slices: int | Sequence[int] = 4, *, axis: int = 0) -> np.ndarray:
    """``slices`` whole planes painted with the truth; 0 = unlabelled, k + 1 = class k."""
    idx = slice_indices(truth.shape[axis], slices) if isinstance(slices, int) else list(slices)
    labels = np.zeros(truth.shape, np.uint8)
    for i in idx:
        sl = [slice(None)] * 3
        sl[axis] = i
        labels[tuple(sl)] = truth[tuple(sl)] + 1
    return labels


def dice_per_class(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> list[float]:
    """Dice of each class (1.0 when a class is absent from both)."""
    out = []
    for c in range(n_classes):
        t, p = truth == c, pred == c
        denom = int(t.sum()) + int(p.sum())
        out.append(round(2 * int((t & p).sum()) / denom, 4) if denom else 1.0)
    return out
