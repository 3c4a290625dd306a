"""Paddle's own CPU convolutions on two threads, bit for bit.

Where the math library runs one thread per call (``ppdet-ghm train --threads 1``, the CPU demo),
Paddle's dygraph convolution uses one core. Its kernel computes every image of a batch on its own
and the two gradients in two separate loops, so :func:`threaded_conv2d` calls the same
registered kernel (``threaded_conv.cc``, a custom op built at first use) on two threads: the two
halves of the batch in the forward, the input gradient beside the weight gradient in the
backward. Same operations on the same operands: outputs and gradients are bit-identical to
``F.conv2d``'s, so a seeded run gives the same numbers to the last digit (tests compare bits).

:func:`for_training` applies the config key ``paddle_conv_threads`` (1: Paddle's call as it is;
2: this) to the convolutions that stay on Paddle's kernels (``onednn_conv: false``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import paddle
import paddle.nn as nn

from ppdet_ghm.modeling import cpp_ops
from ppdet_ghm.modeling.forward_swap import swap_forward, swapped_layers
from ppdet_ghm.modeling.layers import ChannelBiasConv2D

__all__ = [
    "ThreadedConvUnavailable",
    "for_training",
    "load_ops",
    "supports",
    "threaded_conv2d",
    "threaded_conv_layers",
    "threads_setting",
    "use_threaded_convs",
]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("threaded_conv.cc")
_ops = None  # the loaded extension module, or the ThreadedConvUnavailable it raised


class ThreadedConvUnavailable(RuntimeError):
    """The threaded convolution ops cannot be built or loaded here (the message says why)."""


def load_ops():
    """The compiled ops module (built once per source and Paddle version, cached on disk).
    Raises ThreadedConvUnavailable with the reason."""
    global _ops
    if _ops is None:
        try:
            _ops = cpp_ops.build("threaded_conv", SOURCE)
        except cpp_ops.BuildError as err:  # the compiler's or the loader's message
            _ops = ThreadedConvUnavailable(str(err))
        except Exception as err:  # no compiler, no cache folder, ...
            _ops = ThreadedConvUnavailable(f"building {SOURCE.name} failed: {err}")
    if isinstance(_ops, ThreadedConvUnavailable):
        raise _ops
    return _ops


class _Conv2d(paddle.autograd.PyLayer):
    """Autograd of :func:`threaded_conv2d`: the forward op, then one backward op computing only
    the gradients needed (both at once on two threads)."""

    @staticmethod
    def forward(ctx, x, weight, settings):
        ctx.save_for_backward(x, weight)
        ctx.settings = settings
        return load_ops().threaded_conv2d_forward(x, weight, *settings)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        need_dx, need_dw = not x.stop_gradient, not weight.stop_gradient
        if not (need_dx or need_dw):
            return None, None
        dx, dw = load_ops().threaded_conv2d_backward(
            x, weight, dy.contiguous(), *ctx.settings, need_dx, need_dw
        )
        return (dx if need_dx else None), (dw if need_dw else None)


def threaded_conv2d(x, weight, stride, padding, dilation, groups=1, threads=2):
    """Paddle's ``conv2d`` kernel without bias (NCHW, explicit zero padding) on ``threads``
    (1 or 2) threads: x [N, C, H, W] float32 on the CPU, weight [O, C / groups, kh, kw] ->
    [N, O, H', W']; differentiable. ``stride``, ``dilation``: 2 ints; ``padding``: 2 or 4 ints
    (as ``nn.Conv2D`` keeps them, ``_updated_padding``)."""
    settings = ([int(s) for s in stride], [int(p) for p in padding], "EXPLICIT",
                [int(d) for d in dilation], int(groups), int(threads))  # fmt: skip
    return _Conv2d.apply(x.contiguous(), weight, settings)


def supports(layer: nn.Layer) -> bool:
    """Whether ``layer`` is an ``nn.Conv2D`` whose dygraph call :func:`threaded_conv2d`
    reproduces: NCHW, zero padding given as numbers (not 'SAME' / 'VALID'), float32."""
    return (
        isinstance(layer, nn.Conv2D)
        and layer._data_format == "NCHW"
        and layer._padding_mode == "zeros"
        and layer._padding_algorithm == "EXPLICIT"
        and layer.weight.dtype == paddle.float32
    )


def _usable(x) -> bool:
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


def _threaded_forward(self, x):
    """The layer's own dygraph forward with the convolution on two threads for float32 CPU
    inputs (bias added as the layer class adds it); the layer's forward otherwise."""
    if not _usable(x):
        return type(self).forward(self, x)
    out = threaded_conv2d(
        x, self.weight, self._stride, self._updated_padding, self._dilation, self._groups,
        self._conv_threads,
    )  # fmt: skip
    if self.bias is None:
        return out
    # F.conv2d adds a [1, O, 1, 1] bias; ChannelBiasConv2D an [O, 1, 1] one
    shape = [-1, 1, 1] if isinstance(self, ChannelBiasConv2D) else [1, -1, 1, 1]
    return out + self.bias.reshape(shape)


def use_threaded_convs(model: nn.Layer, threads: int = 2) -> int:
    """Run every supported ``nn.Conv2D`` of ``model`` with :func:`threaded_conv2d` on
    ``threads`` threads; builds the ops first (ThreadedConvUnavailable if they cannot be).
    Returns how many layers were switched. Parameters and state dict are untouched."""
    load_ops()
    return swap_forward(model, _threaded_forward, supports, _conv_threads=threads)


def threaded_conv_layers(model: nn.Layer) -> list[str]:
    """Names of ``model``'s sublayers switched by :func:`use_threaded_convs`."""
    return swapped_layers(model, _threaded_forward)


def threads_setting(value) -> int:
    """The config key ``paddle_conv_threads`` as 1 or 2 (an int or its string); ValueError."""
    if isinstance(value, bool) or str(value).strip() not in ("1", "2"):
        raise ValueError(f"config key paddle_conv_threads: expected 1 or 2, got {value!r}")
    return int(value)


def for_training(model: nn.Layer, threads=1) -> int:
    """Apply the config key ``paddle_conv_threads`` to a model about to be trained whose
    convolutions stay on Paddle's kernels; returns the number of convolutions switched.

    1 (the default): Paddle's call as it is; 2: :func:`threaded_conv2d` on a CPU device (a
    warning naming the reason, and Paddle's call, when the ops cannot be built). On a GPU
    nothing changes.
    """
    if threads_setting(threads) == 1 or not paddle.get_device().startswith("cpu"):
        return 0
    try:
        count = use_threaded_convs(model, 2)
    except ThreadedConvUnavailable as err:
        logger.warning("convolutions run on one thread (paddle_conv_threads: 2): %s", err)
        return 0
    logger.info("%d convolutions run Paddle's kernels on 2 threads (paddle_conv_threads)", count)
    return count
