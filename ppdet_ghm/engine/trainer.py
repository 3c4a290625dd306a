"""GHMTrainer: ppdet's ``Trainer`` with exact resume, an output folder, a log file and progress bars.

ppdet's :class:`ppdet.engine.Trainer` drives training, evaluation, inference and export; we
subclass it (no fork) and change only what our pipeline needs:

- **Output folder.** Checkpoints go to ``output_dir`` itself (ppdet: ``save_dir/<config name>``);
  VisualDL logs (``use_vdl``) to ``output_dir/vdl``.
- **Exact resume.** A checkpoint (``<epoch>.pdparams`` / ``.pdopt``, written by ppdet at the end
  of every ``snapshot_epoch``-th epoch) holds the model state, GHM ``acc_sum`` buffers included
  (persistable buffers), and the optimizer state, LR scheduler position included (Paddle stores
  ``LR_Scheduler`` in the optimizer state). ppdet's train reader is not resumable by itself (its
  sampler counts epochs on its own, and its prefetching iterator draws the next epoch's random
  transforms before the checkpoint is written): :class:`EpochSeededLoader` makes each epoch's
  batches a function of ``(data_seed, epoch)``, and ``<name>.meta.json`` beside the checkpoint
  keeps ``data_seed`` for the resume. Parameters and optimizer accumulators are named
  from the trainer's own counter (the optimizer state is keyed by those names). A resumed run
  then repeats the straight run's losses.
- **Reliability**: the training set is checked (:mod:`ppdet_ghm.data.validation`,
  config block ``data_checks``), checkpoints are written atomically
  (:mod:`~ppdet_ghm.engine.checkpoint_io`), a non-finite loss stops or skips the step
  (:mod:`~ppdet_ghm.engine.guards`, config key ``nonfinite: stop|skip``), SIGINT/SIGTERM write a
  resumable checkpoint (:mod:`~ppdet_ghm.engine.interrupt`), and weights files given for
  evaluation, inference or export are read without running their pickle
  (:mod:`~ppdet_ghm.engine.safe_load`).
- **CPU convolutions.** Training on a CPU runs the model's convolutions larger than 1x1 on
  oneDNN (:mod:`~ppdet_ghm.modeling.onednn_conv`, config key ``onednn_conv: auto|true|false``);
  where they stay on Paddle's kernels, ``paddle_conv_threads: 2`` runs those kernels on two
  threads with the same bits (:mod:`~ppdet_ghm.modeling.threaded_conv`). Beside the oneDNN
  convolutions, each frozen-statistics BatchNorm of the ResNet runs with its ReLU (and the
  block's shortcut addition) as one op on all math threads (:mod:`~ppdet_ghm.modeling.frozen_bn`,
  config key ``fused_frozen_bn: auto|true|false``). With ``paddle.optimizer.Momentum`` (the 1x
  schedule's SGD) the clip multiply and the momentum update of all parameters run as one call on
  the math threads with the bits of Paddle's step (:mod:`~ppdet_ghm.engine.threaded_momentum`,
  config key ``threaded_momentum: auto|true|false``).
- **Logs.** :func:`log_to_file` copies every ppdet and ppdet_ghm log record to a file;
  :class:`ProgressBar` draws tqdm bars for training and evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import paddle
from paddle.base.unique_name import UniqueNameGenerator
from paddle.utils import unique_name
from ppdet.engine import Trainer
from ppdet.engine.callbacks import Callback, Checkpointer

from ppdet_ghm.data.validation import DataChecks, checked_dataset
from ppdet_ghm.engine import cpu_memory, threaded_momentum
from ppdet_ghm.engine.checkpoint_io import atomic_ppdet_saves, write_meta
from ppdet_ghm.engine.guards import NonFiniteGuard
from ppdet_ghm.engine.interrupt import InterruptCheckpointer, signals_blocked
from ppdet_ghm.engine.parent_death import dataloader_workers_die_with_parent
from ppdet_ghm.engine.safe_load import ensure_safe, safe_load
from ppdet_ghm.modeling import frozen_bn, onednn_conv, threaded_conv

logger = logging.getLogger(__name__)

__all__ = [
    "GHMTrainer",
    "LossHistory",
    "ProgressBar",
    "ResultsRecorder",
    "EpochSeededLoader",
    "OutputDirCheckpointer",
    "load_model_weights",
    "log_to_file",
    "quiet_console",
]

_LOGGER_PREFIXES = ("ppdet", "ppdet_ghm")


def _package_loggers() -> list[logging.Logger]:
    """The loggers of ppdet (ppdet names them ``ppdet.*``, non-propagating) and of ppdet_ghm."""
    names = [
        name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in _LOGGER_PREFIXES
    ]
    return [logging.getLogger(name) for name in sorted(set(names) | set(_LOGGER_PREFIXES))]


def _file_log_roots(loggers: list[logging.Logger]) -> list[logging.Logger]:
    """The loggers among ``loggers`` that no other one of them receives records from by
    propagation: a handler on each of these sees every record once."""
    chosen = set(loggers)

    def reaches_another(item: logging.Logger) -> bool:
        while item.propagate and item.parent is not None:
            item = item.parent
            if item in chosen:
                return True
        return False

    return [item for item in loggers if not reaches_another(item)]


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike):
    """Within the block, every ppdet / ppdet_ghm log record is also appended to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")
    )
    loggers = _file_log_roots(_package_loggers())
    ours = logging.getLogger("ppdet_ghm")
    old_level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    for item in loggers:
        item.addHandler(handler)
    try:
        yield path
    finally:
        for item in loggers:
            item.removeHandler(handler)
        ours.setLevel(old_level)
        handler.close()


@contextlib.contextmanager
def quiet_console(level: int = logging.WARNING):
    """Within the block the console shows only log records of ``level`` and above (ppdet's
    handlers, and ppdet_ghm's records, which otherwise reach the root logger's handler) and no
    ``print`` output of ppdet / pycocotools (stdout is swallowed; tqdm bars go to stderr).
    Log files (:func:`log_to_file`) still get everything."""
    import io
    import sys

    handlers = [
        handler
        for item in _package_loggers()
        for handler in item.handlers
        if type(handler) is logging.StreamHandler
    ]
    old = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(level)
    ours = logging.getLogger("ppdet_ghm")
    warnings_handler = logging.StreamHandler(sys.stderr)
    warnings_handler.setLevel(level)
    old_propagate = ours.propagate
    ours.propagate = False
    ours.addHandler(warnings_handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ours.removeHandler(warnings_handler)
        ours.propagate = old_propagate
        for handler, value in zip(handlers, old, strict=True):
            handler.setLevel(value)


def check_weights_fit(model_state: dict, state: dict, path: str) -> None:
    """ValueError listing the missing keys and shape mismatches of ``state`` (from ``path``)
    against ``model_state``; the GHM ``acc_sum`` buffers may be missing."""
    missing = [k for k in model_state if k not in state and not k.endswith("acc_sum")]
    mismatched = [
        f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in model_state.items()
        if k in state and list(state[k].shape) != list(v.shape)
    ]
    if missing or mismatched:
        raise ValueError(
            f"{path} does not fit the model: {len(missing)} missing key(s) {missing[:8]}, "
            f"{len(mismatched)} shape mismatch(es) {mismatched[:8]}"
        )


def load_model_weights(model: paddle.nn.Layer, path: str) -> None:
    """Load a ``.pdparams`` (or ``.safetensors``) state into ``model``, strictly, without running
    the file's pickle (:func:`ppdet_ghm.engine.safe_load.safe_load`).

    Every parameter and buffer of the model must be in the file with the same shape, except the
    GHM losses' ``acc_sum`` buffers (training-only statistics, absent from converted mmdet
    checkpoints), which keep their values. Keys of the file the model does not have are reported
    and ignored.

    Raises:
        FileNotFoundError: no such file (``.pdparams`` is appended when ``path`` is not a file).
        ValueError: missing keys or shape mismatches, listed; a file that would run code.
    """
    path = path if os.path.isfile(path) or path.endswith(".pdparams") else path + ".pdparams"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    state = safe_load(path)
    model_state = model.state_dict()
    check_weights_fit(model_state, state, path)
    unexpected = sorted(set(state) - set(model_state))
    if unexpected:
        logger.info(
            "%s: %d key(s) not in the model, ignored: %s", path, len(unexpected), unexpected[:8]
        )
    model.set_state_dict({k: state[k] for k in model_state if k in state})
    logger.info("loaded weights %s", path)


class OutputDirCheckpointer(Checkpointer):
    """ppdet's Checkpointer writing into ``save_dir`` (ppdet: ``save_dir/<config name>``), plus
    ``<name>.meta.json`` beside each training checkpoint: ``{"epoch": epochs done,
    "iteration": iterations done, "data_seed": seed of the data pipeline}``."""

    def __init__(self, trainer, save_dir: str):
        super().__init__(trainer)
        self.save_dir = save_dir

    def on_epoch_end(self, status):
        with atomic_ppdet_saves():
            super().on_epoch_end(status)
        if status["mode"] != "train" or paddle.distributed.get_rank() != 0:
            return
        cfg = self.model.cfg
        epoch_id = status["epoch_id"]
        if (epoch_id + 1) % cfg.snapshot_epoch == 0 or epoch_id == cfg.epoch - 1:
            name = str(epoch_id) if epoch_id != cfg.epoch - 1 else "model_final"
            meta = {
                "epoch": epoch_id + 1,
                "iteration": (epoch_id + 1) * status["steps_per_epoch"],
                "data_seed": getattr(self.model.loader, "seed", None),
            }
            write_meta(os.path.join(self.save_dir, name), meta)  # last, atomically


def epoch_seed(seed: int, epoch: int) -> int:
    """The NumPy / Python seed of the data pipeline in ``epoch`` (a 32-bit int)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSeededLoader:
    """ppdet's train reader, made a function of ``(seed, epoch)``.

    ppdet's reader creates its DataLoader iterator (whose thread or workers prefetch batches and
    draw the random transforms from NumPy's global RNG) as soon as the previous epoch ends, and its
    batch sampler counts epochs itself. Before each epoch this wrapper instead shuts the pending
    iterator down, sets the sampler's epoch (``RandomState(epoch)`` shuffling), seeds NumPy and
    Python with :func:`epoch_seed` and only then starts the iterator: the batches of epoch ``e``
    (order and augmentation, with ``worker_num`` 0 or more) depend on ``(seed, e)`` only, so a
    resumed run sees the straight run's data. ``skip_batches`` (resuming inside an epoch) makes
    the next epoch load and drop its first batches.
    """

    def __init__(self, reader, seed: int = 0):
        self.reader = reader
        self.seed = int(seed)
        self.epoch = 0
        self.skip_batches = 0
        pending = getattr(reader, "loader", None)  # started by ppdet at construction
        if pending is not None and hasattr(pending, "_try_shutdown_all"):
            pending._try_shutdown_all()
        reader.loader = None

    @property
    def dataset(self):
        return self.reader.dataset

    @property
    def _batch_sampler(self):
        return self.reader._batch_sampler

    def set_epoch(self, epoch: int):
        """The next iteration over the loader yields epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.reader)

    def __iter__(self):
        sampler = self.reader._batch_sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        seed = epoch_seed(self.seed, self.epoch)
        np.random.seed(seed)  # noqa: NPY002  (the global RNG ppdet's transforms draw from)
        random.seed(seed)
        self.epoch += 1
        skip, self.skip_batches = self.skip_batches, 0
        with signals_blocked():  # workers must outlive SIGINT/SIGTERM (interrupt checkpoints)
            iterator = iter(self.reader.dataloader)
        try:
            for index, batch in enumerate(iterator):
                if index >= skip:
                    yield batch
        finally:
            if hasattr(iterator, "_try_shutdown_all"):
                iterator._try_shutdown_all()


class ProgressBar(Callback):
    """tqdm bars: one over all training iterations (smoothed losses and lr), one per evaluation."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self._train_bar = None
        self._eval_bar = None

    def on_train_begin(self, status):
        from tqdm import tqdm

        trainer = self.model
        total = (trainer.cfg.epoch - trainer.start_epoch) * status["steps_per_epoch"]
        self._train_bar = tqdm(total=total, desc="train", unit="it", dynamic_ncols=True)

    def on_step_end(self, status):
        if status.get("mode") == "train" and self._train_bar is not None:
            losses = status["training_staus"].get()
            postfix = {k: f"{float(v):.4f}" for k, v in losses.items()}
            postfix["lr"] = f"{status['learning_rate']:.2e}"
            postfix["epoch"] = status["epoch_id"] + 1
            self._train_bar.set_postfix(postfix, refresh=False)
            self._train_bar.update(1)
        elif status.get("mode") == "eval":
            if self._eval_bar is None:
                from tqdm import tqdm

                loader = getattr(self.model, "_eval_loader", None) or self.model.loader
                self._eval_bar = tqdm(total=len(loader), desc="eval", unit="batch", leave=False)
            self._eval_bar.update(1)

    def on_epoch_end(self, status):
        if status.get("mode") == "eval" and self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def on_train_end(self, status):
        if self._train_bar is not None:
            self._train_bar.close()
            self._train_bar = None


class ResultsRecorder(Callback):
    """Keeps the metrics' results of the last evaluation (ppdet resets them right after)."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.results: dict = {}

    def on_epoch_end(self, status):
        if status.get("mode") == "eval":
            self.results = {}
            for metric in self.model._metrics:
                self.results.update(metric.get_results())


class FreedMemoryRelease(Callback):
    """At the end of each training epoch, free heap pages go back to the system
    (:func:`ppdet_ghm.engine.cpu_memory.release_freed_memory`; only where freed memory is kept)."""

    def on_epoch_end(self, status):
        if status.get("mode") == "train":
            cpu_memory.release_freed_memory()


class LossHistory(Callback):
    """Every training iteration's raw losses and learning rate, as a list of dicts
    ``{"epoch", "step", "iteration", "lr", "loss", "loss_cls", ...}`` (floats)."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.records: list[dict] = []

    def on_step_end(self, status):
        if status.get("mode") != "train":
            return
        meters = status["training_staus"].meters or {}
        record = {
            "epoch": int(status["epoch_id"]),
            "step": int(status["step_id"]),
            "iteration": int(status["epoch_id"]) * int(status["steps_per_epoch"])
            + int(status["step_id"]),
            "lr": float(status["learning_rate"]),
        }
        record.update({k: float(np.asarray(m.value).reshape(-1)[0]) for k, m in meters.items()})
        self.records.append(record)


class GHMTrainer(Trainer):
    """ppdet ``Trainer`` for our configs; see the module docstring for what differs.

    Args:
        cfg: a loaded config (``ppdet_ghm.builder.load_config``).
        mode: 'train', 'eval' or 'test' (inference and export).
        output_dir: where checkpoints (train), ``vdl/`` (VisualDL) and outputs go.
        progress: draw tqdm progress bars.
        data_seed: seed of the training data order and augmentation (see EpochSeededLoader).
    """

    def __init__(
        self,
        cfg,
        mode: str = "train",
        *,
        output_dir: str = "output",
        progress: bool = False,
        data_seed: int = 0,
    ):
        self.output_dir = str(output_dir)
        dataloader_workers_die_with_parent()  # ppdet starts loader workers in __init__
        if cfg.get("use_vdl", False):
            cfg["vdl_log_dir"] = os.path.join(self.output_dir, "vdl")
        # Paddle names parameters and optimizer accumulators from a process-wide counter
        # (conv2d_90.w_0, conv2d_90.w_0_velocity_1) and keys the optimizer state by those names:
        # a counter of our own makes them the same in every process, so a checkpoint resumes
        # even after other models were built or trained in the process.
        self._names = UniqueNameGenerator()
        if mode == "train":
            checks = DataChecks.from_config(cfg.get("data_checks"))
            cfg["TrainDataset"] = checked_dataset(cfg["TrainDataset"], checks)
        with unique_name.guard(self._names):
            super().__init__(cfg, mode=mode)
        self.onednn_convs = 0  # how many convolutions run on oneDNN (CPU training)
        self.threaded_convs = 0  # how many run Paddle's kernels on two threads (CPU training)
        self.fused_norms = 0  # frozen BatchNorms (+ ReLU, + shortcut) run as one op each
        self.threaded_momentum = False  # the momentum update as one threaded call (CPU training)
        if mode == "train":
            self.loader = EpochSeededLoader(self.loader, seed=data_seed)
            self.onednn_convs = onednn_conv.for_training(self.model, cfg.get("onednn_conv", "auto"))
            conv_threads = threaded_conv.threads_setting(cfg.get("paddle_conv_threads", 1))
            if not self.onednn_convs:  # the convolutions Paddle's kernels keep
                self.threaded_convs = threaded_conv.for_training(self.model, conv_threads)
            self.fused_norms = frozen_bn.for_training(
                self.model, cfg.get("fused_frozen_bn", "auto"), self.onednn_convs
            )
            self.threaded_momentum = threaded_momentum.for_training(
                self.optimizer, cfg.get("threaded_momentum", "auto")
            )
        self.recorder = ResultsRecorder(self)
        self.history = LossHistory(self)
        callbacks = []
        for callback in getattr(self, "_callbacks", []):
            if type(callback) is Checkpointer:
                callback = OutputDirCheckpointer(self, self.output_dir)
            callbacks.append(callback)
        callbacks += [self.recorder, self.history]
        if mode == "train":
            self.interrupts = InterruptCheckpointer(self, self.output_dir)
            self.guard = NonFiniteGuard(
                self, str(cfg.get("nonfinite", "stop")), checkpoint_dir=self.output_dir
            )
            callbacks += [self.guard, self.interrupts, FreedMemoryRelease(self)]
            ghm_log_interval = int(cfg.get("ghm_log_interval", 0))
            if ghm_log_interval > 0:  # per-level GHM bin counts and acc_sum
                from ppdet_ghm.analysis.ghm_monitor import GHMMonitor

                callbacks.append(
                    GHMMonitor(self, interval=ghm_log_interval, vdl_log_dir=cfg.get("vdl_log_dir"))
                )
        if progress:
            callbacks.append(ProgressBar(self))
        self._callbacks = []
        self.register_callbacks(callbacks)

    @property
    def last_eval_results(self) -> dict:
        """``{'bbox': [12 COCO stats]}`` of the last evaluation run during training, or {}."""
        return self.recorder.results

    def train(self, validate: bool = False):
        # optimizer accumulators are named on first use; SIGINT/SIGTERM: checkpoint and stop
        with unique_name.guard(self._names), self.interrupts.handling_signals():
            return super().train(validate=validate)

    def resume_weights(self, weights: str):
        """Resume from checkpoint ``weights`` (path without suffix): model, GHM ``acc_sum``,
        optimizer, LR schedule position (ppdet), then the data pipeline's epoch (and the step
        inside it for an interrupt checkpoint). Raises ValueError when the weights do not fit."""
        ensure_safe(weights)  # before ppdet's paddle.load (docs/security.md)
        path = weights + ".pdparams"
        if os.path.isfile(path):  # ppdet's loader would skip mismatched shapes with a warning
            check_weights_fit(self.model.state_dict(), safe_load(path), path)
        super().resume_weights(weights)
        if isinstance(self.loader, EpochSeededLoader):
            self.loader.set_epoch(self.start_epoch)
            meta_path = weights + ".meta.json"
            if os.path.isfile(meta_path):
                with open(meta_path) as f:
                    meta = json.load(f)
                if meta.get("data_seed") is not None:
                    self.loader.seed = int(meta["data_seed"])
                if meta.get("step"):  # an interrupt checkpoint, inside an epoch
                    self.interrupts.resume_inside_epoch(self.start_epoch, int(meta["step"]))
            else:
                logger.warning(
                    "%s not found: the data of the resumed epochs follow data_seed=%d",
                    meta_path,
                    self.loader.seed,
                )
        lr = self.optimizer.get_lr()
        logger.info(
            "resumed %s: epoch %d, iteration %d, lr %.6g",
            weights,
            self.start_epoch,
            getattr(self.lr, "last_epoch", -1),
            lr,
        )
