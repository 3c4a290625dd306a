"""One training iteration with Paddle's CPU convolutions against the same with oneDNN's.

Two models of ``bench.bench_train_step`` (R50-FPN RetinaNet-GHM, seeded weights, fresh GHM
state each) take the same batch: one keeps Paddle's convolutions and BN ops, the other runs as
``ppdet-ghm train`` does on a CPU: convolutions larger than 1x1 on oneDNN
(``ppdet_ghm.modeling.onednn_conv``) and each frozen BN with its ReLU and shortcut as one op
(``ppdet_ghm.modeling.frozen_bn``; ``fused_bn=False`` leaves Paddle's BN ops). Compared: each FPN
level's GHM-C and GHM-R loss (relative difference) and every trained parameter's gradient (mean
and largest absolute difference over all elements). A third model, Paddle's convolutions on the
image moved by one float32 rounding, measures how far one rounding moves the gradients anyway
(the floor). The gate for CPU training on oneDNN: losses within 1e-5 relative, gradients within
1e-6 mean absolute or, where this CPU's floor is larger, within three times the floor.

    python -m bench.onednn_numerics                  # b2_512, 2 threads
    python -m bench.onednn_numerics --case b1_800x1333 --threads 1
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench import inputs, timing

LOSS_RTOL = 1e-5
GRAD_MEAN_ATOL = 1e-6
FLOOR_FACTOR = 3.0  # measured ratios 0.22-1.37 over four kernel paths (tests/bench)


def _iteration(model, feed):
    """Per-level (cls, reg) losses as float64 arrays and {name: grad} of one forward + backward."""
    head_outs = model.head.raw_outputs(model.neck(model.backbone(feed)))
    losses_cls, losses_reg = model.head.level_losses(head_outs, feed)
    total = sum(losses_cls) + sum(losses_reg)
    total.backward()
    grads = {
        name: p.grad.numpy().astype(np.float64)
        for name, p in model.named_parameters()
        if not p.stop_gradient and p.grad is not None
    }
    level = [np.array([float(x) for x in losses]) for losses in (losses_cls, losses_reg)]
    return level, grads


def compare(case: str = "b2_512", seed: int | None = None, fused_bn: bool = True) -> dict:
    """Differences of one iteration, Paddle's ops against oneDNN convs and, with ``fused_bn``,
    the fused frozen BN (see the module doc)."""
    import paddle

    from align.weights import DEFAULT_SEED
    from bench import paddle_side
    from ppdet_ghm.modeling.frozen_bn import use_fused_frozen_bn
    from ppdet_ghm.modeling.onednn_conv import TRAINING_MIN_KERNEL, use_onednn_convs

    seed = DEFAULT_SEED if seed is None else seed
    feed = paddle_side.input_dict(inputs.make_batch(case), with_gt=True)
    # the rounding floor: Paddle's convolutions again, on the image moved by one float32
    # rounding (x * (1 +- 2^-24), random signs)
    sign = np.random.default_rng(0).choice([-1.0, 1.0], size=feed["image"].shape)
    image = feed["image"].numpy()
    rounded = (image * (1 + sign * 2.0**-24)).astype(np.float32)
    results, fused = [], 0
    for onednn, picture in ((False, image), (True, image), (False, rounded)):
        model = paddle_side.build(seed)
        model.train()
        switched = use_onednn_convs(model, min_kernel=TRAINING_MIN_KERNEL) if onednn else 0
        if onednn and fused_bn:
            fused = use_fused_frozen_bn(model)
        run_feed = {**feed, "image": paddle.to_tensor(picture)}
        results.append((*_iteration(model, run_feed), switched))
    (paddle_levels, paddle_grads, _), (onednn_levels, onednn_grads, switched) = results[:2]
    floor_grads = results[2][1]
    if paddle_grads.keys() != onednn_grads.keys():
        raise AssertionError("the two models train different parameters")
    diffs = np.concatenate(
        [np.abs(onednn_grads[k] - paddle_grads[k]).ravel() for k in sorted(paddle_grads)]
    )
    scale = np.concatenate([np.abs(paddle_grads[k]).ravel() for k in sorted(paddle_grads)])
    floor = np.concatenate(
        [np.abs(floor_grads[k] - paddle_grads[k]).ravel() for k in sorted(paddle_grads)]
    )
    rel = [
        np.abs(o - p) / np.maximum(np.abs(p), np.finfo(np.float64).tiny)  # 0 / 0 -> 0
        for o, p in zip(onednn_levels, paddle_levels, strict=True)
    ]
    return {
        "case": case,
        "convs_on_onednn": switched,
        "fused_frozen_bn": fused,
        "loss_cls": paddle_levels[0].tolist(),
        "loss_reg": paddle_levels[1].tolist(),
        "loss_cls_rel_diff": rel[0].tolist(),
        "loss_reg_rel_diff": rel[1].tolist(),
        "grad_mean_abs_diff": float(diffs.mean()),
        "grad_max_abs_diff": float(diffs.max()),
        "grad_mean_abs": float(scale.mean()),
        "floor_grad_mean_abs_diff": float(floor.mean()),
        "floor_grad_max_abs_diff": float(floor.max()),
        "grad_elements": int(diffs.size),
    }


def within_gate(result: dict) -> bool:
    """Whether ``result`` (from :func:`compare`) meets the losses / gradients gate."""
    worst = max(result["loss_cls_rel_diff"] + result["loss_reg_rel_diff"])
    limit = max(GRAD_MEAN_ATOL, FLOOR_FACTOR * result["floor_grad_mean_abs_diff"])
    return worst <= LOSS_RTOL and result["grad_mean_abs_diff"] <= limit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(inputs.CASES), default="b2_512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    timing.set_framework_threads("paddle", args.threads)
    res = compare(args.case, args.seed)
    print(
        f"{res['case']}: {res['convs_on_onednn']} convolutions on oneDNN, "
        f"{res['fused_frozen_bn']} frozen BNs fused, {args.threads} threads"
    )
    print("| level | GHM-C loss | rel diff | GHM-R loss | rel diff |")
    print("|---|---:|---:|---:|---:|")
    for i, cells in enumerate(
        zip(
            res["loss_cls"],
            res["loss_cls_rel_diff"],
            res["loss_reg"],
            res["loss_reg_rel_diff"],
            strict=True,
        )
    ):
        print(f"| P{i + 3} | {cells[0]:.6f} | {cells[1]:.1e} | {cells[2]:.6f} | {cells[3]:.1e} |")
    print(
        f"gradients ({res['grad_elements']} elements, mean |g| {res['grad_mean_abs']:.2e}): "
        f"mean abs diff {res['grad_mean_abs_diff']:.2e}, max {res['grad_max_abs_diff']:.2e}; "
        f"Paddle's own from a one-rounding image: mean {res['floor_grad_mean_abs_diff']:.2e}, "
        f"max {res['floor_grad_max_abs_diff']:.2e}"
    )
    ok = within_gate(res)
    print(
        f"gate (losses rel <= {LOSS_RTOL:g}, gradients mean abs <= {GRAD_MEAN_ATOL:g} or "
        f"{FLOOR_FACTOR:g}x the floor): " + ("met" if ok else "MISSED")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
