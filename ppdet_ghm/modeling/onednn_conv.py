"""oneDNN convolutions for CPU training in dygraph.

Paddle 3.3.1 runs a dygraph CPU convolution as im2col + GEMM (about 40 % of this CPU's peak in
our training step, where PyTorch's oneDNN convolutions reach about 60 %), and its own oneDNN
kernels are reachable only from a static graph, which is slower again (BENCHMARKS.md, "Why we
lose"). :func:`use_onednn_convs` switches a model's ``nn.Conv2D`` layers to
:func:`onednn_conv2d`: oneDNN's forward, backward-data and backward-weights primitives, two
custom ops (``onednn_conv.cc``, built at first use against Paddle's own ``libdnnl.so.3``), plain
NCHW tensors in and out, as PyTorch's CPU convolution does. Same arithmetic up to float32 rounding
(oneDNN sums in another order); parameters, names and checkpoints do not change. Training
switches the convolutions larger than 1x1 (:data:`TRAINING_MIN_KERNEL`): a 1x1 convolution is one
GEMM on Paddle's own layout, which Paddle's kernel runs on the math threads without the layout
reorders oneDNN needs (faster on two threads, BENCHMARKS.md item 8).

Building needs a C++ compiler and oneDNN's headers of Paddle's oneDNN version: ``make setup``
installs them (``pip install --no-deps onednn-devel==2025.0.1``, headers only, 0.2 MB).
:func:`load_ops` raises :class:`OnednnUnavailable` with the reason when either is missing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
from pathlib import Path

import paddle
import paddle.nn as nn

from ppdet_ghm.modeling import cpp_ops
from ppdet_ghm.modeling.forward_swap import swap_forward, swapped_layers, switch_setting

__all__ = [
    "OnednnUnavailable",
    "load_ops",
    "onednn_conv2d",
    "supports",
    "use_onednn_convs",
    "onednn_conv_layers",
    "for_training",
    "TRAINING_MIN_KERNEL",
]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("onednn_conv.cc")
HEADERS_HINT = "pip install --no-deps onednn-devel==2025.0.1"
_ops = None  # the loaded extension module, or the OnednnUnavailable it raised
# Training puts on oneDNN the convolutions with a kernel side of at least this: the 1x1 ones
# stay on Paddle's GEMM (R50-FPN RetinaNet: 32 of 71 on oneDNN)
TRAINING_MIN_KERNEL = 3


class OnednnUnavailable(RuntimeError):
    """The oneDNN convolution ops cannot be built or loaded here (the message says why)."""


def paddle_onednn_library() -> Path:
    """Path of the ``libdnnl.so.3`` that ships with Paddle (our ops link against it)."""
    return Path(paddle.__file__).parent / "libs" / "libdnnl.so.3"


def library_version(library: Path) -> tuple[int, int, int]:
    """(major, minor, patch) that ``library`` (a libdnnl) reports through ``dnnl_version()``."""

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    lib = ctypes.CDLL(str(library))
    lib.dnnl_version.restype = ctypes.POINTER(Version)
    version = lib.dnnl_version().contents
    return version.major, version.minor, version.patch


def header_version(include_dir: Path) -> tuple[int, int, int]:
    """(major, minor, patch) of the oneDNN headers in ``include_dir`` (``oneapi/dnnl/...``)."""
    text = (include_dir / "oneapi" / "dnnl" / "dnnl_version.h").read_text()
    found = dict(re.findall(r"#define DNNL_VERSION_(MAJOR|MINOR|PATCH) (\d+)", text))
    if len(found) != 3:
        raise OnednnUnavailable(f"{include_dir}/oneapi/dnnl/dnnl_version.h: no version defines")
    return int(found["MAJOR"]), int(found["MINOR"]), int(found["PATCH"])


def find_headers() -> Path:
    """The include directory holding ``oneapi/dnnl/dnnl.hpp``: ``$ONEDNN_INCLUDE_DIR``, else
    this environment's ``include/`` (where the onednn-devel wheel puts them)."""
    candidates = [os.environ.get("ONEDNN_INCLUDE_DIR"), os.path.join(sys.prefix, "include")]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
            return Path(candidate)
    raise OnednnUnavailable(
        f"oneDNN headers not found in {', '.join(filter(None, candidates))}: {HEADERS_HINT} "
        "(or set ONEDNN_INCLUDE_DIR)"
    )


def load_ops():
    """The compiled ops module (built once per source / Paddle / oneDNN version and cached on
    disk; concurrent processes wait for one build). Raises OnednnUnavailable with the reason."""
    global _ops
    if _ops is None:
        try:
            _ops = _build()
        except OnednnUnavailable as err:
            _ops = err
        except Exception as err:  # a compiler error, a missing compiler, a loader error
            _ops = OnednnUnavailable(f"building {SOURCE.name} failed: {err}")
    if isinstance(_ops, OnednnUnavailable):
        raise _ops
    return _ops


def _build():
    library = paddle_onednn_library()
    if not library.is_file():
        raise OnednnUnavailable(f"{library} not found (a Paddle build without oneDNN)")
    include_dir = find_headers()
    lib_version, hdr_version = library_version(library), header_version(include_dir)
    if lib_version[:2] != hdr_version[:2]:
        raise OnednnUnavailable(
            f"Paddle's oneDNN is {'.'.join(map(str, lib_version))} but the headers in "
            f"{include_dir} are {'.'.join(map(str, hdr_version))}: install headers of "
            f"{lib_version[0]}.{lib_version[1]} (onednn-devel 2025.0.x has 3.6)"
        )
    try:
        return cpp_ops.build(
            "onednn_conv",
            SOURCE,
            version=f"{lib_version} {hdr_version}",
            include_paths=[str(include_dir)],
            ldflags=[f"-L{library.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{library.parent}"],
        )
    except cpp_ops.BuildError as err:
        raise OnednnUnavailable(str(err)) from err


def _pair(value, name: str) -> list[int]:
    values = [value, value] if isinstance(value, int) else [int(v) for v in value]
    if len(values) == 4 and values[0::2] == values[1::2]:  # [top, bottom, left, right]
        values = values[0::2]
    if len(values) != 2:
        raise ValueError(f"onednn_conv2d: {name} must be an int or 2 ints, got {value!r}")
    return values


def _contiguous(t):
    return t if t.is_contiguous() else t.contiguous()


class _Conv2d(paddle.autograd.PyLayer):
    """Autograd of :func:`onednn_conv2d`: the forward op, then one backward op that computes
    only the gradients needed."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        has_bias = bias is not None
        b = bias if has_bias else weight  # not read without a bias
        ctx.save_for_backward(x, weight)
        ctx.settings = (stride, padding, dilation, has_bias)
        ctx.bias_needs_grad = has_bias and not bias.stop_gradient
        return load_ops().onednn_conv2d_forward(x, weight, b, stride, padding, dilation, has_bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        stride, padding, dilation, has_bias = ctx.settings
        need_dx = not x.stop_gradient
        need_dw = not weight.stop_gradient or ctx.bias_needs_grad
        dx = dw = db = None
        if need_dx or need_dw:
            dx, dw, db = load_ops().onednn_conv2d_backward(
                x, weight, _contiguous(dy), stride, padding, dilation, has_bias, need_dx, need_dw
            )
        dx = dx if need_dx else None
        dw = dw if not weight.stop_gradient else None
        db = db if ctx.bias_needs_grad else None
        return (dx, dw, db) if has_bias else (dx, dw)


def onednn_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """``F.conv2d`` (NCHW, groups 1, zero padding) on oneDNN: x [N, C, H, W] float32 on the
    CPU, weight [O, C, kh, kw], bias [O] or None -> [N, O, H', W']; differentiable."""
    return _Conv2d.apply(
        _contiguous(x),
        weight,
        bias,
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )


def supports(layer: nn.Layer) -> bool:
    """Whether ``layer`` is an ``nn.Conv2D`` that :func:`onednn_conv2d` computes exactly: NCHW,
    one group, zero padding given as numbers (not 'SAME'/'VALID'), float32 weights."""
    if not isinstance(layer, nn.Conv2D) or layer._groups != 1:
        return False
    if layer._data_format != "NCHW" or layer._padding_mode != "zeros":
        return False
    if isinstance(layer._padding, str) or layer.weight.dtype != paddle.float32:
        return False
    try:
        _pair(layer._padding, "padding")
    except (TypeError, ValueError):
        return False
    return True


def _usable(x) -> bool:
    return paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


def _onednn_forward(self, x):
    """``nn.Conv2D.forward`` on oneDNN in dygraph for float32 CPU inputs, the layer's own
    forward otherwise (traced for export, GPU, other dtypes)."""
    if _usable(x):
        return onednn_conv2d(x, self.weight, self.bias, self._stride, self._padding, self._dilation)
    return type(self).forward(self, x)


def use_onednn_convs(model: nn.Layer, min_kernel: int = 1) -> int:
    """Run every supported ``nn.Conv2D`` of ``model`` with a kernel of at least ``min_kernel``
    (either side) on oneDNN; builds the ops first (OnednnUnavailable if they cannot be).
    Returns how many layers were switched. Parameters and state dict are untouched."""
    load_ops()
    return swap_forward(
        model,
        _onednn_forward,
        lambda layer: supports(layer) and max(layer._kernel_size) >= min_kernel,
    )


def onednn_conv_layers(model: nn.Layer) -> list[str]:
    """Names of ``model``'s sublayers that run on oneDNN (switched by use_onednn_convs)."""
    return swapped_layers(model, _onednn_forward)


def for_training(model: nn.Layer, setting="auto") -> int:
    """Apply the config key ``onednn_conv`` to a model about to be trained; returns the number
    of convolutions switched to oneDNN.

    ``auto`` (the default): on a CPU device, every supported convolution larger than 1x1
    (:data:`TRAINING_MIN_KERNEL`), or none with a warning naming the reason when the ops cannot
    be built; ``true``: the same, but an
    OnednnUnavailable error instead of the warning; ``false``: Paddle's own convolutions. On a
    GPU nothing changes.
    """
    setting = switch_setting(setting, "onednn_conv")
    if setting is False or not paddle.get_device().startswith("cpu"):
        return 0
    try:
        count = use_onednn_convs(model, min_kernel=TRAINING_MIN_KERNEL)
    except OnednnUnavailable as err:
        if setting is True:
            raise
        logger.warning("convolutions stay on Paddle's CPU kernels (onednn_conv: auto): %s", err)
        return 0
    logger.info("%d convolutions run on oneDNN (config key onednn_conv; false turns it off)", count)
    return count
