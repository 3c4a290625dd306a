"""Non-finite losses: stop with a message naming the iteration and the loss term, or skip the step.

:class:`NonFiniteGuard` sits between ppdet's backward and optimizer step (it wraps the trainer's
``optimizer.step``) and looks at the loss terms the model returned for this iteration (every
``loss*`` entry of its output dict, captured by a forward post-hook). When one is NaN or
infinite on any rank (the flag is all-reduced, so every rank decides alike), according to the
config's ``nonfinite``:

- ``stop`` (default): raise :class:`NonFiniteLossError` *before* the optimizer step, naming the
  iteration (0-based, as in the logs), the epoch and step, and each non-finite term. Nothing
  is written, so the last checkpoint on disk stays the last good one.
- ``skip``: leave the weights and the optimizer state as they were (no step; the gradients are
  cleared by ppdet right after), restore the model's buffers (BatchNorm statistics, the GHM
  ``acc_sum`` histograms) to their values before this iteration's forward, log a warning and go
  on; the learning-rate schedule still advances. After ``max_consecutive_skips`` skipped steps
  in a row, training stops as with ``stop``.

With AMP (``amp: true``, GPU) ppdet steps through its ``GradScaler``, which already skips steps
with non-finite gradients; the guard then only checks after the step (``stop`` raises there).
"""

from __future__ import annotations

import logging

import numpy as np
import paddle
from ppdet.engine.callbacks import Callback

logger = logging.getLogger(__name__)

__all__ = ["NONFINITE_MODES", "NonFiniteGuard", "NonFiniteLossError"]

NONFINITE_MODES = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or infinite; ``iteration`` and ``terms`` ({name: value}) say where."""

    exit_status = 1

    def __init__(self, message: str, iteration: int, terms: dict[str, float]):
        super().__init__(message)
        self.iteration = iteration
        self.terms = terms


def _iteration(status: dict) -> int:
    return int(status.get("epoch_id", 0)) * int(status.get("steps_per_epoch", 0)) + int(
        status.get("step_id", 0)
    )


class NonFiniteGuard(Callback):
    """See the module docstring.

    Args:
        trainer: the ppdet Trainer (its ``model`` and ``optimizer`` are hooked).
        mode: 'stop' or 'skip'.
        max_consecutive_skips: with 'skip', stop after this many skipped steps in a row.
        checkpoint_dir: named in the stop message (where the last good checkpoint is).
    """

    def __init__(
        self,
        trainer,
        mode: str = "stop",
        *,
        max_consecutive_skips: int = 10,
        checkpoint_dir: str | None = None,
    ):
        super().__init__(trainer)
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite={mode!r} is not one of {list(NONFINITE_MODES)}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips={max_consecutive_skips} must be >= 1")
        self.mode = mode
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.checkpoint_dir = checkpoint_dir
        self.skipped: list[int] = []  # iterations whose step was skipped
        self._consecutive = 0
        self._outputs = None
        self._checked = False
        self._buffers: dict | None = None
        self._hook = trainer.model.register_forward_post_hook(self._capture)
        self._optimizer_step = trainer.optimizer.step
        trainer.optimizer.step = self._guarded_step

    def _capture(self, layer, inputs, outputs):
        if layer.training and isinstance(outputs, dict):
            self._outputs = outputs

    def on_step_begin(self, status):
        if status.get("mode") != "train":
            return
        self._outputs = None
        self._checked = False
        if self.mode == "skip":
            self._buffers = {name: t.clone() for name, t in self._statistics().items()}

    def _statistics(self) -> dict:
        """The model's state that a forward changes: buffers (GHM ``acc_sum``) and the
        non-trainable parameters (Paddle keeps BatchNorm's running mean/variance there)."""
        return {k: t for k, t in self.model.model.state_dict().items() if t.stop_gradient}

    def _bad_terms(self) -> dict[str, float]:
        """{name: value} of the non-finite loss terms of this rank's last forward."""
        outputs = self._outputs or {}
        names = [k for k, v in outputs.items() if k.startswith("loss") and paddle.is_tensor(v)]
        if not names:
            return {}
        values = paddle.concat(
            [outputs[k].detach().astype("float32").reshape([-1])[:1] for k in names]
        ).numpy()
        return {k: float(v) for k, v in zip(names, values, strict=True) if not np.isfinite(v)}

    def _any_rank(self, bad: bool) -> bool:
        if paddle.distributed.get_world_size() < 2:
            return bad
        flag = paddle.to_tensor([1 if bad else 0], dtype="int32")
        paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
        return bool(flag.numpy()[0])

    def _message(self, terms: dict[str, float], status: dict, reason: str) -> str:
        iteration = _iteration(status)
        where = (
            f"iteration {iteration} (epoch {int(status.get('epoch_id', 0))}, step "
            f"{int(status.get('step_id', 0))} of {int(status.get('steps_per_epoch', 0))})"
        )
        if terms:
            what = ", ".join(f"{k}={v}" for k, v in terms.items())
            rank = paddle.distributed.get_rank()
            if paddle.distributed.get_world_size() > 1:
                what += f" on rank {rank}"
        else:
            what = "on another rank"
        last = ""
        if self.checkpoint_dir:
            from ppdet_ghm.engine.checkpoint_io import find_latest_checkpoint

            latest = find_latest_checkpoint(self.checkpoint_dir)
            last = f"; last good checkpoint: {latest}" if latest else "; no checkpoint yet"
        return f"non-finite loss at {where}: {what}; {reason}{last}"

    def _stop(self, terms, status, reason):
        raise NonFiniteLossError(
            self._message(terms, status, reason), iteration=_iteration(status), terms=terms
        )

    def _guarded_step(self):
        self._checked = True
        status = self.model.status
        terms = self._bad_terms()
        if not self._any_rank(bool(terms)):
            self._consecutive = 0
            return self._optimizer_step()
        if self.mode == "stop":
            self._stop(
                terms,
                status,
                "training stopped before the optimizer step (nonfinite: skip "
                "would skip such steps)",
            )
        self._consecutive += 1
        self.skipped.append(_iteration(status))
        if self._buffers is not None:
            for name, tensor in self._statistics().items():
                tensor.set_value(self._buffers[name])
        if self._consecutive >= self.max_consecutive_skips:
            self._stop(terms, status, f"{self._consecutive} steps in a row skipped: stopped")
        logger.warning("%s", self._message(terms, status, "step skipped (nonfinite: skip)"))
        return None

    def on_step_end(self, status):
        if status.get("mode") != "train" or self._checked:
            return
        terms = self._bad_terms()  # the optimizer stepped without us (AMP GradScaler)
        if self._any_rank(bool(terms)) and self.mode == "stop":
            self._stop(terms, status, "training stopped")

    def on_train_end(self, status):
        if self.skipped:
            logger.warning(
                "%d step(s) skipped for non-finite losses: iterations %s",
                len(self.skipped),
                self.skipped[:20],
            )
