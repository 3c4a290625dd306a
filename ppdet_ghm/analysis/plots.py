"""The GHM paper's gradient figures, drawn from the data of :mod:`ppdet_ghm.analysis.gradients`.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas (no display, no global
backend switch). Each function takes a summary dict (``summarize_cls`` / ``summarize_reg``), a
PNG path and a subtitle naming the run (config, weights, #images, #anchors), and returns the path.

- :func:`plot_cls_distribution`: the gradient-norm distribution of the classification outputs, log y
  (paper Figure 1, left).
- :func:`plot_cls_reweighting`: reweighted gradient norm of CE, FL and GHM-C against the original g,
  and each loss's share of the summed gradient norm per g bin, log y (paper Figure 1, middle and
  right).
- :func:`plot_reg`: the ASL1 gradient-norm distribution of the box regression, the gradient norm of
  SL1, ASL1 and GHM-R against |d|, and their shares per gr bin.
"""

from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["plot_cls_distribution", "plot_cls_reweighting", "plot_reg"]

DPI = 100
PALETTE_COLORS = 128
COLORS = {
    "ce": "#1f77b4",
    "focal": "#d62728",
    "ghm": "#2ca02c",
    "sl1": "#9467bd",
    "asl1": "#1f77b4",
    "hist": "#7f7f7f",
}
LEVEL_CMAP = "viridis"


def _new_figure(ncols: int, width_per_panel: float = 5.2, height: float = 4.4) -> Figure:
    fig = Figure(figsize=(width_per_panel * ncols, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrap_fields(text: str, width: int, sep: str = " | ") -> str:
    """Wrap ``text`` at its ``sep``-separated fields (words inside a field too long for a line)."""
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.extend(textwrap.wrap(part, width=width, break_long_words=False) or [""])
    return "\n".join(lines)


def _save(fig: Figure, path: str | Path, title: str, subtitle: str) -> Path:
    if subtitle:  # wrapped to the figure width (under 7.6 px per character at font size 10)
        width_chars = int(fig.get_figwidth() * DPI / 7.6)
        subtitle = _wrap_fields(subtitle, width_chars)
        title = f"{title}\n{subtitle}"
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    # line plots need few colours: a 128-colour palette PNG is ~3x smaller and looks the same
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)  # fmt: skip
    logger.info("wrote %s", path)
    return path


def _positive(values: np.ndarray) -> np.ndarray:
    """Zeros -> NaN so that log axes leave gaps instead of warnings."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan)


def _bars(ax, edges: np.ndarray, heights: np.ndarray, **kwargs) -> None:
    edges = np.asarray(edges, dtype=np.float64)
    right = np.minimum(edges[1:], 1.0)
    ax.bar(edges[:-1], _positive(heights), width=right - edges[:-1], align="edge", **kwargs)


def _level_steps(ax, edges: np.ndarray, level_values: np.ndarray, label_prefix: str) -> None:
    import matplotlib

    cmap = matplotlib.colormaps[LEVEL_CMAP]
    num_levels = level_values.shape[0]
    stairs_edges = np.minimum(np.asarray(edges, dtype=np.float64), 1.0)
    for lvl in range(num_levels):
        ax.stairs(
            _positive(level_values[lvl]),
            stairs_edges,
            color=cmap(lvl / max(num_levels - 1, 1) * 0.9),
            linewidth=1.0,
            label=f"{label_prefix}{lvl + 3}",
        )


def plot_cls_distribution(summary: dict, path: str | Path, subtitle: str = "") -> Path:
    """Fraction of valid classification elements per g bin, log y (paper Figure 1, left).

    Grey bars: all levels pooled; thin steps: each FPN level (P3-P7) normalised to its own total;
    red bars: the positive-target elements' share of all elements.
    """
    fig = _new_figure(1, width_per_panel=7.0, height=4.8)
    ax = fig.add_subplot()
    edges = summary["edges"]
    total = max(int(np.sum(summary["counts"])), 1)
    _bars(ax, edges, summary["fraction"], color=COLORS["hist"], alpha=0.55, label="all levels")
    _bars(
        ax,
        edges,
        np.asarray(summary["pos_counts"]) / total,
        color=COLORS["focal"],
        alpha=0.6,
        label="positive targets (of all)",
    )
    if summary["level_counts"].shape[0] > 1:
        _level_steps(ax, edges, summary["level_fraction"], "level P")
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("gradient norm  g = |p − p*|")
    ax.set_ylabel("fraction of examples (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    return _save(fig, path, "Gradient norm distribution (classification)", subtitle)


def plot_cls_reweighting(summary: dict, path: str | Path, subtitle: str = "") -> Path:
    """CE / FL / GHM-C: reweighted gradient norm vs g, and share of total gradient per g bin.

    Left (paper Figure 1, middle): CE's norm is g; FL's is its exact derivative w.r.t. the logit
    (drawn for positive and negative targets when alpha is set); GHM-C's is ``g * beta(g)`` with
    ``beta`` from the collected histogram. Right (paper Figure 1, right): each loss's summed
    gradient norm per bin over the collected examples, as a fraction of its total.
    """
    fig = _new_figure(2)
    ax, ax2 = fig.subplots(1, 2)
    grid = summary["grid"]
    gamma = float(summary["focal_gamma"])
    alpha = float(summary["focal_alpha"])
    ax.plot(grid, _positive(summary["curve_ce"]), color=COLORS["ce"], label="CE")
    if np.isnan(alpha):
        ax.plot(
            grid,
            _positive(summary["curve_focal_pos"]),
            color=COLORS["focal"],
            label=f"FL (γ={gamma:g})",
        )
    else:
        ax.plot(
            grid,
            _positive(summary["curve_focal_pos"]),
            color=COLORS["focal"],
            label=f"FL (γ={gamma:g}), positives α={alpha:g}",
        )
        ax.plot(
            grid,
            _positive(summary["curve_focal_neg"]),
            color=COLORS["focal"],
            linestyle="--",
            label=f"FL (γ={gamma:g}), negatives 1−α={1 - alpha:g}",
        )
    ax.plot(
        grid,
        _positive(summary["curve_ghmc"]),
        color=COLORS["ghm"],
        label=f"GHM-C ({len(summary['centers'])} bins)",
    )
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("original gradient norm  g = |p − p*|")
    ax.set_ylabel("reweighted gradient norm (log scale)")
    ax.set_title("Reweighted gradient norm", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)

    centers = summary["centers"]
    for key, label, color, marker in (
        ("contrib_ce", "CE", COLORS["ce"], "o"),
        ("contrib_focal", "FL", COLORS["focal"], "s"),
        ("contrib_ghmc", "GHM-C", COLORS["ghm"], "^"),
    ):
        ax2.plot(
            centers, _positive(summary[key]), color=color, marker=marker, markersize=3, label=label
        )
    ax2.set_yscale("log")
    ax2.set_xlim(0.0, 1.0)
    ax2.set_xlabel("original gradient norm  g (bin centre)")
    ax2.set_ylabel("fraction of the total gradient norm (log scale)")
    ax2.set_title("Total gradient contribution per g bin", fontsize=10)
    ax2.grid(True, which="major", alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, path, "Gradient reweighting of CE, Focal Loss and GHM-C", subtitle)


def plot_reg(summary: dict, path: str | Path, subtitle: str = "") -> Path:
    """SL1 / ASL1 / GHM-R: gr distribution, gradient norm vs |d|, share of total gradient per bin."""
    fig = _new_figure(3, width_per_panel=4.8)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    mu = float(summary["mu"])
    beta = float(summary["sl1_beta"])
    edges = summary["edges"]

    # Positives are few: per-level curves would be noise, they stay in the data (level_counts).
    _bars(ax0, edges, summary["fraction"], color=COLORS["hist"], alpha=0.7, label="all levels")
    ax0.set_yscale("log")
    ax0.set_xlim(0.0, 1.0)
    ax0.set_xlabel(f"ASL1 gradient norm  gr = |d| / √(d² + μ²),  μ={mu:g}")
    ax0.set_ylabel("fraction of coordinates (log scale)")
    ax0.set_title(
        f"Distribution ({int(summary['num_coords']):,} positive coordinates)", fontsize=10
    )
    ax0.grid(True, which="major", alpha=0.3)
    ax0.legend(fontsize=8, loc="upper left")

    grid_d = summary["grid_d"]
    ax1.plot(
        grid_d, _positive(summary["curve_sl1"]), color=COLORS["sl1"], label=f"SL1 (β={beta:g})"
    )
    ax1.plot(
        grid_d, _positive(summary["curve_asl1"]), color=COLORS["asl1"], label=f"ASL1 (μ={mu:g})"
    )
    ax1.plot(
        grid_d,
        _positive(summary["curve_ghmr"]),
        color=COLORS["ghm"],
        label=f"GHM-R ({len(summary['ghmr_counts'])} bins)",
    )
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("|d|  (|predicted − target delta|, log scale)")
    ax1.set_ylabel("(reweighted) gradient norm (log scale)")
    ax1.set_title("Gradient norm w.r.t. d", fontsize=10)
    ax1.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=8)

    centers = summary["centers"]
    for key, label, color, marker in (
        ("contrib_sl1", "SL1", COLORS["sl1"], "o"),
        ("contrib_asl1", "ASL1", COLORS["asl1"], "s"),
        ("contrib_ghmr", "GHM-R", COLORS["ghm"], "^"),
    ):
        ax2.plot(
            centers, _positive(summary[key]), color=color, marker=marker, markersize=3, label=label
        )
    ax2.set_yscale("log")
    ax2.set_xlim(0.0, 1.0)
    ax2.set_xlabel("ASL1 gradient norm  gr (bin centre)")
    ax2.set_ylabel("fraction of the total gradient norm (log scale)")
    ax2.set_title("Total gradient contribution per gr bin", fontsize=10)
    ax2.grid(True, which="major", alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, path, "Box regression: SL1, ASL1 and GHM-R", subtitle)
