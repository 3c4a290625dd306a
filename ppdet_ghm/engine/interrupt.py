"""SIGINT / SIGTERM during training: finish the step, write a resumable checkpoint, stop.

:class:`InterruptCheckpointer` installs handlers for SIGINT (Ctrl-C) and SIGTERM (what schedulers
and ``kill`` send) around training. A signal only raises a flag; at the end of the current
iteration (after the optimizer and LR steps, so the state is consistent) every rank sees the
flag (all-reduced: the ranks stop at the same iteration), rank 0 writes the checkpoint
``iter_<N>`` (``N`` iterations done; atomic, see :mod:`ppdet_ghm.engine.checkpoint_io`), and
training stops with :class:`TrainingInterrupted` (the command line exits with 128 + the signal
number: 130 for SIGINT, 143 for SIGTERM). A second SIGINT (Ctrl-C twice) while the first signal is
pending stops at once (``KeyboardInterrupt``) without a checkpoint; repeated SIGTERMs are ignored
(``paddle.distributed.launch`` sends each rank SIGTERM up to three times, 0.2 s apart, then waits
30 s before it kills them; SIGKILL is the way to stop at once).

The checkpoint's ``.meta.json`` holds ``step``, the batches of the interrupted epoch already
trained on. Resuming from it (``-r auto`` picks it when it is the latest) continues inside that
epoch: :meth:`InterruptCheckpointer.resume_inside_epoch` makes the data loader load and drop
those ``step`` batches (the same data, same random augmentation as the uninterrupted run; it
costs their loading time, no model time) and numbers the following steps from ``step``. A
signal during the last step of an epoch is acted on after the epoch's own checkpoint, and the
checkpoint then starts the next epoch (``step`` 0).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import paddle
from ppdet.engine.callbacks import Callback

from ppdet_ghm.engine.checkpoint_io import save_checkpoint, write_meta

logger = logging.getLogger(__name__)

__all__ = ["InterruptCheckpointer", "TrainingInterrupted", "signals_blocked"]

_HANDLED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_blocked(signals: tuple[int, ...] = _HANDLED):
    """Within the block, ``signals`` are blocked in the calling thread; processes it forks
    (DataLoader workers) inherit the mask and never see them. Pending signals are delivered
    when the block ends.

    ``paddle.distributed.launch`` sends SIGTERM to each rank's whole process group and Ctrl-C
    sends SIGINT to the terminal's: a DataLoader worker that died of it would make Paddle raise
    ``DataLoader process ... is killed by signal`` in the middle of the iteration, before the
    checkpoint is written. The workers are stopped by their parent instead.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class TrainingInterrupted(Exception):
    """Training stopped on a signal; ``checkpoint`` (path without suffix) resumes it."""

    def __init__(self, signum: int, checkpoint: str, iteration: int):
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.iteration = int(iteration)
        super().__init__(
            f"interrupted by {signal.Signals(self.signum).name} after {self.iteration} "
            f"iteration(s); checkpoint {checkpoint} (resume with -r {checkpoint} or -r auto)"
        )

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class InterruptCheckpointer(Callback):
    """See the module docstring.

    Args:
        trainer: the ppdet Trainer.
        save_dir: where the interrupt checkpoint goes.
        signals: the signals handled.
    """

    def __init__(
        self,
        trainer,
        save_dir: str,
        signals: tuple[int, ...] = _HANDLED,
    ):
        super().__init__(trainer)
        self.save_dir = save_dir
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._pending: int | None = None
        self._resume_epoch: int | None = None
        self._resume_step = 0

    # --- signals ---------------------------------------------------------------------------
    def _handle(self, signum, frame):
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
            name = signal.Signals(signum).name
            logger.info("%s received again: still stopping after this iteration", name)
            return
        self.requested = signum
        logger.warning(
            "%s received: stopping after this iteration with a checkpoint (a second SIGINT "
            "stops at once, without one)",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def handling_signals(self):
        """Within the block, the signals request a checkpoint-and-stop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in self.signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _requested_on_any_rank(self) -> int:
        signum = self.requested or 0
        if paddle.distributed.get_world_size() < 2:
            return signum
        flag = paddle.to_tensor([signum], dtype="int32")
        paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
        return int(flag.numpy()[0])

    # --- resuming inside an epoch ------------------------------------------------------------
    def resume_inside_epoch(self, epoch: int, step: int):
        """The run resumes ``step`` batches into ``epoch``: the loader drops them, and steps
        are numbered from ``step``."""
        self._resume_epoch, self._resume_step = int(epoch), int(step)
        loader = self.model.loader
        if not hasattr(loader, "skip_batches"):
            raise ValueError(
                f"cannot resume {step} step(s) into epoch {epoch}: the train loader "
                f"({type(loader).__name__}) cannot skip batches"
            )
        loader.skip_batches = int(step)

    def on_step_begin(self, status):
        if status.get("mode") == "train" and status.get("epoch_id") == self._resume_epoch:
            status["step_id"] += self._resume_step

    # --- stopping ----------------------------------------------------------------------------
    def on_step_end(self, status):
        if status.get("mode") != "train":
            return
        signum = self._requested_on_any_rank()
        if not signum:
            return
        epoch_id, step_id = int(status["epoch_id"]), int(status["step_id"])
        if step_id + 1 >= int(status["steps_per_epoch"]):
            self._pending = signum  # let the epoch end (its checkpoint, if any) first
            return
        self._save_and_stop(signum, epoch=epoch_id, step=step_id + 1, status=status)

    def on_epoch_end(self, status):
        if status.get("mode") == "train" and self._pending:
            self._save_and_stop(
                self._pending, epoch=int(status["epoch_id"]) + 1, step=0, status=status
            )

    def _save_and_stop(self, signum: int, *, epoch: int, step: int, status: dict):
        trainer = self.model
        iteration = epoch * int(status["steps_per_epoch"]) + step
        name = f"iter_{iteration}"
        prefix = os.path.join(self.save_dir, name)
        if paddle.distributed.get_rank() == 0:
            if getattr(trainer, "use_ema", False):
                logger.warning("the interrupt checkpoint holds the raw weights, not the EMA")
            save_checkpoint(
                trainer.model.state_dict(), trainer.optimizer, self.save_dir, name, epoch
            )
            write_meta(
                prefix,
                {
                    "epoch": epoch,
                    "iteration": iteration,
                    "step": step,
                    "data_seed": getattr(trainer.loader, "seed", None),
                    "interrupted_by": signal.Signals(signum).name,
                },
            )
        # logged before unwinding (DataLoader workers shut down on the way out): a launcher that
        # kills the process after its grace period still leaves this line in the rank's log
        logger.warning(
            "interrupted by %s after %d iteration(s): checkpoint %s is complete",
            signal.Signals(signum).name,
            iteration,
            prefix if paddle.distributed.get_rank() == 0 else f"{prefix} (written by rank 0)",
        )
        raise TrainingInterrupted(signum, prefix, iteration)
