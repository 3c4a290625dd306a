"""Our model pieces against mmdet 3.3.0 itself (anchors, assigner, coder, FPN, head targets and
per-level losses, detections). Needs torch + mmdet: skipped cleanly without them."""

import os

import numpy as np
import paddle
import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
pytest.importorskip("mmengine")


from align.torch_ref import install_mmcv_ext_stand_in  # noqa: E402

install_mmcv_ext_stand_in()


from mmengine.config import Config  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from ppdet_ghm.modeling import (  # noqa: E402
    DeltaXYWHBoxCoder,
    GHMRetinaHead,
    MaxIoUAnchorAssigner,
    OctaveAnchorGenerator,
    RetinaFPN,
    RetinaPostProcessor,
)

FEATMAP_SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]  # a 128 x 160 padded batch
IM_SHAPES = [(128.0, 150.0), (70.0, 90.0)]  # image 2 pads to 96 x 96: part of its grid is invalid


def _reference_head():
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    path = os.path.join(
        os.path.dirname(mmdet.__file__),
        ".mim",
        "configs",
        "ghm",
        "retinanet_r50_fpn_ghm-1x_coco.py",
    )
    cfg = Config.fromfile(path)
    head_cfg = cfg.model.bbox_head
    head_cfg.update(num_classes=5, train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    return MODELS.build(head_cfg)


def _our_head(loss_cls, loss_bbox):
    return GHMRetinaHead(
        num_classes=5,
        in_channels=8,
        feat_channels=8,
        anchor_generator=OctaveAnchorGenerator(),
        assigner=MaxIoUAnchorAssigner(),
        box_coder=DeltaXYWHBoxCoder(),
        loss_cls=loss_cls,
        loss_bbox=loss_bbox,
        postprocessor=RetinaPostProcessor(),
    )


def _random_gts(rng):
    boxes, labels = [], []
    for height, width in IM_SHAPES:
        num = int(rng.integers(1, 6))
        xy = rng.uniform(0, [width - 10, height - 10], (num, 2))
        wh = rng.uniform(6, 90, (num, 2))
        box = np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)
        box[-1] = box[0]  # a duplicated gt: exact ties in the assignment
        boxes.append(box)
        labels.append(rng.integers(0, 5, num))
    return boxes, labels


def _img_metas():
    metas = []
    for height, width in IM_SHAPES:
        pad = (int(np.ceil(height / 32)) * 32, int(np.ceil(width / 32)) * 32)
        metas.append(
            {
                "img_shape": (int(height), int(width)),
                "pad_shape": pad,
                "batch_input_shape": (128, 160),
                "scale_factor": (0.5, 0.25),  # (w, h)
            }
        )
    return metas


def test_anchors_and_valid_flags_equal_mmdet():
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

    reference = AnchorGenerator(
        octave_base_scale=4,
        scales_per_octave=3,
        ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
    )
    ours = OctaveAnchorGenerator()
    sizes = [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    for level, expected in enumerate(reference.grid_priors(sizes, device="cpu")):
        np.testing.assert_array_equal(ours.level_anchors(level, *sizes[level]).numpy(), expected)
    flags = torch.cat(reference.valid_flags(sizes, (100, 130), device="cpu")).numpy()
    np.testing.assert_array_equal(ours.valid_flags(sizes, (100, 130)), flags)


def test_assignment_equals_mmdet_max_iou_assigner():
    from mmdet.models.task_modules.assigners import MaxIoUAssigner

    reference = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1)
    generator = OctaveAnchorGenerator()
    sizes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    anchors = np.concatenate([generator.level_anchors(i, *s).numpy() for i, s in enumerate(sizes)])
    valid = generator.valid_flags(sizes, (64, 96))
    rng = np.random.default_rng(0)
    for trial in range(30):
        num = int(rng.integers(1, 9))
        xy = rng.uniform(-10, 110, (num, 2))
        gts = np.concatenate([xy, xy + rng.uniform(2, 90, (num, 2))], 1).astype(np.float32)
        if trial % 3 == 0:
            gts[-1] = gts[0]
        if trial % 5 == 0:  # box-aligned gts: exact IoU ties between anchors
            gts[0] = anchors[int(rng.integers(len(anchors)))] + 8
        result = reference.assign(
            InstanceData(priors=torch.from_numpy(anchors[valid])),
            InstanceData(bboxes=torch.from_numpy(gts), labels=torch.zeros(num, dtype=torch.long)),
        )
        expected = np.full(len(anchors), -1)
        expected[valid] = result.gt_inds.numpy()
        ours = MaxIoUAnchorAssigner()(
            paddle.to_tensor(anchors), paddle.to_tensor(gts), paddle.to_tensor(valid)
        ).numpy()
        np.testing.assert_array_equal(ours, expected, err_msg=f"trial {trial}")


def test_box_coder_equals_mmdet():
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    reference = DeltaXYWHBBoxCoder(target_means=[0.0] * 4, target_stds=[1.0] * 4)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (500, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 80, (500, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 100, (500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 80, (500, 2))], 1).astype(np.float32)
    deltas = rng.normal(0, 2, (500, 4)).astype(np.float32)
    ours = DeltaXYWHBoxCoder()
    np.testing.assert_allclose(
        ours.encode(paddle.to_tensor(anchors), paddle.to_tensor(boxes)).numpy(),
        reference.encode(torch.from_numpy(anchors), torch.from_numpy(boxes)).numpy(),
        rtol=1e-6,
        atol=1e-7,
    )
    decoded = ours.decode(
        paddle.to_tensor(anchors[None]),
        paddle.to_tensor(deltas[None]),
        paddle.to_tensor([[90.0, 120.0]]),
    ).numpy()[0]
    expected = reference.decode(
        torch.from_numpy(anchors), torch.from_numpy(deltas), max_shape=(90, 120)
    ).numpy()
    np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=1e-4)


def test_fpn_equals_mmdet_on_odd_sizes():
    from mmdet.models.necks import FPN

    reference = FPN(
        in_channels=[4, 8, 16, 32],
        out_channels=8,
        start_level=1,
        add_extra_convs="on_input",
        num_outs=5,
    ).eval()
    ours = RetinaFPN(in_channels=[8, 16, 32], out_channel=8)
    state = {}
    for name, value in ours.state_dict().items():
        group, index, kind = name.split(".")
        state[f"{group}.{index}.conv.{kind}"] = torch.from_numpy(value.numpy())
    reference.load_state_dict(state)
    rng = np.random.default_rng(2)
    # C3 25x31, C4 13x16, C5 7x8: the top-down path upsamples to odd sizes
    inputs = [
        rng.normal(size=(2, c, h, w)).astype(np.float32)
        for c, h, w in [(4, 50, 62), (8, 25, 31), (16, 13, 16), (32, 7, 8)]
    ]
    expected = reference(tuple(torch.from_numpy(x) for x in inputs))
    outs = ours([paddle.to_tensor(x) for x in inputs[1:]])
    assert len(outs) == len(expected) == 5
    for out, exp in zip(outs, expected, strict=True):
        np.testing.assert_allclose(out.numpy(), exp.detach().numpy(), rtol=1e-4, atol=1e-5)


def _head_outputs(rng, num_classes=5):
    """Raw head outputs [2, 9*K, H, W] / [2, 36, H, W]; logits spread so that many pass 0.05."""
    cls_logits = [
        paddle.to_tensor(rng.normal(-3.5, 1.5, (2, 9 * num_classes, h, w)).astype(np.float32))
        for h, w in FEATMAP_SIZES
    ]
    bbox_deltas = [
        paddle.to_tensor(rng.normal(0, 0.5, (2, 36, h, w)).astype(np.float32))
        for h, w in FEATMAP_SIZES
    ]
    return cls_logits, bbox_deltas


def _to_torch(tensors):
    return [torch.from_numpy(t.numpy()).requires_grad_(True) for t in tensors]


def test_targets_and_per_level_losses_equal_mmdet():
    ghm = pytest.importorskip("ppdet_ghm.losses")
    reference = _reference_head()
    ours = _our_head(
        ghm.GHMCLoss(bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0),
        ghm.GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0),
    )
    rng = np.random.default_rng(3)
    cls_logits, bbox_deltas = _head_outputs(rng)
    boxes, labels = _random_gts(rng)
    metas = _img_metas()
    gt_instances = [
        InstanceData(bboxes=torch.from_numpy(b), labels=torch.from_numpy(c))
        for b, c in zip(boxes, labels, strict=True)
    ]
    anchor_list, valid_list = reference.get_anchors(FEATMAP_SIZES, metas, device="cpu")
    expected = reference.get_targets(anchor_list, valid_list, gt_instances, metas)
    targets = ours.get_targets(
        FEATMAP_SIZES,
        [paddle.to_tensor(b) for b in boxes],
        [paddle.to_tensor(c) for c in labels],
        paddle.to_tensor(IM_SHAPES),
    )
    start = 0
    for level, (h, w) in enumerate(FEATMAP_SIZES):
        end = start + h * w * 9
        for ours_t, exp_t in zip(targets[:4], expected[:4], strict=True):
            np.testing.assert_allclose(
                ours_t[:, start:end].numpy(), exp_t[level].numpy(), rtol=1e-6, atol=1e-6
            )
        start = end
    assert sum(max(n, 1) for n in targets[4]) == expected[4]

    inputs = {
        "gt_bbox": [paddle.to_tensor(b) for b in boxes],
        "gt_class": [paddle.to_tensor(c.reshape(-1, 1)) for c in labels],
        "im_shape": paddle.to_tensor(IM_SHAPES),
    }
    for iteration in range(2):  # the second iteration runs on the EMA histograms
        ours.train()
        losses_cls, losses_reg = ours.level_losses((cls_logits, bbox_deltas), inputs)
        ref = reference.loss_by_feat(
            _to_torch(cls_logits), _to_torch(bbox_deltas), gt_instances, metas
        )
        for name, got, exp in (
            ("cls", losses_cls, ref["loss_cls"]),
            ("reg", losses_reg, ref["loss_bbox"]),
        ):
            np.testing.assert_allclose(
                [float(x) for x in got],
                [x.item() for x in exp],
                rtol=1e-5,
                err_msg=f"iteration {iteration} {name}",
            )
        np.testing.assert_allclose(
            ours.loss_cls.acc_sum.numpy(), reference.loss_cls.acc_sum.numpy(), rtol=1e-5
        )
        np.testing.assert_allclose(
            ours.loss_bbox.acc_sum.numpy(), reference.loss_bbox.acc_sum.numpy(), rtol=1e-5
        )


def test_detections_equal_mmdet():
    reference = _reference_head()
    ours = _our_head(None, None)
    rng = np.random.default_rng(4)
    cls_logits, bbox_deltas = _head_outputs(rng)
    metas = _img_metas()
    expected = reference.predict_by_feat(
        [torch.from_numpy(x.numpy()) for x in cls_logits],
        [torch.from_numpy(x.numpy()) for x in bbox_deltas],
        batch_img_metas=metas,
        rescale=True,
    )
    scale_factor = paddle.to_tensor([[0.25, 0.5], [0.25, 0.5]])  # (h, w)
    bbox, bbox_num, _ = ours.post_process(
        (cls_logits, bbox_deltas), paddle.to_tensor(IM_SHAPES), scale_factor
    )
    bbox, bbox_num = bbox.numpy(), bbox_num.numpy()
    assert list(bbox_num) == [len(r.scores) for r in expected]
    assert bbox_num.sum() > 100  # the 100-per-image cut and NMS are exercised
    start = 0
    for result, num in zip(expected, bbox_num, strict=True):
        rows = bbox[start : start + num]
        start += num
        np.testing.assert_array_equal(rows[:, 0], result.labels.numpy())
        np.testing.assert_allclose(rows[:, 1], result.scores.numpy(), rtol=1e-6)
        np.testing.assert_allclose(rows[:, 2:], result.bboxes.numpy(), rtol=1e-5, atol=1e-3)
