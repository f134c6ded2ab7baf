"""A realistic synthetic fossil CT scan with known truth, for tests and benchmarks.

A bone (dense cortical shell around thin trabecular struts, cut by matrix-filled cracks)
and a small very dense tooth-like structure (enamel cap over dentine) sit in a rock
matrix with bright mineral grains. The scan is blurred, noisy, cupped by beam hardening
and striped by ring artefacts, like a lab micro-CT of a fossil.

Truth labels: 0 = matrix (everything that is rock, including pores, cracks and grains),
1 = bone, 2 = dense structure (tooth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

CLASS_NAMES = ("matrix", "bone", "tooth")


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-8)


def make_phantom(
    shape: Sequence[int] = (96, 128, 128), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Make a fossil-like CT phantom and its truth labels.

    Parameters
    ----------
    shape : (z, y, x)
        Volume shape (each at least 16).
    seed : int
        Random seed; the same seed gives the same phantom.

    Returns
    -------
    image : ndarray uint16
        The simulated scan.
    truth : ndarray uint8
        0 = matrix, 1 = bone, 2 = dense structure.

    Examples
    --------
    >>> image, truth = make_phantom((32, 48, 48), seed=1)
    >>> image.dtype.name, sorted(np.unique(truth).tolist())
    ('uint16', [0, 1, 2])
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {shape}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.meshgrid(
        np.arange(nz, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nx, dtype=np.float32),
        indexing="ij",
    )
    scale = min(shape) / 96.0

    # --- bone: a bent elliptic cylinder along x, wobbly outline ---
    cy = ny * (0.45 + 0.05 * rng.uniform(-1, 1)) + 0.06 * ny * np.sin(xx / nx * np.pi * 1.3)
    cz = nz * (0.5 + 0.05 * rng.uniform(-1, 1))
    ry, rz = 0.26 * ny, 0.3 * nz
    wobble = 1 + 0.08 * _smooth_noise(rng, shape, 8 * scale)
    rho = np.sqrt(((yy - cy) / ry) ** 2 + ((zz - cz) / rz) ** 2) / wobble
    xmargin = 0.08 * nx
    along = (xx > xmargin) & (xx < nx - xmargin)
    bone_region = (rho < 1.0) & along
    cortex_t = 0.22 + 0.05 * _smooth_noise(rng, shape, 6 * scale)
    cortex = bone_region & (rho > 1.0 - cortex_t)
    # trabecular struts: thin sheets/rods where a smooth random field crosses zero
    field = _smooth_noise(rng, shape, 2.2 * scale)
    field2 = _smooth_noise(rng, shape, 2.2 * scale)
    struts = (np.abs(field) < 0.2) | (np.abs(field2) < 0.14)
    trabecular = bone_region & ~cortex & struts
    bone = cortex | trabecular
    # matrix-filled cracks: thin planes through the bone
    for _ in range(3):
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        d0 = n @ np.array([cz, ny * 0.45, nx * rng.uniform(0.3, 0.7)])
        dist = np.abs(n[0] * zz + n[1] * yy + n[2] * xx - d0)
        crack = dist < rng.uniform(0.6, 1.1)
        bone &= ~crack
    del field, field2, struts, rho

    # --- tooth: a small cone (dentine) with an enamel cap, beside the bone ---
    tz, ty, tx = nz * 0.55, ny * 0.82, nx * rng.uniform(0.35, 0.65)
    h = 0.3 * nz
    r0 = 0.09 * min(ny, nx)
    t = (tz + h / 2 - zz) / h  # 0 at the crown tip... 1 at the root
    rad = np.sqrt((yy - ty) ** 2 + (xx - tx) ** 2)
    cone = (t > 0) & (t < 1) & (rad < r0 * np.sqrt(np.clip(t, 0, 1)) + 1.0)
    enamel = cone & (t < 0.45)
    tooth = cone
    bone &= ~tooth

    # --- mineral grains in the matrix (bright, like enamel) ---
    grains = np.zeros(shape, bool)
    n_grains = int(40 * (nz * ny * nx) / 96**3)
    for _ in range(n_grains):
        c = rng.uniform([0, 0, 0], shape)
        r = rng.uniform(0.8, 2.2) * scale
        sl = tuple(slice(max(int(c[i] - r - 1), 0), min(int(c[i] + r + 2), shape[i])) for i in range(3))
        d2 = (zz[sl] - c[0]) ** 2 + (yy[sl] - c[1]) ** 2 + (xx[sl] - c[2]) ** 2
        grains[sl] |= d2 < r * r
    grains &= ~(bone | tooth)

    truth = np.zeros(shape, np.uint8)
    truth[bone] = 1
    truth[tooth] = 2

    # --- attenuation ---
    mu = 0.40 + 0.025 * _smooth_noise(rng, shape, 10 * scale)  # rock with slow density drift
    mu += 0.02 * _smooth_noise(rng, shape, 1.0)  # grain texture
    mu[bone] = 0.58 + 0.03 * _smooth_noise(rng, shape, 3 * scale)[bone]
    mu[cortex & bone] += 0.04
    mu[tooth] = 0.72
    mu[enamel] = 0.95
    mu[grains] = 0.9
    mu = ndi.gaussian_filter(mu, 1.0)  # detector / reconstruction blur

    # beam hardening (cupping) and ring artefacts around the rotation axis (z)
    r_axis = np.sqrt((yy - ny / 2) ** 2 + (xx - nx / 2) ** 2) / (0.5 * np.hypot(ny, nx))
    mu *= 0.88 + 0.14 * r_axis**2
    rings = np.zeros(shape, np.float32)
    for _ in range(6):
        r_ring = rng.uniform(0.05, 0.9)
        amp = rng.uniform(-0.04, 0.04)
        rings += amp * np.exp(-(((r_axis - r_ring) * 0.5 * np.hypot(ny, nx)) ** 2) / 0.6)
    mu += rings
    mu += rng.normal(0, 0.04, shape).astype(np.float32)  # quantum noise
    image = np.clip(mu * 40000, 0, 65535).astype(np.uint16)
    return image, truth


def scribble_labels(
    truth: np.ndarray,
    slices: Sequence[int] | int = 4,
    *,
    axis: int = 0,
    strokes_per_class: int = 6,
    stroke_length: int = 25,
    seed: int = 0,
) -> np.ndarray:
    """Brush strokes a user could draw on a few slices, from the truth.

    Each stroke is a short random walk that stays inside one class (1-voxel-wide brush),
    started in the class interior where possible.

    Parameters
    ----------
    truth : ndarray (z, y, x)
        Truth classes (0..C-1).
    slices : int or sequence of int
        Slice indices along ``axis``, or how many evenly spaced slices to annotate.
    axis : int
        Axis the annotated slices are normal to.
    strokes_per_class, stroke_length : int
        Strokes per class per slice and their length in voxels.
    seed : int
        Random seed.

    Returns
    -------
    ndarray uint8
        Label volume: 0 = unlabelled, k + 1 = class k.
    """
    rng = np.random.default_rng(seed)
    idx = _slice_indices(truth.shape[axis], slices)
    labels = np.zeros(truth.shape, np.uint8)
    steps = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (1, 1), (-1, -1), (1, -1), (-1, 1)])
    for i in idx:
        plane = np.take(truth, i, axis=axis)
        out = np.zeros(plane.shape, np.uint8)
        for c in np.unique(plane):
            mask = plane == c
            inner = ndi.binary_erosion(mask, iterations=2)
            start_mask = inner if inner.sum() > 10 else mask
            pts = np.argwhere(start_mask)
            for _ in range(strokes_per_class):
                p = pts[rng.integers(len(pts))]
                direction = steps[rng.integers(len(steps))]
                for _ in range(stroke_length):
                    out[p[0], p[1]] = c + 1
                    if rng.random() < 0.3:
                        direction = steps[rng.integers(len(steps))]
                    q = p + direction
                    if not (0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1]) or not mask[
                        q[0], q[1]
                    ]:
                        direction = steps[rng.integers(len(steps))]
                        continue
                    p = q
        sl = [slice(None)] * 3
        sl[axis] = i
        labels[tuple(sl)] = out
    return labels


def painted_slices(truth: np.ndarray, slices: Sequence[int] | int = 4, *, axis: int = 0) -> np.ndarray:
    """Whole slices painted with the truth (every voxel labelled), as the original tool asked.

    Returns
    -------
    ndarray uint8
        Label volume: 0 = unlabelled, k + 1 = class k on the painted slices.
    """
    idx = _slice_indices(truth.shape[axis], slices)
    labels = np.zeros(truth.shape, np.uint8)
    sl = [slice(None)] * 3
    for i in idx:
        sl[axis] = i
        labels[tuple(sl)] = truth[tuple(sl)] + 1
    return labels


def _slice_indices(n: int, slices) -> list[int]:
    if isinstance(slices, int | np.integer):
        k = int(slices)
        if k < 1:
            raise ValueError(f"need at least one slice, got {k}")
        return [int(round(n * (j + 1) / (k + 1))) for j in range(k)]
    out = [int(s) for s in slices]
    bad = [s for s in out if not 0 <= s < n]
    if bad:
        raise ValueError(f"slice indices {bad} outside 0..{n - 1}")
    return out


class TiledPhantom:
    """A phantom of any size: one :func:`make_phantom` tile mirrored across the volume.

    Nothing of the size of the volume is ever held: :meth:`region` builds any box from the
    tile by index arithmetic (mirror tiling has no seams), :meth:`write_image` writes an
    OME-Zarr image chunk by chunk and builds its pyramid. For benchmarks and tests of
    large scans (2048^2, 4096^2 slices).

    Parameters
    ----------
    shape : (z, y, x)
        Size of the volume.
    tile : int or (z, y, x)
        Size of the phantom that is mirrored (each at least 16; clipped to ``shape``).
    seed : int
    dtype : dtype
        ``uint16`` (the phantom's own values) or ``uint8`` (scaled to the tile's range).

    Examples
    --------
    >>> p = TiledPhantom((8, 300, 200), tile=(16, 64, 64))
    >>> image, truth = p.region((slice(0, 8), slice(60, 70), slice(0, 200)))
    >>> image.shape, truth.shape, image.dtype.name
    ((8, 10, 200), (8, 10, 200), 'uint16')
    >>> bool((p.region((slice(0, 8), slice(63, 64), slice(0, 64)))[0] ==
    ...       p.region((slice(0, 8), slice(64, 65), slice(0, 64)))[0]).all())  # mirrored
    True
    """

    def __init__(self, shape: Sequence[int], tile: int | Sequence[int] = 128, seed: int = 0,
                 dtype: str | np.dtype = "uint16") -> None:
        self.shape = tuple(int(s) for s in shape)
        tiles = (int(tile),) * 3 if isinstance(tile, int | np.integer) else tuple(int(t) for t in tile)
        tiles = tuple(max(16, min(t, s)) for t, s in zip(tiles, self.shape, strict=True))
        image, self.tile_truth = make_phantom(tiles, seed)
        self.dtype = np.dtype(dtype)
        if self.dtype == np.uint8:
            lo, hi = float(image.min()), float(image.max())
            image = np.rint((image - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
        elif self.dtype != np.uint16:
            raise ValueError(f"dtype must be uint8 or uint16, got {self.dtype}")
        self.tile_image = image

    def _index(self, sl: slice, axis: int) -> np.ndarray:
        t = self.tile_image.shape[axis]
        i = np.arange(*sl.indices(self.shape[axis])) % (2 * t)
        return np.where(i < t, i, 2 * t - 1 - i)

    def region(self, box: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
        """(image, truth) of the box ``(z, y, x)`` slices."""
        idx = np.ix_(*(self._index(s, a) for a, s in enumerate(box)))
        return self.tile_image[idx], self.tile_truth[idx]

    def plane_truth(self, axis: int, index: int) -> np.ndarray:
        """Truth labels of one plane across ``axis``."""
        box = [slice(None)] * 3
        box[axis] = slice(int(index), int(index) + 1)
        return np.take(self.region(tuple(box))[1], 0, axis=axis)

    def write_image(self, path: Any, *, chunks: int | Sequence[int] = 128,
                    voxel_size: Sequence[float] | None = None, unit: str | None = None,
                    workers: int = 2, extra_attrs: dict | None = None) -> Any:
        """Write the phantom as an OME-Zarr image (chunk by chunk) with its 2x pyramid.

        Returns the :class:`~ml4paleo.formats.OmeImage`.
        """
        from concurrent.futures import ThreadPoolExecutor

        from ml4paleo.blocks import block_grid
        from ml4paleo.formats import ChunkFiles, build_pyramid, create_image

        img = create_image(path, self.shape, self.dtype, chunks=chunks, voxel_size=voxel_size,
                           unit=unit, extra_attrs=extra_attrs)
        files = ChunkFiles(img.path / img.levels[0])

        def write(block: Any) -> None:
            files.write_region(self.region(block.write)[0], [s.start for s in block.write])

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(write, block_grid(self.shape, files.chunks)))
        build_pyramid(img, workers=max(1, workers))
        return img
