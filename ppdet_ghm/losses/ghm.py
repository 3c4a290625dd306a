"""GHM-C and GHM-R losses (Li, Liu, Wang, *Gradient Harmonized Single-stage Detector*, AAAI 2019).

The maths are pure functions of tensors (:func:`ghmc_loss`, :func:`ghmr_loss`, and the pieces they
share: :func:`ghm_bin_index`, :func:`ghm_bin_weights`); :class:`GHMCLoss` / :class:`GHMRLoss` hold
the hyperparameters and the EMA histogram ``acc_sum``.

Semantics are those of the reference (mmdet ``ghm_loss.py``, from the authors' GHM_Detection):

* ``g`` is the gradient norm of each element (GHM-C: ``|sigmoid(x) - t|``; GHM-R:
  ``|d| / sqrt(d^2 + mu^2)``), detached. Element ``e`` lies in bin ``i`` iff
  ``edges[i] <= g_e < edges[i+1]`` against the reference's **float32** edges.
* Only valid elements (``label_weight > 0``) are binned and weighted; ignored ones get weight 0.
* ``tot = max(#valid, 1)`` (GHM-R: ``max(sum(label_weight), 1)``). A non-empty bin gets
  ``tot / count`` (momentum 0) or ``tot / acc`` with ``acc = m * acc + (1 - m) * count``; empty bins
  keep ``acc``. Weights are divided by ``n``, the number of non-empty bins.
* ``loss = sum(elementwise_loss * weight) / (tot + eps) * loss_weight`` with ``eps`` = float32
  machine epsilon, as mmdet's ``weight_reduce_loss``. The head's ``avg_factor`` is not used: GHM
  normalises by ``tot`` itself, once per call (the reference calls it once per FPN level).

Unlike the reference the binning is one vectorised pass with no host synchronisation (it runs
under ``paddle.jit.to_static``), and with ``sync_stats`` the histogram is shared by all ranks. On
a CPU the per-element work of large levels (sigmoid, softplus, bin counts, weight lookup) runs on
all math threads with the numbers of Paddle's one-thread ops (:mod:`~ppdet_ghm.losses.threaded_ops`).
"""

import functools
import logging

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer
from ppdet.core.workspace import register, serializable

from ppdet_ghm.losses import threaded_ops

logger = logging.getLogger(__name__)

__all__ = [
    "GHMCLoss",
    "GHMRLoss",
    "ghm_bin_index",
    "ghm_bin_weights",
    "ghmc_edges",
    "ghmc_loss",
    "ghmr_edges",
    "ghmr_loss",
]

# mmdet's weight_reduce_loss divides by (avg_factor + eps), eps = float32 machine epsilon.
_AVG_EPS = float(np.finfo(np.float32).eps)
_LOW_PRECISION = (paddle.float16, paddle.bfloat16)


# ---------------------------------------------------------------------------------------------
# Bins
# ---------------------------------------------------------------------------------------------
def _uniform_edges(bins):
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    # float32 i / bins, as torch.arange(bins + 1).float() / bins
    return np.arange(bins + 1, dtype=np.float32) / np.float32(bins)


def ghmc_edges(bins):
    """GHM-C bin edges, float32 ``[bins + 1]``: ``i / bins`` with the last edge raised by 1e-6.

    Same edges as mmdet GHMC (so ``g = 1`` falls in the last bin).
    """
    edges = _uniform_edges(bins)
    edges[-1] += np.float32(1e-6)
    return edges


def ghmr_edges(bins):
    """GHM-R bin edges, float32 ``[bins + 1]``: ``i / bins`` with the last edge set to 1e3.

    Same edges as mmdet GHMR.
    """
    edges = _uniform_edges(bins)
    edges[-1] = np.float32(1e3)
    return edges


@functools.lru_cache(maxsize=64)
def _exact_float32_scale(edges_key):
    """A float32 ``k`` with ``floor(fl32(g * k)) == bin of g`` for every float32 g in [0, 1], or None.

    ``g -> floor(fl32(g * k))`` is non-decreasing, so it equals the bin index on all of [0, 1]
    (up to the last bin, which the caller clips) iff it steps up exactly at each inner edge:
    ``floor(fl32(e_i * k)) >= i`` and ``floor(fl32(prev(e_i) * k)) <= i - 1``, ``prev`` being the
    next float32 below. That holds for ``k = bins`` with 10 and 30 bins (the reference's), not for
    every bin count (20 fails at edge 17), hence the check.
    """
    edges = np.frombuffer(edges_key, dtype=np.float32)
    bins = len(edges) - 1
    inner = edges[1:-1]
    below = np.nextafter(inner, np.float32(0))
    steps = np.arange(1, bins, dtype=np.float32)
    k = np.float32(bins)
    if np.all(np.floor(inner * k) >= steps) and np.all(np.floor(below * k) <= steps - 1):
        return float(k)
    logger.debug(
        "%d bins: no exact float32 scale, bins are found by comparing with the edges", bins
    )
    return None


def ghm_bin_index(g, edges):
    """Bin of each element: ``i`` such that ``edges[i] <= g < edges[i + 1]``.

    Same binning as mmdet GHMC / GHMR, decided against the float32 ``edges`` exactly (a plain
    ``floor(g * bins)`` differs right at the edges).

    Args:
        g (Tensor): float, any shape, values in [0, 1] (both GHM gradient norms lie there).
        edges (np.ndarray): float32 ``[bins + 1]`` with ``edges[0] == 0`` and ``edges[-1] > 1``
            (:func:`ghmc_edges`, :func:`ghmr_edges`).

    Returns:
        Tensor: int32, shape of ``g``, values in ``[0, bins - 1]`` (NaN maps to 0).
    """
    bins = len(edges) - 1
    scale = _exact_float32_scale(edges.tobytes()) if g.dtype == paddle.float32 else None
    if scale is not None:
        # fl32(g * scale) truncated (= floor, g >= 0) is exact (_exact_float32_scale)
        return paddle.scale(g, scale).astype("int32").clip_(0, bins - 1)
    return _compare_bin_index(g, edges)


def _label_bins_and_gradient(logits, positives, edges):
    """GHM-C bins of ``g = |s - t|`` and the direction ``s - t`` of the BCE gradient, for a binary
    target given by the flat indices of its ones (``s = sigmoid(x)``).

    One buffer of the ``[N * C]`` elements serves both, with no copy: it holds ``s``, then ``g``
    (``1 - s`` at the positives), which is scaled in place by ``k = bins`` and truncated to the
    bin index (exact, :func:`_exact_float32_scale`), then ``(s - t) * k`` (``(s - 1) * k`` at the
    positives). A copy, or scaling back, costs 5-9 % of the call on the large FPN levels, and
    scaling back moves the gradient by a rounding, which is enough to change the demo's AP.

    Args:
        logits (Tensor): float ``[N * C]``.
        positives (Tensor): int64 flat indices of the ones of the target.
        edges (np.ndarray): :func:`ghmc_edges`.

    Returns:
        (Tensor, Tensor, float): int32 bins, ``(s - t) * k`` and ``k`` (1.0 where the bins need
        the comparison path); :class:`_HarmonizedBCE` divides ``k`` out of the gradient.
    """
    prob = threaded_ops.sigmoid(logits)
    prob_pos = paddle.gather(prob, positives)
    g = paddle.scatter_(prob, positives, 1 - prob_pos, overwrite=True)
    scale = _exact_float32_scale(edges.tobytes()) if g.dtype == paddle.float32 else None
    if scale is None:
        idx, scale = _compare_bin_index(g, edges), 1.0
    else:
        g = g.scale_(scale)  # use the returned value: a static graph has no in-place update
        idx = g.astype("int32").clip_(0, len(edges) - 2)
    grad_dir = paddle.scatter_(g, positives, (prob_pos - 1) * scale, overwrite=True)
    return idx, grad_dir, scale


def _compare_bin_index(g, edges):
    """:func:`ghm_bin_index` for any bin count and dtype: ``floor(g * bins)``, corrected where it
    is off by one next to an edge."""
    bins = len(edges) - 1
    # floor(g * bins) is off by at most one right at an edge; compare with the edges themselves
    # (float32 values, compared in g's dtype as the reference does)
    edge_values = paddle.to_tensor(edges).astype(g.dtype)
    idx = paddle.floor(g * bins).astype("int32").clip_(0, bins - 1)
    lower = paddle.gather(edge_values, idx.flatten()).reshape(idx.shape)
    idx = idx - (g < lower).astype("int32")
    upper = paddle.gather(edge_values, (idx + 1).flatten()).reshape(idx.shape)
    idx = idx + (g >= upper).astype("int32")
    return idx.clip_(0, bins - 1)


# ---------------------------------------------------------------------------------------------
# Harmonising weights
# ---------------------------------------------------------------------------------------------
def ghm_bin_weights(counts, tot, acc_sum=None, momentum=0.0, dtype="float32"):
    """Per-bin GHM weights from the histogram of one call (paper Sec. 3.1, Eq. 3-4 with EMA).

    Args:
        counts (Tensor): float64 ``[bins]``, number of valid elements in each bin.
        tot (Tensor): float64 scalar, the normaliser ``max(#valid, 1)`` (GHM-R: of
            ``sum(label_weight)``).
        acc_sum (Tensor | None): float32 ``[bins]``, the EMA of the counts; needed iff momentum > 0.
        momentum (float): EMA momentum ``m`` in [0, 1).
        dtype: of the weights, float32 (bitwise the reference's) or float64.

    Returns:
        (Tensor, Tensor | None): ``[bins]`` weights (0 for empty bins) and the new
        ``acc_sum`` (``acc_sum`` itself when momentum is 0). A non-empty bin gets ``tot / count``
        (m = 0) or ``tot / acc`` with ``acc = m * acc + (1 - m) * count`` (empty bins keep ``acc``),
        divided by the number of non-empty bins. In float32 the roundings follow the reference
        step by step, so the results are the reference's bit for bit.
    """
    nonempty = counts > 0
    num_nonempty = nonempty.astype(dtype).sum()
    if momentum > 0:
        if acc_sum is None:
            raise ValueError("acc_sum is required when momentum > 0")
        # reference: fl32(fl32(m) * acc) + fl32((1 - m) * count), the latter a float64 product
        decayed = acc_sum * float(np.float32(momentum))
        fresh = (counts * paddle.full([], 1.0 - momentum, dtype="float64")).astype("float32")
        acc_sum = paddle.where(nonempty, decayed + fresh, acc_sum)
        if paddle.base.data_feeder.convert_dtype(dtype) == "float32":
            # reference: tot / acc on a float32 tensor is reciprocal(acc) * fl32(tot)
            weights = paddle.reciprocal(acc_sum) * tot.astype("float32")
        else:
            weights = tot.astype(dtype) / acc_sum.astype(dtype)
    else:
        # reference: float64 tot / count, stored as float32
        weights = (tot / counts).astype(dtype)
    weights = paddle.where(nonempty, weights, paddle.zeros_like(weights))
    return weights / paddle.clip(num_nonempty, min=1.0), acc_sum


def _world_size():
    if not paddle.distributed.is_initialized():
        return 1
    return paddle.distributed.get_world_size()


def _harmonize(
    idx, num_cols, label_weight, tot, acc_sum, momentum, loss_weight, sync_stats, bins, dtype
):
    """Per-element GHM weights, scaled as the reference's gradient: ``fl32(loss_weight / denom * w)``.

    Args:
        idx (Tensor): int32 flat ``[N * num_cols]``, the bin of every element (overwritten).
        label_weight (Tensor): ``[N]`` (whole rows) or ``[N, num_cols]``; ``<= 0`` marks ignored
            elements.
        tot (Tensor): float64 scalar, the normaliser before the max with 1.
        dtype: of the weights (the loss's compute dtype).

    Returns:
        (Tensor, Tensor | None): the weights (flat, 0 where ignored) and the new acc_sum.
    """
    # Ignored elements go to bins [bins, 2 * bins): not counted, weight 0.
    invalid = label_weight <= 0
    if label_weight.ndim == 1:
        # whole rows: move only their elements (usually few) instead of a pass over all elements
        rows = paddle.nonzero(invalid)  # [k, 1]
        elems = (rows * num_cols + paddle.arange(num_cols, dtype=rows.dtype)).flatten()
        idx = paddle.scatter_(idx, elems, paddle.gather(idx, elems) + bins, overwrite=True)
    else:
        idx = idx + invalid.flatten().astype("int32") * bins
    counts = threaded_ops.bincount(idx, 2 * bins)[:bins].astype("float64")
    world = _world_size() if sync_stats else 1
    if world > 1:
        stats = paddle.concat([counts, tot.reshape([1])])
        paddle.distributed.all_reduce(stats)
        counts, tot = stats[:bins], stats[bins]
    tot = paddle.clip(tot, min=1.0)
    weights, acc_sum = ghm_bin_weights(counts, tot, acc_sum, momentum, dtype)
    # mmdet: loss.sum() / (tot + eps) * loss_weight; its gradient reaches each element as
    # fl32(fl32(loss_weight / denom) * w), which we build here once per bin.
    denom = (tot + _AVG_EPS).astype(dtype)
    scale = paddle.full([], loss_weight, dtype=dtype) / denom
    if world > 1:
        # the ranks' mean (DataParallel's) is then the loss of the concatenated batch
        scale = scale * float(world)
    table = paddle.concat([weights * scale, paddle.zeros([bins], dtype=dtype)])
    return threaded_ops.lookup(table, idx), acc_sum


class _HarmonizedBCE(PyLayer):
    """``sum(weight * BCEWithLogits(x, t))`` whose gradient is ``weight * (sigmoid(x) - t)``.

    The gradient is exact everywhere, also at x = 0 where Paddle's own BCE-with-logits kernel is
    off. The caller passes ``grad_dir = (sigmoid(x) - t) * grad_scale``, which it has computed
    for the bins anyway (a temporary, overwritten here; see :func:`_label_bins_and_gradient`).
    Targets are either ``positives`` (flat indices of the ones of a binary target, the rest 0)
    or a flat float ``target``.
    """

    @staticmethod
    def forward(ctx, pred, grad_dir, weight, grad_scale, positives=None, target=None):
        logits = pred.flatten()
        if target is None:
            # softplus(x) is the BCE where t = 0, softplus(-x) where t = 1
            elem_loss = paddle.scatter_(
                threaded_ops.softplus(logits),
                positives,
                F.softplus(-paddle.gather(logits, positives)),
                overwrite=True,
            )
        else:
            # stable for any t: max(x, 0) - x * t + log(1 + exp(-|x|))
            elem_loss = F.relu(logits) - logits * target + threaded_ops.softplus(-logits.abs())
        ctx.save_for_backward(grad_dir.multiply_(weight))
        ctx.pred_shape = pred.shape
        ctx.grad_scale = grad_scale
        # Row sums in float32, their total in float64: a flat float32 sum over a level's
        # N*H*W*A*K elements was off by up to 5e-7 relative (the reference's pairwise float32
        # sum: ~1e-7); this costs ~1 % of the call, a float64 cast of every element ~7 %.
        row_sums = elem_loss.multiply_(weight).reshape(pred.shape).sum(axis=-1)
        return row_sums.astype("float64").sum().astype(pred.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensor()
        grad_out = grad_out.astype(grad.dtype)
        if ctx.grad_scale != 1.0:
            grad_out = grad_out / ctx.grad_scale
        # In place: a PyLayer graph is walked once (Paddle 3.3.1 crashes on a second backward
        # through any PyLayer, retain_graph or not). One gradient per tensor input (static graphs
        # require it): pred, grad_dir, weight and the targets (positives or target).
        return grad.scale_(grad_out).reshape(ctx.pred_shape), None, None, None


# ---------------------------------------------------------------------------------------------
# GHM-C
# ---------------------------------------------------------------------------------------------
def _check_momentum(momentum):
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")


def _as_dtype(tensor, dtype):
    return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def _check_label_weight(label_weight, pred):
    if label_weight.ndim == 1 or (
        label_weight.ndim == 2 and label_weight.shape[-1] == pred.shape[-1]
    ):
        return
    raise ValueError(
        f"label_weight must be [N] (per row) or [N, {pred.shape[-1]}] like pred, "
        f"got shape {label_weight.shape}"
    )


def _binary_positives(target):
    """Flat indices of the ones of a float ``[N, C]`` target whose elements are all 0 or 1
    (mmdet's one-hot form), so that it takes the integer-label path; None for any other target,
    and always None in a static graph (the check reads one value back to the host)."""
    if not paddle.in_dynamic_mode():
        return None
    flat = target.flatten()
    nonzero = paddle.nonzero(flat).flatten()
    if nonzero.shape[0] and not bool((paddle.gather(flat, nonzero) == 1).all()):
        return None
    return nonzero


def _row_label_weight(label_weight):
    """``[N, C]`` label weights that mark each row valid or ignored as a whole, as ``[N]`` (the
    cheaper per-row form; only the sign of a weight matters); any other input unchanged. Dygraph
    only, like :func:`_binary_positives`."""
    if label_weight.ndim != 2 or not paddle.in_dynamic_mode():
        return label_weight
    # A row is uniform iff its smallest and its largest weight are on the same side of 0. Rows
    # whose smallest weight is > 0 are; only the others (the ignored ones, usually few) need
    # their largest weight: one pass over the weights instead of two.
    not_all_valid = paddle.nonzero(label_weight.min(axis=1) <= 0).flatten()
    if not_all_valid.shape[0] and bool((paddle.gather(label_weight, not_all_valid) > 0).any()):
        return label_weight
    return label_weight[:, 0]


def ghmc_loss(
    pred,
    target,
    label_weight,
    acc_sum=None,
    bins=10,
    momentum=0.0,
    loss_weight=1.0,
    sync_stats=False,
):
    """GHM-C loss: BCE-with-logits weighted by the inverse gradient density (paper Sec. 3.2).

    Same binning and weights as mmdet GHMC (see the module docstring).

    Args:
        pred (Tensor): float ``[N, C]`` logits (float16/bfloat16 are computed in float32).
        target (Tensor): float ``[N, C]`` targets, or int ``[N]`` labels in ``[0, C]``
            where ``C`` (or any value outside ``[0, C)``) means background: an all-zero row.
            In dygraph, float targets of only 0 and 1 (mmdet's one-hot form) run as fast as
            labels: the ones' flat indices are taken once and the label path is used.
        label_weight (Tensor): ``[N]`` (per row) or ``[N, C]``; ``> 0`` valid, ``<= 0`` ignored.
            Only the sign matters, as in the reference. ``[N, C]`` weights that mark whole rows
            are used as ``[N]`` (dygraph).
        acc_sum (Tensor | None): float32 ``[bins]`` EMA histogram (required iff momentum > 0).
        bins, momentum, loss_weight: as :class:`GHMCLoss`.
        sync_stats (bool): all-reduce the bin counts and ``tot`` over the ranks before the EMA
            (every rank then holds the same histogram and weights); the loss is multiplied by
            the world size, so that the ranks' mean, which DataParallel's gradient averaging
            takes, is the loss of the concatenated batch.

    Returns:
        (Tensor, Tensor | None): the scalar loss (float32; float64 for float64 ``pred``) and the
        new ``acc_sum``. Gradient: ``(sigmoid(x) - t) * w * loss_weight / (tot + eps)``.
    """
    _check_momentum(momentum)
    if pred.dtype in _LOW_PRECISION:
        pred = pred.astype("float32")
    if pred.ndim != 2:
        raise ValueError(f"pred must be [N, C] logits, got shape {pred.shape}")
    _check_label_weight(label_weight, pred)
    num_classes = pred.shape[1]
    edges = ghmc_edges(bins)
    logits = pred.flatten()

    with paddle.no_grad():
        if target.dtype in (paddle.int32, paddle.int64):
            if target.ndim != 1:
                raise ValueError(f"integer targets must be labels [N], got shape {target.shape}")
            # Flat index of every positive element; background rows have none.
            pos_rows = paddle.nonzero((target >= 0) & (target < num_classes)).flatten()
            positives = pos_rows * num_classes + paddle.gather(target, pos_rows).astype("int64")
        else:
            if tuple(target.shape) != tuple(pred.shape):
                raise ValueError(
                    f"float targets must be [N, C] like pred {pred.shape}, got {target.shape}"
                )
            positives = _binary_positives(target)
        label_weight = _row_label_weight(label_weight)
        if positives is not None:
            binary = None
            idx, grad_dir, grad_scale = _label_bins_and_gradient(logits, positives, edges)
        else:
            binary = _as_dtype(target, pred.dtype).flatten()
            grad_dir, grad_scale = threaded_ops.sigmoid(logits) - binary, 1.0
            idx = ghm_bin_index(grad_dir.abs(), edges)

        num_valid = (label_weight > 0).astype("float64").sum()
        if label_weight.ndim == 1:
            num_valid = num_valid * num_classes
        weight, acc_sum = _harmonize(
            idx,
            num_classes,
            label_weight,
            num_valid,
            acc_sum,
            momentum,
            loss_weight,
            sync_stats,
            bins,
            pred.dtype,
        )
    loss = _HarmonizedBCE.apply(
        pred, grad_dir, weight, grad_scale, positives=positives, target=binary
    )
    return loss, acc_sum


# ---------------------------------------------------------------------------------------------
# GHM-R
# ---------------------------------------------------------------------------------------------
def ghmr_loss(
    pred,
    target,
    label_weight,
    acc_sum=None,
    mu=0.02,
    bins=10,
    momentum=0.0,
    loss_weight=1.0,
    sync_stats=False,
):
    """GHM-R loss: Authentic Smooth L1 weighted by the inverse gradient density (paper Sec. 3.3).

    ``ASL1(d) = sqrt(d^2 + mu^2) - mu``, ``g = |d| / sqrt(d^2 + mu^2)``; same binning and weights
    as mmdet GHMR (see the module docstring).

    Args:
        pred, target (Tensor): float ``[N, 4]`` (any ``[N, K]``) box deltas.
        label_weight (Tensor): ``[N, 4]`` (or ``[N]``, per row); ``> 0`` valid.
            ``tot = max(sum(label_weight), 1)``;
            the per-element weights are the bin weights only, as in the reference.
        acc_sum, bins, momentum, loss_weight, sync_stats: as :func:`ghmc_loss`.

    Returns:
        (Tensor, Tensor | None): the scalar loss and the new ``acc_sum``.
    """
    _check_momentum(momentum)
    if pred.dtype in _LOW_PRECISION:
        pred = pred.astype("float32")
    if pred.ndim != 2 or tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"pred and target must be [N, K] alike, got {pred.shape}, {target.shape}")
    _check_label_weight(label_weight, pred)
    diff = pred - _as_dtype(target, pred.dtype)
    root = paddle.sqrt(diff * diff + mu * mu)
    elem_loss = root - mu
    with paddle.no_grad():
        # flat and fresh (no view): _harmonize updates idx in place
        idx = ghm_bin_index((diff.flatten() / root.flatten()).abs(), ghmr_edges(bins))
        weight, acc_sum = _harmonize(
            idx,
            pred.shape[1],
            label_weight,
            label_weight.astype("float64").sum(),
            acc_sum,
            momentum,
            loss_weight,
            sync_stats,
            bins,
            pred.dtype,
        )
    return (elem_loss.flatten() * weight).sum(), acc_sum


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class _GHMBase(nn.Layer):
    def __init__(self, bins, momentum, loss_weight, sync_stats):
        super().__init__()
        _uniform_edges(bins)  # validates bins
        _check_momentum(momentum)
        self.bins = bins
        self.momentum = float(momentum)
        self.loss_weight = float(loss_weight)
        self.sync_stats = bool(sync_stats)
        # EMA of the bin counts, saved with checkpoints (unchanged when momentum is 0)
        self.register_buffer("acc_sum", paddle.zeros([bins], dtype="float32"), persistable=True)

    def _update(self, acc_sum):
        if self.momentum > 0:
            paddle.assign(acc_sum, self.acc_sum)

    def extra_repr(self):
        return f"bins={self.bins}, momentum={self.momentum}, loss_weight={self.loss_weight}"


@register
@serializable
class GHMCLoss(_GHMBase):
    """GHM-C classification loss (sigmoid BCE harmonised by gradient density), one call per level.

    Args:
        bins (int): number of gradient-norm bins (paper: 30).
        momentum (float): EMA momentum of the bin counts in [0, 1) (paper: 0.75); 0 = none.
        use_sigmoid (bool): must be True (softmax GHM-C is not defined by the reference either).
        loss_weight (float): multiplier of the loss.
        sync_stats (bool): share the histogram over data-parallel ranks (see :func:`ghmc_loss`).

    ``forward(pred [N, C], target [N, C] float | [N] int labels (C = background),
    label_weight [N, C] | [N])`` returns a scalar; the EMA state is ``acc_sum`` (float32 [bins]).

    Example: two logits at 0 have g = 0.5 (bin 15 of 30); one bin holds both elements, so each
    weight is tot / count = 1 and the loss is the mean BCE, log 2. With momentum 0.75 the bin's
    EMA starts from 0: after the first call it is (1 - 0.75) * 2 = 0.5 and the weight
    tot / 0.5 = 4 (as the reference: early calls weigh more until the EMA fills).

    >>> import paddle
    >>> from ppdet_ghm.losses import GHMCLoss
    >>> pred, target, weight = paddle.zeros([2, 1]), paddle.to_tensor([[1.0], [0.0]]), paddle.ones([2, 1])
    >>> round(float(GHMCLoss(bins=30)(pred, target, weight)), 6)
    0.693147
    >>> loss = GHMCLoss(bins=30, momentum=0.75)
    >>> round(float(loss(pred, target, weight)), 6), float(loss.acc_sum[15])
    (2.772589, 0.5)
    """

    def __init__(
        self,
        bins: int = 10,
        momentum: float = 0.0,
        use_sigmoid: bool = True,
        loss_weight: float = 1.0,
        sync_stats: bool = False,
    ):
        if not use_sigmoid:
            raise ValueError(
                "GHMCLoss: use_sigmoid=False is not supported; GHM-C is defined for sigmoid "
                "binary cross-entropy only (as in the reference)"
            )
        super().__init__(bins, momentum, loss_weight, sync_stats)
        self.use_sigmoid = True

    def forward(self, pred, target, label_weight):
        loss, acc_sum = ghmc_loss(
            pred,
            target,
            label_weight,
            acc_sum=self.acc_sum if self.momentum > 0 else None,
            bins=self.bins,
            momentum=self.momentum,
            loss_weight=self.loss_weight,
            sync_stats=self.sync_stats,
        )
        self._update(acc_sum)
        return loss


@register
@serializable
class GHMRLoss(_GHMBase):
    """GHM-R regression loss (Authentic Smooth L1 harmonised by gradient density), once per level.

    Args:
        mu (float): ASL1 parameter (paper: 0.02).
        bins (int): number of gradient-norm bins (paper: 10).
        momentum (float): EMA momentum of the bin counts in [0, 1) (paper: 0.7); 0 = none.
        loss_weight (float): multiplier of the loss (reference config: 10).
        sync_stats (bool): share the histogram over data-parallel ranks (see :func:`ghmc_loss`).

    ``forward(pred [N, 4], target [N, 4], label_weight [N, 4])`` returns a scalar.

    Example: four deltas off by d = mu = 0.02 share one bin (gr = 0.707), so each weight is 1
    and the loss is ASL1(d) = sqrt(d^2 + mu^2) - mu = 0.008284.

    >>> import paddle
    >>> from ppdet_ghm.losses import GHMRLoss
    >>> loss = GHMRLoss(mu=0.02, bins=10)
    >>> round(float(loss(paddle.zeros([1, 4]), paddle.full([1, 4], 0.02), paddle.ones([1, 4]))), 6)
    0.008284
    """

    def __init__(
        self,
        mu: float = 0.02,
        bins: int = 10,
        momentum: float = 0.0,
        loss_weight: float = 1.0,
        sync_stats: bool = False,
    ):
        if not mu > 0:
            raise ValueError(f"GHMRLoss: mu must be > 0, got {mu!r}")
        super().__init__(bins, momentum, loss_weight, sync_stats)
        self.mu = float(mu)

    def forward(self, pred, target, label_weight):
        loss, acc_sum = ghmr_loss(
            pred,
            target,
            label_weight,
            acc_sum=self.acc_sum if self.momentum > 0 else None,
            mu=self.mu,
            bins=self.bins,
            momentum=self.momentum,
            loss_weight=self.loss_weight,
            sync_stats=self.sync_stats,
        )
        self._update(acc_sum)
        return loss
