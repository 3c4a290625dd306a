"""The alignment harness (align/): the Paddle side against the committed torch logs, and its pieces.

The Paddle run takes about a minute on 2 cores (all steps, one model build per dtype). Regenerating
the torch logs needs the PyTorch reference (requirements-torch.txt) and is marked ``torch``.
"""

import math
import os

import numpy as np
import pytest

from align import common, data, report, run_all, step3_head, step5_backward, weights

LOGS = common.DEFAULT_LOGS


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_out")
    return run_all.run_paddle(LOGS, str(out), weights.DEFAULT_SEED, common.DEFAULT_CONFIG)


def _by_step(rows, step):
    return [r for r in rows if r.step == step]


def test_every_step_ran(rows):
    assert {r.step for r in rows} == set(run_all.STEP_NAMES)
    raised = [r for r in rows if r.quantity in ("step raised", "unjudged keys")]
    assert not raised, raised


@pytest.mark.parametrize("step", run_all.STEP_NAMES)
def test_every_row_of_the_step_passes(rows, step):
    failed = [r for r in _by_step(rows, step) if r.status == report.STATUS_FAIL]
    assert not failed, report.format_table(failed)
    assert _by_step(rows, step)


def test_isolated_and_chained_rows_are_both_there(rows):
    for step in ("step2_fpn", "step3_head", "step4_loss", "step6_detections"):
        quantities = [r.quantity for r in _by_step(rows, step)]
        chained = [q for q in quantities if q.startswith("chained ")]
        assert chained and len(chained) < len(quantities), step


@pytest.fixture(scope="module")
def paddle_ctx():
    from align.paddle_ref import PaddleContext

    return PaddleContext(weights.DEFAULT_SEED, common.DEFAULT_CONFIG)


def _step_rows(module, ctx, logs, out):
    args = module.build_parser().parse_args(["--side", "paddle", "--logs", logs, "--out", out])
    return common.run_side(module, args, ctx)


def test_isolated_loss_rows_fail_when_the_loss_is_broken(paddle_ctx, tmp_path):
    """GHM-C momentum 0.7 instead of 0.75 on our side: every isolated GHM-C loss row fails."""
    from align import step4_loss

    loss_cls = paddle_ctx.model().head.loss_cls
    momentum = loss_cls.momentum
    loss_cls.momentum = 0.7
    try:
        rows = _step_rows(step4_loss, paddle_ctx, LOGS, str(tmp_path))
    finally:
        loss_cls.momentum = momentum
    status = {r.quantity: r.status for r in rows}
    for level in step4_loss.LEVELS:
        assert status[f"GHM-C loss {level}"] == report.STATUS_FAIL
        assert status[f"GHM-R loss {level}"] == report.STATUS_PASS
    assert status["labels"] == report.STATUS_PASS


def test_isolated_fpn_rows_fail_when_the_fpn_is_broken(paddle_ctx, tmp_path, monkeypatch):
    """A ReLU before the P7 conv (ppdet's own RetinaNet FPN): P7 fails, P3-P6 pass."""
    from align import step2_fpn

    neck = paddle_ctx.model().neck
    monkeypatch.setattr(neck, "relu_before_extra_convs", True, raising=True)
    rows = _step_rows(step2_fpn, paddle_ctx, LOGS, str(tmp_path))
    status = {r.quantity: r.status for r in rows}
    assert [status[p] for p in ("P3", "P4", "P5", "P6", "P7")] == ["PASS"] * 4 + ["FAIL"]


def test_isolated_steps_refuse_inputs_the_reference_did_not_use(paddle_ctx, tmp_path):
    import shutil

    from align import step4_loss

    for name in os.listdir(LOGS):
        shutil.copy(os.path.join(LOGS, name), tmp_path)
    path = common.log_path(str(tmp_path), "step3_head", "torch")
    log = common.load_log(path)
    log["cls_score.P5"] = log["cls_score.P5"] + np.float32(1e-3)
    common.save_log(path, log)
    with pytest.raises(ValueError, match="does not hold the inputs the reference used"):
        _step_rows(step4_loss, paddle_ctx, str(tmp_path), str(tmp_path / "out"))


def test_detections_are_not_trivial():
    log = common.load_log(common.log_path(LOGS, "step6_detections", "torch"))
    for img in range(2):
        assert 0 < len(log[f"img{img}.scores"]) <= 100
        assert np.all(log[f"img{img}.scores"] > 0.05)
        assert len(set(log[f"img{img}.labels"].tolist())) > 3


def test_committed_logs_are_small_and_from_these_weights():
    files = [f for f in os.listdir(LOGS) if f.endswith("_torch.npy")]
    assert set(run_all.STEP_NAMES) <= {f[: -len("_torch.npy")] for f in files}
    # steps 1-3 log whole feature maps and head outputs: the inputs of steps 2-4 and 6
    assert sum(os.path.getsize(os.path.join(LOGS, f)) for f in files) < 10_000_000
    sd = weights.generate_state_dict(weights.DEFAULT_SEED)
    meta = weights.weights_meta(weights.DEFAULT_SEED, sd)
    for name, module_name, _ in run_all.STEPS:
        if common.uses_weights(run_all.step_module(module_name)):
            path = common.log_path(LOGS, name, "torch")
            weights.check_same_weights(common.load_log(path), meta, path)


def test_weights_cover_the_converter_table_and_are_not_trivial():
    from ppdet_ghm.convert import mmdet_retinanet_table

    table = mmdet_retinanet_table()
    spec = weights.state_dict_spec()
    assert len(spec) == 358  # mmdet RetinaNet-GHM R50-FPN
    names = [name for name, _, _ in spec]
    assert set(names) == set(table.renames) | set(table.skips)
    sd = weights.generate_state_dict(weights.DEFAULT_SEED)
    for name, shape, dtype in spec:
        assert sd[name].shape == shape and sd[name].dtype == np.dtype(dtype)
    bn3 = sd["backbone.layer1.0.bn3.weight"]  # zero under mmdet's default init
    assert bn3.min() > 0.2
    assert sd["backbone.layer4.2.bn1.running_var"].min() > 0
    assert np.std(sd["backbone.layer3.0.bn2.running_mean"]) > 0.1
    np.testing.assert_array_equal(sd["bbox_head.loss_cls.acc_sum"], np.zeros(30, np.float32))
    edges = sd["bbox_head.loss_cls.edges"]
    assert edges[-1] == np.float32(1.0) + np.float32(1e-6) and edges[15] == np.float32(0.5)
    assert sd["bbox_head.loss_bbox.edges"][-1] == np.float32(1000.0)


def test_checksum_changes_with_any_array():
    sd = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32)}
    base = weights.checksum(sd)
    assert base == weights.checksum({k: v.copy() for k, v in sd.items()})
    changed = dict(sd, b=np.array([[1, 1], [1, 1.0000001]], np.float32))
    assert weights.checksum(changed) != base
    assert weights.checksum(dict(sd, b=sd["b"].astype(np.float64))) != base


def test_fake_batch():
    batch = data.fake_batch()
    images = batch["images"]
    assert images.shape == (2, 3, 128, 160) and images.dtype == np.float32
    assert np.all(images[1, :, 96:, :] == 0) and np.all(images[1, :, :, 128:] == 0)
    assert 0.5 < images[0].std() < 2.0
    for boxes, (h, w) in zip(batch["gt_boxes"], batch["image_shapes"], strict=True):
        assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, :2] < boxes[:, 2:])
    np.testing.assert_array_equal(images, data.fake_batch()["images"])


def test_check_kinds():
    t = {"x": np.array([1.0, -2.0, 4.0]), "n": np.array([3, 4])}
    p = {"x": np.array([1.0, -2.0, 4.0004]), "n": np.array([3, 5])}
    forward = report.Check("x", "x", "forward", mean_abs=2e-4, max_rel=1e-4)
    (row,) = report.compare("s", {"x": t["x"]}, {"x": p["x"]}, [forward])
    assert row.status == report.STATUS_PASS  # mean 1.33e-4, max 4e-4 / 4 = 1e-4
    assert math.isclose(row.mean_abs, 4e-4 / 3, rel_tol=1e-6)
    strict = report.Check("x", "x", "forward", mean_abs=1e-4, max_rel=1e-4)
    assert report.compare("s", {"x": t["x"]}, {"x": p["x"]}, [strict])[0].status == "FAIL"
    rel = report.Check("x", "x", "relative", rel=1e-4)
    assert report.compare("s", {"x": t["x"]}, {"x": p["x"]}, [rel])[0].status == "PASS"
    rel = report.Check("x", "x", "relative", rel=0.99e-4)
    assert report.compare("s", {"x": t["x"]}, {"x": p["x"]}, [rel])[0].status == "FAIL"
    exact = report.Check("n", "n", "exact")
    (row,) = report.compare("s", {"n": t["n"]}, {"n": p["n"]}, [exact])
    assert row.status == "FAIL" and "1 of 2 differ" in row.note
    # a key logged by torch but judged by no check fails, as does a key missing on one side
    rows = report.compare("s", t, {"x": t["x"]}, [report.Check("x", "x", "exact")])
    assert [r.status for r in rows] == ["PASS", "FAIL"] and rows[1].quantity == "unjudged keys"
    (row,) = report.compare("s", t, {"x": t["x"]}, [report.Check("n", "n", "exact")])[:1]
    assert row.status == "FAIL" and "missing on the paddle side" in row.note
    with pytest.raises(ValueError, match="needs rel"):
        report.Check("x", "x", "relative")


def test_detection_rows():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 40], [0, 0, 10, 10]], np.float32)
    t = {
        "img0.boxes": boxes,
        "img0.scores": np.array([0.9, 0.8, 0.1], np.float32),
        "img0.labels": np.array([1, 2, 3]),
    }
    # paddle: same detections in another order, one box moved by 0.001 px, one score off 5e-5
    p = {
        "img0.boxes": boxes[[1, 0, 2]] + np.array([[0, 0, 0, 0.001], [0] * 4, [0] * 4]),
        "img0.scores": np.array([0.80005, 0.9, 0.1], np.float32),
        "img0.labels": np.array([2, 1, 3]),
    }
    rows = report.detection_rows("s", t, p, 1, min_iou=0.999, score_abs=1e-4)
    assert [r.status for r in rows] == ["PASS"] * 3
    iou = 200 / 200.01  # 10x20 box inside a 10x20.001 one
    assert math.isclose(rows[1].max_abs, 1 - iou, rel_tol=1e-3)
    p["img0.labels"] = np.array([2, 1, 4])
    rows = report.detection_rows("s", t, p, 1, min_iou=0.999, score_abs=1e-4)
    assert rows[0].status == "PASS" and rows[1].status == "FAIL" and "1 unmatched" in rows[1].note
    rows = report.detection_rows("s", t, {k: v[:2] for k, v in p.items()}, 1, 0.999, 1e-4)
    assert rows[0].status == "FAIL"


@pytest.mark.torch
def test_greedy_nms_is_mmcv_nms():
    torch = pytest.importorskip("torch")
    from align.torch_ref import greedy_nms

    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    # IoU(4, 0) = 50/150, IoU(0, 1) = 90/110 > 0.5, IoU(0, 2) = 1, IoU(4, 1) = 60/140
    assert greedy_nms(boxes, scores, 0.5).tolist() == [4, 0, 3]
    # offset 1 (mmcv's legacy convention): IoU(4, 0) = 66/176, still kept
    assert greedy_nms(boxes, scores, 0.5, offset=1).tolist() == [4, 0, 3]
    assert greedy_nms(boxes, scores, 0.3).tolist() == [4, 3]  # 0.33 > 0.3 suppresses box 0
    assert greedy_nms(boxes[:0], scores[:0], 0.5).numel() == 0


@pytest.mark.torch
@pytest.mark.slow
def test_regenerated_torch_logs_equal_the_committed_ones(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    manifest = run_all.regenerate_torch(str(tmp_path), weights.DEFAULT_SEED)
    assert manifest["total_bytes"] < 10_000_000
    for name in run_all.STEP_NAMES:
        new = common.load_log(common.log_path(str(tmp_path), name, "torch"))
        old = common.load_log(common.log_path(LOGS, name, "torch"))
        assert sorted(new) == sorted(old), name
        for key in old:
            a, b = old[key], new[key]
            assert a.shape == b.shape and a.dtype == b.dtype, (name, key)
            if key == common.META_INPUTS_SHA:
                continue  # a hash of float32 outputs: checked for consistency below
            if a.dtype.kind in "iub":
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {key}")
            elif name == "step5_backward" and ".grad" in key:
                # float32 gradients after updates: chaotic in both frameworks (align/README.md);
                # another CPU's reference moves them as far as it moves ours
                limits = step5_backward.THRESHOLDS["float32"]
                diff = np.abs(a.astype(np.float64) - b)
                if key.endswith("grad_norms"):
                    rel = diff / np.maximum(np.abs(a), 1e-30)
                    assert float(rel.max()) <= limits["norm_rel"], (name, key)
                else:
                    assert float(diff.mean()) <= limits["grad_mean_abs"], (name, key)
            else:  # bitwise on this machine; float32 rounding of another CPU allowed
                scale = max(float(np.abs(a).max()), 1e-30)
                assert float(np.abs(a - b).max()) <= 1e-4 * scale, (name, key)
    # the regenerated step 4 and 6 logs name the head outputs of the regenerated step 3 log

    args = step3_head.build_parser().parse_args(["--side", "paddle", "--logs", str(tmp_path)])
    for name in ("step4_loss", "step6_detections"):
        log = common.load_log(common.log_path(str(tmp_path), name, "torch"))
        step3_head.reference_head_outputs(args, torch_log=log)


def test_row_margin_is_threshold_over_the_worst_key():
    t = {"a": np.array([1.0, 2.0]), "b": np.array([4.0])}
    p = {"a": np.array([1.0, 2.0000004]), "b": np.array([4.0000012])}
    (row,) = report.compare("s", t, p, [report.Check("x", "a|b", "relative", rel=1e-6)])
    assert row.status == report.STATUS_PASS
    assert math.isclose(row.margin, 1e-6 / 3e-7, rel_tol=1e-6)  # b: rel 3e-7, a: 2e-7
    assert row.worst == "rel 3.00e-07"
    forward = report.Check("f", "a", "forward", mean_abs=1e-6, max_rel=1e-6)
    (row,) = report.compare("s", {"a": t["a"]}, {"a": p["a"]}, [forward])
    # mean 2e-7 -> margin 5; max rel 4e-7 / 2 = 2e-7 -> margin 5: the smaller is kept
    assert math.isclose(row.margin, 5.0, rel_tol=1e-6)
    (row,) = report.compare("s", {"a": t["a"]}, {"a": t["a"]}, [forward])
    assert row.margin == math.inf
    # a failing row keeps its margin (< 1) and the value that set it
    (row,) = report.compare("s", t, p, [report.Check("x", "a|b", "relative", rel=1e-7)])
    assert row.status == report.STATUS_FAIL and row.worst == "rel 3.00e-07"
    assert math.isclose(row.margin, 1 / 3, rel_tol=1e-6)


def test_kernel_paths_keep_the_worst_margin_of_each_row():
    from align import kernel_paths

    def row(margin, status=report.STATUS_PASS):
        return report.Row("s", "q", 0.0, 0.0, "rel<=1e-06", status, "", None, margin, f"m{margin}")

    table = kernel_paths.worst_rows(
        {"one": [row(8.0)], "two": [row(3.0)], "three": [row(0.5, report.STATUS_FAIL)]}
    )
    entry = table[("s", "q")]
    assert entry["margin"] == 0.5 and entry["at"] == "three" and entry["worst"] == "m0.5"
    assert entry["statuses"] == {report.STATUS_PASS, report.STATUS_FAIL}
    text = kernel_paths.format_worst(table)
    assert "| s | q | rel<=1e-06 | FAIL/PASS | m0.5 | 0.5 | three |" in text
