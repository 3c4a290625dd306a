"""GHMRetinaHead: RetinaNet head with the reference's per-FPN-level loss granularity.

The GHM losses (and mmdet's RetinaHead) compute the classification and regression losses
**once per FPN level**, each call over all images of the batch (mmdet ``loss_by_feat`` ->
``multi_apply(loss_by_feat_single)`` over levels): with 5 levels a GHM loss is called 5 times
per iteration, so its EMA histogram ``acc_sum`` is updated 5 times and its density, ``tot`` and
number of non-empty bins are per level. ppdet's RetinaHead pools all levels and divides by the
number of positives: GHM cannot be dropped into it unchanged.

Training (``head(feats, inputs)`` with ``self.training``):

1. anchors of every level (:class:`~ppdet_ghm.modeling.anchors.OctaveAnchorGenerator`) and,
   per image, valid flags from the image's padded shape;
2. per image, max-IoU assignment (:class:`~ppdet_ghm.modeling.assigner.MaxIoUAnchorAssigner`)
   and targets: labels in [0, K] (K = ``num_classes`` = background), label weights (1 for
   positives and negatives, 0 for ignored or invalid anchors), delta box targets and box weights
   (1 on the 4 coordinates of positives, 0 elsewhere);
3. per level, one call of ``loss_cls(pred [N*H*W*A, K], labels [N*H*W*A], label_weights)`` and
   one of ``loss_bbox(pred [N*H*W*A, 4], targets, weights)``. Losses with the class attribute
   ``uses_avg_factor = True`` (the Focal / Smooth-L1 baseline) also get ``avg_factor``, the
   number of positive anchors of the batch (each image counting at least 1, as mmdet v1/v2); the
   GHM losses normalise themselves and get no avg_factor.

Returns ``{'loss_cls': sum over levels, 'loss_reg': sum over levels, 'loss': their sum}``.

Eval: ``head(feats)`` returns the raw ``(cls_logits, bbox_deltas)`` lists, [N, A*K, H, W] and
[N, A*4, H, W] per level; ``post_process(head_outs, im_shape, scale_factor)`` returns
``(bbox [M, 6], bbox_num [N], keep_idx)`` as ppdet's ``RetinaNet`` architecture expects.
"""

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.nn.initializer import Constant, Normal
from ppdet.core.workspace import register

from ppdet_ghm.modeling.assigner import NEGATIVE
from ppdet_ghm.modeling.layers import ChannelBiasConv2D

__all__ = ["GHMRetinaHead"]


def _conv3x3(in_channels: int, out_channels: int, bias: float | None = 0.0):
    """3x3 conv, Normal(0, 0.01) weights and constant bias (mmdet RetinaHead init); no bias
    for ``bias=None``."""
    return ChannelBiasConv2D(
        in_channels,
        out_channels,
        3,
        padding=1,
        weight_attr=ParamAttr(initializer=Normal(mean=0.0, std=0.01)),
        bias_attr=False if bias is None else ParamAttr(initializer=Constant(bias)),
    )


@register
class GHMRetinaHead(nn.Layer):
    """RetinaNet head: two towers of conv3x3 + ReLU, ``retina_cls`` and ``retina_reg``.

    Args:
        num_classes: K, foreground classes (shared ppdet key ``num_classes``).
        in_channels: channels of the FPN levels, filled from the neck's out_shape.
        feat_channels: channels of the tower convs (256).
        stacked_convs: convs per tower (4).
        norm_groups: 0 (the reference): tower convs with bias, no normalisation; G > 0: each
            tower conv without bias, followed by GroupNorm with G groups (mmdet RetinaHead
            ``norm_cfg=dict(type='GN', num_groups=G)``; for training from scratch, the demo).
        prior_prob: initial foreground probability; ``retina_cls`` bias is
            ``-log((1 - prior_prob) / prior_prob)``.
        pad_size_divisor: images are padded to a multiple of this (the reader's PadBatch
            ``pad_to_stride``); anchors outside an image's own padded shape are invalid (mmdet).
        anchor_generator: an ``OctaveAnchorGenerator``.
        assigner: a ``MaxIoUAnchorAssigner``.
        box_coder: a ``DeltaXYWHBoxCoder``.
        loss_cls: classification loss layer, called as ``loss_cls(pred, labels, label_weights)``
            (+ ``avg_factor`` if it declares ``uses_avg_factor``).
        loss_bbox: regression loss layer, called as ``loss_bbox(pred, targets, weights)``
            (+ ``avg_factor`` likewise).
        postprocessor: a ``RetinaPostProcessor`` (test-time settings).
    """

    __shared__ = ["num_classes"]
    __inject__ = [
        "anchor_generator",
        "assigner",
        "box_coder",
        "loss_cls",
        "loss_bbox",
        "postprocessor",
    ]

    def __init__(
        self,
        num_classes: int = 80,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        norm_groups: int = 0,
        prior_prob: float = 0.01,
        pad_size_divisor: int = 32,
        anchor_generator="OctaveAnchorGenerator",
        assigner="MaxIoUAnchorAssigner",
        box_coder="DeltaXYWHBoxCoder",
        loss_cls="GHMCLoss",
        loss_bbox="GHMRLoss",
        postprocessor="RetinaPostProcessor",
    ):
        super().__init__()
        if num_classes < 1 or stacked_convs < 0 or pad_size_divisor < 1:
            raise ValueError(
                "need num_classes >= 1, stacked_convs >= 0, pad_size_divisor >= 1, got "
                f"{num_classes}, {stacked_convs}, {pad_size_divisor}"
            )
        if norm_groups < 0 or (norm_groups and feat_channels % norm_groups):
            raise ValueError(
                f"norm_groups={norm_groups} must be 0 or divide feat_channels={feat_channels}"
            )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        for key, value in (
            ("anchor_generator", anchor_generator),
            ("assigner", assigner),
            ("box_coder", box_coder),
            ("loss_cls", loss_cls),
            ("loss_bbox", loss_bbox),
            ("postprocessor", postprocessor),
        ):
            if isinstance(value, str):
                raise ValueError(
                    f"GHMRetinaHead.{key} is the name {value!r}, not an object: create the head "
                    "with ppdet's create() from a config that defines it"
                )
        self.num_classes = num_classes
        self.pad_size_divisor = pad_size_divisor
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.box_coder = box_coder
        self.postprocessor = postprocessor
        num_anchors = anchor_generator.num_anchors

        cls_convs, reg_convs = [], []
        channels = in_channels
        tower_bias = None if norm_groups else 0.0
        for _ in range(stacked_convs):
            cls_convs.append(_conv3x3(channels, feat_channels, bias=tower_bias))
            reg_convs.append(_conv3x3(channels, feat_channels, bias=tower_bias))
            channels = feat_channels
        self.cls_convs = nn.LayerList(cls_convs)
        self.reg_convs = nn.LayerList(reg_convs)
        if norm_groups:  # only then: the reference's parameter names stay as they are
            self.cls_norms = nn.LayerList(
                [nn.GroupNorm(norm_groups, feat_channels) for _ in range(stacked_convs)]
            )
            self.reg_norms = nn.LayerList(
                [nn.GroupNorm(norm_groups, feat_channels) for _ in range(stacked_convs)]
            )
        bias_cls = -math.log((1 - prior_prob) / prior_prob)
        self.retina_cls = _conv3x3(channels, num_anchors * num_classes, bias=bias_cls)
        self.retina_reg = _conv3x3(channels, num_anchors * 4)
        # the losses are sublayers so that their state (GHM acc_sum) is in the state dict
        self.loss_cls = loss_cls
        self.loss_bbox = loss_bbox

    @classmethod
    def from_config(cls, cfg, input_shape):
        channels = {spec.channels for spec in input_shape}
        if len(channels) != 1:
            raise ValueError(f"all FPN levels need the same channels, got {sorted(channels)}")
        return {"in_channels": channels.pop()}

    # ------------------------------------------------------------------ forward

    def forward(self, feats, targets=None):
        """Per-level raw outputs, or the loss dict in training.

        Args:
            feats: list over levels of [N, C, H_l, W_l] FPN features.
            targets: the ppdet input dict (training only): ``gt_bbox``, ``gt_class``,
                ``im_shape`` and optionally ``pad_gt_mask`` / ``is_crowd``.

        Returns:
            eval: ``(cls_logits, bbox_deltas)``, lists of [N, A*K, H_l, W_l] and [N, A*4, H_l, W_l].
            training: dict with ``loss_cls``, ``loss_reg`` and ``loss``.
        """
        cls_logits, bbox_deltas = self.raw_outputs(feats)
        if self.training:
            if targets is None:
                raise ValueError("GHMRetinaHead in training mode needs the targets (input dict)")
            return self.get_loss((cls_logits, bbox_deltas), targets)
        return cls_logits, bbox_deltas

    def raw_outputs(self, feats):
        """``(cls_logits, bbox_deltas)`` of ``feats`` (list over levels of [N, C, H_l, W_l]):
        lists of [N, A*K, H_l, W_l] and [N, A*4, H_l, W_l], in training mode too."""
        cls_logits, bbox_deltas = [], []
        for feat in feats:
            cls_logits.append(self.retina_cls(self._tower(feat, "cls")))
            bbox_deltas.append(self.retina_reg(self._tower(feat, "reg")))
        return cls_logits, bbox_deltas

    def _tower(self, feat, branch: str):
        """[N, C, H, W] -> [N, feat_channels, H, W]: conv (+ GroupNorm) + ReLU, stacked."""
        convs = getattr(self, f"{branch}_convs")
        norms = getattr(self, f"{branch}_norms", None)
        for i, conv in enumerate(convs):
            feat = conv(feat)
            if norms is not None:
                feat = norms[i](feat)
            feat = F.relu(feat)
        return feat

    # ------------------------------------------------------------------ training

    def get_loss(self, head_outs, targets):
        """Loss dict: per-level losses summed over levels (see the module docstring)."""
        losses_cls, losses_reg = self.level_losses(head_outs, targets)
        loss_cls = paddle.add_n(losses_cls)
        loss_reg = paddle.add_n(losses_reg)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss": loss_cls + loss_reg}

    def level_losses(self, head_outs, targets):
        """Per-level losses: two lists with one scalar per FPN level (one loss call each)."""
        cls_logits, bbox_deltas = head_outs
        featmap_sizes = [tuple(x.shape[2:]) for x in cls_logits]
        gt_boxes, gt_labels = split_targets(targets)
        labels, label_weights, box_targets, box_weights, num_pos = self.get_targets(
            featmap_sizes, gt_boxes, gt_labels, targets["im_shape"]
        )
        avg_factor = float(sum(max(n, 1) for n in num_pos))
        losses_cls, losses_reg = [], []
        start = 0
        for logits, deltas in zip(cls_logits, bbox_deltas, strict=True):
            count = logits.shape[2] * logits.shape[3] * self.anchor_generator.num_anchors
            end = start + count
            # (N, A*K, H, W) -> (N, H, W, A*K) -> (N*H*W*A, K): rows ordered (image, y, x, anchor)
            pred_cls = logits.transpose([0, 2, 3, 1]).reshape([-1, self.num_classes])
            pred_reg = deltas.transpose([0, 2, 3, 1]).reshape([-1, 4])
            losses_cls.append(
                self._call_loss(
                    self.loss_cls,
                    pred_cls,
                    labels[:, start:end].reshape([-1]),
                    label_weights[:, start:end].reshape([-1]),
                    avg_factor,
                )
            )
            losses_reg.append(
                self._call_loss(
                    self.loss_bbox,
                    pred_reg,
                    box_targets[:, start:end].reshape([-1, 4]),
                    box_weights[:, start:end].reshape([-1, 4]),
                    avg_factor,
                )
            )
            start = end
        return losses_cls, losses_reg

    @staticmethod
    def _call_loss(loss, pred, target, weight, avg_factor: float):
        if getattr(loss, "uses_avg_factor", False):
            return loss(pred, target, weight, avg_factor)
        return loss(pred, target, weight)

    def get_targets(self, featmap_sizes, gt_boxes, gt_labels, im_shape):
        """Per-anchor training targets of a batch, all levels concatenated.

        Args:
            featmap_sizes: list over levels of (H_l, W_l).
            gt_boxes: list over images of float32 [G_i, 4] boxes (resized-image pixels).
            gt_labels: list over images of int [G_i] labels in [0, K).
            im_shape: [N, 2] (h, w) of each resized image before padding.

        Returns:
            labels int64 [N, A_total] in [0, K] (K = background), label_weights float32
            [N, A_total], box_targets float32 [N, A_total, 4], box_weights float32
            [N, A_total, 4], num_pos list of N ints. A_total = sum_l H_l * W_l * A, ordered
            (level, y, x, anchor).
        """
        anchors = paddle.concat(
            [self.anchor_generator.level_anchors(i, h, w) for i, (h, w) in enumerate(featmap_sizes)]
        )
        im_shape = np.asarray(im_shape.numpy() if hasattr(im_shape, "numpy") else im_shape)
        outputs = [[], [], [], []]
        num_pos = []
        for boxes, labels, shape in zip(gt_boxes, gt_labels, im_shape, strict=True):
            pad_shape = [
                int(np.ceil(s / self.pad_size_divisor)) * self.pad_size_divisor for s in shape
            ]
            valid = paddle.to_tensor(self.anchor_generator.valid_flags(featmap_sizes, pad_shape))
            image_targets = self._image_targets(anchors, valid, boxes, labels)
            for output, value in zip(outputs, image_targets[:4], strict=True):
                output.append(value)
            num_pos.append(image_targets[4])
        labels, label_weights, box_targets, box_weights = (paddle.stack(x) for x in outputs)
        return labels, label_weights, box_targets, box_weights, num_pos

    def _image_targets(self, anchors, valid, gt_boxes, gt_labels):
        """Targets of one image (mmdet ``_get_targets_single`` with PseudoSampler, pos_weight 1)."""
        assigned = self.assigner(anchors, gt_boxes, valid)  # -1 ignored, 0 neg, k gt k-1
        positive = assigned > NEGATIVE
        label_weights = (assigned >= NEGATIVE).astype("float32")
        background = paddle.full_like(assigned, self.num_classes)
        if gt_boxes.shape[0] == 0:
            zeros = paddle.zeros_like(anchors)
            return background, label_weights, zeros, zeros, 0
        gt_index = paddle.clip(assigned - 1, min=0)
        labels = paddle.where(
            positive, paddle.gather(gt_labels.astype("int64"), gt_index), background
        )
        matched = paddle.gather(gt_boxes, gt_index)
        pos_mask = positive.unsqueeze(-1)
        box_targets = paddle.where(
            pos_mask, self.box_coder.encode(anchors, matched), paddle.zeros_like(anchors)
        )
        box_weights = paddle.expand_as(pos_mask.astype("float32"), anchors)
        return labels, label_weights, box_targets, box_weights, int(positive.sum())

    # ------------------------------------------------------------------ inference

    def post_process(self, head_outs, im_shape, scale_factor):
        """``(bbox [M, 6] label/score/x1y1x2y2, bbox_num [N], keep_idx)``, see RetinaPostProcessor."""
        cls_logits, bbox_deltas = head_outs
        anchors = self.anchor_generator(cls_logits)
        return self.postprocessor(
            cls_logits, bbox_deltas, anchors, self.box_coder, im_shape, scale_factor
        )


def split_targets(targets):
    """Per-image gt boxes [G_i, 4] float32 and labels [G_i] int64 from a ppdet input dict.

    Accepts what ppdet's readers give: ``gt_bbox`` / ``gt_class`` as lists of per-image tensors
    (``collate_batch: false``) or as padded tensors [N, G, 4] / [N, G, 1] together with
    ``pad_gt_mask`` [N, G, 1] (``PadGT``). Boxes flagged ``is_crowd`` are dropped (mmdet moves
    crowd boxes to the ignored instances, which RetinaNet does not use).
    """
    if "gt_bbox" not in targets or "gt_class" not in targets:
        raise ValueError("training inputs need 'gt_bbox' and 'gt_class'")
    boxes, labels = targets["gt_bbox"], targets["gt_class"]
    crowd = targets.get("is_crowd")
    if isinstance(boxes, paddle.Tensor):
        if "pad_gt_mask" not in targets:
            raise ValueError(
                "padded gt_bbox [N, G, 4] needs 'pad_gt_mask' [N, G, 1] (ppdet PadGT) to tell "
                "real boxes from padding; or give per-image lists (reader collate_batch: false)"
            )
        masks = targets["pad_gt_mask"].reshape([boxes.shape[0], -1]) > 0
        boxes = [b[m] for b, m in zip(boxes, masks, strict=True)]
        labels = [c.reshape([-1])[m] for c, m in zip(labels, masks, strict=True)]
        if crowd is not None:
            crowd = [c.reshape([-1])[m] for c, m in zip(crowd, masks, strict=True)]
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} gt_bbox entries but {len(labels)} gt_class entries")
    out_boxes, out_labels = [], []
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        box = _as_tensor(box).astype("float32").reshape([-1, 4])
        label = _as_tensor(label).reshape([-1]).astype("int64")
        if crowd is not None:
            keep = _as_tensor(crowd[i]).reshape([-1]) == 0
            box, label = box[keep], label[keep]
        out_boxes.append(box)
        out_labels.append(label)
    return out_boxes, out_labels


def _as_tensor(value):
    return value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
