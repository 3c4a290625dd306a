"""RetinaPostProcessor: a hand-made case and a float64 NumPy reference of mmdet's test pipeline."""

import numpy as np
import paddle
import pytest

from ppdet_ghm.modeling import DeltaXYWHBoxCoder, OctaveAnchorGenerator, RetinaPostProcessor

NUM_CLASSES = 2


def cell(y, x, a, width=2):
    return (y * width + x) * 9 + a


def _hand_case():
    """One stride-8 level, 2 x 2 cells, 2 classes, 2 images; logits -10 (score 4.5e-5) elsewhere."""
    logits = np.full((2, 2, 2, 9, NUM_CLASSES), -10.0, np.float32)  # (N, H, W, A, K)
    deltas = np.zeros((2, 2, 2, 9, 4), np.float32)
    logits[0, 0, 0, 3, 0] = 2.0  # square (-16, -16, 16, 16) -> clipped (0, 0, 16, 16), 0.8808
    logits[0, 0, 1, 3, 0] = 1.0  # (-8, -16, 24, 16) -> (0, 0, 24, 16), 0.7311: IoU 0.67, suppressed
    logits[0, 0, 1, 3, 1] = 0.0  # the same box in class 1, 0.5: kept
    logits[0, 1, 1, 3, 1] = -1.0  # (-8, -8, 24, 24) -> (0, 0, 24, 24), 0.2689: IoU 0.67, suppressed
    logits[0, 1, 1, 0, 0] = -2.5  # (-14.6, -3.3, 30.6, 19.3) -> (0, 0, 30.6, 19.3), 0.0759:
    #                               IoU 256 / 591 = 0.43 with the best class-0 box: kept
    logits[0, 1, 0, 3, 0] = -3.0  # 0.0474 < 0.05: filtered
    logits[1, 1, 1, 3, 0] = 3.0  # shifted right by 1 width: (24, -8, 56, 24) clipped to x = 8:
    deltas[1, 1, 1, 3, 0] = 1.0  # zero width, dropped by min_bbox_size 0
    cls = paddle.to_tensor(logits.reshape(2, 2, 2, -1).transpose(0, 3, 1, 2))  # [N, A*K, H, W]
    reg = paddle.to_tensor(deltas.reshape(2, 2, 2, -1).transpose(0, 3, 1, 2))  # [N, A*4, H, W]
    anchors = OctaveAnchorGenerator(strides=[8]).level_anchors(0, 2, 2)
    im_shape = paddle.to_tensor([[32.0, 32.0], [8.0, 8.0]])
    scale_factor = paddle.to_tensor([[2.0, 2.0], [1.0, 1.0]])  # (h, w) resized / original
    return [cls], [reg], [anchors], im_shape, scale_factor


def test_hand_case():
    cls, reg, anchors, im_shape, scale_factor = _hand_case()
    bbox, bbox_num, keep_idx = RetinaPostProcessor()(
        cls, reg, anchors, DeltaXYWHBoxCoder(), im_shape, scale_factor
    )
    assert bbox_num.numpy().tolist() == [3, 0]
    expected = np.array(
        [
            [0, 1 / (1 + np.exp(-2.0)), 0, 0, 8, 8],
            [1, 0.5, 0, 0, 12, 8],
            [0, 1 / (1 + np.exp(2.5)), 0, 0, (8 + 22.627417) / 2, (8 + 11.313708) / 2],
        ]
    )
    np.testing.assert_allclose(bbox.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert keep_idx.shape[0] == 3


def test_nms_pre_and_max_per_img():
    cls, reg, anchors, im_shape, scale_factor = _hand_case()
    coder = DeltaXYWHBoxCoder()
    # only the 2 best pairs of the level (both class 0, overlapping) survive the pre-NMS cut
    bbox, bbox_num, _ = RetinaPostProcessor(nms_pre=2)(
        cls, reg, anchors, coder, im_shape, scale_factor
    )
    assert bbox_num.numpy().tolist() == [1, 0]
    bbox, bbox_num, _ = RetinaPostProcessor(max_per_img=2)(
        cls, reg, anchors, coder, im_shape, scale_factor
    )
    assert bbox_num.numpy().tolist() == [2, 0]
    np.testing.assert_allclose(bbox.numpy()[:, 1], [0.8807971, 0.5], rtol=1e-6)


def test_min_bbox_size_none_keeps_degenerate_boxes():
    cls, reg, anchors, im_shape, scale_factor = _hand_case()
    bbox, bbox_num, _ = RetinaPostProcessor(min_bbox_size=None)(
        cls, reg, anchors, DeltaXYWHBoxCoder(), im_shape, scale_factor
    )
    assert bbox_num.numpy().tolist() == [3, 1]
    np.testing.assert_allclose(bbox.numpy()[3], [0, 1 / (1 + np.exp(-3.0)), 8, 0, 8, 8], rtol=1e-6)


# ---------------------------------------------------------------------------- NumPy reference
def _nms64(boxes, scores, thr):
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(order), bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        w = np.clip(
            np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]),
            0,
            None,
        )
        h = np.clip(
            np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]),
            0,
            None,
        )
        inter = w * h
        suppressed[pos + 1 :] |= inter / (area[i] + area[rest] - inter) > thr
    return np.array(keep, int)


def _reference(logits, deltas, anchors, im_shape, scale_factor, nms_pre, thr, iou, max_det):
    """mmdet 3.x _predict_by_feat_single + _bbox_post_process, float64, one image at a time."""
    results = []
    for n in range(logits[0].shape[0]):
        all_boxes, all_scores, all_labels = [], [], []
        for lvl_logits, lvl_deltas, lvl_anchors in zip(logits, deltas, anchors, strict=True):
            k = lvl_logits.shape[1] // 9
            scores = 1 / (
                1 + np.exp(-lvl_logits[n].transpose(1, 2, 0).reshape(-1, k).astype(np.float64))
            )
            d = lvl_deltas[n].transpose(1, 2, 0).reshape(-1, 4).astype(np.float64)
            rows, cols = np.nonzero(scores > thr)
            order = np.argsort(-scores[rows, cols], kind="stable")[:nms_pre]
            rows, cols = rows[order], cols[order]
            a = lvl_anchors[rows].astype(np.float64)
            dd = d[rows]
            ctr = (a[:, :2] + a[:, 2:]) / 2
            wh = a[:, 2:] - a[:, :2]
            ctr = ctr + wh * dd[:, :2]
            wh = wh * np.exp(np.clip(dd[:, 2:], -np.log(1000 / 16), np.log(1000 / 16)))
            box = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1)
            box[:, 0::2] = np.clip(box[:, 0::2], 0, im_shape[n][1])
            box[:, 1::2] = np.clip(box[:, 1::2], 0, im_shape[n][0])
            box /= np.array([scale_factor[n][1], scale_factor[n][0]] * 2)
            all_boxes.append(box)
            all_scores.append(scores[rows, cols])
            all_labels.append(cols)
        boxes, scores, labels = (np.concatenate(x) for x in (all_boxes, all_scores, all_labels))
        ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        kept = []
        for c in np.unique(labels):
            idx = np.nonzero(labels == c)[0]
            kept.extend(idx[_nms64(boxes[idx], scores[idx], iou)])
        kept = np.array(kept, int)
        kept = kept[np.argsort(-scores[kept], kind="stable")][:max_det]
        results.append(np.concatenate([labels[kept, None], scores[kept, None], boxes[kept]], 1))
    return results


def test_matches_numpy_reference_on_random_outputs():
    rng = np.random.default_rng(0)
    sizes = [(12, 16), (6, 8), (3, 4)]
    generator = OctaveAnchorGenerator(strides=[8, 16, 32])
    anchors = [generator.level_anchors(i, h, w).numpy() for i, (h, w) in enumerate(sizes)]
    logits = [rng.normal(-3.5, 1.5, (2, 9 * 3, h, w)).astype(np.float32) for h, w in sizes]
    deltas = [rng.normal(0, 0.3, (2, 36, h, w)).astype(np.float32) for h, w in sizes]
    im_shape = np.array([[96.0, 128.0], [70.0, 100.0]], np.float32)
    scale_factor = np.array([[0.8, 0.8], [0.5, 0.6]], np.float32)
    post = RetinaPostProcessor(nms_pre=200, score_thr=0.05, nms_iou_thr=0.5, max_per_img=60)
    bbox, bbox_num, _ = post(
        [paddle.to_tensor(x) for x in logits],
        [paddle.to_tensor(x) for x in deltas],
        [paddle.to_tensor(a) for a in anchors],
        DeltaXYWHBoxCoder(),
        paddle.to_tensor(im_shape),
        paddle.to_tensor(scale_factor),
    )
    expected = _reference(logits, deltas, anchors, im_shape, scale_factor, 200, 0.05, 0.5, 60)
    assert bbox_num.numpy().tolist() == [len(e) for e in expected]
    assert bbox_num.numpy().tolist()[0] == 60  # the per-image cut is exercised
    np.testing.assert_allclose(bbox.numpy(), np.concatenate(expected), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs", [{"nms_pre": 0}, {"max_per_img": 0}, {"score_thr": 1.0}, {"nms_iou_thr": 0.0}]
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        RetinaPostProcessor(**kwargs)
