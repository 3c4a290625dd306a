"""Step 2: FPN outputs P3-P7 (P6 from C5, no ReLU before the extra convs).

Isolated: our FPN runs on the reference's own C3-C5 (step 1's torch log), so its rows measure the
FPN port alone. Chained: our FPN on our backbone's C3-C5, the end-to-end forward; its rows add the
backbone's float32 drift on this CPU's kernels (thresholds: align/README.md).

python -m align.step2_fpn --side torch
python -m align.step2_fpn --side paddle
"""

import sys

from align import common, report

STEP = "step2_fpn"
INPUT_STEP = "step1_backbone"
INPUTS = ("C3", "C4", "C5")
LEVELS = ("P3", "P4", "P5", "P6", "P7")
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--mean-abs", type=float, default=1e-5, help="mean abs diff threshold")
    parser.add_argument("--max-rel", type=float, default=1e-4, help="max abs diff / max |torch|")
    parser.add_argument("--chained-mean-abs", type=float, default=1e-5, help="chained rows")
    parser.add_argument("--chained-max-rel", type=float, default=1e-4, help="chained rows")
    return parser


def _log(feats, prefix=""):
    log = {}
    for name, x in zip(LEVELS, feats, strict=True):
        log.update(common.feature_map(prefix + name, x))
    return log


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    with torch.no_grad():
        feats = model.neck(model.backbone(ctx.images()))  # C2-C5 in; FPN start_level 1
    return _log([f.numpy() for f in feats])


def paddle_side(ctx, args):
    import paddle

    c3_c5 = common.reference_outputs(args, INPUT_STEP, INPUTS)
    with paddle.no_grad():
        isolated = ctx.model().neck([paddle.to_tensor(x) for x in c3_c5])
        chained = ctx.fpn_features()
    log = _log([f.numpy() for f in isolated])
    log.update(_log([f.numpy() for f in chained], prefix=common.CHAINED))
    return log


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check(name, name, "forward", mean_abs=args.mean_abs, max_rel=args.max_rel)
        for name in LEVELS
    ] + [
        report.Check(
            f"chained {name}",
            common.CHAINED + name,
            "forward",
            mean_abs=args.chained_mean_abs,
            max_rel=args.chained_max_rel,
        )
        for name in LEVELS
    ]
    torch_view = {**torch_log, **common.chained_view(torch_log, LEVELS)}
    return report.compare(STEP, torch_view, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
