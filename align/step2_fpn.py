"""Step 2: FPN outputs P3-P7 (P6 from C5, no ReLU before the extra convs) on the fixed batch.

python -m align.step2_fpn --side torch
python -m align.step2_fpn --side paddle
"""

import sys

from align import common, report

STEP = "step2_fpn"
LEVELS = ("P3", "P4", "P5", "P6", "P7")
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--mean-abs", type=float, default=1e-5, help="mean abs diff threshold")
    parser.add_argument("--max-rel", type=float, default=1e-4, help="max abs diff / max |torch|")
    return parser


def _log(feats):
    log = {}
    for name, x in zip(LEVELS, feats, strict=True):
        log.update(common.summarise_map(name, x))
    return log


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    with torch.no_grad():
        feats = model.neck(model.backbone(ctx.images()))
    return _log([f.numpy() for f in feats])


def paddle_side(ctx, args):
    import paddle

    with paddle.no_grad():
        feats = ctx.fpn_features()
    return _log([f.numpy() for f in feats])


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check(
            name, rf"{name}(\.chmean)?", "forward", mean_abs=args.mean_abs, max_rel=args.max_rel
        )
        for name in LEVELS
    ]
    return report.compare(STEP, torch_log, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
