"""Layer-by-layer diagnosis of step 5's float32 gradient differences (needs the torch reference).

Runs the first backward of step 5 (the loss of the fixed batch, model in training mode with BN
frozen) four times: torch and Paddle, each in float32 and float64. For the gradients w.r.t. the
head outputs, P3-P7 and C3-C5 and a few parameters it prints the mean abs error of each float32
run against the torch float64 one, and it lists the ReLU units of the head towers whose input
changes sign between float32 and float64 (their gradient is cut or passed by rounding alone).

    python -m align.diagnose_backward --out /tmp/align_diag

Each run is a subprocess (``--run torch float32`` ...) writing ``<out>/<side>_<dtype>.npz``.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

from align import common, weights

RUNS = (("torch", "float32"), ("torch", "float64"), ("paddle", "float32"), ("paddle", "float64"))
LEVELS = ("P3", "P4", "P5", "P6", "P7")
PARAMS = {  # mmdet name -> how to reach it on each side
    "neck.lateral_convs.2.conv.weight": "neck.lateral_convs.2.weight",
    "backbone.layer4.2.bn3.bias": "backbone.res5.res5c.branch2c.norm.bias",
}


def _torch_run(dtype):
    from align.torch_ref import TorchContext

    ctx = TorchContext(weights.DEFAULT_SEED)
    model = ctx.fresh_model()
    if dtype == "float64":
        model.double()
    model.train()
    from mmdet.models.utils import unpack_gt_instances

    out = {}
    pre = {}
    hooks = [
        module.conv.register_forward_hook(
            lambda _m, _i, o, key=f"{tower}.{i}": pre.setdefault(key, []).append(
                o.detach().clone().numpy()  # clone: mmdet's ReLU is in place
            )
        )
        for tower in ("cls_convs", "reg_convs")
        for i, module in enumerate(getattr(model.bbox_head, tower))
    ]
    feats = model.backbone(ctx.images(dtype))[1:]
    for t in feats:
        t.retain_grad()
    fpn = model.neck((None, *feats))
    for t in fpn:
        t.retain_grad()
    cls_scores, bbox_preds = model.bbox_head(fpn)
    for h in hooks:
        h.remove()
    for t in (*cls_scores, *bbox_preds):
        t.retain_grad()
    gts, _, metas = unpack_gt_instances(ctx.data_samples())
    loss, _ = model.parse_losses(model.bbox_head.loss_by_feat(cls_scores, bbox_preds, gts, metas))
    loss.backward()
    named = dict(model.named_parameters())
    for name, tensors in (("C", feats), ("P", fpn)):
        for i, t in enumerate(tensors):
            out[f"grad.{name}{i + 3}"] = t.grad.numpy()
    for level, c, b in zip(LEVELS, cls_scores, bbox_preds, strict=True):
        out[f"grad.cls_score.{level}"] = c.grad.numpy()
        out[f"grad.bbox_pred.{level}"] = b.grad.numpy()
    for name in PARAMS:
        out[f"grad.{name}"] = named[name].grad.numpy()
    for key, values in pre.items():
        for level, value in zip(LEVELS, values, strict=True):
            out[f"pre.{key}.{level}"] = value
    return out


def _paddle_run(dtype):
    import paddle

    from align.paddle_ref import PaddleContext

    ctx = PaddleContext(weights.DEFAULT_SEED, common.DEFAULT_CONFIG)
    model = ctx.fresh_model(dtype)
    model.train()
    inputs = ctx.inputs(dtype=dtype)
    pre = {}
    hooks = [
        conv.register_forward_post_hook(
            lambda _l, _i, o, key=f"{tower}.{i}": pre.setdefault(key, []).append(o.numpy())
        )
        for tower in ("cls_convs", "reg_convs")
        for i, conv in enumerate(getattr(model.head, tower))
    ]
    feats = model.backbone(inputs)
    for t in feats:
        t.retain_grads()
    fpn = model.neck(feats)
    for t in fpn:
        t.retain_grads()
    cls_scores, bbox_preds = model.head.raw_outputs(fpn)  # the losses below are the training ones
    for h in hooks:
        h.remove()
    for t in (*cls_scores, *bbox_preds):
        t.retain_grads()
    losses_cls, losses_reg = model.head.level_losses((cls_scores, bbox_preds), inputs)
    (paddle.add_n(losses_cls) + paddle.add_n(losses_reg)).backward()
    named = dict(model.named_parameters())
    out = {}
    for name, tensors in (("C", feats), ("P", fpn)):
        for i, t in enumerate(tensors):
            out[f"grad.{name}{i + 3}"] = t.grad.numpy()
    for level, c, b in zip(LEVELS, cls_scores, bbox_preds, strict=True):
        out[f"grad.cls_score.{level}"] = c.grad.numpy()
        out[f"grad.bbox_pred.{level}"] = b.grad.numpy()
    for name, ours in PARAMS.items():
        out[f"grad.{name}"] = named[ours].grad.numpy()
    for key, values in pre.items():
        for level, value in zip(LEVELS, values, strict=True):
            out[f"pre.{key}.{level}"] = value
    return out


def compare(folder):
    """The diagnosis table (printed) from the four runs' files."""
    runs = {f"{s}_{d}": dict(np.load(os.path.join(folder, f"{s}_{d}.npz"))) for s, d in RUNS}
    truth = runs["torch_float64"]
    print("| gradient of | mean abs | torch f32 err | paddle f32 err | paddle f64 err |")
    print("|---|---|---|---|---|")
    for key in sorted(k for k in truth if k.startswith("grad.")):
        ref = truth[key].astype(np.float64)
        errs = [
            np.abs(runs[r][key].astype(np.float64) - ref).mean()
            for r in ("torch_float32", "paddle_float32", "paddle_float64")
        ]
        print(
            f"| {key[5:]} | {np.abs(ref).mean():.2e} | "
            + " | ".join(f"{e:.2e}" for e in errs)
            + " |"
        )
    print("\nReLU inputs of the head towers whose sign differs from torch float64:")
    for key in sorted(k for k in truth if k.startswith("pre.")):
        ref = truth[key]
        for run in ("torch_float32", "paddle_float32", "paddle_float64"):
            flips = np.argwhere((runs[run][key] > 0) != (ref > 0))
            for idx in flips:
                idx = tuple(int(i) for i in idx)
                values = ", ".join(f"{r} {runs[r][key][idx]:+.3e}" for r in runs)
                print(f"  {run}: {key[4:]} [image, channel, y, x] = {list(idx)}: {values}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for the four runs' .npz files")
    parser.add_argument("--run", nargs=2, metavar=("SIDE", "DTYPE"), help="one run (internal)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.run:
        side, dtype = args.run
        out = _torch_run(dtype) if side == "torch" else _paddle_run(dtype)
        np.savez(os.path.join(args.out, f"{side}_{dtype}.npz"), **out)
        return 0
    for side, dtype in RUNS:
        cmd = [sys.executable, "-m", "align.diagnose_backward", "--out", args.out]
        subprocess.run([*cmd, "--run", side, dtype], check=True)
    compare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
