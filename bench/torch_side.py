"""The reference side of the benchmarks: mmdet 3.3.0 RetinaNet-GHM on torch (CPU).

The model is ``align.torch_ref.reference_with_weights(seed)`` (the config shipped in the mmdet wheel,
the ``mmcv._ext`` stand-in with its pure-torch NMS, the seeded NumPy weights of ``align.weights``),
so both sides hold the same weights. Inputs are given as mmdet's data preprocessor would hand them
(normalised, padded, ``DetDataSample`` metas), so the preprocessor itself is not timed, as on our
side the data pipeline is not.

The training iteration is what mmengine's ``OptimWrapper`` does per iteration with the reference's
optimizer config: ``model.loss`` (forward and loss), sum of the loss terms, ``zero_grad``,
``backward``, ``clip_grad_norm_(max_norm=35)``, ``SGD(momentum=0.9, weight_decay=1e-4).step()``.
"""

import numpy as np

from bench.timing import SectionTimer

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
CLIP_MAX_NORM = 35.0


def build(seed: int):
    """The reference model in eval mode with the seeded weights."""
    from align.torch_ref import reference_with_weights

    model, _ = reference_with_weights(seed)
    return model


def images(batch):
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch["images"]))


def samples(batch, with_gt: bool):
    from align.torch_ref import data_samples

    return data_samples(batch, with_gt=with_gt)


def total_loss(losses: dict):
    """Sum of mmdet's loss dict (values are tensors or per-level lists of tensors)."""
    total = 0.0
    for value in losses.values():
        if isinstance(value, (list, tuple)):
            total = total + sum(value)
        else:
            total = total + value
    return total


def hook_ghm(model, timer: SectionTimer):
    """Count the forward time of every GHM-C / GHM-R call in ``timer``."""
    for loss in (model.bbox_head.loss_cls, model.bbox_head.loss_bbox):
        loss.register_forward_pre_hook(timer.enter)
        loss.register_forward_hook(timer.exit)


def train_step(model, batch, lr: float):
    """A closure running one training iteration on ``batch``; returns the loss as a float."""
    import torch

    model.train()  # the backbone's BN stays in eval mode (norm_eval=True), stage 1 frozen
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x = images(batch)
    data = samples(batch, with_gt=True)

    def step():
        loss = total_loss(model.loss(x, data))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=CLIP_MAX_NORM, norm_type=2)
        optimizer.step()
        return float(loss.detach())

    return step


def head_outputs(model, batch):
    """The head's raw outputs on ``batch`` (no grad): per-level cls [N, 720, H, W], reg [N, 36, H, W]."""
    import torch

    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(images(batch)))
    return [t.numpy() for t in cls_scores], [t.numpy() for t in bbox_preds]


def loss_step(model, batch, outputs):
    """A closure: the head's loss on fixed head outputs (targets + 5 per-level GHM calls), backward.

    ``outputs`` is :func:`head_outputs` (computed once, by this side, from the same weights and
    images); each call builds fresh leaf tensors so that gradients do not accumulate.
    """
    import torch

    model.train()
    head = model.bbox_head
    data = samples(batch, with_gt=True)
    gts = [s.gt_instances for s in data]
    metas = [s.metainfo for s in data]
    cls_np, reg_np = outputs

    def step():
        cls_scores = [torch.from_numpy(a).requires_grad_() for a in cls_np]
        bbox_preds = [torch.from_numpy(a).requires_grad_() for a in reg_np]
        loss = total_loss(head.loss_by_feat(cls_scores, bbox_preds, gts, metas))
        loss.backward()
        return float(loss.detach())

    return step


def hook_nms(timer: SectionTimer):
    """Count the time of every NMS call (the stand-in's pure-torch greedy NMS) in ``timer``.

    mmcv looks ``nms`` up on the ``mmcv._ext`` module at each call, so an attribute set on the
    module object wraps it for this process only.
    """
    import sys

    ext = sys.modules["mmcv._ext"]
    nms = type(ext).nms

    def timed_nms(*args, **kwargs):
        timer.enter()
        try:
            return nms(*args, **kwargs)
        finally:
            timer.exit()

    ext.nms = timed_nms


def infer_step(model, batch):
    """A closure: eager inference on ``batch`` with post-processing (NMS), rescaled boxes."""
    import torch

    model.eval()
    x = images(batch)
    data = samples(batch, with_gt=False)

    def step():
        with torch.no_grad():
            out = model.predict(x, data, rescale=True)
        return sum(len(s.pred_instances) for s in out)

    return step
