"""Max-IoU anchor assignment, as mmdet ``MaxIoUAssigner`` (with its low-quality matches).

Assignment codes (mmdet's ``gt_inds``), per anchor:

- ``IGNORED = -1``: neither positive nor negative (max IoU in [neg_iou_thr, pos_iou_thr), or the
  anchor is invalid); label weight 0.
- ``NEGATIVE = 0``: background (0 <= max IoU < neg_iou_thr).
- ``k >= 1``: positive, matched to ground-truth box ``k - 1``.
"""

import paddle
from ppdet.core.workspace import register, serializable

__all__ = ["IGNORED", "NEGATIVE", "MaxIoUAnchorAssigner", "assign_by_overlaps", "box_iou"]

IGNORED = -1
NEGATIVE = 0


def box_iou(boxes1, boxes2, eps: float = 1e-6):
    """IoU matrix [M, N] of ``boxes1`` [M, 4] and ``boxes2`` [N, 4] (``x1, y1, x2, y2``, no +1).

    Same float32 operations as mmdet ``bbox_overlaps(mode='iou')``: union clamped to ``eps``;
    the result is the correctly rounded float32 quotient.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = paddle.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [M, N, 2]
    rb = paddle.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = paddle.clip(rb - lt, min=0.0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - overlap
    union = paddle.clip(union, min=eps)
    # Paddle's float32 division on CPU is not always correctly rounded; through float64 it is
    # (and then equals torch's bit for bit, which keeps threshold decisions identical)
    return (overlap.astype("float64") / union.astype("float64")).astype(overlap.dtype)


def assign_by_overlaps(
    overlaps,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    gt_max_assign_all: bool = True,
):
    """Assignment codes from an IoU matrix, step for step as mmdet ``assign_wrt_overlaps``.

    1. every anchor starts IGNORED;
    2. anchors with ``0 <= max IoU < neg_iou_thr`` become NEGATIVE;
    3. anchors with ``max IoU >= pos_iou_thr`` take their best gt (first one on ties);
    4. low-quality matches (``match_low_quality``): each gt ``i`` whose best IoU is
       ``>= min_pos_iou`` takes the anchors where its IoU equals its best IoU (all of them with
       ``gt_max_assign_all``, else only its first best anchor), overriding steps 2-3. mmdet loops over
       gts in order, so when an anchor is the best of several gts the LAST of them wins; here the
       loop is vectorised as ``max over i of (i + 1) * hit[i, anchor]``.

    Anchors that must not be assigned (invalid) should carry IoU -1 in every row: they stay IGNORED
    and cannot be any gt's best anchor while a valid anchor exists.

    Args:
        overlaps: float32 [G, A] IoU of gt i with anchor j; G >= 1.

    Returns:
        int64 [A] assignment codes (see module docstring).
    """
    num_gts = overlaps.shape[0]
    max_overlaps = overlaps.max(axis=0)
    argmax_overlaps = overlaps.argmax(axis=0)
    assigned = paddle.full(max_overlaps.shape, IGNORED, dtype="int64")
    negative = paddle.logical_and(max_overlaps >= 0, max_overlaps < neg_iou_thr)
    assigned = paddle.where(negative, paddle.full_like(assigned, NEGATIVE), assigned)
    positive = max_overlaps >= pos_iou_thr
    assigned = paddle.where(positive, argmax_overlaps.astype("int64") + 1, assigned)
    if match_low_quality:
        gt_max = overlaps.max(axis=1, keepdim=True)  # [G, 1]
        if gt_max_assign_all:
            hit = overlaps == gt_max
        else:
            hit = paddle.nn.functional.one_hot(overlaps.argmax(axis=1), overlaps.shape[1]) > 0
        hit = paddle.logical_and(hit, gt_max >= min_pos_iou)
        gt_number = paddle.arange(1, num_gts + 1, dtype="int64").unsqueeze(1)  # [G, 1]
        last_hit = (hit.astype("int64") * gt_number).max(axis=0)  # 0 where no gt hits
        assigned = paddle.where(last_hit > 0, last_hit, assigned)
    return assigned


@register
@serializable
class MaxIoUAnchorAssigner:
    """Max-IoU assigner with mmdet ``MaxIoUAssigner`` semantics (no ignore boxes, no sampling).

    Args:
        pos_iou_thr: anchors with max IoU >= this are positive (RetinaNet: 0.5).
        neg_iou_thr: anchors with 0 <= max IoU < this are negative (RetinaNet: 0.4).
        min_pos_iou: a gt takes its best anchors only if their IoU >= this (RetinaNet: 0, so
            every gt gets at least one anchor).
        match_low_quality: enable the low-quality matches (step 4 of ``assign_by_overlaps``).
        gt_max_assign_all: give a gt all anchors tied at its best IoU, not only the first.
    """

    def __init__(
        self,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ):
        if not 0.0 <= neg_iou_thr <= pos_iou_thr <= 1.0:
            raise ValueError(
                "need 0 <= neg_iou_thr <= pos_iou_thr <= 1, got "
                f"neg_iou_thr={neg_iou_thr}, pos_iou_thr={pos_iou_thr}"
            )
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.min_pos_iou = float(min_pos_iou)
        self.match_low_quality = bool(match_low_quality)
        self.gt_max_assign_all = bool(gt_max_assign_all)

    def __call__(self, anchors, gt_boxes, valid=None):
        """Assignment codes of ``anchors`` [A, 4] to ``gt_boxes`` [G, 4].

        Args:
            anchors: float32 [A, 4].
            gt_boxes: float32 [G, 4]; G may be 0 (then every valid anchor is NEGATIVE).
            valid: optional bool [A]; invalid anchors stay IGNORED and take no part in the
                matching (mmdet drops them before assigning).

        Returns:
            int64 [A] codes: -1 ignored, 0 negative, k >= 1 matched to gt k - 1.
        """
        num_anchors = anchors.shape[0]
        if gt_boxes.shape[0] == 0:
            assigned = paddle.full([num_anchors], NEGATIVE, dtype="int64")
        else:
            overlaps = box_iou(gt_boxes, anchors)
            if valid is not None:
                overlaps = paddle.where(
                    valid.unsqueeze(0), overlaps, paddle.full_like(overlaps, -1.0)
                )
            assigned = assign_by_overlaps(
                overlaps,
                self.pos_iou_thr,
                self.neg_iou_thr,
                self.min_pos_iou,
                self.match_low_quality,
                self.gt_max_assign_all,
            )
        if valid is not None:
            assigned = paddle.where(valid, assigned, paddle.full_like(assigned, IGNORED))
        return assigned
