"""The matching that decides whether two backends' detections agree (hand-made detections)."""

import numpy as np
import pytest

from ppdet_ghm.engine.backend_agreement import (
    MAX_SCORE_DIFF,
    MIN_IOU,
    Agreement,
    box_iou,
    match_detections,
)

DETS = np.array(
    [
        [0, 0.90, 0, 0, 10, 10],
        [0, 0.80, 0, 0, 10, 10],  # the same box, clipped the same way, another score
        [1, 0.70, 20, 20, 30, 40],
        [2, 0.60, 5, 5, 15, 15],
    ],
    dtype=np.float32,
)


def test_box_iou_values():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_same_detections_in_another_order_agree():
    result = match_detections(DETS, DETS[::-1])
    assert result.ok
    assert (result.min_iou, result.max_score_diff, result.unmatched) == (1.0, 0.0, 0)


def test_identical_boxes_pair_by_score():
    # greedy by IoU alone would pair 0.90 with 0.80 (both IoU 1) and report a 0.1 difference
    other = DETS[[1, 0, 2, 3]].copy()
    other[:, 1] += 3e-5
    result = match_detections(DETS, other)
    assert result.ok and result.max_score_diff == pytest.approx(3e-5, abs=1e-6)


def test_a_moved_box_a_changed_score_and_a_changed_class_fail():
    moved = DETS.copy()
    moved[2, 4] += 0.2  # width 10 -> 10.2: IoU 0.980
    result = match_detections(DETS, moved)
    assert not result.ok and result.min_iou == pytest.approx(10 / 10.2, rel=1e-5)
    assert result.min_iou < MIN_IOU

    rescored = DETS.copy()
    rescored[3, 1] += 2 * MAX_SCORE_DIFF
    result = match_detections(DETS, rescored)
    assert not result.ok and result.max_score_diff == pytest.approx(2e-4, rel=1e-3)

    relabelled = DETS.copy()
    relabelled[3, 0] = 3
    result = match_detections(DETS, relabelled)
    assert not result.ok and result.unmatched == 1


def test_another_count_fails_and_totals_add_up():
    fewer = match_detections(DETS, DETS[:3])
    assert not fewer.ok and fewer.count_mismatches == 1 and fewer.unmatched == 1
    total = Agreement()
    total.add(match_detections(DETS, DETS))
    total.add(fewer)
    total.add(match_detections(np.zeros((0, 6)), np.zeros((0, 6))))
    assert (total.images, total.detections, total.count_mismatches) == (3, 8, 1)
    assert not total.ok
