"""Step 13, torch side: mmdet 3.3.0's RetinaNet (ResNet-18, FPN 64, GN head) trained on the arrays.

The model is built from a config dict written out here (no file of the mmdet wheel describes it):

- ``ResNet(depth=18, style='pytorch', frozen_stages=-1, norm_eval=False)``, BN trained normally
  (momentum 0.1, the torch convention for Paddle's 0.9), C3-C5 out;
- ``FPN(in_channels=[128, 256, 512], out_channels=64, add_extra_convs='on_input', num_outs=5)``;
- ``RetinaHead(num_classes=4, in_channels=64, feat_channels=64, stacked_convs=2,
  norm_cfg=dict(type='GN', num_groups=8))``, the paper's anchors (octave base scale 4, 3 scales,
  3 ratios, strides 8-128), ``DeltaXYWHBBoxCoder`` (means 0, stds 1), ``MaxIoUAssigner(0.5, 0.4,
  min_pos_iou=0)`` with ``PseudoSampler``; losses ``GHMC(bins=30, momentum=0.75)`` +
  ``GHMR(mu=0.02, bins=10, momentum=0.7, loss_weight=10)``, or ``FocalLoss(gamma=2, alpha=0.25)``
  + ``SmoothL1Loss(beta=0.11)`` (both divided by mmdet's ``avg_factor``, the positives of the
  batch, at least 1 per image);
- test: ``nms_pre=1000, score_thr=0.05, nms iou 0.5, max_per_img=100``.

Training follows mmengine's ``OptimWrapper`` step: ``loss = sum(loss_cls levels) + sum(loss_bbox
levels)`` (mmdet ``parse_losses``), backward, ``clip_grad_norm_(max_norm=35)``, ``step``; the
learning rate of each iteration is set from :func:`align.train_data.lr_at` before the step.
Only ``align.step13_train --side torch`` imports this module (it never imports paddle).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from align import train_data


def model_config(loss: str) -> dict:
    """mmdet config dict of step 13's RetinaNet with ``loss`` ``ghm`` or ``focal``."""
    if loss == "ghm":
        loss_cls = dict(type="GHMC", bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)
        loss_bbox = dict(type="GHMR", mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    elif loss == "focal":
        loss_cls = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
        loss_bbox = dict(type="SmoothL1Loss", beta=0.11, loss_weight=1.0)
    else:
        raise ValueError(f"loss={loss!r}")
    return dict(
        type="RetinaNet",
        backbone=dict(
            type="ResNet",
            depth=18,
            num_stages=4,
            out_indices=(1, 2, 3),
            frozen_stages=-1,
            norm_cfg=dict(type="BN", requires_grad=True),
            norm_eval=False,
            style="pytorch",
            init_cfg=None,
        ),
        neck=dict(
            type="FPN",
            in_channels=[128, 256, 512],
            out_channels=64,
            start_level=0,
            add_extra_convs="on_input",
            num_outs=5,
        ),
        bbox_head=dict(
            type="RetinaHead",
            num_classes=train_data.NUM_CLASSES,
            in_channels=64,
            stacked_convs=2,
            feat_channels=64,
            norm_cfg=dict(type="GN", num_groups=8, requires_grad=True),
            anchor_generator=dict(
                type="AnchorGenerator",
                octave_base_scale=4,
                scales_per_octave=3,
                ratios=[0.5, 1.0, 2.0],
                strides=[8, 16, 32, 64, 128],
            ),
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4
            ),
            loss_cls=loss_cls,
            loss_bbox=loss_bbox,
        ),
        train_cfg=dict(
            assigner=dict(
                type="MaxIoUAssigner",
                pos_iou_thr=0.5,
                neg_iou_thr=0.4,
                min_pos_iou=0,
                ignore_iof_thr=-1,
            ),
            sampler=dict(type="PseudoSampler"),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        test_cfg=dict(
            nms_pre=1000,
            min_bbox_size=0,
            score_thr=0.05,
            nms=dict(type="nms", iou_threshold=0.5),
            max_per_img=100,
        ),
    )


def build_model(loss: str):
    from align.torch_ref import install_mmcv_ext_stand_in

    install_mmcv_ext_stand_in()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules()
    return MODELS.build(ConfigDict(model_config(loss))).float()


def float_state(model) -> dict[str, np.ndarray]:
    """The entries of :func:`align.train_data.mmdet_r18_spec` as float32 arrays; checks the spec."""
    own = model.state_dict()
    spec = train_data.mmdet_r18_spec()
    names = [k for k, v in own.items() if v.dtype.is_floating_point and ".loss_" not in k]
    if [n for n, _ in spec] != names or any(tuple(own[n].shape) != s for n, s in spec):
        raise ValueError("align.train_data.mmdet_r18_spec() differs from mmdet's state_dict")
    return {n: own[n].detach().numpy().astype(np.float32).copy() for n, _ in spec}


def initial_weights(model, init: str, seed: int):
    """Initialise ``model``: ``mmdet`` (``torch.manual_seed(seed)`` + ``init_weights()``) or
    ``numpy`` (:func:`align.train_data.numpy_init`); returns the arrays (mmdet names)."""
    import torch

    if init == "mmdet":
        torch.manual_seed(seed)
        model.init_weights()
        return float_state(model)
    arrays = train_data.numpy_init(seed)
    float_state(model)  # spec check
    load_arrays(model, arrays)
    return arrays


def load_arrays(model, arrays: dict[str, np.ndarray]):
    """Copy ``arrays`` (mmdet names) into the model's state, in place (cast to its dtype)."""
    import torch

    with torch.no_grad():
        own = model.state_dict()
        for name, value in arrays.items():
            own[name].copy_(torch.from_numpy(value))


def data_samples(image_size: int, count: int, gt_boxes=None, gt_labels=None):
    """``count`` mmdet ``DetDataSample`` (metas of an unresized, unpadded square image of
    ``image_size``, scale factor 1; gt boxes [G_i, 4] / labels [G_i] when given)."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for i in range(count):
        sample = DetDataSample()
        sample.set_metainfo(
            {
                "img_shape": (image_size, image_size),
                "ori_shape": (image_size, image_size),
                "pad_shape": (image_size, image_size),
                "batch_input_shape": (image_size, image_size),
                "scale_factor": (1.0, 1.0),
            }
        )
        if gt_boxes is not None:
            gt = InstanceData()
            gt.bboxes = torch.from_numpy(np.asarray(gt_boxes[i], dtype=np.float32).reshape(-1, 4))
            gt.labels = torch.from_numpy(np.asarray(gt_labels[i], dtype=np.int64))
            sample.gt_instances = gt
        samples.append(sample)
    return samples


def build_optimizer(model, optim: train_data.OptimSettings):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=optim.base_lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
    return torch.optim.SGD(
        params, lr=optim.base_lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )


def train(args, data: dict, out_dir: str) -> dict:
    """Train and evaluate; writes ``<run>_torch.npy``, ``<run>_torch_dets.json`` and the initial
    weights ``step13_init_<init>_s<seed>.npz``; returns the log dict."""
    import torch

    from align.torch_ref import set_deterministic

    set_deterministic(args.threads)
    optim = train_data.optim_of(args)
    model = build_model(args.loss)
    init = initial_weights(model, args.init, args.seed)
    np.savez(os.path.join(out_dir, f"step13_init_{args.init}_s{args.seed}.npz"), **init)
    start = train_data.start_arrays(init, args)
    if start is not init:  # --backbone-from / --perturb-init: the seeded init, changed
        load_arrays(model, start)
        init = start
    dtype = getattr(torch, args.dtype)
    model.to(dtype)
    model.train()
    optimizer = build_optimizer(model, optim)
    params = [p for p in model.parameters() if p.requires_grad]
    order = train_data.batch_order(len(data["train"]["image_ids"]), args.iters, args.seed)
    image_size = data["train"]["images"].shape[-1]
    is_ghm = args.loss == "ghm"
    log = {k: [] for k in ("loss", "loss_cls", "loss_bbox", "lr", "grad_norm")}
    acc = {"ghmc.acc_sum": [], "ghmr.acc_sum": []}
    start = time.time()
    for it in range(args.iters):
        lr = train_data.lr_at(it, optim, args.iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        b = train_data.batch(data["train"], order[it])
        losses = model.loss(
            torch.from_numpy(b["images"]).to(dtype),
            data_samples(image_size, len(b["gt_boxes"]), b["gt_boxes"], b["gt_labels"]),
        )
        loss_cls = sum(losses["loss_cls"])
        loss_bbox = sum(losses["loss_bbox"])
        loss = loss_cls + loss_bbox
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=optim.clip, norm_type=2)
        optimizer.step()
        if it < 10:
            for name, values in (
                ("loss_cls", losses["loss_cls"]),
                ("loss_bbox", losses["loss_bbox"]),
            ):
                for level, value in zip(train_data.LEVELS, values, strict=True):
                    log.setdefault(f"it{it}.{name}.{level}", []).append(value.item())
        log["loss"].append(float(loss))
        log["loss_cls"].append(float(loss_cls))
        log["loss_bbox"].append(float(loss_bbox))
        log["lr"].append(lr)
        log["grad_norm"].append(float(grad_norm))
        if is_ghm:
            acc["ghmc.acc_sum"].append(model.bbox_head.loss_cls.acc_sum.numpy().copy())
            acc["ghmr.acc_sum"].append(model.bbox_head.loss_bbox.acc_sum.numpy().copy())
        if args.print_every and (it % args.print_every == 0 or it == args.iters - 1):
            print(
                f"[torch {args.loss}] it {it} loss {float(loss):.5f} cls {float(loss_cls):.5f} "
                f"bbox {float(loss_bbox):.5f} lr {lr:.6f} {time.time() - start:.0f}s",
                flush=True,
            )
    train_s = time.time() - start
    out = train_data.finish_log(
        log, acc, train_s, train_data.weights_digest(init), data["train"]["digest"]
    )
    state = model.state_dict()
    for name in ("backbone.layer1.0.bn1.running_var", "backbone.layer4.1.bn2.running_mean"):
        out[f"final.{name}"] = state[name].numpy().copy()
    if args.eval:
        start = time.time()
        dets = evaluate(model, data["val"], image_size, dtype)
        out["meta.eval_wall_s"] = np.array([time.time() - start])
        out["meta.num_dets"] = np.array([len(dets)])
        path = os.path.join(out_dir, f"{train_data.run_name_of(args)}_torch_dets.json")
        with open(path, "w") as f:
            json.dump(dets, f)
    return out


def evaluate(model, val: dict, image_size: int, dtype) -> list[dict]:
    """Detections on the val arrays (eval mode, batches of 8) as COCO results."""
    import torch

    model.eval()
    per_image = []
    num = len(val["image_ids"])
    with torch.no_grad():
        for start in range(0, num, train_data.BATCH_SIZE):
            idx = list(range(start, min(start + train_data.BATCH_SIZE, num)))
            images = torch.from_numpy(np.ascontiguousarray(val["images"][idx])).to(dtype)
            results = model.predict(images, data_samples(image_size, len(idx)), rescale=True)
            for r in results:
                pred = r.pred_instances
                per_image.append(
                    (pred.bboxes.float().numpy(), pred.scores.float().numpy(), pred.labels.numpy())
                )
    model.train()
    return train_data.detections_to_coco(per_image, val["image_ids"])
