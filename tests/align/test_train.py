"""Step 13 in CI: our training replays the committed mmdet log of its first 10 iterations.

``align/logs/step13_train_prefix_torch.npy`` was written by

    python -m align.step13_train --prepare --num-train 16 --num-val 8 --image-size 128 \
        --image-format png
    python -m align.step13_train --side torch --loss ghm --optim adamw --seed 0 --iters 10 \
        --init numpy --dtype float64 --no-eval --num-train 16 --num-val 8 --image-size 128 \
        --image-format png --out DIR     # then copied to align/logs/step13_train_prefix_torch.npy

(16 generated 128 px PNG images, NumPy initial weights with mmdet's distributions, GHM-C + GHM-R,
the demo's AdamW and warmup, float64 on both sides). float64 because GHM's histogram is not
continuous: in float32, rounding moves single elements across bin edges within a few iterations
and the losses then differ by up to 3e-3 (``--dtype float32`` on the same prefix); in float64 they
stay within 4e-4 over the 10 iterations. The test replays the Paddle side and requires every
iteration's loss, loss_cls, loss_bbox and both GHM ``acc_sum`` within 1e-3 relative (the learning
rates exactly), then breaks the port on purpose (GHM-C momentum 0.7 instead of 0.75; warmup from
0.01 instead of 0.001) and requires the same check to fail.
"""

import dataclasses
import os

import numpy as np
import paddle
import pytest

from align import step13_train, train_data
from tests.helpers.step13 import STEP13_TINY_DATA

LOG = os.path.join(os.path.dirname(step13_train.__file__), "logs", "step13_train_prefix_torch.npy")
REL = 1e-3
DATA = STEP13_TINY_DATA
RUN = ["--loss", "ghm", "--optim", "adamw", "--seed", "0", "--init", "numpy"]
RUN += ["--dtype", "float64", "--no-eval", "--print-every", "0"]


@pytest.fixture(scope="module")
def data_root(step13_data_root):
    return step13_data_root


@pytest.fixture(scope="module")
def torch_log():
    return np.load(LOG, allow_pickle=True).item()


def replay(data_root, out, iters, mutate=None):
    args = step13_train.build_parser().parse_args(
        ["--side", "paddle", "--iters", str(iters), "--data-root", data_root, "--out", str(out)]
        + DATA
        + RUN
    )
    return step13_train.run_side(args, mutate=mutate)


def failures(torch_log, paddle_log, iters):
    """Names of the quantities outside tolerance over the first ``iters`` iterations."""
    diffs = step13_train.prefix_diffs(torch_log, paddle_log, iters)
    bad = [
        k
        for k in ("loss", "loss_cls", "loss_bbox", "ghmc.acc_sum", "ghmr.acc_sum")
        if diffs[k] > REL
    ]
    if diffs["lr"] != 0.0:
        bad.append("lr")
    return bad, diffs


def test_prefix_replays_the_torch_log(data_root, tmp_path, torch_log):
    log = replay(data_root, tmp_path, 10)
    step13_train.check_same_start(torch_log, log)  # same initial weights and data arrays
    bad, diffs = failures(torch_log, log, 10)
    assert not bad, diffs
    # iteration 0: the forward and loss of the same weights and batch, to float64 rounding
    assert step13_train.rel_diff(log["loss"][0], torch_log["loss"][0]) < 1e-6


def _wrong_ghmc_momentum(model, optim):
    model.head.loss_cls.momentum = 0.7
    return optim


def _wrong_warmup(model, optim):
    return dataclasses.replace(optim, warmup_factor=0.01)


@pytest.mark.parametrize("mutate", [_wrong_ghmc_momentum, _wrong_warmup])
def test_broken_port_fails_the_replay(data_root, tmp_path, torch_log, mutate):
    log = replay(data_root, tmp_path, 3, mutate=mutate)
    bad, diffs = failures(torch_log, log, 3)
    assert "loss" in bad, diffs


@pytest.mark.parametrize("scale", [1.0, 1e-8])
def test_paddle_adamw_is_torch_adamw(scale):
    """Paddle's AdamW update equals torch.optim.AdamW's formula (written out in NumPy, float64):
    decoupled decay ``p *= 1 - lr * wd`` first, bias-corrected moments, eps added to
    ``sqrt(v_hat)`` (gradients of 1e-8, the size of eps, tell the placements apart); the learning
    rate changing every step as step 13 sets it. Paddle keeps the learning rate and the powers of
    the betas in float32: the updates agree to 1e-6 of their size, not to float64 rounding."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) * s * scale for s in (1.0, 1e-3, 10.0, 1e-2, 0.5)]
    lrs = [1e-3, 2e-3, 5e-4, 1e-2, 3e-3]
    beta1, beta2, eps, wd = 0.9, 0.999, 1e-8, 0.05
    # torch.optim.AdamW (single tensor, amsgrad=False)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        lr = float(np.float32(lr))
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - beta2**t) + eps
        p = p - lr / (1 - beta1**t) * m / denom
    param = paddle.create_parameter([5, 3], "float64")
    param.set_value(p0)
    opt = paddle.optimizer.AdamW(
        learning_rate=lrs[0],
        beta1=beta1,
        beta2=beta2,
        epsilon=eps,
        parameters=[param],
        weight_decay=wd,
    )
    for g, lr in zip(grads, lrs, strict=True):
        opt.set_lr(lr)
        (param * paddle.to_tensor(g)).sum().backward()
        opt.step()
        opt.clear_grad()
    update, expected = param.numpy() - p0, p - p0
    np.testing.assert_allclose(update, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_schedule_matches_ppdet_demo_schedule():
    """lr_at equals the demo's ppdet LinearWarmup + CosineDecay (PiecewiseDecay) values."""
    from ppdet.optimizer.optimizer import CosineDecay, LinearWarmup

    optim = train_data.OPTIMS["adamw"]
    boundary, value = LinearWarmup(steps=50, start_factor=0.001)(optim.base_lr, 100)
    sched = CosineDecay(max_epochs=6)(optim.base_lr, boundary, value, 100)
    for it in range(600):
        assert abs(sched() - train_data.lr_at(it, optim, 600)) < 1e-12, it
        sched.step()


def test_summary_of_the_2x2(tmp_path):
    """Means, seed spreads, ours - mmdet and the GHM - Focal gap from hand-made compare files."""
    import json

    def write(loss, seed, ap_torch, ap_paddle, kind="shapes"):
        coco = {
            side: dict.fromkeys(step13_train.AP_KEYS, ap / 100)
            for side, ap in (("torch", ap_torch), ("paddle", ap_paddle))
        }
        run = train_data.run_name(loss, "adamw", seed, 600, kind)
        record = {
            "run": run,
            "coco": coco,
            "first_iters_max_rel_diff": {"loss": 1e-4},
            "smoothed_max_rel_diff": {"loss": 0.03},
            "wall_s": {"torch": {"train_wall_s": 10.0}, "paddle": {"train_wall_s": 20.0}},
        }
        path = tmp_path / f"{run}_compare.json"
        path.write_text(json.dumps(record))

    write("ghm", 0, 32.0, 35.0)
    write("ghm", 1, 34.0, 33.0)
    write("focal", 0, 60.0, 62.0)
    out = step13_train.summary(str(tmp_path))
    ghm = out["runs"]["ghm_adamw"]
    assert ghm["mean"]["torch"]["AP"] == pytest.approx(33.0)
    assert ghm["seed_spread_AP"] == pytest.approx({"torch": 2.0, "paddle": 2.0})
    assert ghm["ours_minus_mmdet_AP"] == pytest.approx({"s0": 3.0, "s1": -1.0})
    assert out["ghm_minus_focal_AP_adamw"] == pytest.approx({"torch": -27.0, "paddle": -28.0})
    assert (tmp_path / "step13_summary.json").is_file()
    assert "| shapes | ghm | adamw | ours | mean | **34.0** |" in step13_train.format_table_2x2(out)
    write("ghm", 0, 20.0, 21.0, kind="marks")
    out = step13_train.summary(str(tmp_path))
    assert out["runs"]["ghm_adamw_marks"]["mean"]["paddle"]["AP"] == pytest.approx(21.0)
    assert out["runs"]["ghm_adamw"]["mean"]["torch"]["AP"] == pytest.approx(33.0)


def test_warmup_ablation_changes_only_the_warmup_length():
    import argparse

    args = argparse.Namespace(optim="adamw", iters=600, warmup_iters=200)
    optim = train_data.optim_of(args)
    assert optim.warmup_iters == 200
    assert optim == dataclasses.replace(train_data.OPTIMS["adamw"], warmup_iters=200)
    # halfway through the long warmup: base * (f / 2 + 1 / 2)
    assert train_data.lr_at(100, optim, 600) == pytest.approx(0.002 * (0.001 * 0.5 + 0.5))
    assert train_data.lr_at(200, optim, 600) == pytest.approx(0.002)  # cosine starts at the base
    args.warmup_iters = None
    assert train_data.optim_of(args) is train_data.OPTIMS["adamw"]
    args.warmup_iters = 600
    with pytest.raises(ValueError, match="warmup-iters"):
        train_data.optim_of(args)


def test_scores_without_detections_refuses_and_writes_nothing(tmp_path):
    """``--scores`` on a folder with no runs names it, instead of drawing an empty figure over
    the committed one."""
    empty, results = tmp_path / "no_runs", tmp_path / "results"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no detections in .*no_runs"):
        step13_train.main(["--scores", "--out", str(empty), "--results", str(results)])
    assert not results.exists() or not any(results.iterdir())
