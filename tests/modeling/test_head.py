"""GHMRetinaHead: init, targets of a hand-made batch, per-level loss calls, acc_sum, inputs."""

import math

import numpy as np
import paddle
import pytest

import ppdet_ghm.losses
from ppdet_ghm.modeling import (
    DeltaXYWHBoxCoder,
    GHMRetinaHead,
    MaxIoUAnchorAssigner,
    OctaveAnchorGenerator,
    RetinaPostProcessor,
)
from ppdet_ghm.modeling.head import split_targets

HAS_GHM = hasattr(ppdet_ghm.losses, "GHMCLoss")
needs_ghm = pytest.mark.skipif(not HAS_GHM, reason="GHM losses not available")


class SpyLoss(paddle.nn.Layer):
    """Records every call; returns sum(pred) * 0 + its call number."""

    uses_avg_factor = False

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, pred, target, weight):
        self.calls.append({"pred": pred, "target": target, "weight": weight})
        return pred.sum() * 0.0 + float(len(self.calls))


class AvgFactorSpyLoss(SpyLoss):
    uses_avg_factor = True

    def forward(self, pred, target, weight, avg_factor):
        self.calls.append({"pred": pred, "target": target, "weight": weight, "avg": avg_factor})
        return pred.sum() * 0.0 + float(len(self.calls))


def make_head(loss_cls=None, loss_bbox=None, strides=(8, 16, 32, 64, 128), **kwargs):
    settings = {"num_classes": 3, "in_channels": 8, "feat_channels": 8}
    settings.update(kwargs)
    return GHMRetinaHead(
        anchor_generator=OctaveAnchorGenerator(strides=list(strides)),
        assigner=MaxIoUAnchorAssigner(),
        box_coder=DeltaXYWHBoxCoder(),
        loss_cls=loss_cls if loss_cls is not None else SpyLoss(),
        loss_bbox=loss_bbox if loss_bbox is not None else SpyLoss(),
        postprocessor=RetinaPostProcessor(),
        **settings,
    )


def test_init_and_state_dict_layout():
    paddle.seed(0)
    head = make_head(num_classes=80, in_channels=256, feat_channels=256)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = {}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            expected[f"{tower}.{i}.weight"] = (256, 256, 3, 3)
            expected[f"{tower}.{i}.bias"] = (256,)
    expected.update(
        {
            "retina_cls.weight": (720, 256, 3, 3),
            "retina_cls.bias": (720,),
            "retina_reg.weight": (36, 256, 3, 3),
            "retina_reg.bias": (36,),
        }
    )
    assert shapes == expected
    np.testing.assert_allclose(head.retina_cls.bias.numpy(), -math.log(99.0), rtol=1e-6)  # -4.59512
    assert not np.any(head.retina_reg.bias.numpy()) and not np.any(head.cls_convs[0].bias.numpy())
    np.testing.assert_allclose(head.cls_convs[0].weight.numpy().std(), 0.01, rtol=0.02)
    np.testing.assert_allclose(head.retina_reg.weight.numpy().mean(), 0.0, atol=2e-4)


def test_group_norm_towers():
    """norm_groups=G: tower convs lose their bias, each is followed by GroupNorm(G) then ReLU
    (mmdet ConvModule order); checked against a float64 NumPy tower."""
    paddle.seed(0)
    head = make_head(stacked_convs=2, norm_groups=4)
    keys = set(head.state_dict())
    assert "cls_convs.0.bias" not in keys and "reg_convs.1.bias" not in keys
    assert {"cls_norms.0.weight", "cls_norms.1.bias", "reg_norms.0.weight"} <= keys
    for norm in (head.cls_norms[0], head.cls_norms[1]):  # non-trivial affine parameters
        norm.weight.set_value(paddle.to_tensor(np.linspace(0.5, 1.5, 8, dtype="float32")))
        norm.bias.set_value(paddle.to_tensor(np.linspace(-0.2, 0.3, 8, dtype="float32")))
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 6))
    got = head._tower(paddle.to_tensor(x.astype("float32")), "cls").numpy()

    def conv3x3(a, w):  # float64 cross-correlation, zero padding 1
        padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((a.shape[0], w.shape[0], *a.shape[2:]))
        for dy in range(3):
            for dx in range(3):
                patch = padded[:, :, dy : dy + a.shape[2], dx : dx + a.shape[3]]
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx])
        return out

    expected = x
    for conv, norm in zip(head.cls_convs, head.cls_norms, strict=True):
        y = conv3x3(expected, conv.weight.numpy().astype(np.float64))
        groups = y.reshape(2, 4, -1)
        y = (
            (groups - groups.mean(-1, keepdims=True))
            / np.sqrt(groups.var(-1, keepdims=True) + 1e-5)
        ).reshape(y.shape)
        y = y * norm.weight.numpy()[:, None, None] + norm.bias.numpy()[:, None, None]
        expected = np.maximum(y, 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="norm_groups"):
        make_head(norm_groups=3)  # does not divide 8 channels


@needs_ghm
def test_ghm_loss_state_is_in_the_state_dict():
    head = make_head(ppdet_ghm.losses.GHMCLoss(bins=30, momentum=0.75), ppdet_ghm.losses.GHMRLoss())
    keys = head.state_dict().keys()
    assert "loss_cls.acc_sum" in keys and "loss_bbox.acc_sum" in keys


def test_eval_outputs_raw_per_level_maps():
    head = make_head()
    head.eval()
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    cls_logits, bbox_deltas = head([paddle.randn([2, 8, h, w]) for h, w in sizes])
    assert [tuple(x.shape) for x in cls_logits] == [(2, 27, h, w) for h, w in sizes]
    assert [tuple(x.shape) for x in bbox_deltas] == [(2, 36, h, w) for h, w in sizes]


# ---------------------------------------------------------------------------- targets
def _iou64(gts, anchors):
    lt = np.maximum(gts[:, None, :2], anchors[None, :, :2])
    rb = np.minimum(gts[:, None, 2:], anchors[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_g = np.prod(gts[:, 2:] - gts[:, :2], axis=1)
    area_a = np.prod(anchors[:, 2:] - anchors[:, :2], axis=1)
    return inter / (area_g[:, None] + area_a[None, :] - inter)


def _encode64(anchors, boxes):
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dx = ((boxes[:, 0] + boxes[:, 2]) - (anchors[:, 0] + anchors[:, 2])) / 2 / pw
    dy = ((boxes[:, 1] + boxes[:, 3]) - (anchors[:, 1] + anchors[:, 3])) / 2 / ph
    return np.stack([dx, dy, np.log(gw / pw), np.log(gh / ph)], 1)


def _reference_targets(anchors, valid, gts, labels, num_classes):
    """mmdet's rules in float64 NumPy (one image)."""
    iou = _iou64(gts, anchors)
    iou[:, ~valid] = -1
    best, best_gt = iou.max(0), iou.argmax(0)
    codes = np.full(len(anchors), -1)
    codes[(best >= 0) & (best < 0.4)] = 0
    codes[best >= 0.5] = best_gt[best >= 0.5] + 1
    for i, row in enumerate(iou):
        codes[row == row.max()] = i + 1
    codes[~valid] = -1
    pos = codes > 0
    out_labels = np.full(len(anchors), num_classes)
    out_labels[pos] = labels[codes[pos] - 1]
    targets = np.zeros((len(anchors), 4))
    targets[pos] = _encode64(anchors[pos], gts[codes[pos] - 1])
    return (
        out_labels,
        (codes >= 0).astype(float),
        targets,
        np.repeat(pos[:, None], 4, 1).astype(float),
    )


def test_targets_of_a_hand_made_batch():
    # one level, stride 8, 4x4 map (a 32x32 padded batch), 9 anchors per cell
    head = make_head(strides=[8], pad_size_divisor=8)
    gts = [np.array([[0, 0, 32, 32]], np.float32), np.array([[0, 0, 20, 20]], np.float32)]
    labels = [np.array([2]), np.array([0])]
    im_shape = np.array([[32.0, 32.0], [10.0, 30.0]])  # image 2 pads to 16 x 32: rows 2, 3 invalid
    out = head.get_targets(
        [(4, 4)],
        [paddle.to_tensor(g) for g in gts],
        [paddle.to_tensor(c) for c in labels],
        paddle.to_tensor(im_shape),
    )
    out_labels, label_weights, box_targets, box_weights, num_pos = (
        x.numpy() if hasattr(x, "numpy") else x for x in out
    )
    cell = lambda y, x, a: (y * 4 + x) * 9 + a  # noqa: E731  (row of anchor a of cell (y, x))

    # image 1: gt (0, 0, 32, 32) is anchor 3 (ratio 1, size 32) of cell (2, 2), IoU 1
    assert out_labels[0, cell(2, 2, 3)] == 2
    np.testing.assert_allclose(box_targets[0, cell(2, 2, 3)], 0.0, atol=1e-7)
    # cell (2, 3), anchor 3 = (8, 0, 40, 32): IoU 768 / 1280 = 0.6, dx = (16 - 24) / 32
    assert out_labels[0, cell(2, 3, 3)] == 2
    np.testing.assert_allclose(box_targets[0, cell(2, 3, 3)], [-0.25, 0, 0, 0], atol=1e-6)
    # cell (2, 2), anchor 4 (size 40.32): IoU 1024 / 1625.5 = 0.63, dw = dh = log(32 / 40.32)
    dwh = math.log(2 ** (-1 / 3))
    np.testing.assert_allclose(box_targets[0, cell(2, 2, 4)], [0, 0, dwh, dwh], atol=1e-6)
    # cell (3, 3), anchor 3 = (8, 8, 40, 40): IoU 576 / 1472 = 0.39 < 0.4: background, weight 1
    assert out_labels[0, cell(3, 3, 3)] == 3 and label_weights[0, cell(3, 3, 3)] == 1
    # image 2: gt (0, 0, 20, 20) lies inside the size-32 square anchors (anchor 3) of cells (1, 1),
    # (1, 2), (2, 1), (2, 2): best IoU 400 / 1024 = 0.39 < 0.4, tied (no other anchor contains it);
    # low-quality match with all ties: cells (1, 1), (1, 2) take it, rows 2, 3 are invalid
    assert out_labels[1, cell(1, 1, 3)] == 0 and out_labels[1, cell(1, 2, 3)] == 0
    assert label_weights[1, cell(2, 1, 3)] == 0 and out_labels[1, cell(2, 1, 3)] == 3
    assert num_pos[1] == 2
    dwh = math.log(20 / 32)
    np.testing.assert_allclose(box_targets[1, cell(1, 1, 3)], [0.0625, 0.0625, dwh, dwh], atol=1e-6)
    np.testing.assert_allclose(
        box_targets[1, cell(1, 2, 3)], [-0.1875, 0.0625, dwh, dwh], atol=1e-6
    )

    generator = OctaveAnchorGenerator(strides=[8])
    anchors = generator.level_anchors(0, 4, 4).numpy().astype(np.float64)
    for i in range(2):
        pad = [int(np.ceil(s / 8)) * 8 for s in im_shape[i]]
        valid = generator.valid_flags([(4, 4)], pad)
        expected = _reference_targets(anchors, valid, gts[i].astype(np.float64), labels[i], 3)
        np.testing.assert_array_equal(out_labels[i], expected[0])
        np.testing.assert_array_equal(label_weights[i], expected[1])
        np.testing.assert_allclose(box_targets[i], expected[2], atol=1e-6)
        np.testing.assert_array_equal(box_weights[i], expected[3])
        assert num_pos[i] == int(expected[3][:, 0].sum())
    assert (
        label_weights[0] == 0
    ).sum() > 0  # some anchors of image 1 are ignored (0.4 <= IoU < 0.5)


def test_image_without_gt_is_all_background():
    head = make_head(strides=[8])
    out = head.get_targets(
        [(4, 4)],
        [paddle.zeros([0, 4])],
        [paddle.zeros([0], "int64")],
        paddle.to_tensor([[32.0, 32.0]]),
    )
    assert np.all(out[0].numpy() == 3) and np.all(out[1].numpy() == 1)
    assert not np.any(out[3].numpy()) and out[4] == [0]


# ---------------------------------------------------------------------------- loss calls
SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 x 128 batch


def _batch(num_images=2):
    boxes = [
        np.array([[10, 20, 60, 90], [30, 30, 120, 100]], np.float32),
        np.array([[5, 5, 40, 50]], np.float32),
    ][:num_images]
    classes = [np.array([[1], [2]]), np.array([[0]])][:num_images]
    return {
        "gt_bbox": [paddle.to_tensor(b) for b in boxes],
        "gt_class": [paddle.to_tensor(c) for c in classes],
        "im_shape": paddle.to_tensor([[128.0, 128.0], [100.0, 120.0]][:num_images]),
    }


def _feats(seed=0):
    rng = np.random.default_rng(seed)
    return [paddle.to_tensor(rng.normal(size=(2, 8, h, w)).astype(np.float32)) for h, w in SIZES]


def test_one_call_per_level_over_all_images():
    head = make_head()
    head.train()
    losses = head(_feats(), _batch())
    for spy in (head.loss_cls, head.loss_bbox):
        assert len(spy.calls) == 5
        for call, (h, w) in zip(spy.calls, SIZES, strict=True):
            rows = 2 * h * w * 9  # both images of the batch
            assert call["pred"].shape[0] == rows
            assert call["target"].shape[0] == call["weight"].shape[0] == rows
            assert "avg" not in call  # no avg_factor for losses that do not declare it
    # sums over the 5 levels of the per-call results (1 + 2 + 3 + 4 + 5)
    assert float(losses["loss_cls"]) == 15.0 and float(losses["loss_reg"]) == 15.0
    assert float(losses["loss"]) == 30.0
    labels = paddle.concat([c["target"] for c in head.loss_cls.calls]).numpy()
    assert labels.min() >= 0 and labels.max() == 3  # 3 = background
    assert (
        head.loss_cls.calls[0]["pred"].shape[1] == 3
        and head.loss_bbox.calls[0]["pred"].shape[1] == 4
    )


def test_avg_factor_goes_to_losses_that_declare_it():
    head = make_head(AvgFactorSpyLoss(), AvgFactorSpyLoss())
    head.train()
    batch = _batch()
    head(_feats(), batch)
    targets = head.get_targets(
        SIZES, batch["gt_bbox"], [c.reshape([-1]) for c in batch["gt_class"]], batch["im_shape"]
    )
    total_pos = sum(max(n, 1) for n in targets[4])
    assert total_pos == int(targets[3][..., 0].sum())  # every image has positives here
    for spy in (head.loss_cls, head.loss_bbox):
        assert [c["avg"] for c in spy.calls] == [float(total_pos)] * 5


def _ghm_counts(g, valid, edges):
    """Elements of g (valid only) per bin, bin i holding edges[i] <= g < edges[i + 1] (float32)."""
    idx = np.searchsorted(edges, g[valid], side="right") - 1
    return np.bincount(idx[(idx >= 0) & (idx < len(edges) - 1)], minlength=len(edges) - 1)


def _ema(acc, counts, momentum):
    nonempty = counts > 0
    acc = acc.copy()
    acc[nonempty] = momentum * acc[nonempty] + (1 - momentum) * counts[nonempty]
    return acc


@needs_ghm
def test_acc_sum_is_five_sequential_momentum_updates():
    head = make_head(
        ppdet_ghm.losses.GHMCLoss(bins=30, momentum=0.75),
        ppdet_ghm.losses.GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0),
    )
    captured = {"cls": [], "reg": []}
    head.loss_cls.register_forward_pre_hook(
        lambda layer, args: captured["cls"].append([a.numpy() for a in args])
    )
    head.loss_bbox.register_forward_pre_hook(
        lambda layer, args: captured["reg"].append([a.numpy() for a in args])
    )
    head.train()
    head(_feats(), _batch())
    assert len(captured["cls"]) == len(captured["reg"]) == 5

    edges_c = np.arange(31, dtype=np.float32) / np.float32(30)
    edges_c[-1] += np.float32(1e-6)
    acc_c = np.zeros(30)
    for pred, labels, weights in captured["cls"]:
        target = np.eye(4, dtype=np.float32)[labels][:, :3]
        g = np.abs(1 / (1 + np.exp(-pred.astype(np.float64))) - target).astype(np.float32)
        valid = np.repeat(weights[:, None] > 0, 3, 1)
        acc_c = _ema(acc_c, _ghm_counts(g, valid, edges_c), 0.75)
    edges_r = np.arange(11, dtype=np.float32) / np.float32(10)
    edges_r[-1] = 1e3
    acc_r = np.zeros(10)
    for pred, target, weights in captured["reg"]:
        d = (pred - target).astype(np.float64)
        g = (np.abs(d) / np.sqrt(d * d + 0.02**2)).astype(np.float32)
        acc_r = _ema(acc_r, _ghm_counts(g, weights > 0, edges_r), 0.7)
    np.testing.assert_allclose(head.loss_cls.acc_sum.numpy(), acc_c, rtol=1e-6)
    np.testing.assert_allclose(head.loss_bbox.acc_sum.numpy(), acc_r, rtol=1e-6)
    # a single pooled call (ppdet RetinaHead granularity) would give a different histogram
    pooled_g = np.concatenate(
        [
            np.abs(1 / (1 + np.exp(-p)) - np.eye(4)[lab][:, :3]).ravel()
            for p, lab, _ in captured["cls"]
        ]
    ).astype(np.float32)
    pooled = _ema(np.zeros(30), _ghm_counts(pooled_g, np.ones_like(pooled_g, bool), edges_c), 0.75)
    assert not np.allclose(pooled, acc_c, rtol=1e-3)


# ---------------------------------------------------------------------------- inputs
def test_split_targets_accepts_lists_and_padded_tensors():
    boxes, labels = split_targets(
        {
            "gt_bbox": [np.array([[0, 0, 4, 4]], np.float32), np.zeros((0, 4), np.float32)],
            "gt_class": [np.array([[2]]), np.zeros((0, 1))],
        }
    )
    assert [b.shape for b in boxes] == [[1, 4], [0, 4]] and labels[0].numpy().tolist() == [2]
    padded = {
        "gt_bbox": paddle.to_tensor(
            np.array([[[0, 0, 4, 4], [1, 1, 5, 5]], [[2, 2, 6, 6], [0, 0, 0, 0]]], np.float32)
        ),
        "gt_class": paddle.to_tensor(np.array([[[1], [2]], [[3], [0]]])),
        "pad_gt_mask": paddle.to_tensor(np.array([[[1], [1]], [[1], [0]]], np.float32)),
        "is_crowd": paddle.to_tensor(np.array([[[0], [1]], [[0], [0]]])),
    }
    boxes, labels = split_targets(padded)
    np.testing.assert_array_equal(boxes[0].numpy(), [[0, 0, 4, 4]])  # the crowd box is dropped
    np.testing.assert_array_equal(boxes[1].numpy(), [[2, 2, 6, 6]])  # the padding is dropped
    assert labels[0].numpy().tolist() == [1] and labels[1].numpy().tolist() == [3]
    del padded["pad_gt_mask"]
    with pytest.raises(ValueError, match="pad_gt_mask"):
        split_targets(padded)
    with pytest.raises(ValueError, match="gt_bbox"):
        split_targets({"gt_class": []})


def test_training_needs_targets_and_objects_not_names():
    head = make_head()
    head.train()
    with pytest.raises(ValueError, match="targets"):
        head(_feats())
    with pytest.raises(ValueError, match="loss_cls"):
        GHMRetinaHead(
            anchor_generator=OctaveAnchorGenerator(),
            assigner=MaxIoUAnchorAssigner(),
            box_coder=DeltaXYWHBoxCoder(),
            postprocessor=RetinaPostProcessor(),
            loss_bbox=SpyLoss(),
        )
