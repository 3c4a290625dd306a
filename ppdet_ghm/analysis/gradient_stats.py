"""Gradient-norm statistics of a data set, level by level, for the GHM paper's figures.

:class:`ClsGradientStats` / :class:`RegGradientStats` accumulate, image by image, what the figures
need (the classification set is too large to keep element-wise); :func:`summarize_cls` /
:func:`summarize_reg` turn them into the arrays that :mod:`ppdet_ghm.analysis.plots` draws. The
maths (gradient norms, bins, harmonising weights) are :mod:`ppdet_ghm.analysis.gradients`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ppdet_ghm.analysis.gradients import (
    asl1_grad_norm,
    bin_indices,
    ce_grad_norm,
    cls_gradient_norm,
    focal_grad_norm,
    ghm_reweighted_grad_norm,
    ghmc_edges,
    ghmr_edges,
    harmonising_weights,
    histogram,
    reg_gradient_norm,
    smooth_l1_grad_norm,
)

__all__ = ["ClsGradientStats", "RegGradientStats", "summarize_cls", "summarize_reg"]


# --------------------------------------------------------------------------------------------
# Accumulators over a data set (the classification set is too large to keep element-wise)
# --------------------------------------------------------------------------------------------
@dataclass
class ClsGradientStats:
    """Per-level, per-bin sums of classification gradient norms, accumulated image by image.

    Bins are the GHM-C bins (:func:`ghmc_edges`). For level ``l`` and bin ``i``: ``counts`` (valid
    elements), ``pos_counts`` (those with target 1), ``sum_g`` (sum of g), ``sum_focal_pos`` /
    ``sum_focal_neg`` (sums of the focal-loss gradient norm with alpha_t = 1 over positive /
    negative targets), all [num_levels, bins].
    """

    bins: int
    num_levels: int
    focal_gamma: float = 2.0
    edges: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    pos_counts: np.ndarray = field(init=False)
    sum_g: np.ndarray = field(init=False)
    sum_focal_pos: np.ndarray = field(init=False)
    sum_focal_neg: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")
        self.edges = ghmc_edges(self.bins)
        shape = (self.num_levels, self.bins)
        self.counts = np.zeros(shape, dtype=np.int64)
        self.pos_counts = np.zeros(shape, dtype=np.int64)
        self.sum_g = np.zeros(shape)
        self.sum_focal_pos = np.zeros(shape)
        self.sum_focal_neg = np.zeros(shape)

    def update(
        self, level: int, logits: np.ndarray, targets: np.ndarray, label_weights: np.ndarray
    ) -> np.ndarray:
        """Add one level's outputs (shapes as :func:`cls_gradient_norm`); returns this call's counts."""
        g, is_pos = cls_gradient_norm(logits, targets, label_weights)
        return self.update_from_norms(level, g, is_pos)

    def update_from_norms(self, level: int, g: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
        """Add precomputed gradient norms ``g`` [M] with their positive mask [M]."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}), got {level}")
        idx = bin_indices(g, self.edges)
        keep = idx >= 0
        idx, g64, pos = idx[keep], np.asarray(g, np.float64)[keep], np.asarray(is_pos)[keep]
        fl = focal_grad_norm(g64, self.focal_gamma)
        b = self.bins
        counts = np.bincount(idx, minlength=b)
        self.counts[level] += counts
        self.pos_counts[level] += np.bincount(idx[pos], minlength=b)
        self.sum_g[level] += np.bincount(idx, weights=g64, minlength=b)
        self.sum_focal_pos[level] += np.bincount(idx[pos], weights=fl[pos], minlength=b)
        self.sum_focal_neg[level] += np.bincount(idx[~pos], weights=fl[~pos], minlength=b)
        return counts


@dataclass
class RegGradientStats:
    """Regression errors ``|d|`` of the valid coordinates, kept element-wise per level.

    Positives are few (a few hundred coordinates per image), so the raw values are kept and any
    binning can be applied afterwards.
    """

    mu: float
    num_levels: int
    abs_d: list[list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        if self.mu <= 0:
            raise ValueError(f"mu must be > 0, got {self.mu}")
        self.abs_d = [[] for _ in range(self.num_levels)]

    def update(self, level: int, pred: np.ndarray, target: np.ndarray, weight: np.ndarray) -> int:
        """Add one level's [N, 4] deltas and weights; returns the number of valid coordinates."""
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}), got {level}")
        _, abs_d = reg_gradient_norm(pred, target, weight, self.mu)
        self.abs_d[level].append(abs_d)
        return int(abs_d.size)

    def level_abs_d(self, level: int) -> np.ndarray:
        """All ``|d|`` of one level, float64 [M_l]."""
        parts = self.abs_d[level]
        return np.concatenate(parts) if parts else np.zeros(0)

    def all_abs_d(self) -> np.ndarray:
        """All ``|d|`` of all levels, float64 [M]."""
        return np.concatenate([self.level_abs_d(lvl) for lvl in range(self.num_levels)])


# --------------------------------------------------------------------------------------------
# The plotted data
# --------------------------------------------------------------------------------------------
def _fractions(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    total = values.sum()
    return values / total if total > 0 else np.zeros_like(values)


def summarize_cls(
    stats: ClsGradientStats, focal_alpha: float | None = 0.25, grid_points: int = 1001
) -> dict[str, np.ndarray]:
    """The data of the classification figures, from accumulated statistics (all levels pooled).

    GHM-C weights come from the pooled histogram with momentum 0 (``beta = N / GD(g)`` over the
    whole collected set); training applies them per FPN level and per batch, with an EMA.

    Returns a dict of float64 arrays (counts int64):
        ``edges`` [B+1], ``centers`` [B], ``counts`` [B], ``pos_counts`` [B], ``level_counts`` [L, B],
        ``fraction`` [B] (counts / total), ``level_fraction`` [L, B] (per level), ``density`` [B]
        (fraction / bin width), ``ghmc_weights`` [B] (NaN for empty bins);
        curves on ``grid`` [G] in [0, 1]: ``curve_ce``, ``curve_focal_pos`` (alpha_t = alpha),
        ``curve_focal_neg`` (alpha_t = 1 - alpha; both alpha_t = 1 when ``focal_alpha`` is None),
        ``curve_ghmc``; per-bin shares of the summed gradient norm: ``contrib_ce``,
        ``contrib_focal``, ``contrib_ghmc`` [B] (each sums to 1); ``focal_gamma``,
        ``focal_alpha`` (NaN for None) as 0-d arrays.
    """
    if focal_alpha is not None and not 0.0 <= focal_alpha <= 1.0:
        raise ValueError(f"focal_alpha must be in [0, 1] or None, got {focal_alpha}")
    a_pos, a_neg = (1.0, 1.0) if focal_alpha is None else (focal_alpha, 1.0 - focal_alpha)
    edges64 = stats.edges.astype(np.float64)
    counts = stats.counts.sum(axis=0)
    total = counts.sum()
    weights = harmonising_weights(counts, tot=total)
    grid = np.linspace(0.0, 1.0, grid_points)
    level_totals = stats.counts.sum(axis=1, keepdims=True)
    fraction = _fractions(counts)
    return {
        "edges": edges64,
        "centers": 0.5 * (edges64[:-1] + edges64[1:]),
        "counts": counts,
        "pos_counts": stats.pos_counts.sum(axis=0),
        "level_counts": stats.counts.copy(),
        "fraction": fraction,
        "level_fraction": np.divide(
            stats.counts, level_totals, out=np.zeros(stats.counts.shape), where=level_totals > 0
        ),
        "density": fraction / np.diff(edges64),
        "ghmc_weights": weights,
        "grid": grid,
        "curve_ce": ce_grad_norm(grid),
        "curve_focal_pos": focal_grad_norm(grid, stats.focal_gamma, a_pos),
        "curve_focal_neg": focal_grad_norm(grid, stats.focal_gamma, a_neg),
        "curve_ghmc": ghm_reweighted_grad_norm(grid, stats.edges, weights),
        "contrib_ce": _fractions(stats.sum_g.sum(axis=0)),
        "contrib_focal": _fractions(
            a_pos * stats.sum_focal_pos.sum(axis=0) + a_neg * stats.sum_focal_neg.sum(axis=0)
        ),
        "contrib_ghmc": _fractions(weights * stats.sum_g.sum(axis=0)),
        "focal_gamma": np.asarray(stats.focal_gamma, dtype=np.float64),
        "focal_alpha": np.asarray(np.nan if focal_alpha is None else focal_alpha),
    }


def summarize_reg(
    stats: RegGradientStats,
    ghmr_bins: int = 10,
    hist_bins: int = 30,
    sl1_beta: float = 0.11,
    grid_points: int = 400,
) -> dict[str, np.ndarray]:
    """The data of the regression figure, from the collected ``|d|`` (all levels pooled).

    ``gr`` is binned twice: on ``hist_bins`` bins over [0, 1] (GHM-C-style edges) for the displayed
    distribution and the gradient shares, and on the GHM-R bins (:func:`ghmr_edges`) for the GHM-R
    weights (momentum 0, ``tot`` = number of valid coordinates, i.e. unit box weights).

    Returns a dict of float64 arrays (counts int64): ``edges`` [H+1], ``centers`` [H], ``counts``
    [H], ``level_counts`` [L, H], ``fraction`` [H], ``density`` [H]; ``ghmr_edges`` [R+1],
    ``ghmr_counts`` [R], ``ghmr_weights`` [R]; curves on ``grid_d`` [G] (log-spaced ``|d|``):
    ``curve_sl1``, ``curve_asl1``, ``curve_ghmr``; shares per displayed bin: ``contrib_sl1``,
    ``contrib_asl1``, ``contrib_ghmr`` [H]; ``mu``, ``sl1_beta``, ``num_coords`` as 0-d arrays.
    """
    abs_d = stats.all_abs_d()
    gr = asl1_grad_norm(abs_d, stats.mu)
    edges = ghmc_edges(hist_bins)
    edges64 = edges.astype(np.float64)
    counts = histogram(gr, edges)
    r_edges = ghmr_edges(ghmr_bins)
    r_counts = histogram(gr, r_edges)
    r_weights = harmonising_weights(r_counts, tot=abs_d.size)

    d_max = max(1.0, float(abs_d.max()) if abs_d.size else 1.0)
    grid_d = np.logspace(-4, np.log10(d_max), grid_points)
    grid_gr = asl1_grad_norm(grid_d, stats.mu)

    idx = bin_indices(gr, edges)
    keep = idx >= 0
    ghmr_per_example = ghm_reweighted_grad_norm(gr, r_edges, r_weights)

    def per_bin(values: np.ndarray) -> np.ndarray:
        return np.bincount(idx[keep], weights=values[keep], minlength=hist_bins)

    fraction = _fractions(counts)
    return {
        "edges": edges64,
        "centers": 0.5 * (edges64[:-1] + edges64[1:]),
        "counts": counts,
        "level_counts": np.stack(
            [
                histogram(asl1_grad_norm(stats.level_abs_d(lvl), stats.mu), edges)
                for lvl in range(stats.num_levels)
            ]
        ),
        "fraction": fraction,
        "density": fraction / np.diff(edges64),
        "ghmr_edges": r_edges.astype(np.float64),
        "ghmr_counts": r_counts,
        "ghmr_weights": r_weights,
        "grid_d": grid_d,
        "curve_sl1": smooth_l1_grad_norm(grid_d, sl1_beta),
        "curve_asl1": grid_gr,
        "curve_ghmr": ghm_reweighted_grad_norm(grid_gr, r_edges, r_weights),
        "contrib_sl1": _fractions(per_bin(smooth_l1_grad_norm(abs_d, sl1_beta))),
        "contrib_asl1": _fractions(per_bin(gr)),
        "contrib_ghmr": _fractions(per_bin(np.nan_to_num(ghmr_per_example, nan=0.0))),
        "mu": np.asarray(stats.mu, dtype=np.float64),
        "sl1_beta": np.asarray(sl1_beta, dtype=np.float64),
        "num_coords": np.asarray(abs_d.size, dtype=np.int64),
    }
