"""Alignment steps 8 (COCO metric) and 10 (learning rate): the Paddle side against the committed
torch logs, a deliberately broken port that each step must fail, and hand-computed lr values.

About 1 minute on 2 cores (each Paddle side runs in a few seconds; the broken ports rerun it).
"""

import os

import numpy as np
import pytest

from align import common, report, step8_metric, step10_lr

LOGS = common.DEFAULT_LOGS


def _run(step, tmp_path, *extra):
    args = step.build_parser().parse_args(
        ["--side", "paddle", "--logs", LOGS, "--out", str(tmp_path), *extra]
    )
    rows = common.run_side(step, args)
    paddle_log = common.load_log(common.log_path(str(tmp_path), step.STEP, "paddle"))
    return rows, paddle_log


def _failed(rows):
    return [r for r in rows if r.status == report.STATUS_FAIL]


# ----------------------------------------------------------------------------- step 8


@pytest.fixture(scope="module")
def metric_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("step8")
    return _run(step8_metric, out, "--data-dir", str(out / "data"))


def test_metric_every_row_passes(metric_run):
    rows, _ = metric_run
    assert len(rows) == 9
    bad = [r for r in rows if r.status != report.STATUS_PASS]
    assert not bad, report.format_table(bad)


def test_metric_data_cover_the_cases():
    gt, dets = step8_metric.make_dataset()
    anns = gt["annotations"]
    cats = {a["category_id"] for a in anns}
    assert step8_metric.NO_GT_CATEGORY not in cats and step8_metric.NO_DET_CATEGORY in cats
    det_cats = {step8_metric.CATEGORIES[int(label)][0] for d in dets for label in d["labels"]}
    assert step8_metric.NO_DET_CATEGORY not in det_cats
    assert step8_metric.NO_GT_CATEGORY in det_cats
    assert any(a["iscrowd"] for a in anns)
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    counts = [len(d["scores"]) for d in dets]
    assert counts[0] == counts[1] == 0 and max(counts) == 100
    with_gt = {a["image_id"] for a in anns}
    assert all(d["img_id"] not in with_gt for d in dets[2:4])
    scores = np.concatenate([d["scores"] for d in dets])
    assert len(np.unique(scores)) < len(scores) // 10  # ties


@pytest.fixture
def crowd_as_normal(monkeypatch):
    """Break the evaluation: crowd gt are scored as ordinary gt (what a port that drops
    ``iscrowd`` would do)."""
    import pycocotools.cocoeval

    base = pycocotools.cocoeval.COCOeval

    class CrowdAsNormal(base):
        def _prepare(self):
            super()._prepare()
            for gts in self._gts.values():
                for g in gts:
                    g["iscrowd"] = 0
                    g["ignore"] = 0

    monkeypatch.setattr(pycocotools.cocoeval, "COCOeval", CrowdAsNormal)


def test_metric_fails_when_crowd_gt_count(tmp_path, crowd_as_normal):
    rows, _ = _run(step8_metric, tmp_path, "--data-dir", str(tmp_path / "data"))
    failed = {r.quantity for r in _failed(rows)}
    assert "12 COCO numbers (maxDets 1/10/100)" in failed
    assert "per-class AP (unrounded)" in failed


def test_metric_fails_with_other_area_ranges(tmp_path, monkeypatch):
    import pycocotools.cocoeval

    params = pycocotools.cocoeval.Params
    set_det = params.setDetParams

    def medium_up_to_64(self):
        set_det(self)
        self.areaRng = [[0, 1e10], [0, 32**2], [32**2, 64**2], [64**2, 1e10]]

    monkeypatch.setattr(params, "setDetParams", medium_up_to_64)
    rows, _ = _run(step8_metric, tmp_path, "--data-dir", str(tmp_path / "data"))
    row = next(r for r in rows if r.quantity == "12 COCO numbers (maxDets 1/10/100)")
    assert row.status == report.STATUS_FAIL and row.max_abs > 1e-3


# ----------------------------------------------------------------------------- step 10


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory):
    return _run(step10_lr, tmp_path_factory.mktemp("step10"))


def test_lr_every_row_passes(lr_run):
    rows, _ = lr_run
    assert len(rows) == 3 + 9
    bad = [r for r in rows if r.status != report.STATUS_PASS]
    assert not bad, report.format_table(bad)
    assert max(r.rel for r in rows if r.rel is not None) < 1e-14  # rounding only


def _expand(log, key):
    return step10_lr.expand(log[f"{key}.starts"], log[f"{key}.values"], int(log[f"{key}.total"][0]))


def test_lr_hand_computed():
    """lr at iterations 0, 250, 498, 499, 500 and at the decays, 8x2 (base lr 0.01), warmup from
    1/3, written as numbers: mmengine (torch log) and ppdet with our config (the scheduler the
    trainer builds) give the same values."""
    iters = 7330  # ceil(ceil(117266 / 8) / 2)
    expected = {
        0: 0.01 / 3,
        250: 0.01 * (1 / 3 + 2 / 3 * 250 / 499),  # 0.0066733...
        498: 0.01 * (1 / 3 + 2 / 3 * 498 / 499),
        499: 0.01,
        500: 0.01,
        8 * iters - 1: 0.01,
        8 * iters: 0.001,  # first iteration of epoch 8 (0-based)
        11 * iters - 1: 0.001,
        11 * iters: 0.0001,  # first iteration of epoch 11
        12 * iters - 1: 0.0001,
    }
    torch_log = common.load_log(common.log_path(LOGS, step10_lr.STEP, "torch"))
    mm = _expand(torch_log, "lr.third.8x2")
    assert mm.size == 12 * iters
    assert mm[250] == pytest.approx(0.006673346693386773, rel=1e-14)

    from ppdet_ghm.builder import load_config

    load_config(common.DEFAULT_CONFIG)
    steps = step10_lr.ppdet_steps_per_epoch(step10_lr.NUM_TRAIN_IMAGES, 8)
    assert steps == iters  # our reader keeps the last batch, as mmengine
    scheduler, starts, values = step10_lr.ppdet_schedule(0.01, 1 / 3, steps)
    pd = step10_lr.expand(starts, values, 12 * steps)
    assert pd.size == mm.size
    for i, value in expected.items():
        assert mm[i] == pytest.approx(value, rel=1e-14), i
        assert pd[i] == pytest.approx(value, rel=1e-14), i
        assert pd[i] == pytest.approx(mm[i], rel=1e-14), i
        scheduler.last_epoch = i  # the scheduler itself, read as the trainer reads it
        assert scheduler.get_lr() == pd[i]
    assert pd[498] < 0.01 and mm[498] < 0.01  # the last warmup iteration


def _config_with(tmp_path, name, milestones="[8, 11]", warmup_steps=499):
    config = tmp_path / f"{name}.yml"
    config.write_text(
        f"_BASE_: ['{common.DEFAULT_CONFIG}']\n"
        "LearningRate:\n"
        "  base_lr: 0.01\n"
        "  schedulers:\n"
        f"    - !PiecewiseDecay {{gamma: 0.1, milestones: {milestones}}}\n"
        "    - !LinearWarmup {start_factor: 0.3333333333333333, "
        f"steps: {warmup_steps}}}\n"
    )
    return str(config)


def test_lr_fails_with_a_milestone_one_epoch_late(tmp_path):
    config = _config_with(tmp_path, "milestone_9", milestones="[9, 11]")
    rows, _ = _run(step10_lr, tmp_path, "--config", config)
    failed = _failed(rows)
    assert len(failed) == 6  # every lr row
    assert all("lr every iteration" in r.quantity and r.rel == pytest.approx(9.0) for r in failed)


def test_lr_fails_with_the_old_500_step_warmup(tmp_path):
    """``LinearWarmup.steps: 500`` (full lr at iteration 500, mmcv 0.x): one iteration late,
    1.33e-3 (start 1/3) and 2.00e-3 (start 0.001) relative at iteration 499."""
    config = _config_with(tmp_path, "warmup_500", warmup_steps=500)
    rows, _ = _run(step10_lr, tmp_path, "--config", config)
    failed = {r.quantity: r for r in _failed(rows)}
    assert set(failed) == {
        f"lr every iteration, {step10_lr.WARMUP_NAME[v]}, {name}"
        for v in step10_lr.WARMUP_START
        for name in step10_lr.GPUS
    }
    for name in step10_lr.GPUS:
        for variant, rel in (("1/3", 1.0 / 750), ("0.001", 0.999 / 500)):
            row = failed[f"lr every iteration, warmup from {variant}, {name}"]
            assert row.rel == pytest.approx(rel, rel=1e-9)
            assert "at iteration 499" in row.note


def test_lr_fails_when_the_last_batch_is_dropped(tmp_path):
    """``TrainReader.drop_last: true``: epochs one iteration shorter at 8x2 and 4x2 (the 1x2 count,
    ceil(117266 / 2), is even), so the decays come early and training ends early."""
    config = tmp_path / "drop_last.yml"
    config.write_text(f"_BASE_: ['{common.DEFAULT_CONFIG}']\nTrainReader:\n  drop_last: true\n")
    rows, _ = _run(step10_lr, tmp_path, "--config", str(config))
    failed = {r.quantity: r for r in _failed(rows)}
    assert set(failed) == {
        f"{what}, {name}"
        for name in ("8x2", "4x2")
        for what in ("lr every iteration, warmup from 1/3", "lr every iteration, warmup from 0.001")
    } | {"iterations per epoch 8x2", "iterations per epoch 4x2"}
    assert failed["iterations per epoch 8x2"].note == "mmengine 7330, ppdet 7329"
    assert failed["iterations per epoch 4x2"].note == "mmengine 14659, ppdet 14658"


def test_lr_fails_with_the_other_warmup_start(tmp_path, monkeypatch):
    """ppdet's LinearWarmup starting from 0.001 whatever it is asked: the 1/3 rows fail."""
    from ppdet.optimizer import optimizer

    call = optimizer.LinearWarmup.__call__

    def from_milli(self, base_lr, step_per_epoch):
        self.start_factor = 0.001
        return call(self, base_lr, step_per_epoch)

    monkeypatch.setattr(optimizer.LinearWarmup, "__call__", from_milli)
    rows, _ = _run(step10_lr, tmp_path)
    failed = {r.quantity for r in _failed(rows)}
    assert failed == {f"lr every iteration, warmup from 1/3, {name}" for name in step10_lr.GPUS}


@pytest.mark.torch
@pytest.mark.parametrize("step", [step8_metric, step10_lr], ids=lambda s: s.STEP)
def test_regenerated_torch_log_equals_the_committed_one(tmp_path, step):
    pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    args = step.build_parser().parse_args(["--side", "torch", "--logs", str(tmp_path)])
    common.run_side(step, args)
    path = common.log_path(str(tmp_path), step.STEP, "torch")
    new, old = common.load_log(path), common.load_log(common.log_path(LOGS, step.STEP, "torch"))
    assert sorted(new) == sorted(old)
    for key in old:
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    assert os.path.getsize(path) < 300_000
