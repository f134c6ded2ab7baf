"""Which filters at which scales: the settings, the per-scale plan, channel names and halos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .families import FAMILIES, REGISTRY, Family
from .kernels import axis_sigmas, kernel_radius

__all__ = ["FeatureSettings", "ScalePlan", "all_feature_names", "feature_names", "halo_for",
           "n_features", "scale_plan"]


@dataclass(frozen=True)
class FeatureSettings:
    """Which filters at which scales.

    Attributes
    ----------
    scales : tuple of float
        Gaussian scales in voxels of the finest axis.
    families : tuple of str
        Subset of :data:`ml4paleo.features.FAMILIES` (``gaussian``, ``dog``, ``gradient``,
        ``log``, ``hessian``, ``structure``). The default leaves out the structure tensor:
        on the fossil phantom (whole volume, 128 x 256 x 256) adding it lowered the Dice of
        the small dense class and cost time. ``dog`` is the difference between adjacent
        scales (the first against the raw data).
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
    coarse_from : float
        Scales whose per-axis sigma (voxels) reaches this are computed on a grid twice as
        coarse along that axis, aligned to the volume, and interpolated back
        (:mod:`ml4paleo.features.coarse`); 0 (default) = every scale at full resolution.
        At least 3 when set. Scales with the structure tensor stay at full resolution.
    channels : tuple of str or None
        Compute only these channels (names from :func:`all_feature_names`; kept in that
        order whatever the order given). None (default) = every channel. Scales and
        families without a kept channel are skipped and the halo shrinks to what the kept
        channels need; a kept channel's values are exactly those of the full set (a model
        pruned to the channels its forest uses predicts the same).
    """

    scales: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5)
    families: tuple[str, ...] = ("gaussian", "gradient", "log", "dog", "hessian")
    eigen_min_scale: float = 1.0
    structure_max_scale: float = 1.6
    structure_outer: float = 0.5
    raw: bool = True
    mode: str = "3d"
    anisotropic: bool = True
    coarse_from: float = 0.0
    channels: tuple[str, ...] | None = None
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
        if self.coarse_from and not float(self.coarse_from) >= 3.0:
            raise ValueError(f"coarse_from must be 0 (off) or at least 3, got {self.coarse_from}")
        object.__setattr__(self, "coarse_from", float(self.coarse_from or 0.0))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "families", tuple(self.families))
        if self.channels is not None:
            every = all_feature_names(self)
            bad = sorted(set(self.channels) - set(every))
            if bad:
                raise ValueError(f"unknown feature channels {bad[:5]} for these settings")
            if not self.channels:
                raise ValueError("channels must name at least one channel (or be None for all)")
            keep = set(self.channels)
            object.__setattr__(self, "channels", tuple(n for n in every if n in keep))

    def with_channels(self, channels: Sequence[str] | None) -> FeatureSettings:
        """These settings computing only ``channels`` (None = all)."""
        from dataclasses import replace

        return replace(self, channels=None if channels is None else tuple(channels))

    def to_dict(self) -> dict:
        """JSON-able form (inverse: :meth:`from_dict`)."""
        d = asdict(self)
        d.pop("_extra", None)
        d["scales"] = list(d["scales"])
        d["families"] = list(d["families"])
        if not d["coarse_from"]:
            del d["coarse_from"]  # files of models without the coarse grid stay as they were
        if d["channels"] is None:
            del d["channels"]  # files of full-set models stay as they were
        else:
            d["channels"] = list(d["channels"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSettings:
        """Build from :meth:`to_dict` output (unknown keys are rejected)."""
        names = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown feature settings {sorted(bad)}")
        d = dict(d)
        for k in ("scales", "families", "channels"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class ScalePlan:
    """The families computed at one scale, in channel order.

    Attributes
    ----------
    sigma : float
    families : tuple of Family
        Families with at least one kept channel at this scale.
    index : int
        Position of the scale in ``settings.scales`` (a scale kept only because the next
        scale's difference of Gaussians needs its smoothed image has no families).
    names : frozenset of str or None
        Kept channel names (None = every channel of ``families``).
    """

    sigma: float
    families: tuple[Family, ...]
    index: int = 0
    names: frozenset | None = None

    def margin(self, settings: FeatureSettings, voxel_size: Sequence[float] | None
               ) -> tuple[int, int, int]:
        """Extra smoothed-image margin per axis its families need (the largest)."""
        out = [0, 0, 0]
        for f in self.families:
            out = [max(a, b) for a, b in zip(out, f.margin(settings, self.sigma, voxel_size),
                                             strict=True)]
        return tuple(out)

    def keeps(self, name: str) -> bool:
        """Whether channel ``name`` of this scale is computed."""
        return self.names is None or name in self.names


def _full_plan(settings: FeatureSettings) -> list[ScalePlan]:
    chosen = set(settings.families)
    return [ScalePlan(s, tuple(f for f in REGISTRY if f.name in chosen and f.enabled_at(settings, s)), i)
            for i, s in enumerate(settings.scales)]


def scale_plan(settings: FeatureSettings) -> list[ScalePlan]:
    """Per scale: which families are computed there (selected, enabled at that scale and,
    with ``settings.channels``, holding a kept channel), in channel order.

    With ``settings.channels``, scales without a kept channel are left out unless the next
    scale's kept difference of Gaussians needs their smoothed image (then they have no
    families).
    """
    full = _full_plan(settings)
    if settings.channels is None:
        return full
    keep = set(settings.channels)
    ndim = 2 if settings.mode == "2d" else 3
    out = []
    for i, p in enumerate(full):
        fams = tuple(f for f in p.families if keep & set(f.channel_names(p.sigma, ndim)))
        nxt = full[i + 1] if i + 1 < len(full) else None
        feeds_dog = nxt is not None and f"dog_{nxt.sigma:g}" in keep
        if fams or feeds_dog:
            out.append(ScalePlan(p.sigma, fams, i, frozenset(keep)))
    return out


def halo_for(settings: FeatureSettings, voxel_size: Sequence[float] | None = None) -> tuple[int, ...]:
    """Halo (voxels per axis) a block needs so its features equal whole-volume features.

    The Gaussian support (4 sigma) plus one voxel for the finite differences plus what a
    family needs beyond that (the structure tensor's outer smoothing) where it is computed;
    on a coarse axis (``coarse_from``) what :func:`ml4paleo.features.coarse.coarse_halo` says.
    """
    from .coarse import coarse_halo, plan_steps

    halo = [0, 0, 0]
    for p in scale_plan(settings):
        sig = axis_sigmas(p.sigma, settings, voxel_size)
        extra = p.margin(settings, voxel_size)
        steps = plan_steps(p, settings, voxel_size)
        for a in range(3):
            if settings.mode == "2d" and a == 0:
                continue
            if steps[a] > 1:
                need = coarse_halo(sig[a], steps[a], extra[a])
            else:
                need = kernel_radius(sig[a]) + 1 + extra[a]
            halo[a] = max(halo[a], need)
    return tuple(halo)


def all_feature_names(settings: FeatureSettings) -> list[str]:
    """Names of every channel of ``settings``, ignoring ``settings.channels``."""
    ndim = 2 if settings.mode == "2d" else 3
    names = ["raw"] if settings.raw else []
    for p in _full_plan(settings):
        for f in p.families:
            names += f.channel_names(p.sigma, ndim)
    return names


def feature_names(settings: FeatureSettings) -> list[str]:
    """Names of the feature channels, in the order :func:`compute_features` returns them."""
    names = all_feature_names(settings)
    if settings.channels is None:
        return names
    keep = set(settings.channels)
    return [n for n in names if n in keep]


def n_features(settings: FeatureSettings) -> int:
    """Number of feature channels."""
    return len(feature_names(settings))
