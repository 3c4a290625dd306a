"""Resume continues the same trajectory: 4 steps straight == 2 steps + resume + 2 steps.

Tiny variant of configs/demo.yml (tests/helpers/engine_tiny.py): 4 images, batch 2, 2 epochs of 2 steps,
shuffled data, random flips, LR warmup over 3 steps then a step decay after epoch 1, GHM momentum
on; with the demo's backbone, and with a ResNet-18 on frozen BN statistics (CPU training then
fuses its BNs, ppdet_ghm.modeling.frozen_bn) trained by SGD + momentum as one threaded update
(ppdet_ghm.engine.threaded_momentum). The straight run writes a checkpoint after epoch 0; resuming from it in a fresh trainer must
give the straight run's last two losses (1e-5), learning rates and final weights.
"""

import json

import numpy as np
import paddle
import pytest

from ppdet_ghm.builder import load_config
from ppdet_ghm.engine import tasks
from ppdet_ghm.engine.trainer import FreedMemoryRelease, GHMTrainer
from tests.helpers.engine_tiny import make_tiny


@pytest.fixture(scope="module", params=["demo", "frozen_bn"])
def straight(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("resume")
    frozen_bn = request.param == "frozen_bn"
    config, overrides = make_tiny(root, frozen_bn=frozen_bn)
    trainer = tasks.train(
        config, overrides=overrides, output_dir=str(root / "straight"), seed=0, threads=1
    )
    assert trainer.onednn_convs > 0  # CPU training runs its convolutions on oneDNN by default
    assert (trainer.fused_norms > 0) == frozen_bn  # and fuses frozen BNs where there are any
    assert trainer.threaded_momentum == frozen_bn  # the SGD step as one threaded call
    assert any(isinstance(c, FreedMemoryRelease) for c in trainer._callbacks)
    return root, config, overrides, trainer.history.records


def test_straight_run_writes_checkpoints_with_lr_and_ghm_state(straight):
    root, _, _, records = straight
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    for name in ("0", "model_final"):
        for suffix in (".pdparams", ".pdopt", ".meta.json"):
            assert (root / "straight" / (name + suffix)).is_file()
    state = paddle.load(str(root / "straight" / "0.pdparams"))
    acc = {k: v.numpy() for k, v in state.items() if k.endswith("acc_sum")}
    assert len(acc) == 2  # GHM-C and GHM-R
    assert all(v.sum() > 0 for v in acc.values())  # the EMA histograms were updated
    opt = paddle.load(str(root / "straight" / "0.pdopt"))
    assert opt["LR_Scheduler"]["last_epoch"] == 2  # two scheduler steps taken in epoch 0
    assert opt["last_epoch"] == 1
    assert (root / "straight" / "train.log").read_text().count("Epoch: [") >= 4
    meta = json.loads((root / "straight" / "0.meta.json").read_text())
    assert meta == {"epoch": 1, "iteration": 2, "data_seed": 0}


def test_resume_restores_lr_position_acc_sum_and_data_order(straight):
    root, config, overrides, records = straight
    cfg = load_config(config, overrides)
    tasks.setup_runtime(cfg, threads=1, seed=123)  # another init: everything must come from disk
    trainer = GHMTrainer(cfg, "train", output_dir=str(root / "inspect"))
    trainer.resume_weights(str(root / "straight" / "0"))
    assert trainer.start_epoch == 1
    assert trainer.lr.last_epoch == 2
    assert trainer.optimizer.get_lr() == pytest.approx(records[2]["lr"], rel=1e-12)
    saved = paddle.load(str(root / "straight" / "0.pdparams"))
    for name, buffer in trainer.model.state_dict().items():
        if name.endswith("acc_sum"):
            np.testing.assert_array_equal(buffer.numpy(), saved[name].numpy())
    assert trainer.loader.epoch == 1


def test_resumed_run_repeats_the_straight_losses_and_weights(straight):
    root, config, overrides, records = straight
    resumed = tasks.train(
        config,
        overrides=overrides,
        output_dir=str(root / "resumed"),
        resume=str(root / "straight" / "0"),
        seed=123,
        threads=1,
    )
    got = resumed.history.records
    assert [r["iteration"] for r in got] == [2, 3]
    for key in ("loss", "loss_cls", "loss_reg"):
        np.testing.assert_allclose(
            [r[key] for r in got], [r[key] for r in records[2:]], rtol=0, atol=1e-5, err_msg=key
        )
    np.testing.assert_allclose([r["lr"] for r in got], [r["lr"] for r in records[2:]], rtol=1e-12)
    final_a = paddle.load(str(root / "straight" / "model_final.pdparams"))
    final_b = paddle.load(str(root / "resumed" / "model_final.pdparams"))
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        np.testing.assert_allclose(
            final_b[name].numpy(), final_a[name].numpy(), rtol=0, atol=1e-5, err_msg=name
        )


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [
        (np.asarray(b["im_id"]).ravel().tolist(), np.asarray(b["image"]).copy()) for b in loader
    ]


def test_each_epoch_of_the_loader_is_a_function_of_seed_and_epoch(straight):
    """Order and flips of an epoch repeat when it is iterated again, and differ between epochs."""
    root, config, overrides, _ = straight
    cfg = load_config(config, overrides)
    tasks.setup_runtime(cfg, threads=1)
    loader = GHMTrainer(cfg, "train", output_dir=str(root / "inspect2")).loader
    first = _batches(loader, 1)
    np.random.seed(99)  # noqa: NPY002  (global state the transforms would otherwise draw from)
    again = _batches(loader, 1)
    assert [ids for ids, _ in first] == [ids for ids, _ in again]
    for (_, a), (_, b) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    epoch0 = _batches(loader, 0)
    assert [ids for ids, _ in epoch0] != [ids for ids, _ in first] or any(
        not np.array_equal(a, b) for (_, a), (_, b) in zip(epoch0, first, strict=True)
    )
