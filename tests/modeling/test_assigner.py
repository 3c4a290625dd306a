"""Max-IoU assignment: a hand-made case with mmdet's rules (low-quality matches, ties, ignores)."""

import numpy as np
import paddle
import pytest

from ppdet_ghm.modeling.assigner import (
    IGNORED,
    NEGATIVE,
    MaxIoUAnchorAssigner,
    assign_by_overlaps,
    box_iou,
)

ANCHORS = np.array(
    [
        [0, 0, 10, 10],  # a0
        [10, 0, 20, 10],  # a1
        [20, 0, 30, 10],  # a2
        [0, 20, 10, 30],  # a3
        [100, 100, 110, 110],  # a4: far from everything
        [5, 0, 15, 10],  # a5
        [10, 20, 20, 30],  # a6
        [0, 0, 10, 22],  # a7
    ],
    dtype=np.float32,
)
GTS = np.array(
    [
        [0, 0, 10, 10],  # g0
        [12, 0, 22, 10],  # g1
        [0, 22, 10, 25],  # g2: best IoU 0.3 < neg_iou_thr 0.4
        [5, 20, 15, 30],  # g3: tied best IoU 1/3 with a3 and a6
    ],
    dtype=np.float32,
)
# IoU by hand (intersection / union):
# g0: a0 100/100 = 1, a5 50/150 = 1/3, a7 100/220 = 0.4545
# g1: a1 80/120 = 0.6667, a2 20/180 = 0.1111, a5 30/170 = 0.1765
# g2: a3 30/100 = 0.3
# g3: a3 50/150 = 1/3, a6 50/150 = 1/3, a7 10/310 = 0.0323
IOU = np.zeros((4, 8))
IOU[0, [0, 5, 7]] = [1.0, 1 / 3, 100 / 220]
IOU[1, [1, 2, 5]] = [80 / 120, 20 / 180, 30 / 170]
IOU[2, 3] = 0.3
IOU[3, [3, 6, 7]] = [1 / 3, 1 / 3, 10 / 310]


def test_iou_matrix_hand_computed():
    iou = box_iou(paddle.to_tensor(GTS), paddle.to_tensor(ANCHORS)).numpy()
    np.testing.assert_allclose(iou, IOU, rtol=1e-6, atol=1e-7)
    assert iou[3, 3] == iou[3, 6]  # the tie is exact


def test_hand_case_as_mmdet_assigns():
    assigned = MaxIoUAnchorAssigner()(paddle.to_tensor(ANCHORS), paddle.to_tensor(GTS)).numpy()
    # a0 -> g0 (IoU 1); a1 -> g1 (0.67 >= 0.5); a2, a4, a5 negative (max < 0.4);
    # a3: max 1/3 (negative by threshold), then g2's best (0.3 < 0.4, low-quality match) and
    #     then g3's tied best: the later gt wins, so g2 ends up with no anchor;
    # a6: g3's other tied best; a7: max 0.4545 in [0.4, 0.5) and nobody's best: ignored
    np.testing.assert_array_equal(assigned, [1, 2, NEGATIVE, 4, NEGATIVE, NEGATIVE, 4, IGNORED])


def test_only_first_best_anchor_without_gt_max_assign_all():
    assigner = MaxIoUAnchorAssigner(gt_max_assign_all=False)
    assigned = assigner(paddle.to_tensor(ANCHORS), paddle.to_tensor(GTS)).numpy()
    np.testing.assert_array_equal(assigned, [1, 2, 0, 4, 0, 0, 0, -1])  # a6 stays negative


def test_without_low_quality_matches():
    assigner = MaxIoUAnchorAssigner(match_low_quality=False)
    assigned = assigner(paddle.to_tensor(ANCHORS), paddle.to_tensor(GTS)).numpy()
    np.testing.assert_array_equal(assigned, [1, 2, 0, 0, 0, 0, 0, -1])


def test_min_pos_iou_blocks_weak_low_quality_matches():
    assigner = MaxIoUAnchorAssigner(min_pos_iou=0.32)  # g2 (0.3) is too weak, g3 (1/3) is not
    assigned = assigner(paddle.to_tensor(ANCHORS), paddle.to_tensor(GTS)).numpy()
    np.testing.assert_array_equal(assigned, [1, 2, 0, 4, 0, 0, 4, -1])


def test_invalid_anchors_are_ignored_and_not_matched():
    valid = np.ones(8, bool)
    valid[0] = False  # g0's best anchor is invalid: its best valid anchor is a7 (0.4545)
    assigned = MaxIoUAnchorAssigner()(
        paddle.to_tensor(ANCHORS), paddle.to_tensor(GTS), paddle.to_tensor(valid)
    ).numpy()
    np.testing.assert_array_equal(assigned, [IGNORED, 2, 0, 4, 0, 0, 4, 1])


def test_no_gt_makes_every_valid_anchor_negative():
    valid = paddle.to_tensor(np.array([True] * 7 + [False]))
    assigned = MaxIoUAnchorAssigner()(
        paddle.to_tensor(ANCHORS), paddle.zeros([0, 4]), valid
    ).numpy()
    np.testing.assert_array_equal(assigned, [0] * 7 + [IGNORED])


def test_gt_overlapping_no_anchor_takes_all_zero_iou_anchors():
    # mmdet quirk kept on purpose: with min_pos_iou 0 a gt whose best IoU is 0 takes every anchor
    # with IoU 0 with it (here all 8, even a7, ignored by thresholds); later gts still override
    gts = np.array([[200, 200, 210, 210], [0, 0, 10, 10]], dtype=np.float32)
    assigned = MaxIoUAnchorAssigner()(paddle.to_tensor(ANCHORS), paddle.to_tensor(gts)).numpy()
    np.testing.assert_array_equal(assigned, [2, 1, 1, 1, 1, 1, 1, 1])


def test_positive_threshold_ties_take_the_first_gt():
    overlaps = paddle.to_tensor(np.array([[0.6, 0.9], [0.6, 0.95]], dtype=np.float32))
    assigned = assign_by_overlaps(overlaps, 0.5, 0.4, match_low_quality=False).numpy()
    np.testing.assert_array_equal(assigned, [1, 2])


@pytest.mark.parametrize("kwargs", [{"pos_iou_thr": 0.3}, {"neg_iou_thr": -0.1}])
def test_invalid_thresholds_raise(kwargs):
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAnchorAssigner(**kwargs)
