"""Step 13, Paddle side: our RetinaNet (align/configs/train_r18_{ghm,focal}.yml) trained on the arrays.

The model is built from the config with ``ppdet_ghm.build_model``; its initial weights are the
torch side's arrays (mmdet names) converted by ``ppdet_ghm.convert.convert_state_dict`` (the
user-facing rename table, ResNet-18 BasicBlock and GN head rows), loaded strictly.

Optimizers, the same update as the torch side's:

- ``adamw``: ``paddle.optimizer.AdamW`` with ``weight_decay`` 0.05 on every parameter (no
  ``apply_decay_param_fun``: torch's ``AdamW`` decays all parameters of its group, mmdet's demo
  equivalent has no ``paramwise_cfg``), ``ClipGradByGlobalNorm(35)``. Paddle's kernel computes
  ``p *= 1 - lr * wd`` (decoupled, before the moment update, as torch), ``m, v`` as torch, and
  ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps * sqrt(1 - b2^t))``, which is
  torch's ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` rewritten (same eps
  placement relative to the bias-corrected second moment); checked numerically by
  ``tests/align/test_train.py``;
- ``sgd``: ``paddle.optimizer.Momentum`` with ``L2Decay`` (added to the clipped gradient), as
  step 5 aligned against torch ``SGD``.

Clipping: Paddle scales by ``35 / max(norm, 35)``, torch by ``35 / (norm + 1e-6)`` when below 1:
a relative difference of 3e-8 when clipping is active.
Only ``align.step13_train --side paddle`` imports this module (never torch or mmdet).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from align import common, train_data

CONFIGS = {
    "ghm": os.path.join(common.ALIGN_DIR, "configs", "train_r18_ghm.yml"),
    "focal": os.path.join(common.ALIGN_DIR, "configs", "train_r18_focal.yml"),
}


def build_model(loss: str, dtype: str = "float32", overrides: dict | None = None):
    """Our model of ``loss`` (config ``overrides`` on top, for ablations); ``float64`` builds it
    under ``paddle.set_default_dtype``."""
    import paddle

    import ppdet_ghm  # noqa: F401  (registers our modules)
    from ppdet_ghm.builder import build_model as build

    paddle.set_device("cpu")
    default = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        return build(CONFIGS[loss], overrides or None)
    finally:
        paddle.set_default_dtype(default)


def build_optimizer(model, optim: train_data.OptimSettings):
    import paddle

    params = [p for p in model.parameters() if not p.stop_gradient]
    clip = paddle.nn.ClipGradByGlobalNorm(optim.clip)
    if optim.name == "adamw":
        return paddle.optimizer.AdamW(
            learning_rate=optim.base_lr,
            beta1=optim.betas[0],
            beta2=optim.betas[1],
            epsilon=optim.eps,
            parameters=params,
            weight_decay=optim.weight_decay,
            grad_clip=clip,
        )
    return paddle.optimizer.Momentum(
        learning_rate=optim.base_lr,
        momentum=optim.momentum,
        parameters=params,
        weight_decay=paddle.regularizer.L2Decay(optim.weight_decay),
        grad_clip=clip,
    )


def inputs(images, image_size: int, gt_boxes=None, gt_labels=None):
    """ppdet input dict: images, ``im_shape``, scale factor 1, per-image gt lists when given."""
    import paddle

    n = images.shape[0]
    out = {
        "image": paddle.to_tensor(images),
        "im_shape": paddle.to_tensor(np.full((n, 2), image_size, dtype=np.float32)),
        "scale_factor": paddle.ones([n, 2], dtype="float32"),
    }
    if gt_boxes is not None:
        out["gt_bbox"] = [
            paddle.to_tensor(np.asarray(b, np.float32).reshape(-1, 4)) for b in gt_boxes
        ]
        out["gt_class"] = [
            paddle.to_tensor(np.asarray(c).astype(np.int32).reshape(-1, 1)) for c in gt_labels
        ]
    return out


def train(args, data: dict, out_dir: str, arrays: dict[str, np.ndarray], mutate=None) -> dict:
    """Train and evaluate; writes ``<run>_paddle_dets.json`` when evaluating; returns the log.

    ``mutate(model, optim) -> optim``, if given, changes the model or the settings before
    training (the tests break the port with it on purpose).
    """
    import paddle

    paddle.seed(args.seed)
    optim = train_data.optim_of(args)
    from align.paddle_ref import load_converted_weights
    from ppdet_ghm.builder import parse_overrides

    overrides = parse_overrides(getattr(args, "opt", []))
    if getattr(args, "head_norm", "gn") == "none":
        overrides["GHMRetinaHead.norm_groups"] = 0
    model = build_model(args.loss, args.dtype, overrides)
    load_converted_weights(model, arrays)  # mmdet's init, through our converter
    if mutate is not None:
        optim = mutate(model, optim)
    model.train()
    optimizer = build_optimizer(model, optim)
    head = model.head
    record = {"cls": [], "reg": []}
    hooks = [
        head.loss_cls.register_forward_post_hook(
            lambda _l, _i, out: record["cls"].append(float(out))
        ),
        head.loss_bbox.register_forward_post_hook(
            lambda _l, _i, out: record["reg"].append(float(out))
        ),
    ]
    order = train_data.batch_order(len(data["train"]["image_ids"]), args.iters, args.seed)
    image_size = data["train"]["images"].shape[-1]
    log = {k: [] for k in ("loss", "loss_cls", "loss_bbox", "lr", "grad_norm")}
    acc = {"ghmc.acc_sum": [], "ghmr.acc_sum": []}
    params = [p for p in model.parameters() if not p.stop_gradient]
    start = time.time()
    try:
        for it in range(args.iters):
            lr = train_data.lr_at(it, optim, args.iters)
            optimizer.set_lr(lr)
            b = train_data.batch(data["train"], order[it])
            record["cls"].clear()
            record["reg"].clear()
            images = b["images"].astype(args.dtype)
            losses = model(inputs(images, image_size, b["gt_boxes"], b["gt_labels"]))
            loss = losses["loss"]
            optimizer.clear_grad()
            loss.backward()
            grad_norm = float(
                np.sqrt(
                    sum(
                        float((p.grad.astype("float32") ** 2).sum())
                        for p in params
                        if p.grad is not None
                    )
                )
            )
            optimizer.step()
            if it < 10:
                for name, values in (("loss_cls", record["cls"]), ("loss_bbox", record["reg"])):
                    for level, value in zip(train_data.LEVELS, values, strict=True):
                        log.setdefault(f"it{it}.{name}.{level}", []).append(value)
            log["loss"].append(float(loss))
            log["loss_cls"].append(float(losses["loss_cls"]))
            log["loss_bbox"].append(float(losses["loss_reg"]))
            log["lr"].append(lr)
            log["grad_norm"].append(grad_norm)
            for key, loss_layer in (("ghmc", head.loss_cls), ("ghmr", head.loss_bbox)):
                if hasattr(loss_layer, "acc_sum"):  # a GHM loss (ablations mix them)
                    acc[f"{key}.acc_sum"].append(loss_layer.acc_sum.numpy().copy())
            if args.print_every and (it % args.print_every == 0 or it == args.iters - 1):
                print(
                    f"[paddle {args.loss}] it {it} loss {float(loss):.5f} "
                    f"cls {log['loss_cls'][-1]:.5f} bbox {log['loss_bbox'][-1]:.5f} "
                    f"lr {lr:.6f} {time.time() - start:.0f}s",
                    flush=True,
                )
    finally:
        for hook in hooks:
            hook.remove()
    train_s = time.time() - start
    out = train_data.finish_log(
        log, acc, train_s, train_data.weights_digest(arrays), data["train"]["digest"]
    )
    state = model.state_dict()
    from ppdet_ghm.convert import mmdet_retinanet_table

    rename = mmdet_retinanet_table(18, 2, True).renames
    for name in ("backbone.layer1.0.bn1.running_var", "backbone.layer4.1.bn2.running_mean"):
        out[f"final.{name}"] = state[rename[name]].numpy().copy()
    if getattr(args, "save_weights", False):
        save_weights(
            model, os.path.join(out_dir, f"{train_data.run_name_of(args)}_paddle_weights.npz")
        )
    if args.eval:
        start = time.time()
        dets = evaluate(model, data["val"], image_size, args.dtype)
        out["meta.eval_wall_s"] = np.array([time.time() - start])
        out["meta.num_dets"] = np.array([len(dets)])
        name = train_data.run_name_of(args)
        with open(os.path.join(out_dir, f"{name}_paddle_dets.json"), "w") as f:
            json.dump(dets, f)
    return out


def mmdet_state(model) -> dict[str, np.ndarray]:
    """The model's weights under mmdet's names, float32: the converter's rename table (GroupNorm
    head or not, as the model has it) read backwards."""
    from ppdet_ghm.convert import mmdet_retinanet_table

    own = model.state_dict()
    head_norm = any(".cls_norms." in name for name in own)
    rename = mmdet_retinanet_table(18, 2, head_norm).renames
    return {src: own[dst].numpy().astype(np.float32) for src, dst in rename.items() if dst in own}


def save_weights(model, path: str):
    """:func:`mmdet_state` as ``.npz``, written atomically (``--backbone-from`` reads it)."""
    from ppdet_ghm.engine.checkpoint_io import atomic_file

    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **mmdet_state(model))


def evaluate(model, val: dict, image_size: int, dtype: str = "float32") -> list[dict]:
    """Detections on the val arrays (eval mode, batches of 8) as COCO results."""
    import paddle

    model.eval()
    per_image = []
    num = len(val["image_ids"])
    with paddle.no_grad():
        for start in range(0, num, train_data.BATCH_SIZE):
            idx = list(range(start, min(start + train_data.BATCH_SIZE, num)))
            images = np.ascontiguousarray(val["images"][idx], dtype=dtype)
            out = model(inputs(images, image_size))
            bbox = out["bbox"].numpy()
            counts = out["bbox_num"].numpy().astype(int).tolist()
            row = 0
            for count in counts:
                rows = bbox[row : row + count]
                row += count
                rows = rows.astype(np.float32)
                per_image.append((rows[:, 2:6], rows[:, 1], rows[:, 0].astype(np.int64)))
    model.train()
    return train_data.detections_to_coco(per_image, val["image_ids"])
