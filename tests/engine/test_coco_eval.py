"""COCO evaluation of a detections JSON (``ppdet-ghm eval --json DETS --gt GT``), hand-computed APs.

COCOeval interpolates precision at 101 recall points (0, 0.01, ..., 1) and averages AP over the
IoU thresholds 0.50, 0.55, ..., 0.95. With one ground-truth box matched at every threshold and
a second one matched only at IoU thresholds <= its IoU, the AP at a threshold where only the
first is found is 51/101 (recall 0.5 reached with precision 1, nothing beyond).
"""

import json

import pytest

from ppdet_ghm import cli
from ppdet_ghm.engine.coco_eval import STAT_NAMES, evaluate_detections

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 7, "name": "circle"}]


def _gt(tmp_path, annotations, num_images=2):
    gt = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": 400, "height": 400}
            for i in range(1, num_images + 1)
        ],
        "annotations": [
            {"id": k + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a}
            for k, a in enumerate(annotations)
        ],
        "categories": CATEGORIES,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_perfect_detections_score_one(tmp_path):
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},  # small (400 px^2)
        {"image_id": 1, "category_id": 7, "bbox": [100, 100, 50, 60]},  # medium
        {"image_id": 2, "category_id": 7, "bbox": [0, 0, 120, 100]},  # large
    ]
    gt = _gt(tmp_path, anns)
    dets = [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in anns]
    results = evaluate_detections(dets, gt)
    assert list(results.stats) == list(STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert results.stats[name] == pytest.approx(1.0)
    assert results.stats["AR1"] == pytest.approx(1.0)  # one object per image and class
    assert results.per_class_ap == {"square": pytest.approx(1.0), "circle": pytest.approx(1.0)}
    assert results.num_detections == 3
    assert "Average Precision" in results.summary


def test_partial_iou_gives_the_hand_computed_ap(tmp_path):
    # two 100x100 squares; the second detection has IoU 0.62 with its box (100 x 62 inside)
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
        {"image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 100]},
    ]
    gt = _gt(tmp_path, anns, num_images=1)
    dets = [_det(1, 1, [0, 0, 100, 100], 0.9), _det(1, 1, [200, 200, 100, 62], 0.8)]
    results = evaluate_detections(dets, gt)
    half = 51 / 101
    # thresholds 0.50, 0.55, 0.60 find both (AP 1); 0.65 ... 0.95 (7 of them) only the first
    assert results.stats["AP"] == pytest.approx((3 * 1.0 + 7 * half) / 10, abs=1e-6)
    assert results.stats["AP50"] == pytest.approx(1.0)
    assert results.stats["AP75"] == pytest.approx(half, abs=1e-6)
    assert results.per_class_ap["square"] == pytest.approx(results.stats["AP"], abs=1e-6)
    assert results.per_class_ap["circle"] == -1.0  # no ground truth of that class
    # a false positive scored above everything halves precision at the first recall step
    fp_first = [_det(1, 1, [300, 0, 50, 50], 0.95), *dets]
    ap50 = evaluate_detections(fp_first, gt).stats["AP50"]
    # precision after each detection: 0, 1/2, 2/3; interpolated: 2/3 at every recall point
    assert ap50 == pytest.approx(2 / 3, abs=1e-6)


def test_empty_detections_score_zero(tmp_path):
    gt = _gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    results = evaluate_detections([], gt)
    assert all(v == 0.0 for v in results.stats.values())
    assert results.num_detections == 0


def test_unknown_image_and_malformed_detections_raise(tmp_path):
    gt = _gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    with pytest.raises(ValueError, match="not in"):
        evaluate_detections([_det(99, 1, [0, 0, 10, 10], 0.5)], gt)
    with pytest.raises(ValueError, match="detection 0"):
        evaluate_detections([{"image_id": 1, "bbox": [0, 0, 1, 1]}], gt)


def test_cli_eval_json_prints_the_table_and_writes_metrics(tmp_path, capsys):
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
        {"image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 100]},
    ]
    gt = _gt(tmp_path, anns, num_images=1)
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(
        json.dumps([_det(1, 1, [0, 0, 100, 100], 0.9), _det(1, 1, [200, 200, 100, 62], 0.8)])
    )
    out_dir = tmp_path / "out"
    status = cli.main(
        ["eval", "--json", str(dets_path), "--gt", str(gt), "--output_dir", str(out_dir)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert (
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.653" in printed
    )
    assert "square   | 0.653" in printed
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == pytest.approx((3 + 7 * 51 / 101) / 10, abs=1e-6)


def test_cli_eval_json_needs_gt(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--json", str(tmp_path / "d.json")])
    assert exit_info.value.code == 2


def test_cli_eval_json_error_exit_status(tmp_path, capsys):
    gt = _gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps([_det(5, 1, [0, 0, 10, 10], 0.5)]))
    assert cli.main(["eval", "--json", str(dets_path), "--gt", str(gt)]) == 1
    assert "not in" in capsys.readouterr().err
