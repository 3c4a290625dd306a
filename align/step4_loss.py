"""Step 4: anchors, assignment, targets and the per-level GHM-C / GHM-R losses on the fixed batch.

Isolated: our targets and losses are computed from the reference's own head outputs (step 3's
torch log, checked by sha256 against the outputs the reference's loss used), so the loss rows
measure the loss port alone. Chained: the losses and ``acc_sum`` after our whole forward
(backbone, FPN, head), which add the network's float32 drift on this CPU's kernels.

The reference side runs mmdet's own loss path, ``RetinaNet.loss(images, data_samples)`` (model in
eval mode: BN statistics frozen as in training with ``norm_eval=True``), and records what its head
computes on the way: anchors and valid flags (``get_anchors``), per-anchor labels, label weights,
box targets and weights (``get_targets``), and after each per-level loss call
(``loss_by_feat_single``, P3 first) the losses and both GHM ``acc_sum`` buffers. The GHM state
starts at zero.

    python -m align.step4_loss --side torch
    python -m align.step4_loss --side paddle

Logged: ``anchors.P3``..``P7`` [A_l, 4]; ``valid_flags``, ``labels`` (num_classes = background),
``label_weights`` [N, A]; ``bbox_targets``, ``bbox_weights`` [N, A, 4] (levels concatenated P3
first, anchors in mmdet's order: location-major, then the 9 anchors); ``num_pos`` [1];
``loss_cls.P3``.. and ``loss_bbox.P3``.. (scalars); ``ghmc.acc_sum.after_P3``.. [30] and
``ghmr.acc_sum.after_P3``.. [10]; ``meta.inputs_sha256``, the sha256 of the head outputs the
reference's loss was computed from (cls P3-P7, then box P3-P7).
"""

import re
import sys

import numpy as np

from align import common, report, step3_head

STEP = "step4_loss"
LEVELS = ("P3", "P4", "P5", "P6", "P7")
DIFF_LOG_THRESHOLD = 1e-5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--loss-rel", type=float, default=1e-6, help="per-level loss, relative")
    parser.add_argument("--acc-sum-rel", type=float, default=1e-6, help="acc_sum, relative")
    parser.add_argument("--anchor-abs", type=float, default=1e-4, help="anchors, max abs (px)")
    parser.add_argument("--target-abs", type=float, default=1e-5, help="box targets, max abs")
    parser.add_argument("--chained-loss-rel", type=float, default=1e-5, help="chained losses")
    return parser


def torch_side(ctx, args):
    import torch

    model = ctx.fresh_model()
    head = model.bbox_head
    record = {"acc": []}
    get_anchors, get_targets = head.get_anchors, head.get_targets
    loss_single = head.loss_by_feat_single

    def recording_get_anchors(*a, **kw):
        anchor_list, valid_flag_list = get_anchors(*a, **kw)
        record["anchors"] = anchor_list[0]
        record["valid"] = valid_flag_list
        return anchor_list, valid_flag_list

    def recording_get_targets(*a, **kw):
        record["targets"] = get_targets(*a, **kw)
        return record["targets"]

    def recording_loss_single(*a, **kw):
        losses = loss_single(*a, **kw)
        record["acc"].append(
            (head.loss_cls.acc_sum.detach().clone(), head.loss_bbox.acc_sum.detach().clone())
        )
        return losses

    handle = head.register_forward_hook(
        lambda _module, _inputs, outputs: record.setdefault("head_outputs", outputs)
    )
    head.get_anchors = recording_get_anchors
    head.get_targets = recording_get_targets
    head.loss_by_feat_single = recording_loss_single
    try:
        with torch.no_grad():
            losses = model.loss(ctx.images(), ctx.data_samples())
    finally:
        handle.remove()
        del head.get_anchors, head.get_targets, head.loss_by_feat_single

    labels, label_weights, bbox_targets, bbox_weights, avg_factor = record["targets"]
    log = {}
    for level, anchors in zip(LEVELS, record["anchors"], strict=True):
        log[f"anchors.{level}"] = anchors.numpy()
    log["valid_flags"] = np.stack([torch.cat(flags).numpy() for flags in record["valid"]]).astype(
        np.uint8
    )
    log["labels"] = torch.cat(labels, dim=1).numpy().astype(np.int64)
    log["label_weights"] = torch.cat(label_weights, dim=1).numpy()
    log["bbox_targets"] = torch.cat(bbox_targets, dim=1).numpy()
    log["bbox_weights"] = torch.cat(bbox_weights, dim=1).numpy()
    log["num_pos"] = np.array([int(avg_factor)], dtype=np.int64)
    cls_scores, bbox_preds = record["head_outputs"]
    log[common.META_INPUTS_SHA] = common.arrays_sha256(
        [x.numpy() for x in (*cls_scores, *bbox_preds)]
    )
    for i, level in enumerate(LEVELS):
        log[f"loss_cls.{level}"] = losses["loss_cls"][i].numpy()
        log[f"loss_bbox.{level}"] = losses["loss_bbox"][i].numpy()
        acc_cls, acc_reg = record["acc"][i]
        log[f"ghmc.acc_sum.after_{level}"] = acc_cls.numpy()
        log[f"ghmr.acc_sum.after_{level}"] = acc_reg.numpy()
    return log


CHAINED_KEYS = tuple(
    f"{kind}.{level}" for kind in ("loss_cls", "loss_bbox") for level in LEVELS
) + tuple(f"{ghm}.acc_sum.after_{level}" for ghm in ("ghmc", "ghmr") for level in LEVELS)


def paddle_side(ctx, args):
    torch_log = common.load_log(common.log_path(args.logs, STEP, "torch"))
    log = ctx.loss_details(step3_head.reference_head_outputs(args, torch_log))
    chained = ctx.loss_details()
    log.update({common.CHAINED + k: chained[k] for k in CHAINED_KEYS})
    return log


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check("anchors", r"anchors\.P[3-7]", "max_abs", max_abs=args.anchor_abs),
        report.Check("valid flags", r"valid_flags", "exact"),
        report.Check("labels", r"labels", "exact"),
        report.Check("label weights", r"label_weights", "exact"),
        report.Check("#positives", r"num_pos", "exact"),
        report.Check("box targets", r"bbox_targets", "max_abs", max_abs=args.target_abs),
        report.Check("box weights", r"bbox_weights", "exact"),
    ]
    for prefix, loss_rel in (("", args.loss_rel), (common.CHAINED, args.chained_loss_rel)):
        label = "chained " if prefix else ""
        p = re.escape(prefix)
        checks += [
            report.Check(
                f"{label}GHM-C loss {level}", rf"{p}loss_cls\.{level}", "relative", rel=loss_rel
            )
            for level in LEVELS
        ]
        checks += [
            report.Check(
                f"{label}GHM-R loss {level}", rf"{p}loss_bbox\.{level}", "relative", rel=loss_rel
            )
            for level in LEVELS
        ]
        for name, key in (("GHM-C", "ghmc"), ("GHM-R", "ghmr")):
            quantity = f"{label}{name} acc_sum after each level"
            pattern = rf"{p}{key}\.acc_sum\.after_P[3-7]"
            if prefix:
                limit = common.acc_sum_flip_limit(key)
                checks.append(report.Check(quantity, pattern, "max_abs", max_abs=limit))
            else:
                checks.append(report.Check(quantity, pattern, "relative", rel=args.acc_sum_rel))
    torch_view = {**torch_log, **common.chained_view(torch_log, CHAINED_KEYS)}
    return report.compare(STEP, torch_view, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
