"""Training-time view of the GHM histograms: per FPN level, every K iterations, to the log and VisualDL.

The reference (and our head) calls one shared GHM-C and one shared GHM-R loss object once per FPN
level, so after an iteration the loss's ``acc_sum`` only holds the state left by the last level.
:class:`GHMMonitor` therefore hooks the loss layers (``register_forward_post_hook``) and, on logging
iterations only, records after every call:

- ``acc_sum``: the EMA histogram right after that level's update, i.e. the one the level's
  weights were computed from (zero when momentum is 0: the loss then keeps no EMA);
- ``counts``: that call's own bin counts of the valid elements, recomputed from the call's inputs
  with :mod:`ppdet_ghm.analysis.gradients` (the same float32 binning as the losses).

The i-th call of a loss within an iteration is taken as level i (P3 first, as the head loops
over levels in order). Nothing is computed on other iterations, and no host synchronisation is
added to them. Logging happens on rank 0 only (each rank holds its own histogram unless the
losses synchronise their statistics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from ppdet.engine.callbacks import Callback

from ppdet_ghm.analysis.gradients import (
    cls_gradient_norm,
    ghmc_edges,
    ghmr_edges,
    histogram,
    reg_gradient_norm,
)

logger = logging.getLogger(__name__)

__all__ = ["GHMMonitor", "LevelRecord", "find_ghm_losses"]

LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")


@dataclass
class LevelRecord:
    """What one loss call (one FPN level) left: its bin counts and the EMA histogram after it."""

    kind: str  # "cls" (GHM-C) or "reg" (GHM-R)
    call_index: int  # 0-based call of that loss within the iteration (= level index)
    counts: np.ndarray | None  # int64 [bins], None when the inputs could not be read
    acc_sum: np.ndarray  # float64 [bins]


def _loss_kind(layer: paddle.nn.Layer) -> str | None:
    """'cls' for GHM-C losses, 'reg' for GHM-R losses, None for other layers."""
    try:
        from ppdet_ghm.losses import GHMCLoss, GHMRLoss
    except ImportError:  # losses not importable: fall back to the interface (acc_sum, bins, mu)
        GHMCLoss = GHMRLoss = ()  # noqa: N806
    if GHMRLoss and isinstance(layer, GHMRLoss):
        return "reg"
    if GHMCLoss and isinstance(layer, GHMCLoss):
        return "cls"
    if hasattr(layer, "acc_sum") and hasattr(layer, "bins"):
        return "reg" if hasattr(layer, "mu") else "cls"
    return None


def find_ghm_losses(model: paddle.nn.Layer) -> list[tuple[str, str, paddle.nn.Layer]]:
    """``(name, kind, layer)`` of every GHM loss layer in ``model`` (each shared object once)."""
    found, seen = [], set()
    for name, layer in model.named_sublayers(include_self=True):
        kind = _loss_kind(layer)
        if kind is not None and id(layer) not in seen:
            seen.add(id(layer))
            found.append((name, kind, layer))
    return found


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)


def _call_inputs(args: tuple, kwargs: dict) -> tuple | None:
    """(pred, target, label_weight) of a loss call given positionally or by keyword."""
    names = ("pred", "target", "label_weight")
    values = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]) :]]
    return None if any(v is None for v in values) else tuple(values)


class GHMMonitor(Callback):
    """ppdet Callback logging the GHM histograms of every FPN level every ``interval`` iterations.

    Args:
        trainer: the ppdet ``Trainer`` (its ``.model`` holds the GHM losses; ``.cfg`` may give
            ``vdl_log_dir``) or any object with a ``.model`` Layer.
        interval: log at the global iterations that are multiples of ``interval`` (iteration 0
            included), >= 1. The iteration is ``epoch_id * steps_per_epoch + step_id`` from ppdet's
            status when it has them (so it continues after a resume), else counted here.
        vdl_log_dir: VisualDL log directory; None = ``trainer.cfg['vdl_log_dir']`` if set, else no
            VisualDL output (the log file still gets the histograms).
        level_names: names of the successive calls of a loss within an iteration.

    Records land in :attr:`history` (iteration -> list of ``(loss name, LevelRecord)``) as well.
    VisualDL tags: ``ghm/<loss name>/<level>/acc_sum`` and ``ghm/<loss name>/<level>/counts``.
    """

    def __init__(
        self,
        trainer,
        *,
        interval: int = 50,
        vdl_log_dir: str | None = None,
        level_names: tuple[str, ...] = LEVEL_NAMES,
    ) -> None:
        super().__init__(trainer)
        if int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.interval = int(interval)
        self.level_names = tuple(level_names)
        self.iteration = 0
        self.history: dict[int, list[tuple[str, LevelRecord]]] = {}
        self._active = False
        self._records: list[tuple[str, LevelRecord]] = []
        self._calls: dict[str, int] = {}
        network = trainer.model
        self.losses = find_ghm_losses(network)
        if not self.losses:
            logger.warning("GHMMonitor: no GHM loss layer in the model, nothing will be logged")
        self._hooks = [
            layer.register_forward_post_hook(self._make_hook(name, kind), with_kwargs=True)
            for name, kind, layer in self.losses
        ]
        cfg = getattr(trainer, "cfg", None) or {}
        log_dir = vdl_log_dir if vdl_log_dir is not None else cfg.get("vdl_log_dir")
        self._writer = None
        if log_dir and self._is_main_rank():
            from visualdl import LogWriter

            self._writer = LogWriter(str(Path(log_dir)))

    @staticmethod
    def _is_main_rank() -> bool:
        return paddle.distributed.get_rank() == 0

    def level_name(self, call_index: int) -> str:
        if call_index < len(self.level_names):
            return self.level_names[call_index]
        return f"call{call_index}"

    # ---- hooks ----------------------------------------------------------------------------
    def _make_hook(self, name: str, kind: str):
        def hook(layer, args, kwargs, output):
            if not self._active:
                return None
            call_index = self._calls.get(name, 0)
            self._calls[name] = call_index + 1
            self._records.append((name, self._record(layer, kind, call_index, args, kwargs)))
            return None

        return hook

    @staticmethod
    def _record(layer, kind: str, call_index: int, args: tuple, kwargs: dict) -> LevelRecord:
        acc_sum = _to_numpy(layer.acc_sum).astype(np.float64).copy()
        inputs = _call_inputs(args, kwargs)
        counts = None
        if inputs is not None:
            pred, target, weight = (_to_numpy(t) for t in inputs)
            if kind == "cls":
                g, _ = cls_gradient_norm(pred, target, weight)
                counts = histogram(g, ghmc_edges(int(layer.bins)))
            else:
                gr, _ = reg_gradient_norm(pred, target, weight, float(layer.mu))
                counts = histogram(gr, ghmr_edges(int(layer.bins)))
        return LevelRecord(kind=kind, call_index=call_index, counts=counts, acc_sum=acc_sum)

    # ---- Callback interface ---------------------------------------------------------------
    def _sync_iteration(self, status: dict) -> None:
        """Global iteration from ppdet's status (right after a resume too), else our own count."""
        keys = ("epoch_id", "step_id", "steps_per_epoch")
        if all(isinstance(status.get(k), int) for k in keys):
            self.iteration = status["epoch_id"] * status["steps_per_epoch"] + status["step_id"]

    def on_step_begin(self, status: dict) -> None:
        if status.get("mode", "train") != "train":
            return
        self._sync_iteration(status)
        self._active = self._is_main_rank() and self.iteration % self.interval == 0
        self._records, self._calls = [], {}

    def on_step_end(self, status: dict) -> None:
        if status.get("mode", "train") != "train":
            return
        if self._active and self._records:
            self.history[self.iteration] = self._records
            self._log(self.iteration, self._records)
        self._active = False
        self._records = []
        self.iteration += 1

    def on_train_end(self, status: dict) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the VisualDL writer."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- output ---------------------------------------------------------------------------
    def _log(self, iteration: int, records: list[tuple[str, LevelRecord]]) -> None:
        for name, rec in records:
            level = self.level_name(rec.call_index)
            counts = "n/a" if rec.counts is None else " ".join(str(int(c)) for c in rec.counts)
            acc = " ".join(f"{a:.4g}" for a in rec.acc_sum)
            logger.info(
                "GHM iter %d %s (%s) %s: counts [%s] acc_sum [%s]",
                iteration, name, "GHM-C" if rec.kind == "cls" else "GHM-R", level, counts, acc,
            )  # fmt: skip
            if self._writer is not None:
                self._write_histogram(f"ghm/{name}/{level}/acc_sum", rec, rec.acc_sum, iteration)
                if rec.counts is not None:
                    self._write_histogram(f"ghm/{name}/{level}/counts", rec, rec.counts, iteration)

    def _write_histogram(self, tag: str, rec: LevelRecord, hist: np.ndarray, step: int) -> None:
        # VisualDL's public add_histogram bins raw values; ours are already binned, so the record
        # is built with its histogram component (bin edges clipped to [0, 1] for display).
        from visualdl.component.base_component import histogram as vdl_histogram

        bins = hist.size
        edges = np.minimum(
            (ghmc_edges(bins) if rec.kind == "cls" else ghmr_edges(bins)).astype(np.float64), 1.0
        )
        self._writer._get_file_writer().add_record(
            vdl_histogram(
                tag=tag.replace("%", "_"),
                hist=np.asarray(hist, dtype=np.float64).tolist(),
                bin_edges=edges.tolist(),
                step=step,
                walltime=round(time.time() * 1000),
            )
        )
