"""Step 6: detections after NMS on the 2 fixed images, with the reference's test settings.

Isolated: our post-processing runs on the reference's own head outputs (step 3's torch log, checked
by sha256 against the outputs the reference's ``predict`` used). Chained: our whole model, which
adds the network's float32 drift: a score or IoU within rounding of a threshold could flip there.

nms_pre 1000 per level, score > 0.05, class-wise NMS at IoU 0.5 (the reference's NMS is a pure-torch
copy of mmcv's, see ``align/torch_ref.py``), at most 100 per image, boxes clipped to each image's own
shape (image 1 is 96x128 inside the 128x160 batch); scale factor 1.

    python -m align.step6_detections --side torch
    python -m align.step6_detections --side paddle

Logged per image i: ``img{i}.boxes`` [K, 4] x1y1x2y2, ``img{i}.scores`` [K], ``img{i}.labels`` [K]
(0-based), best score first; ``meta.inputs_sha256`` of the head outputs used. Judged: same count (and > 0), each torch detection matched one-to-one to
a Paddle one of the same label, matched boxes IoU >= ``--min-iou``, scores within ``--score-abs``.
"""

import sys

import numpy as np

from align import common, report, step3_head

STEP = "step6_detections"
DIFF_LOG_THRESHOLD = 1e-4


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--min-iou", type=float, default=0.999, help="matched boxes, min IoU")
    parser.add_argument("--score-abs", type=float, default=1e-4, help="matched scores, max abs")
    return parser


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    record = {}
    handle = model.bbox_head.register_forward_hook(
        lambda _module, _inputs, outputs: record.setdefault("head_outputs", outputs)
    )
    try:
        with torch.no_grad():
            results = model.predict(ctx.images(), ctx.data_samples(with_gt=False), rescale=True)
    finally:
        handle.remove()
    cls_scores, bbox_preds = record["head_outputs"]
    log = {
        common.META_INPUTS_SHA: common.arrays_sha256(
            [x.numpy() for x in (*cls_scores, *bbox_preds)]
        )
    }
    for i, result in enumerate(results):
        pred = result.pred_instances
        log[f"img{i}.boxes"] = pred.bboxes.numpy().astype(np.float32)
        log[f"img{i}.scores"] = pred.scores.numpy().astype(np.float32)
        log[f"img{i}.labels"] = pred.labels.numpy().astype(np.int64)
    return log


def paddle_side(ctx, args):
    torch_log = common.load_log(common.log_path(args.logs, STEP, "torch"))
    log = ctx.detections(step3_head.reference_head_outputs(args, torch_log))
    log.update({common.CHAINED + k: v for k, v in ctx.detections().items()})
    return log


def judge(args, torch_log, paddle_log):
    num_images = len([k for k in torch_log if k.endswith(".scores")])
    rows = report.detection_rows(
        STEP, torch_log, paddle_log, num_images, min_iou=args.min_iou, score_abs=args.score_abs
    )
    chained = {
        k[len(common.CHAINED) :]: v for k, v in paddle_log.items() if k.startswith(common.CHAINED)
    }
    chained_rows = report.detection_rows(
        STEP, torch_log, chained, num_images, min_iou=args.min_iou, score_abs=args.score_abs
    )
    for row in chained_rows:
        row.quantity = f"chained {row.quantity}"
    return rows + chained_rows


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
