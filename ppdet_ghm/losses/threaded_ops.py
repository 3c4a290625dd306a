"""The GHM-C loss's per-element work on all math threads, with the numbers of Paddle's ops.

GHM-C takes the sigmoid (bins, gradient) and the softplus (loss value) of every logit of a level,
counts the bins and looks up each element's weight; Paddle's CPU kernels for these run on one
core. The custom ops of ``threaded_ops.cc`` (built at first use) split the elements over the
threads: :func:`sigmoid` / :func:`softplus` call Paddle's own registered kernels on pieces of
the tensor (the same bits as ``F.sigmoid`` / ``F.softplus``), :func:`lookup` copies table values
(``paddle.gather``'s numbers), :func:`bincount` adds per-piece integer counts
(``paddle.bincount``'s). Each falls back to Paddle's op where the op cannot help or cannot be
built (GPU, static graph, a tensor that needs a gradient, a small tensor, one math thread, no
compiler).
"""

from __future__ import annotations

import logging
from pathlib import Path

import paddle
import paddle.nn.functional as F

from ppdet_ghm.modeling import cpp_ops

__all__ = ["bincount", "load_ops", "lookup", "sigmoid", "softplus"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("threaded_ops.cc")
# the ops give each thread at least 2**18 elements (threaded_ops.cc, kMinPerThread)
MIN_ELEMENTS = 2 * 2**18
_ops = None  # the loaded extension module, or the error it raised


def load_ops():
    """The compiled ops module (built once per source and Paddle version, cached on disk), or
    None where it cannot be built (the reason is logged once)."""
    global _ops
    if _ops is None:
        try:
            _ops = _checked(cpp_ops.build("threaded_ops", SOURCE))
        except Exception as err:  # no compiler, no cache folder, a compiler error ...
            logger.info("GHM-C's per-element ops run on one thread: %s", err)
            _ops = err
    return None if isinstance(_ops, Exception) else _ops


def _checked(ops):
    """``ops`` if its sigmoid and softplus give Paddle's bits on a test vector (a kernel
    signature that changed with the Paddle version would not); RuntimeError otherwise."""
    x = paddle.linspace(-30.0, 30.0, 4099, dtype="float32")  # both sides of softplus' threshold
    for name, ours, paddles in (
        ("sigmoid", ops.threaded_sigmoid(x, 2), F.sigmoid(x)),
        ("softplus", ops.threaded_softplus(x, 1.0, 20.0, 2), F.softplus(x)),
    ):
        if not bool(paddle.equal_all(ours, paddles)):
            raise RuntimeError(f"the threaded {name} kernel does not give Paddle's numbers")
    return ops


def _threads_for(x, dtype=paddle.float32) -> int:
    """Threads worth using for ``x``, or 0 for Paddle's own call."""
    if (  # cheapest first: the small levels are dispatch-bound
        not paddle.in_dynamic_mode()
        or x.size < MIN_ELEMENTS
        or x.dtype != dtype
        or not x.place.is_cpu_place()
        or (not x.stop_gradient and paddle.is_grad_enabled())
    ):
        return 0
    threads = cpp_ops.math_threads()
    return threads if threads > 1 and load_ops() is not None else 0


def sigmoid(x):
    """``F.sigmoid(x)`` (any shape), on the math threads where that helps; no gradient."""
    threads = _threads_for(x)
    if not threads:
        return F.sigmoid(x)
    return load_ops().threaded_sigmoid(x.contiguous(), threads)


def softplus(x):
    """``F.softplus(x)`` (beta 1, threshold 20; any shape), on the math threads where that
    helps; no gradient."""
    threads = _threads_for(x)
    if not threads:
        return F.softplus(x)
    return load_ops().threaded_softplus(x.contiguous(), 1.0, 20.0, threads)


def lookup(table, index):
    """``paddle.gather(table, index)`` for a float32 vector ``table`` [T] and int32 ``index``
    [M] (values in [0, T)): float32 [M], on the math threads where that helps; no gradient."""
    threads = _threads_for(index, paddle.int32)
    if not threads or table.dtype != paddle.float32 or table.ndim != 1:
        return paddle.gather(table, index)
    return load_ops().threaded_lookup(table.contiguous(), index.contiguous(), threads)


def bincount(index, minlength: int):
    """``paddle.bincount(index, minlength=minlength)`` for int32 ``index`` whose values lie in
    [0, minlength): int64 [minlength], on the math threads where that helps."""
    threads = _threads_for(index, paddle.int32)
    if not threads:
        return paddle.bincount(index, minlength=minlength)
    return load_ops().threaded_bincount(index.contiguous(), int(minlength), threads)
