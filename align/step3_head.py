"""Step 3: the head's raw per-level outputs (cls logits [N, 9*80, H, W], box deltas [N, 9*4, H, W]).

python -m align.step3_head --side torch
python -m align.step3_head --side paddle
"""

import sys

from align import common, report

STEP = "step3_head"
LEVELS = ("P3", "P4", "P5", "P6", "P7")
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--mean-abs", type=float, default=1e-5, help="mean abs diff threshold")
    parser.add_argument("--max-rel", type=float, default=1e-4, help="max abs diff / max |torch|")
    return parser


def _log(cls_scores, bbox_preds):
    log = {}
    for level, cls, reg in zip(LEVELS, cls_scores, bbox_preds, strict=True):
        log.update(common.summarise_map(f"cls_score.{level}", cls))
        log.update(common.summarise_map(f"bbox_pred.{level}", reg))
    return log


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(ctx.images()))
    return _log([c.numpy() for c in cls_scores], [b.numpy() for b in bbox_preds])


def paddle_side(ctx, args):
    import paddle

    with paddle.no_grad():
        cls_scores, bbox_preds = ctx.head_outputs()
    return _log([c.numpy() for c in cls_scores], [b.numpy() for b in bbox_preds])


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check(
            name,
            rf"{name}\.P[3-7](\.chmean)?",
            "forward",
            mean_abs=args.mean_abs,
            max_rel=args.max_rel,
        )
        for name in ("cls_score", "bbox_pred")
    ]
    return report.compare(STEP, torch_log, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
