"""Momentum SGD's parameter update on all math threads, with the numbers of Paddle's step.

``paddle.optimizer.Momentum`` with ``ClipGradByGlobalNorm`` (the reference's SGD 0.9, weight
decay 1e-4, clip 35) updates each parameter with two single-threaded Paddle ops, the clip's
``multiply_`` and the ``momentum_`` kernel: with the clip's norms about 110 ms of a 3.3-3.8 s
R50-FPN iteration on two cores, mostly memory traffic (``python -m bench.bench_optimizer_step``). :func:`use_threaded_momentum` keeps Paddle's step (gradients, clip norm,
learning rates, accumulators, regularization, state dict) and replaces only those two per
parameter ops by one call of ``threaded_momentum.cc`` over all parameters, which scales and
updates each piece of a parameter while it is in the cache, the pieces shared over the math
threads: the same bits as Paddle's step (the scaling is one float32 product, the update Paddle's
own kernel; tests compare parameters, velocities and clipped gradients over several steps).

How: the optimizer's clip computes the global norm and the clip factor with Paddle's ops, as
``ClipGradByGlobalNorm`` does, but leaves the gradients unscaled; its ``_append_optimize_op``
collects each parameter's gradient, velocity, learning rate and regularization instead of
running the kernel; after Paddle's step the collected update runs as one call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import paddle
from paddle.nn.clip import _squared_l2_norm  # the op ClipGradByGlobalNorm takes the norms with
from paddle.regularizer import L2Decay

from ppdet_ghm.modeling import cpp_ops
from ppdet_ghm.modeling.forward_swap import switch_setting

__all__ = ["ThreadedMomentumUnavailable", "for_training", "load_ops", "use_threaded_momentum"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("threaded_momentum.cc")
_ops = None  # the loaded extension module, or the error it raised


class ThreadedMomentumUnavailable(RuntimeError):
    """The optimizer is not one the threaded update reproduces, or the op cannot be built."""


def load_ops():
    """The compiled op module (built once per source and Paddle version, cached on disk);
    ThreadedMomentumUnavailable where it cannot be built."""
    global _ops
    if _ops is None:
        try:
            _ops = cpp_ops.build("threaded_momentum", SOURCE)
        except Exception as err:  # no compiler, no cache folder, a compiler error ...
            _ops = err
    if isinstance(_ops, Exception):
        raise ThreadedMomentumUnavailable(str(_ops)) from _ops
    return _ops


def unsupported_reason(optimizer) -> str | None:
    """Why ``optimizer``'s step cannot run threaded (None if it can): only a plain
    ``paddle.optimizer.Momentum`` over float32 CPU parameters in one group, clipped by
    ``ClipGradByGlobalNorm`` or not at all, with L2 decay or none."""
    if type(optimizer) is not paddle.optimizer.Momentum:
        return f"{type(optimizer).__name__} is not paddle.optimizer.Momentum"
    if optimizer._use_multi_tensor or optimizer._multi_precision:
        return "use_multi_tensor / multi_precision are Paddle's own fused paths"
    if optimizer._param_groups and isinstance(optimizer._param_groups[0], dict):
        return "parameter groups"
    if optimizer.regularization is not None:
        return f"regularization {type(optimizer.regularization).__name__}"
    clip = optimizer._grad_clip
    if clip is not None and type(clip) is not paddle.nn.ClipGradByGlobalNorm:
        return f"gradient clip {type(clip).__name__}"
    for param in optimizer._parameter_list:
        if param.dtype != paddle.float32 or not param.place.is_cpu_place():
            return f"parameter {param.name} is {param.dtype} on {param.place}"
        regularizer = getattr(param, "regularizer", None)
        if regularizer is not None and not isinstance(regularizer, L2Decay):
            return f"parameter {param.name} has regularizer {type(regularizer).__name__}"
    return None


def use_threaded_momentum(optimizer) -> None:
    """Run ``optimizer.step()``'s clip multiply and momentum update as one threaded call (see
    the module docstring). Raises ThreadedMomentumUnavailable naming the reason when the
    optimizer is not supported or the op cannot be built."""
    reason = unsupported_reason(optimizer)
    if reason:
        raise ThreadedMomentumUnavailable(reason)
    load_ops()
    if not isinstance(getattr(optimizer.step, "__self__", None), _ThreadedUpdate):  # once
        _ThreadedUpdate(optimizer)


def for_training(optimizer, setting="auto") -> bool:
    """Apply the config key ``threaded_momentum`` to the optimizer of a CPU training run;
    returns whether the threaded update is on.

    ``auto`` (the default): on for a supported optimizer with more than one math thread, with a
    warning and Paddle's step when the op cannot be built; ``true``: also on one thread, an
    error instead of the warning; ``false``: Paddle's step. On a GPU nothing changes.
    """
    setting = switch_setting(setting, "threaded_momentum")
    if setting is False or not paddle.get_device().startswith("cpu"):
        return False
    if setting == "auto":
        if cpp_ops.math_threads() < 2 or unsupported_reason(optimizer):
            return False
    try:
        use_threaded_momentum(optimizer)
    except ThreadedMomentumUnavailable as err:
        if setting is True:
            raise
        logger.warning("the optimizer runs Paddle's step (threaded_momentum: auto): %s", err)
        return False
    logger.info(
        "the momentum update runs as one call on %d threads "
        "(config key threaded_momentum; false turns it off)", cpp_ops.math_threads(),
    )  # fmt: skip
    return True


class _ThreadedUpdate:
    """Installed on one optimizer: collects Paddle's step's per-parameter updates, runs them
    as one call afterwards."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.paddle_step = optimizer.step
        self.pending = []
        self.clip = _ScaleOnlyClip(optimizer._grad_clip) if optimizer._grad_clip else None
        optimizer._grad_clip = self.clip
        optimizer._append_optimize_op = self.collect
        optimizer.step = self.step

    def collect(self, block, param_and_grad):
        """``Momentum._append_optimize_op`` without the kernel: what it would pass to it."""
        opt = self.optimizer
        param, grad = param_and_grad
        method, coeff = opt._regularization_method, opt._regularization_coeff
        regularizer = getattr(param, "regularizer", None)
        if isinstance(regularizer, L2Decay):  # as Momentum: a parameter's own L2Decay wins
            method, coeff = "l2_decay", regularizer._coeff
        self.pending.append(
            (
                param,
                grad,
                opt._get_accumulator_master(opt._velocity_acc_str, param),
                opt._create_param_lr(param_and_grad),
                method,
                float(coeff),
                getattr(param, "need_clip", True),
            )
        )

    def step(self):
        self.pending = []
        try:
            self.paddle_step()
            if self.pending:
                self._update()
        finally:
            self.pending = []
            if self.clip is not None:
                self.clip.scale = None

    @paddle.no_grad()
    def _update(self):
        opt = self.optimizer
        params, grads, velocities, lrs, methods, coeffs, clipped = zip(*self.pending, strict=True)
        scale = self.clip.scale if self.clip is not None else None
        flags = [int(c and scale is not None) for c in clipped]
        load_ops().clipped_momentum(  # in place; a parameter itself refuses an in-place op
            [p.detach() for p in params],
            [g.detach() for g in grads],
            [v.detach() for v in velocities],
            list(lrs),
            scale if scale is not None else paddle.ones([1], dtype="float32"),
            float(opt._momentum),
            bool(opt._use_nesterov),
            list(methods),
            list(coeffs),
            flags,
            cpp_ops.math_threads(),
        )


class _ScaleOnlyClip:
    """``ClipGradByGlobalNorm``'s factor, from the same Paddle ops on the same gradients, kept in
    ``scale`` ([1], None where nothing is clipped); the gradients are left as they are."""

    def __init__(self, clip: paddle.nn.ClipGradByGlobalNorm):
        self.paddle_clip = clip
        self.clip_norm = clip.clip_norm
        self.scale = None

    def __getattr__(self, name):  # group_name, auto_skip_clip, ... of the wrapped clip
        return getattr(self.paddle_clip, name)

    def __call__(self, params_grads):
        squares = [
            _squared_l2_norm(g)
            for p, g in params_grads
            if g is not None and getattr(p, "need_clip", True)
        ]
        self.scale = None
        if not squares:
            return params_grads
        global_norm = paddle.sqrt(paddle.stack(squares).sum())
        max_norm = paddle.full(shape=[1], dtype="float32", fill_value=self.clip_norm)
        if not self.paddle_clip.auto_skip_clip:
            self.scale = paddle.divide(x=max_norm, y=paddle.maximum(x=global_norm, y=max_norm))
        elif global_norm > max_norm:
            self.scale = paddle.divide(x=max_norm, y=global_norm)
        return params_grads
