"""Gradient norms, their distributions and the reweighting curves of the GHM paper, in NumPy.

Everything here is a pure function of arrays (or a small accumulator of histograms), so the
numbers behind the figures of :mod:`ppdet_ghm.analysis.plots` can be checked directly.

Definitions (Li, Liu, Wang, *Gradient Harmonized Single-stage Detector*, AAAI 2019):

- Classification: for a sigmoid output ``p = sigmoid(x)`` and binary target ``p*``, the gradient of
  the binary cross-entropy w.r.t. the logit is ``p - p*``; its norm is ``g = |p - p*|`` (paper eq. 2).
- Regression: with ``d = pred - target`` (encoded box deltas), the Authentic Smooth L1 loss
  ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` has gradient norm ``gr = |d| / sqrt(d^2 + mu^2)``.
- Gradient density ``GD(g)`` is approximated by histogram bins (the paper's unit regions) and the
  harmonising weight of an example in bin ``i`` is ``tot / (count_i * n)``, ``n`` the number of
  non-empty bins (momentum 0): the same binning and weights as our ``GHMCLoss`` / ``GHMRLoss``
  and mmdet's GHMC / GHMR (float32 edges ``arange(bins + 1) / bins``, last edge ``+1e-6`` for GHM-C
  and ``1e3`` for GHM-R; an example is in bin ``i`` when ``edges[i] <= g < edges[i + 1]``). The
  edges are the loss package's own (``ppdet_ghm.losses.ghm.ghmc_edges`` / ``ghmr_edges``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ppdet_ghm.losses.ghm import ghmc_edges, ghmr_edges

logger = logging.getLogger(__name__)

__all__ = [
    "ClsGradientStats",
    "RegGradientStats",
    "asl1_grad_norm",
    "bin_indices",
    "ce_grad_norm",
    "cls_gradient_norm",
    "expand_labels",
    "focal_grad_norm",
    "ghm_reweighted_grad_norm",
    "ghmc_edges",
    "ghmr_edges",
    "harmonising_weights",
    "histogram",
    "reg_gradient_norm",
    "smooth_l1_grad_norm",
    "summarize_cls",
    "summarize_reg",
]


# --------------------------------------------------------------------------------------------
# Binning (edges: the loss package's ghmc_edges / ghmr_edges)
# --------------------------------------------------------------------------------------------
def bin_indices(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of every value, int64 of the shape of ``values``; -1 outside ``[edges[0], edges[-1])``.

    A value is in bin ``i`` when ``edges[i] <= v < edges[i + 1]``, compared in float32 (values are
    rounded to float32 first, as the losses compare float32 ``g`` with float32 edges). NaN -> -1.
    """
    edges32 = np.asarray(edges, dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    idx = np.searchsorted(edges32, v, side="right").astype(np.int64) - 1
    outside = (idx < 0) | (idx >= edges32.size - 1) | np.isnan(v)
    idx[outside] = -1
    return idx


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, int64 [len(edges) - 1], with the binning of :func:`bin_indices`.

    Values outside the edges are not counted.
    """
    nbins = len(edges) - 1
    idx = bin_indices(values, edges).ravel()
    return np.bincount(idx[idx >= 0], minlength=nbins).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Gradient norms of a detector's outputs
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable float64 sigmoid."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def expand_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot float32 [N, C] targets from integer labels [N] in ``[0, C]``; C (background) -> zeros.

    Labels outside ``[0, C]`` raise ValueError (ignored anchors are marked by label weight 0, not by
    a label value).
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}] (num_classes = background), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    onehot = np.zeros((labels.size, num_classes), dtype=np.float32)
    fg = labels < num_classes
    onehot[np.nonzero(fg)[0], labels[fg]] = 1.0
    return onehot


def cls_gradient_norm(
    logits: np.ndarray, targets: np.ndarray, label_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classification gradient norms ``g = |sigmoid(x) - p*|`` of the valid elements.

    Args:
        logits: float [N, C] raw classification outputs.
        targets: int [N] labels in ``[0, C]`` (C = background, all-zero target) or binary float
            [N, C] targets.
        label_weights: [N] (per anchor) or [N, C]; an element is valid when its weight is > 0.

    Returns:
        ``(g, is_pos)``: float32 [M] gradient norms of the M valid elements (computed in float64,
        rounded to float32 like the loss's ``g``) and bool [M], True where the target is 1.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {logits.shape}")
    n, c = logits.shape
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if targets.shape[0] != n:
            raise ValueError(f"labels shape {targets.shape} does not match logits {logits.shape}")
        targets = expand_labels(targets, c)
    elif targets.shape != logits.shape:
        raise ValueError(f"targets shape {targets.shape} does not match logits {logits.shape}")
    weights = np.asarray(label_weights)
    if weights.ndim == 1:
        if weights.shape[0] != n:
            raise ValueError(f"label_weights shape {weights.shape} does not match N={n}")
        weights = np.broadcast_to(weights[:, None], (n, c))
    elif weights.shape != logits.shape:
        raise ValueError(f"label_weights shape {weights.shape} does not match {logits.shape}")
    valid = weights > 0
    t = targets[valid].astype(np.float64)
    g = np.abs(_sigmoid(logits[valid]) - t).astype(np.float32)
    return g, t > 0.5


def reg_gradient_norm(
    pred: np.ndarray, target: np.ndarray, weight: np.ndarray, mu: float
) -> tuple[np.ndarray, np.ndarray]:
    """ASL1 gradient norms ``gr = |d| / sqrt(d^2 + mu^2)`` of the valid regression coordinates.

    Args:
        pred, target: float [N, 4] predicted and target box deltas; ``d = pred - target``.
        weight: [N, 4] (or [N]) box weights; a coordinate is valid when its weight is > 0.
        mu: the ASL1 parameter (0.02 in the paper), > 0.

    Returns:
        ``(gr, abs_d)``: float32 [M] gradient norms (rounded to float32 like the loss) and float64
        [M] ``|d|`` of the M valid coordinates.
    """
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    weight = np.asarray(weight)
    if weight.shape != pred.shape:
        weight = np.broadcast_to(
            weight.reshape(weight.shape + (1,) * (pred.ndim - weight.ndim)), pred.shape
        )
    valid = weight > 0
    abs_d = np.abs(pred[valid] - target[valid])
    return asl1_grad_norm(abs_d, mu).astype(np.float32), abs_d


# --------------------------------------------------------------------------------------------
# Gradient norm of each loss as a function of the original one
# --------------------------------------------------------------------------------------------
def ce_grad_norm(g: np.ndarray) -> np.ndarray:
    """Cross-entropy: the gradient norm w.r.t. the logit is ``g`` itself (float64)."""
    return np.asarray(g, dtype=np.float64)


def focal_grad_norm(g: np.ndarray, gamma: float = 2.0, alpha_t: float = 1.0) -> np.ndarray:
    """Focal loss gradient norm w.r.t. the logit, as a function of ``g = 1 - p_t``.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``; differentiating through ``p_t = sigmoid(+-x)``:
    ``|dFL/dx| = alpha_t * g^gamma * (g - gamma * (1 - g) * log(1 - g))`` (the second term -> 0 at
    g = 1). With gamma = 0 and alpha_t = 1 this is the CE norm ``g``. RetinaNet uses gamma = 2 and
    alpha_t = 0.25 for positive targets, 0.75 for negative ones.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    g = np.asarray(g, dtype=np.float64)
    one_minus = 1.0 - g
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(
            one_minus > 0, one_minus * np.log(np.where(one_minus > 0, one_minus, 1)), 0.0
        )
    return alpha_t * np.power(g, gamma) * (g - gamma * xlogx)


def smooth_l1_grad_norm(abs_d: np.ndarray, beta: float) -> np.ndarray:
    """Smooth L1 gradient norm w.r.t. d: ``|d| / beta`` for ``|d| < beta``, else 1 (L1 for beta 0).

    Uses the convention ``SL1(d) = 0.5 d^2 / beta`` for ``|d| < beta`` and ``|d| - 0.5 beta`` else
    (mmdet / PaddleDetection); the paper writes delta for beta.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    abs_d = np.abs(np.asarray(abs_d, dtype=np.float64))
    if beta == 0:
        return (abs_d > 0).astype(np.float64)
    return np.minimum(abs_d / beta, 1.0)


def asl1_grad_norm(abs_d: np.ndarray, mu: float) -> np.ndarray:
    """ASL1 gradient norm w.r.t. d: ``|d| / sqrt(d^2 + mu^2)`` (float64), in [0, 1)."""
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    abs_d = np.abs(np.asarray(abs_d, dtype=np.float64))
    return abs_d / np.sqrt(abs_d * abs_d + mu * mu)


def harmonising_weights(counts: np.ndarray, tot: float | None = None) -> np.ndarray:
    """Harmonising weight per bin (momentum 0): ``tot / (count_i * n)``; NaN for empty bins.

    For figures: the float64 NumPy form of the losses' ``ppdet_ghm.losses.ghm_bin_weights`` at
    momentum 0 (which gives 0, not NaN, to an empty bin, and follows the reference's float32
    roundings).

    This is ``beta = N / GD(g)`` of the paper with the unit-region approximation, normalised as the
    losses do: ``n`` is the number of non-empty bins and ``tot`` the number of valid examples
    (``max(tot, 1)``; default ``counts.sum()``). Over the examples the weights then average to 1 when
    ``tot = counts.sum()``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    tot = max(float(counts.sum() if tot is None else tot), 1.0)
    nonempty = counts > 0
    n = int(nonempty.sum())
    weights = np.full(counts.shape, np.nan)
    if n:
        weights[nonempty] = tot / (counts[nonempty] * n)
    return weights


def ghm_reweighted_grad_norm(
    g: np.ndarray, edges: np.ndarray, weights: np.ndarray, norm: np.ndarray | None = None
) -> np.ndarray:
    """Gradient norm after GHM reweighting: ``norm * weights[bin(g)]`` (NaN in empty/outside bins).

    Args:
        g: the binned quantity (``g`` for GHM-C, ``gr`` for GHM-R).
        edges, weights: the bins and their weights (:func:`harmonising_weights`).
        norm: the gradient norm that is reweighted; default ``g`` (GHM-C reweights the CE norm g,
            GHM-R the ASL1 norm gr, which is also its binned quantity).
    """
    g = np.asarray(g, dtype=np.float64)
    norm = g if norm is None else np.asarray(norm, dtype=np.float64)
    idx = bin_indices(g, edges)
    w = np.where(idx >= 0, np.asarray(weights, dtype=np.float64)[np.maximum(idx, 0)], np.nan)
    return norm * w


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
