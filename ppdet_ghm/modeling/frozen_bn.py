"""BatchNorm on frozen statistics + ReLU (and the residual block's "+ shortcut, ReLU") as one op
on all the math threads, for CPU training of the ResNet backbone.

With mmdet's ``norm_eval`` (:class:`~ppdet_ghm.modeling.backbone.NormEvalResNet`) every
BatchNorm of the backbone is a per-channel affine map ``x * s + t`` (``s = gamma / sqrt(var +
eps)``, ``t = beta - mean * s``; gamma and beta trained, the statistics not), and all but one per
block are followed by a ReLU, the last one by the shortcut's addition and a ReLU. Paddle runs
each step as its own single-threaded CPU kernel, a pass over memory each. :func:`frozen_bn_act`
does the step in one pass, split over the threads (``frozen_bn.cc``, a custom op built at first
use), forward and backward:

* forward ``y = relu(x * s + t (+ r))``;
* backward, with ``g = dy * (y > 0)``: ``dx = g * s``, ``dr = g``, ``d beta = sum g``,
  ``d gamma = sum g * (x - mean) / sqrt(var + eps)`` (per channel, summed in float64 in a fixed
  order: the same numbers on any thread count).

``s`` and ``t`` are read back from Paddle's own BN kernel, so ``y``, ``dx`` and ``dr`` are the bits
of Paddle's ``batch_norm(use_global_stats=True)``, ``add`` and ``relu``; d gamma and d beta are
summed in float64 where Paddle sums in float32. That change of rounding is why this goes with the
oneDNN convolutions (config key ``fused_frozen_bn: auto``), whose arithmetic already differs, and
not with the configs that keep Paddle's bits (the demo, whose backbone has no frozen statistics
anyway).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from ppdet.modeling.backbones.resnet import BasicBlock, BottleNeck, ConvNormLayer

from ppdet_ghm.modeling import cpp_ops
from ppdet_ghm.modeling.forward_swap import swap_forward, swapped_layers, switch_setting

__all__ = [
    "FrozenBnUnavailable",
    "for_training",
    "frozen_bn_act",
    "fused_layers",
    "load_ops",
    "use_fused_frozen_bn",
]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("frozen_bn.cc")
_ops = None  # the loaded extension module, or the FrozenBnUnavailable it raised


class FrozenBnUnavailable(RuntimeError):
    """The fused frozen-BN ops cannot be built or loaded here (the message says why)."""


def load_ops():
    """The compiled ops module (built once per source and Paddle version, cached on disk).
    Raises FrozenBnUnavailable with the reason."""
    global _ops
    if _ops is None:
        try:
            # -O3 vectorises the loops; no contraction of x * s + t into an FMA, which would
            # round differently from Paddle's kernel on a compiler that targets FMA units
            _ops = cpp_ops.build("frozen_bn", SOURCE, cflags=("-O3", "-ffp-contract=off"))
        except cpp_ops.BuildError as err:  # the compiler's or the loader's message
            _ops = FrozenBnUnavailable(str(err))
        except Exception as err:  # no compiler, no cache folder, ...
            _ops = FrozenBnUnavailable(f"building {SOURCE.name} failed: {err}")
    if isinstance(_ops, FrozenBnUnavailable):
        raise _ops
    return _ops


# x * 2**100 is exact and t vanishes beside it in float32 (|t| < 2**76 |s|)
_PROBE_EXPONENT = 100


@functools.lru_cache(maxsize=32)
def _probe(channels: int):
    """[1, channels, 1, 2] float32: 0 and 2**100 in every channel."""
    probe = paddle.to_tensor([0.0, 2.0**_PROBE_EXPONENT], dtype="float32")
    return probe.reshape([1, 1, 1, 2]).expand([1, channels, 1, 2])


def _folded_statistics(norm: nn.BatchNorm2D):
    """Paddle's own per-channel ``scale`` and ``shift`` of ``norm`` on its running statistics
    (its kernel computes ``y = x * scale + shift`` with them), read back from the kernel on two
    values per channel: ``0 -> shift`` and ``2**100 -> 2**100 * scale``, both exact. Folding
    the statistics ourselves rounds differently in some channels (Paddle's kernel does not fold
    as ``gamma / sqrt(var + eps)`` in float32). Returns float32 [C] tensors, no gradient."""
    channels = norm.weight.shape[0]
    probe = _probe(channels)
    with paddle.no_grad():
        y = F.batch_norm(
            probe, norm._mean, norm._variance, norm.weight, norm.bias, training=False,
            epsilon=norm._epsilon, data_format="NCHW", use_global_stats=True,
        ).reshape([channels, 2])  # fmt: skip
    return y[:, 1] * 2.0**-_PROBE_EXPONENT, y[:, 0]


class _FrozenBnAct(paddle.autograd.PyLayer):
    """Autograd of :func:`frozen_bn_act`: gradients of x, gamma, beta and the residual, each
    only where needed."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, statistics, settings):
        scale, shift, mean, variance, epsilon = statistics
        relu, threads = settings
        has_residual = residual is not None
        y = load_ops().frozen_bn_forward(
            x, scale, shift, residual if has_residual else x, has_residual, relu, threads
        )
        ctx.save_for_backward(x, y, scale, mean, variance)
        ctx.settings = settings
        ctx.epsilon = epsilon
        ctx.needs = (
            not x.stop_gradient,
            not weight.stop_gradient,
            not bias.stop_gradient,
            has_residual and not residual.stop_gradient,
        )
        ctx.has_residual = has_residual
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, scale, mean, variance = ctx.saved_tensor()
        relu, threads = ctx.settings
        need_x, need_weight, need_bias, need_residual = ctx.needs
        dx, dr, sums = load_ops().frozen_bn_backward(
            x, y, dy.contiguous(), scale, mean, relu, need_x, need_residual, threads
        )
        d_weight = None
        if need_weight:  # sum(g * (x - mean)) / sqrt(var + eps) in float64
            inv_std = 1.0 / paddle.sqrt(variance.astype("float64") + ctx.epsilon)
            d_weight = (sums[1] * inv_std).astype("float32")
        d_bias = sums[0].astype("float32") if need_bias else None
        grads = [dx if need_x else None, d_weight, d_bias]
        if ctx.has_residual:
            grads.append(dr if need_residual else None)
        return tuple(grads)


def frozen_bn_act(x, norm: nn.BatchNorm2D, relu: bool = True, residual=None, threads: int = 1):
    """``relu(norm(x) (+ residual))`` for a BatchNorm on its running statistics, in one op:
    x (and residual) [N, C, H, W] float32 on the CPU -> [N, C, H, W]; differentiable in x,
    the norm's weight and bias, and the residual. ``relu`` False leaves the activation out.

    Output and input gradients are Paddle's ``relu(batch_norm(x) (+ residual))`` to the bit;
    the gradients of gamma and beta are summed in float64 (Paddle's kernel: float32)."""
    channels = norm.weight.shape[0]
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"frozen_bn_act: x must be [N, {channels}, H, W], got {x.shape}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"frozen_bn_act: residual must have x's shape {x.shape}, got {residual.shape}"
        )
    scale, shift = _folded_statistics(norm)
    epsilon = float(np.float32(norm._epsilon))  # as the kernel's float attribute
    return _FrozenBnAct.apply(
        x.contiguous(),
        norm.weight,
        norm.bias,
        None if residual is None else residual.contiguous(),
        (scale, shift, norm._mean, norm._variance, epsilon),
        (bool(relu), int(threads)),
    )


def _fusable_norm(layer) -> bool:
    """A ppdet ConvNormLayer whose norm is an NCHW float32 BatchNorm on running statistics
    followed by a ReLU or nothing."""
    if not isinstance(layer, ConvNormLayer) or getattr(layer, "dcn_v2", False):
        return False
    norm = getattr(layer, "norm", None)
    return (
        type(norm) is nn.BatchNorm2D
        and norm._use_global_stats is True
        and norm._data_format == "NCHW"
        and norm.weight is not None
        and norm.bias is not None
        and norm.weight.dtype == paddle.float32
        and layer.act in (None, "relu")
    )


def _last_branch(block):
    """The ConvNormLayer whose output a residual block adds to its shortcut."""
    return block.branch2c if isinstance(block, BottleNeck) else block.branch2b


def _fusable_block(layer) -> bool:
    """A ppdet BottleNeck / BasicBlock (no squeeze-excitation) whose last norm is fusable."""
    return (
        isinstance(layer, (BottleNeck, BasicBlock))
        and not getattr(layer, "std_senet", False)
        and _fusable_norm(_last_branch(layer))
        and _last_branch(layer).act is None
    )


def _usable(x) -> bool:
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


def _fused_conv_norm_forward(self, inputs):
    """ConvNormLayer.forward with norm and ReLU as one :func:`frozen_bn_act`."""
    out = self.conv(inputs)
    if not _usable(out):
        out = self.norm(out)
        return F.relu(out) if self.act else out
    return frozen_bn_act(out, self.norm, relu=self.act == "relu", threads=self._norm_threads)


def _fused_block_forward(self, inputs):
    """BottleNeck / BasicBlock.forward with the last norm, the shortcut's addition and the ReLU
    as one :func:`frozen_bn_act`."""
    last = _last_branch(self)
    out = self.branch2a(inputs)
    if isinstance(self, BottleNeck):
        out = self.branch2b(out)
    out = last.conv(out)
    short = inputs if self.shortcut else self.short(inputs)
    if not _usable(out):
        return F.relu(paddle.add(last.norm(out), short))
    return frozen_bn_act(out, last.norm, relu=True, residual=short, threads=self._norm_threads)


def use_fused_frozen_bn(model: nn.Layer, threads: int | None = None) -> int:
    """Run every frozen-statistics BN of ``model``'s ppdet ResNet blocks, with its ReLU (and the
    block's shortcut addition), as :func:`frozen_bn_act` on ``threads`` threads (default:
    :func:`~ppdet_ghm.modeling.cpp_ops.math_threads`); builds the ops first (FrozenBnUnavailable if they cannot be).
    Returns how many norms were fused. Parameters and state dict are untouched."""
    load_ops()
    threads = threads or cpp_ops.math_threads()
    blocks = swap_forward(model, _fused_block_forward, _fusable_block, _norm_threads=threads)
    # the block's last ConvNormLayer is called piecewise by the block; every other one alone
    fused_last = {id(_last_branch(b)) for b in model.sublayers() if _fusable_block(b)}
    norms = swap_forward(
        model,
        _fused_conv_norm_forward,
        lambda layer: _fusable_norm(layer) and id(layer) not in fused_last,
        _norm_threads=threads,
    )
    return blocks + norms


def fused_layers(model: nn.Layer) -> list[str]:
    """Names of ``model``'s sublayers switched by :func:`use_fused_frozen_bn`."""
    return swapped_layers(model, _fused_block_forward) + swapped_layers(
        model, _fused_conv_norm_forward
    )


def for_training(model: nn.Layer, setting="auto", onednn_convs: int = 0) -> int:
    """Apply the config key ``fused_frozen_bn`` to a model about to be trained; returns the
    number of norms fused.

    ``auto`` (the default): fused where the convolutions run on oneDNN (``onednn_convs`` > 0;
    the gradients of gamma and beta are then summed in float64, a change of rounding beside
    oneDNN's), with a warning naming the reason, and Paddle's ops, when the ops cannot be built;
    ``true``: fused on a CPU device also with Paddle's convolutions, a FrozenBnUnavailable error
    instead of the warning; ``false``: Paddle's ops. On a GPU nothing changes.
    """
    setting = switch_setting(setting, "fused_frozen_bn")
    if setting is False or (setting == "auto" and not onednn_convs):
        return 0
    if not paddle.get_device().startswith("cpu"):
        return 0
    try:
        count = use_fused_frozen_bn(model)
    except FrozenBnUnavailable as err:
        if setting is True:
            raise
        logger.warning("frozen BatchNorms run as Paddle's ops (fused_frozen_bn: auto): %s", err)
        return 0
    logger.info(
        "%d frozen BatchNorms (+ ReLU, + shortcut) run as one op each on %d threads "
        "(config key fused_frozen_bn; false turns it off)", count, cpp_ops.math_threads(),
    )  # fmt: skip
    return count
