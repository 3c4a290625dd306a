"""Non-finite losses (ppdet_ghm.engine.guards): stop naming the iteration and the term, or skip.

Tiny variant of configs/demo.yml (tests/helpers/engine_tiny.py): 4 images, batch 2, 2 epochs of 2 steps,
a checkpoint after each epoch. A NaN is injected into ``loss_cls`` at a chosen iteration by a
forward post-hook on the model (the loss dict is changed in place, with a real NaN gradient),
or comes for real from a learning rate of 1e8 through the command line.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from ppdet.engine.callbacks import Callback

from ppdet_ghm import cli
from ppdet_ghm.builder import load_config
from ppdet_ghm.engine import tasks
from ppdet_ghm.engine.checkpoint_io import find_latest_checkpoint
from ppdet_ghm.engine.guards import NonFiniteLossError
from ppdet_ghm.engine.safe_load import safe_load
from ppdet_ghm.engine.trainer import GHMTrainer
from tests.helpers.engine_tiny import make_tiny


@pytest.fixture(scope="module", params=["demo", "frozen_bn"])
def tiny(tmp_path_factory, request):
    """The demo's backbone, and a ResNet-18 on frozen BN statistics (its BNs fused in CPU
    training, ppdet_ghm.modeling.frozen_bn) trained by SGD + momentum as one threaded update
    (ppdet_ghm.engine.threaded_momentum)."""
    root = tmp_path_factory.mktemp("nonfinite")
    config, overrides = make_tiny(root, frozen_bn=request.param == "frozen_bn")
    return root, config, overrides


def _trainer(tiny, name, **extra):
    root, config, overrides = tiny
    cfg = load_config(config, {**overrides, **extra})
    tasks.setup_runtime(cfg, threads=1, seed=0)
    return GHMTrainer(cfg, "train", output_dir=str(root / name))


def _inject_nan(trainer, iterations):
    """loss_cls (and loss) become NaN at the given iterations, gradients included."""

    def hook(layer, inputs, outputs):
        status = trainer.status
        iteration = status["epoch_id"] * status["steps_per_epoch"] + status["step_id"]
        if layer.training and iteration in iterations:
            nan = paddle.to_tensor(float("nan"), dtype=outputs["loss_cls"].dtype)
            outputs["loss_cls"] = outputs["loss_cls"] * nan
            outputs["loss"] = outputs["loss_cls"] + outputs["loss_reg"]

    trainer.model.register_forward_post_hook(hook)


class _Snapshots(Callback):
    """Model state (parameters and buffers) before and after every training step, and the
    SHA-256 of the checkpoint files present at the end of every epoch."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.before, self.after, self.files = {}, {}, {}

    def _state(self):
        return {k: v.numpy().copy() for k, v in self.model.model.state_dict().items()}

    def _iteration(self, status):
        return status["epoch_id"] * status["steps_per_epoch"] + status["step_id"]

    def on_step_begin(self, status):
        self.before[self._iteration(status)] = self._state()

    def on_step_end(self, status):
        self.after[self._iteration(status)] = self._state()

    def on_epoch_end(self, status):
        for path in sorted(Path(self.model.output_dir).glob("*.pd*")):
            self.files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()


def _add(trainer, callback):
    trainer._callbacks.append(callback)
    trainer._compose_callback._callbacks.append(callback)
    return callback


def test_stop_names_iteration_and_term_and_keeps_the_last_checkpoint(tiny):
    trainer = _trainer(tiny, "stop")
    snapshots = _add(trainer, _Snapshots(trainer))
    _inject_nan(trainer, {3})
    out = Path(trainer.output_dir)
    pattern = (
        r"non-finite loss at iteration 3 \(epoch 1, step 1 of 2\): loss_cls=nan, loss=nan; "
        r"training stopped before the optimizer step .*last good checkpoint: .*stop/0$"
    )
    with pytest.raises(NonFiniteLossError, match=pattern) as info:
        trainer.train()
    assert info.value.iteration == 3 and list(info.value.terms) == ["loss_cls", "loss"]
    # the epoch-0 checkpoint is untouched and the latest; nothing was written after it
    assert sorted(p.name for p in out.glob("*.pd*")) == ["0.pdopt", "0.pdparams"]
    for name, digest in snapshots.files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert find_latest_checkpoint(out) == str(out / "0")
    saved = safe_load(out / "0.pdparams")
    for name, value in snapshots.after[1].items():  # the state after the epoch's last step
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    # no optimizer step was taken with the NaN gradients: the weights in memory are finite
    for name, param in trainer.model.named_parameters():
        assert np.isfinite(param.numpy()).all(), name
    assert [r["iteration"] for r in trainer.history.records] == [0, 1, 2]


def test_skip_leaves_weights_and_statistics_as_they_were_and_goes_on(tiny):
    trainer = _trainer(tiny, "skip", nonfinite="skip")
    # the frozen-BN variant steps through the threaded momentum update, which the guard wraps
    assert trainer.threaded_momentum == ("threaded_momentum: true" in open(tiny[1]).read())
    snapshots = _add(trainer, _Snapshots(trainer))
    _inject_nan(trainer, {1})
    trainer.train()
    assert trainer.guard.skipped == [1]
    before, after = snapshots.before[1], snapshots.after[1]
    acc = [k for k in before if k.endswith("acc_sum")]
    bn = [k for k in before if k.endswith("_mean")]
    assert len(acc) == 2 and len(bn) > 10
    for name in before:  # parameters, BN statistics, GHM histograms: all as before the step
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not np.array_equal(snapshots.after[2][acc[0]], before[acc[0]])  # next step learns
    records = trainer.history.records
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert np.isnan(records[1]["loss_cls"]) and np.isfinite(records[3]["loss"])
    assert records[2]["lr"] > records[1]["lr"]  # the warmup went on
    out = Path(trainer.output_dir)
    assert find_latest_checkpoint(out) == str(out / "model_final")
    for name, value in safe_load(out / "model_final.pdparams").items():
        assert np.isfinite(value).all(), name


def test_skip_stops_after_too_many_skips_in_a_row(tiny):
    trainer = _trainer(tiny, "skip_limit", nonfinite="skip")
    trainer.guard.max_consecutive_skips = 2
    _inject_nan(trainer, {0, 1, 2, 3})
    with pytest.raises(NonFiniteLossError, match=r"iteration 1 .*2 steps in a row skipped"):
        trainer.train()
    assert trainer.guard.skipped == [0, 1]


def test_an_unknown_nonfinite_mode_is_an_error(tiny):
    with pytest.raises(ValueError, match=r"nonfinite='ignore' is not one of \['stop', 'skip'\]"):
        _trainer(tiny, "bad_mode", nonfinite="ignore")


def test_a_diverging_run_through_the_cli_stops_with_status_1(tiny, capsys):
    root, config, overrides = tiny
    argv = ["train", "-c", config, "--output_dir", str(root / "cli"), "--seed", "0"]
    argv += ["--threads", "1", "-o", *(f"{k}={v}" for k, v in overrides.items())]
    # AdamW's first step moves every weight by ~lr: float32 overflows at the next forward
    argv += ["LearningRate.base_lr=1e30", "OptimizerBuilder.clip_grad_by_norm=null"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        "ppdet-ghm train: non-finite loss at iteration 1 (epoch 0, step 1 of 2): loss_reg=nan, "
        "loss=nan; training stopped before the optimizer step" in err
    ), err
    assert not list((root / "cli").glob("*.pdparams"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
