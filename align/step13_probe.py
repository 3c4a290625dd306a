"""Step 13, one training step at equal weights: both sides' losses and gradients on every batch.

Two runs of step 13 drift apart within tens of iterations (float32 rounding, amplified by
training), so their loss curves alone cannot show that both frameworks take the same step. This
probe can: both sides load the same weights (mmdet names, e.g. a run's ``--save-weights`` file,
or the seeded init), run forward and backward in training mode (BatchNorm on batch statistics)
on the same batches, without an optimizer step, and the comparison reports per batch the largest
relative difference of the per-level losses and of each parameter's gradient norm, and for the
first batches the largest element-wise gradient difference (relative to the tensor's largest
element).

    python -m align.step13_probe --side torch  --loss focal --weights W.npz --out DIR
    python -m align.step13_probe --side paddle --loss focal --weights W.npz --out DIR
    python -m align.step13_probe --compare     --loss focal --out DIR

``--dtype float64`` runs both models in double precision (what is left is not rounding). The data
options are step 13's (``--data-root``, ``--data-seed``, ...); ``--batches 100`` covers the 800
training images once. Each side imports only its own framework.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from align import step13_train, train_data

FULL_GRAD_BATCHES = 3


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--side", choices=("torch", "paddle"))
    mode.add_argument("--compare", action="store_true")
    parser.add_argument("--loss", choices=("ghm", "focal"), default="focal")
    parser.add_argument("--weights", help="weights file (mmdet names) both sides load")
    parser.add_argument("--batches", type=int, default=100, help="batches of epoch 0 (seed 0)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--out", default="output/step13_probe")
    step13_train.add_data_arguments(parser)
    return parser


def probe_file(args, side: str) -> str:
    return os.path.join(args.out, f"step13_probe_{args.loss}_{args.dtype}_{side}.npy")


def load_weights(path: str) -> dict[str, np.ndarray]:
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"--weights {path!r}: no such weights file")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _record(out: dict, i: int, cls, bbox, grads: dict[str, np.ndarray]):
    """One batch: per-level losses, per-parameter gradient norms (float64), full gradients of the
    first batches only (the whole network's gradient of every batch would be gigabytes)."""
    out[f"{i}.loss_cls"] = np.asarray(cls, np.float64)
    out[f"{i}.loss_bbox"] = np.asarray(bbox, np.float64)
    out[f"{i}.grad_norm"] = {
        k: float(np.linalg.norm(g.astype(np.float64))) for k, g in grads.items()
    }
    if i < FULL_GRAD_BATCHES:
        out[f"{i}.grad"] = grads


def probe_torch(args, data: dict, arrays: dict) -> dict:
    import torch

    from align import train_torch
    from align.torch_ref import set_deterministic

    set_deterministic(1)
    model = train_torch.build_model(args.loss)
    train_torch.float_state(model)  # the spec check
    train_torch.load_arrays(model, arrays)
    dtype = getattr(torch, args.dtype)
    model.to(dtype).train()
    out = {}
    order = train_data.batch_order(len(data["image_ids"]), args.batches, 0)
    size = data["images"].shape[-1]
    for i in range(args.batches):
        b = train_data.batch(data, order[i])
        samples = train_torch.data_samples(size, len(order[i]), b["gt_boxes"], b["gt_labels"])
        losses = model.loss(torch.from_numpy(b["images"]).to(dtype), samples)
        model.zero_grad()
        (sum(losses["loss_cls"]) + sum(losses["loss_bbox"])).backward()
        grads = {
            n: p.grad.double().numpy() for n, p in model.named_parameters() if p.grad is not None
        }
        _record(
            out,
            i,
            [v.item() for v in losses["loss_cls"]],
            [v.item() for v in losses["loss_bbox"]],
            grads,
        )
    return out


def probe_paddle(args, data: dict, arrays: dict) -> dict:
    from align import train_paddle
    from align.paddle_ref import load_converted_weights
    from ppdet_ghm.convert import mmdet_retinanet_table

    model = train_paddle.build_model(args.loss, args.dtype)
    load_converted_weights(model, arrays)
    mmdet_name = {v: k for k, v in mmdet_retinanet_table(18, 2, True).renames.items()}
    record = {"cls": [], "reg": []}
    head = model.head
    head.loss_cls.register_forward_post_hook(lambda _l, _i, o: record["cls"].append(float(o)))
    head.loss_bbox.register_forward_post_hook(lambda _l, _i, o: record["reg"].append(float(o)))
    model.train()
    out = {}
    order = train_data.batch_order(len(data["image_ids"]), args.batches, 0)
    size = data["images"].shape[-1]
    for i in range(args.batches):
        b = train_data.batch(data, order[i])
        record["cls"].clear()
        record["reg"].clear()
        inputs = train_paddle.inputs(
            b["images"].astype(args.dtype), size, b["gt_boxes"], b["gt_labels"]
        )
        losses = model(inputs)
        model.clear_gradients()
        losses["loss"].backward()
        grads = {
            mmdet_name[n]: p.grad.astype("float64").numpy()
            for n, p in model.named_parameters()
            if p.grad is not None
        }
        _record(out, i, record["cls"], record["reg"], grads)
    return out


def compare(args) -> dict:
    """Largest differences over the batches (torch the reference); printed and returned."""
    torch_log = np.load(probe_file(args, "torch"), allow_pickle=True).item()
    paddle_log = np.load(probe_file(args, "paddle"), allow_pickle=True).item()
    batches = sorted(
        {int(k.split(".")[0]) for k in torch_log} & {int(k.split(".")[0]) for k in paddle_log}
    )
    if not batches:
        raise ValueError("the two probe files share no batch")
    worst = {
        "loss_cls": (0.0, -1),
        "loss_bbox": (0.0, -1),
        "grad_norm": (0.0, -1, ""),
        "grad": (0.0, -1, ""),
    }
    for i in batches:
        for key in ("loss_cls", "loss_bbox"):
            d = float(
                step13_train.rel_diff(paddle_log[f"{i}.{key}"], torch_log[f"{i}.{key}"]).max()
            )
            worst[key] = max(worst[key], (d, i))
        t, p = torch_log[f"{i}.grad_norm"], paddle_log[f"{i}.grad_norm"]
        if set(t) != set(p):
            raise ValueError(f"batch {i}: the sides' parameters differ: {sorted(set(t) ^ set(p))}")
        for name in t:
            d = abs(p[name] - t[name]) / max(t[name], 1e-30)
            worst["grad_norm"] = max(worst["grad_norm"], (d, i, name))
        if f"{i}.grad" in torch_log and f"{i}.grad" in paddle_log:
            tg, pg = torch_log[f"{i}.grad"], paddle_log[f"{i}.grad"]
            for name in tg:
                d = float(np.abs(pg[name] - tg[name]).max() / max(np.abs(tg[name]).max(), 1e-30))
                worst["grad"] = max(worst["grad"], (d, i, name))
    lines = [
        f"## step 13 probe: {args.loss}, {args.dtype}, {len(batches)} batches (torch = reference)"
    ]
    lines.append(
        f"per-level loss_cls: max rel {worst['loss_cls'][0]:.1e} (batch {worst['loss_cls'][1]})"
    )
    lines.append(
        f"per-level loss_bbox: max rel {worst['loss_bbox'][0]:.1e} (batch {worst['loss_bbox'][1]})"
    )
    d, i, name = worst["grad_norm"]
    lines.append(f"gradient norm per parameter: max rel {d:.1e} (batch {i}, {name})")
    d, i, name = worst["grad"]
    lines.append(
        f"gradient elements, first {FULL_GRAD_BATCHES} batches: max |diff| / max |g| {d:.1e} "
        f"(batch {i}, {name})"
    )
    print("\n".join(lines))
    return {k: v[0] for k, v in worst.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        compare(args)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arrays = load_weights(args.weights)
    folder = train_data.data_dir_for(args.data_root, step13_train.data_args(args))
    data = train_data.load(folder, "train")
    out = (probe_torch if args.side == "torch" else probe_paddle)(args, data, arrays)
    os.makedirs(args.out, exist_ok=True)
    np.save(probe_file(args, args.side), out)
    print(f"wrote {probe_file(args, args.side)} ({args.batches} batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
