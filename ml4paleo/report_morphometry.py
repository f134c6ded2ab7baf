"""The morphometry section of the segmentation report (:mod:`ml4paleo.report`).

From a measure run's ``morphometry.json`` and thickness map: the per-class table (BV/TV,
BS/TV, thickness, spacing, connectivity density, anisotropy, objects), histograms of
local thickness and of object volume, and a thickness-coloured snapshot (the three
central planes of the map on the :mod:`ml4paleo.morphometry.colours` scale, with its
colour bar). Figures use matplotlib's Agg backend; the map is read one plane at a time
from a pyramid level of at most ~512 pixels.
"""

from __future__ import annotations

import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml4paleo.workspace import SegmentationPaths

log = logging.getLogger(__name__)

__all__ = ["MorphometrySection", "load_section", "render_histograms", "render_section_html",
           "render_thickness_snapshot", "table_cells"]

#: table columns shown in the report: (key, header, unit power or None, digits)
REPORT_COLUMNS = (
    ("bv_tv", "BV/TV", None, 3), ("bs_tv", "BS/TV", -1, 3),
    ("thickness_mean", "Th mean", 1, 3), ("thickness_sd", "Th SD", 1, 3),
    ("thickness_max", "Th max", 1, 3), ("spacing_mean", "Sp mean", 1, 3),
    ("connectivity_density", "Conn.D", -3, 3), ("degree_of_anisotropy", "DA", None, 3),
    ("objects", "objects", None, 0),
)
_PANEL_PIXELS = 512


@dataclass
class MorphometrySection:
    """What the report shows of a measure run."""

    summary: dict
    thickness_map: Path | None
    histograms: bytes | None = None
    snapshot: bytes | None = None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def load_section(seg: SegmentationPaths | None) -> MorphometrySection | None:
    """The section of segmentation folder ``seg`` (None when it was not measured)."""
    if seg is None or not seg.morphometry_summary.is_file():
        return None
    try:
        summary = json.loads(seg.morphometry_summary.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable, no morphometry section (%s)", seg.morphometry_summary, exc)
        return None
    if not isinstance(summary, dict):
        return None
    tmap = seg.thickness_map if seg.thickness_map.exists() else None
    return MorphometrySection(summary=summary, thickness_map=tmap)


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if digits else f"{value:.0f}"
    return str(value)


def table_cells(section: MorphometrySection, unit_symbol: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the per-class morphometry table."""
    from ml4paleo.morphometry import class_table

    header = ["class"]
    for _, name, power, _ in REPORT_COLUMNS:
        if power is None:
            header.append(name)
        else:
            header.append(f"{name} ({unit_symbol}{'' if power == 1 else _sup(power)})")
    rows = []
    for row in class_table(section.summary):
        rows.append([str(row["name"])] + [_fmt(row.get(k), d) for k, _, _, d in REPORT_COLUMNS])
    return header, rows


def _sup(power: int) -> str:
    digits = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return str(power).translate(digits)


def render_histograms(section: MorphometrySection, unit_symbol: str,
                      colors: dict[int, str]) -> bytes | None:
    """PNG: local-thickness histograms (per class) and object-volume histograms."""
    classes = section.summary.get("classes") or []
    hists = [(c, c["thickness"]["histogram"]) for c in classes
             if isinstance(c.get("thickness"), dict) and c["thickness"].get("histogram")]
    volumes: dict[int, list[float]] = {}
    for row in section.summary.get("objects") or []:
        if row.get("volume") is not None:
            volumes.setdefault(int(row["class_value"]), []).append(float(row["volume"]))
    if not hists and not volumes:
        return None
    panels = int(bool(hists)) + int(bool(volumes))
    fig = _figure(5.2 * panels, 3.4)
    k = 1
    if hists:
        ax = fig.add_subplot(1, panels, k)
        k += 1
        for c, h in hists:
            edges = np.asarray(h["edges"], float)
            counts = np.asarray(h["counts"], float)
            if counts.sum() <= 0:
                continue
            top = int(np.nonzero(counts)[0].max()) + 2
            ax.stairs(counts[:top] / counts.sum(), edges[:top + 1], fill=True, alpha=0.5,
                      color=colors.get(int(c["value"]), "#888888"), label=str(c["name"]))
        ax.set_xlabel(f"local thickness ({unit_symbol})")
        ax.set_ylabel("fraction of voxels")
        ax.set_title("Local thickness", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    if volumes:
        ax = fig.add_subplot(1, panels, k)
        every = np.concatenate([np.asarray(v) for v in volumes.values()])
        lo, hi = float(every.min()), float(every.max())
        log_bins = hi > 20 * max(lo, 1e-12)
        bins = (np.geomspace(max(lo, 1e-12), hi, 25) if log_bins
                else np.linspace(lo, hi if hi > lo else lo + 1, 25))
        names = {int(c["value"]): str(c["name"]) for c in classes}
        for value, vols in sorted(volumes.items()):
            ax.hist(vols, bins=bins, alpha=0.55, color=colors.get(value, "#888888"),
                    label=f"{names.get(value, value)} ({len(vols)})")
        if log_bins:
            from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(LogFormatterSciNotation())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"object volume ({unit_symbol}³)")
        ax.set_ylabel("objects")
        ax.set_title("Object size", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def render_thickness_snapshot(section: MorphometrySection, unit_symbol: str) -> bytes | None:
    """PNG: the three central planes of the thickness map, coloured, with a colour bar."""
    if section.thickness_map is None:
        return None
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    from ml4paleo.formats import open_image, read_slice
    from ml4paleo.morphometry.colours import THICKNESS_COLORMAP, colorize

    try:
        tmap = open_image(section.thickness_map)
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable thickness map (%s)", section.thickness_map, exc)
        return None
    vmax = float(section.summary.get("max_thickness") or 1.0)
    level = next((i for i in range(len(tmap.levels))
                  if max(tmap.level(i).shape) <= _PANEL_PIXELS), len(tmap.levels) - 1)
    scale = tmap.level_scale(level)
    aspects = {0: scale[1] / scale[2], 1: scale[0] / scale[2], 2: scale[0] / scale[1]}
    # the plane of each axis holding the most structure (from the coarsest level: small)
    coarse_level = len(tmap.levels) - 1
    coarse = np.asarray(tmap.level(coarse_level)[:]) > 0
    factor = 2 ** coarse_level
    picks = []
    for axis in range(3):
        counts = coarse.sum(axis=tuple(d for d in range(3) if d != axis))
        best = int(np.argmax(counts)) if counts.any() else coarse.shape[axis] // 2
        picks.append(min(best * factor + factor // 2, tmap.shape[axis] - 1))
    fig = _figure(10.5, 3.6)
    axes = []
    for axis, index in enumerate(picks):
        plane = np.asarray(read_slice(tmap, axis, index, level), np.float32)
        ax = fig.add_subplot(1, 3, axis + 1, facecolor="black")
        ax.imshow(np.zeros(plane.shape), cmap="gray", vmin=0, vmax=1, aspect=aspects[axis])
        ax.imshow(colorize(plane, vmax), aspect=aspects[axis], interpolation="nearest")
        ax.set_title(f"{'zyx'[axis]} = {index}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    cmap = ListedColormap(THICKNESS_COLORMAP / 255.0)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, vmax), cmap=cmap), ax=axes,
                       fraction=0.025, pad=0.02)
    bar.set_label(f"local thickness ({unit_symbol})")
    return _png(fig)


def render_section_html(section: MorphometrySection, unit_symbol: str,
                        colors: dict[int, str]) -> str:
    """The section as HTML (images as data URLs)."""
    import base64

    e = html.escape
    header, rows = table_cells(section, unit_symbol)
    table = "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"
    values = [c.get("value") for c in section.summary.get("classes") or []]
    for value, row in zip(values, rows, strict=True):
        sw = f'<span class="sw" style="background:{e(colors.get(int(value), "#888"))}"></span>'
        table += f"<tr><td>{sw}{e(row[0])}</td>" + "".join(
            f'<td class="n">{e(c)}</td>' for c in row[1:]) + "</tr>"
    if not rows:
        table += f'<tr><td colspan="{len(header)}">No classes measured.</td></tr>'
    table += "</tbody></table>"
    parts = ['<h2 id="morphometry">Morphometry</h2>', table]
    notes = [f"Measured {e(str(section.summary.get('created_at') or ''))}."]
    if section.summary.get("max_thickness"):
        notes.append(f"Thickness resolved up to {section.summary['max_thickness']:.4g} {e(unit_symbol)}"
                     + (" (reached: thicker structures are under-reported)."
                        if section.summary.get("clipped") else "."))
    notes.append("BV/TV volume fraction, BS/TV surface density, Th local thickness (largest "
                 "inscribed sphere), Sp spacing (thickness of the complement), Conn.D "
                 "connectivity density (Euler), DA degree of anisotropy (MIL).")
    parts.append(f'<p class="muted">{" ".join(notes)}</p>')
    for png, alt in ((section.histograms, "thickness and object size histograms"),
                     (section.snapshot, "thickness-coloured planes")):
        if png:
            parts.append(f'<img alt="{alt}" src="data:image/png;base64,'
                         f'{base64.b64encode(png).decode("ascii")}">')
    return "\n".join(parts)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.size
