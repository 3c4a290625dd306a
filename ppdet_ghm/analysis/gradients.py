"""Gradient norms, their distributions and the reweighting curves of the GHM paper, in NumPy.

Everything here is a pure function of arrays, so the numbers behind the figures of
:mod:`ppdet_ghm.analysis.plots` can be checked directly; the accumulators over a data set that
use them are in :mod:`ppdet_ghm.analysis.gradient_stats`.

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

import numpy as np

from ppdet_ghm.losses.ghm import ghmc_edges, ghmr_edges

__all__ = [
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
