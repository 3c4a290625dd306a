"""The loss part of a training iteration alone: ours against mmdet's, on fixed head outputs.

Per call: anchors, valid flags, max-IoU assignment and targets for every image, then the 5
per-level GHM-C and GHM-R calls (the reference's granularity), then backward to the head outputs.
mmdet: ``bbox_head.loss_by_feat(cls_scores, bbox_preds, gts, metas)``; ours:
``head.get_loss((cls_logits, bbox_deltas), inputs)``. Each side first computes the head outputs of
the same weights and images once (the two sides' outputs agree to float32 rounding, align/),
so both bin the same gradient norms and see the same positives.

The ``GHM ms`` columns are the time inside the GHM loss calls' forward (hooks), the rest of the
forward being targets; for the per-bin-loop and vectorised losses alone at these sizes see
``bench/bench_ghm_loss.py`` (the "GHM losses" section of BENCHMARKS.md).

    python -m bench.bench_head_loss --cases b2_512 b1_800x1333 --repeats 5
"""

import argparse
import sys

from bench import driver, inputs, timing

SCRIPT = "bench_head_loss"


def worker(args):
    timing.set_framework_threads(args.side, args.threads)
    batch = inputs.make_batch(args.case)
    timer = timing.SectionTimer()
    if args.side == "torch":
        from bench import torch_side as side
    else:
        from bench import paddle_side as side
    model = side.build(args.seed)
    outputs = side.head_outputs(model, batch)
    side.hook_ghm(model, timer)
    step = side.loss_step(model, batch, outputs)
    losses = []

    def timed():
        losses.append(step())

    res = timing.measure(timed, args.warmup, args.repeats, after_warmup=timer.reset)
    res["ghm_forward_s"] = timer.total_s / args.repeats
    res["ghm_calls_per_iter"] = timer.calls / args.repeats
    res["losses"] = losses
    return res


def _ghm_cells(case, ref, ours):
    return [
        driver.fmt_ms(ref.get("ghm_forward_s")),
        driver.fmt_ms(ours.get("ghm_forward_s")),
        driver.fmt_ratio(ours.get("ghm_forward_s"), ref.get("ghm_forward_s")),
    ]


def main(argv=None):
    parser = driver.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker only
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(inputs.CASES), default=["b2_512", "b1_800x1333"]
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        from align.weights import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    if args.worker:
        timing.emit_result(worker(args))
        return 0
    results = driver.drive(SCRIPT, args, args.cases)
    header = [
        *driver.COMPARISON_HEADER,
        "mmdet GHM fwd ms",
        "ours GHM fwd ms",
        "GHM ours/ref",
    ]
    rows = driver.comparison_rows(results, args.cases, extra=_ghm_cells)
    return driver.finish(SCRIPT, args, header, rows, results)


if __name__ == "__main__":
    sys.exit(main())
