"""RetinaNet test-time post-processing with mmdet 3.x semantics, vectorised over the batch.

Per level (mmdet ``_predict_by_feat_single`` + ``filter_scores_and_topk``): sigmoid scores of every
(anchor, class) pair; pairs with score > ``score_thr`` are candidates; the ``nms_pre`` best
candidates of the level are kept. Then, over all levels of an image: decode the kept pairs' boxes
(clipped to the resized image), rescale to the original image (divide by ``scale_factor``), drop
boxes with width or height <= ``min_bbox_size``, class-aware NMS at IoU ``nms_iou_thr`` with boxes
``x1, y1, x2, y2`` and no +1 in areas (mmcv 2.x ``nms`` offset 0 == Paddle ``normalized=True``),
and keep the ``max_per_img`` best, ordered by descending score.

Every step is a batched tensor op and the NMS is ``paddle._C_ops.multiclass_nms3``, so the same
code runs in dygraph and under ``paddle.jit.to_static`` (PIR) for export.
"""

import paddle
import paddle.nn.functional as F
from ppdet.core.workspace import register, serializable

__all__ = ["RetinaPostProcessor"]


def _topk_level(logits, nms_pre: int, num_classes: int):
    """Best ``nms_pre`` (anchor, class) pairs of one level.

    The pairs are ranked by logit (sigmoid is monotonic, so the ranking is the score's) in the
    head's own [N, A*C, H, W] layout, and only the kept logits go through the sigmoid: no transpose
    or sigmoid of the whole map (12M pairs on P3 at 800 x 1333).

    Args:
        logits: [N, A*C, H, W] raw class logits of the level.

    Returns:
        scores float32 [N, nms_pre], anchor index int64 [N, nms_pre] into the level's H*W*A
        anchors (ordered y, x, anchor), label int64 [N, nms_pre]. Pairs beyond the level's
        size have score 0.
    """
    dynamic = paddle.in_dynamic_mode()
    shape = logits.shape if dynamic else paddle.shape(logits)
    batch, channels = shape[0], logits.shape[1]
    num_anchors = channels // num_classes
    cells = shape[2] * shape[3]
    flat = logits.reshape([batch, -1])  # pairs ordered (anchor, class, y, x)
    if not dynamic or flat.shape[1] < nms_pre:
        # a level with fewer pairs than nms_pre: pad with logits whose sigmoid is 0
        padding = paddle.full([batch, nms_pre], -1e4, dtype=flat.dtype)
        flat = paddle.concat([flat, padding], axis=1)
    top_logits, top_idx = paddle.topk(flat, k=nms_pre, axis=1)
    top_idx = paddle.minimum(top_idx, (channels * cells - 1) * paddle.ones_like(top_idx))
    anchor_class, cell = top_idx // cells, top_idx % cells
    anchor, label = anchor_class // num_classes, anchor_class % num_classes
    return F.sigmoid(top_logits), cell * num_anchors + anchor, label


@register
@serializable
class RetinaPostProcessor:
    """Detections from RetinaNet head outputs (mmdet 3.x ``test_cfg`` semantics).

    Args:
        nms_pre: candidates kept per level before NMS (1000).
        score_thr: a candidate needs score > score_thr (0.05).
        nms_iou_thr: class-aware NMS IoU threshold (0.5).
        max_per_img: detections kept per image (100).
        min_bbox_size: boxes with width or height <= this (original image pixels) are dropped;
            None disables the filter (mmdet ``min_bbox_size=0`` drops degenerate boxes).
    """

    def __init__(
        self,
        nms_pre: int = 1000,
        score_thr: float = 0.05,
        nms_iou_thr: float = 0.5,
        max_per_img: int = 100,
        min_bbox_size: float | None = 0.0,
    ):
        if nms_pre < 1 or max_per_img < 1:
            raise ValueError(f"nms_pre and max_per_img must be >= 1, got {nms_pre}, {max_per_img}")
        if not 0.0 <= score_thr < 1.0:
            raise ValueError(f"score_thr must be in [0, 1), got {score_thr}")
        if not 0.0 < nms_iou_thr <= 1.0:
            raise ValueError(f"nms_iou_thr must be in (0, 1], got {nms_iou_thr}")
        self.nms_pre = int(nms_pre)
        self.score_thr = float(score_thr)
        self.nms_iou_thr = float(nms_iou_thr)
        self.max_per_img = int(max_per_img)
        self.min_bbox_size = None if min_bbox_size is None else float(min_bbox_size)

    def __call__(self, cls_logits, bbox_deltas, anchors, box_coder, im_shape, scale_factor):
        """Detections of a batch.

        Args:
            cls_logits: list over levels of [N, A*C, H_l, W_l] logits.
            bbox_deltas: list over levels of [N, A*4, H_l, W_l] deltas.
            anchors: list over levels of [H_l*W_l*A, 4] anchors.
            box_coder: has ``decode(anchors [N,K,4], deltas [N,K,4], max_shape [N,2])``.
            im_shape: float32 [N, 2] (h, w) of the resized image before padding.
            scale_factor: float32 [N, 2] (scale_y, scale_x) of resized / original.

        Returns:
            bbox: float32 [M, 6] rows ``label, score, x1, y1, x2, y2`` in original-image pixels,
                image after image, each by descending score.
            bbox_num: int32 [N] detections per image.
            keep_idx: int [M, 1] index of each detection among the N * K candidates.
        """
        num_classes = cls_logits[0].shape[1] // (bbox_deltas[0].shape[1] // 4)
        scores, labels, level_deltas, level_anchors = [], [], [], []
        if not len(cls_logits) == len(bbox_deltas) == len(anchors):
            raise ValueError("cls_logits, bbox_deltas and anchors need one entry per level each")
        for logits, deltas, level_anchor in zip(cls_logits, bbox_deltas, anchors):  # noqa: B905
            top_scores, anchor_idx, label = _topk_level(logits, self.nms_pre, num_classes)
            batch = paddle.shape(deltas)[0] if not paddle.in_dynamic_mode() else deltas.shape[0]
            deltas = deltas.transpose([0, 2, 3, 1]).reshape([batch, -1, 4])
            level_deltas.append(paddle.take_along_axis(deltas, anchor_idx.unsqueeze(-1), axis=1))
            level_anchors.append(
                paddle.gather(level_anchor, anchor_idx.reshape([-1])).reshape([batch, -1, 4])
            )
            scores.append(top_scores)
            labels.append(label)
        scores = paddle.concat(scores, axis=1)  # [N, K]
        labels = paddle.concat(labels, axis=1)
        boxes = box_coder.decode(
            paddle.concat(level_anchors, axis=1), paddle.concat(level_deltas, axis=1), im_shape
        )
        # rescale to the original image: multiply by 1 / scale as mmdet's scale_boxes
        inv_scale = 1.0 / scale_factor.astype(boxes.dtype)  # (1/sy, 1/sx)
        inv_scale = paddle.concat([inv_scale[:, 1:2], inv_scale[:, 0:1]], axis=1).tile([1, 2])
        boxes = boxes * inv_scale.unsqueeze(1)

        keep = scores > self.score_thr
        if self.min_bbox_size is not None:
            width = boxes[..., 2] - boxes[..., 0]
            height = boxes[..., 3] - boxes[..., 1]
            keep = keep & (width > self.min_bbox_size) & (height > self.min_bbox_size)
        scores = paddle.where(keep, scores, paddle.zeros_like(scores))
        # [N, K] scores of one class each -> [N, C, K], zero outside the candidate's class
        class_scores = F.one_hot(labels, num_classes) * scores.unsqueeze(-1)
        class_scores = class_scores.transpose([0, 2, 1])
        out, index, bbox_num = paddle._C_ops.multiclass_nms3(
            boxes,
            class_scores,
            None,
            self.score_thr,
            -1,  # nms_top_k: all candidates of a class
            self.max_per_img,
            self.nms_iou_thr,
            True,  # normalized: no +1 in widths, as mmcv 2.x
            1.0,  # nms_eta: plain NMS
            -1,  # background_label: none
        )
        return _sort_by_image_and_score(out, index, bbox_num)


def _sort_by_image_and_score(out, index, bbox_num):
    """Rows of ``out`` [M, 6] ordered by image, then by descending score (stable)."""
    if paddle.in_dynamic_mode() and out.shape[0] == 0:
        return out, bbox_num, index
    batch = paddle.shape(bbox_num)[0]
    image_id = paddle.repeat_interleave(paddle.arange(batch, dtype=out.dtype), bbox_num)
    # scores lie in (0, 1]: image i sorts into [2i - 1, 2i)
    order = paddle.argsort(image_id * 2.0 - out[:, 1], stable=True)
    return paddle.gather(out, order), bbox_num, paddle.gather(index, order)
