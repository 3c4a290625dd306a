"""Step 3: the head's raw per-level outputs (cls logits [N, 9*80, H, W], box deltas [N, 9*4, H, W]).

Isolated: our head runs on the reference's own P3-P7 (step 2's torch log). Chained: our head on
our FPN on our backbone, the end-to-end forward (thresholds: align/README.md).

python -m align.step3_head --side torch
python -m align.step3_head --side paddle
"""

import re
import sys

from align import common, report

STEP = "step3_head"
INPUT_STEP = "step2_fpn"
LEVELS = ("P3", "P4", "P5", "P6", "P7")
OUTPUTS = tuple(f"{kind}.{level}" for kind in ("cls_score", "bbox_pred") for level in LEVELS)
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--mean-abs", type=float, default=1e-5, help="mean abs diff threshold")
    parser.add_argument("--max-rel", type=float, default=1e-4, help="max abs diff / max |torch|")
    parser.add_argument("--chained-mean-abs", type=float, default=1e-5, help="chained rows")
    parser.add_argument("--chained-max-rel", type=float, default=1e-4, help="chained rows")
    return parser


def _log(cls_scores, bbox_preds, prefix=""):
    log = {}
    for level, cls, reg in zip(LEVELS, cls_scores, bbox_preds, strict=True):
        log.update(common.feature_map(f"{prefix}cls_score.{level}", cls))
        log.update(common.feature_map(f"{prefix}bbox_pred.{level}", reg))
    return log


def reference_head_outputs(args, torch_log=None):
    """The reference's head outputs of this step's torch log, as (cls list, box list) over P3-P7.

    What steps 4 and 6 feed to our targets/losses and post-processing; with ``torch_log`` (theirs),
    checked against the sha256 of the head outputs the reference used there.
    """
    arrays = common.reference_outputs(
        args, STEP, OUTPUTS, inputs_sha_key=common.META_INPUTS_SHA, torch_log=torch_log
    )
    return arrays[: len(LEVELS)], arrays[len(LEVELS) :]


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(ctx.images()))
    return _log([c.numpy() for c in cls_scores], [b.numpy() for b in bbox_preds])


def paddle_side(ctx, args):
    import paddle

    p3_p7 = common.reference_outputs(args, INPUT_STEP, LEVELS)
    with paddle.no_grad():
        cls_scores, bbox_preds = ctx.model().head([paddle.to_tensor(x) for x in p3_p7])
        chained_cls, chained_box = ctx.head_outputs()
    log = _log([c.numpy() for c in cls_scores], [b.numpy() for b in bbox_preds])
    log.update(
        _log(
            [c.numpy() for c in chained_cls],
            [b.numpy() for b in chained_box],
            prefix=common.CHAINED,
        )
    )
    return log


def judge(args, torch_log, paddle_log):
    checks = []
    for prefix, mean_abs, max_rel in (
        ("", args.mean_abs, args.max_rel),
        (common.CHAINED, args.chained_mean_abs, args.chained_max_rel),
    ):
        label = "chained " if prefix else ""
        checks += [
            report.Check(
                f"{label}{name}",
                re.escape(prefix + name) + r"\.P[3-7]",
                "forward",
                mean_abs=mean_abs,
                max_rel=max_rel,
            )
            for name in ("cls_score", "bbox_pred")
        ]
    torch_view = {**torch_log, **common.chained_view(torch_log, OUTPUTS)}
    return report.compare(STEP, torch_view, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
