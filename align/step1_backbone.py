"""Step 1: ResNet-50 backbone outputs C3, C4, C5 on the fixed batch.

python -m align.step1_backbone --side torch     # writes align/logs/step1_backbone_torch.npy
python -m align.step1_backbone --side paddle    # writes the Paddle log, diff log, prints rows
"""

import sys

from align import common, report

STEP = "step1_backbone"
LEVELS = ("C3", "C4", "C5")
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--mean-abs", type=float, default=1e-5, help="mean abs diff threshold")
    parser.add_argument("--max-rel", type=float, default=1e-4, help="max abs diff / max |torch|")
    return parser


def _log(feats):
    """C3, C4, C5 arrays [N, C, H, W] in, their log entries out."""
    log = {}
    for name, x in zip(LEVELS, feats, strict=True):
        log.update(common.feature_map(name, x))
    return log


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    with torch.no_grad():
        feats = model.backbone(ctx.images())  # C2..C5 (out_indices 0-3)
    return _log([f.numpy() for f in feats[1:]])


def paddle_side(ctx, args):
    import paddle

    with paddle.no_grad():
        feats = ctx.backbone_features()  # C3, C4, C5
    return _log([f.numpy() for f in feats])


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check(name, name, "forward", mean_abs=args.mean_abs, max_rel=args.max_rel)
        for name in LEVELS
    ]
    return report.compare(STEP, torch_log, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
