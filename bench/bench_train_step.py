"""Training iteration: ours (Paddle) against mmdet's RetinaNet-GHM (torch), same weights and inputs.

One iteration = forward, loss (targets + 5 per-level GHM-C / GHM-R calls), backward, gradient clip
(global L2 norm 35) and an SGD step with momentum 0.9 and weight decay 1e-4, at lr 0.01 x images / 16
(linear scaling of the reference's 0.01 for 16 images). BN in eval mode, stage 1 frozen (both).

Cases: ``b2_512`` (2 images of 512x512) and ``b1_800x1333`` (one 800x1333 image). The ``GHM ms``
columns are the forward time spent inside the GHM loss calls per iteration (forward hooks on the
loss layers) and its share of the iteration.

Ours runs its convolutions larger than 1x1 on oneDNN, each frozen BN with its ReLU (and shortcut)
as one op, the optimizer's clip multiply and momentum update as one threaded call, and keeps freed
memory in glibc's heap for reuse, as ``ppdet-ghm train`` does on a CPU
(``ppdet_ghm.modeling.onednn_conv``, ``ppdet_ghm.modeling.frozen_bn``,
``ppdet_ghm.engine.threaded_momentum``, ``ppdet_ghm.engine.cpu_memory``; ``--keep-freed-memory
all`` gives mmdet's worker the same malloc settings, ``none`` neither side). In the same rounds,
with ``--paddle-convs`` (the default) a worker runs ours with Paddle's own convolutions and BN ops
(``-o onednn_conv=false``), with ``--paddle-bn`` (the default) one runs ours with oneDNN
convolutions but Paddle's BN, add and ReLU ops (``-o fused_frozen_bn=false``), and with
``--paddle-step`` one runs ours with Paddle's optimizer step (``-o threaded_momentum=false``);
the table gets a row ``<case>, Paddle convs`` / ``<case>, Paddle BN ops`` /
``<case>, Paddle step`` for each.

    python -m bench.bench_train_step                     # both cases, both sides, 2 threads
    python -m bench.bench_train_step --cases b2_512 --repeats 3 --sides paddle

The output ends with one line per case, ``train step <case>: ours/mmdet <ratio>x``.
"""

import argparse
import sys

from bench import driver, flops, inputs, timing

SCRIPT = "bench_train_step"
PADDLE_CONVS = "paddle-convs"  # the variant of ours with Paddle's own convolutions
PADDLE_BN = "paddle-bn"  # ... with oneDNN convolutions but Paddle's BN, add and ReLU ops
PADDLE_STEP = "paddle-step"  # ... with Paddle's own optimizer step
VARIANT_LABELS = {
    PADDLE_CONVS: "Paddle convs",
    PADDLE_BN: "Paddle BN ops",
    PADDLE_STEP: "Paddle step",
}
BASE_LR = 0.01
BASE_BATCH = 16


def worker(args):
    timing.set_framework_threads(args.side, args.threads)
    if args.keep_freed_memory == "all" or (
        args.keep_freed_memory == "ours" and args.side == "paddle"
    ):
        from ppdet_ghm.engine.cpu_memory import keep_freed_memory

        keep_freed_memory()
    batch = inputs.make_batch(args.case)
    lr = BASE_LR * len(batch["images"]) / BASE_BATCH
    timer = timing.SectionTimer()
    if args.side == "torch":
        from bench import torch_side as side
    else:
        from bench import paddle_side as side
    model = side.build(args.seed)
    if args.side == "paddle" and args.conv in ("onednn", "onednn-paddle-bn"):
        from ppdet_ghm.modeling.onednn_conv import TRAINING_MIN_KERNEL, use_onednn_convs

        use_onednn_convs(model, min_kernel=TRAINING_MIN_KERNEL)
        if args.conv == "onednn":
            from ppdet_ghm.modeling.frozen_bn import use_fused_frozen_bn

            use_fused_frozen_bn(model)
    side.hook_ghm(model, timer)
    if args.side == "paddle":
        step = side.train_step(model, batch, lr, threaded_momentum=args.step == "threaded")
    else:
        step = side.train_step(model, batch, lr)
    losses = []

    def timed():
        losses.append(step())

    res = timing.measure(timed, args.warmup, args.repeats, after_warmup=timer.reset)
    res["ghm_forward_s"] = timer.total_s / args.repeats
    res["ghm_calls_per_iter"] = timer.calls / args.repeats
    res["losses"] = losses
    if args.side == "paddle":  # after the measurement: its forward must not count in the peaks
        res["conv_flops"] = flops.train_step_conv_flops(model, side.input_dict(batch, True))
    return res


def _ghm_cells(case, ref, ours):
    cells = []
    for res in (ref, ours):
        ghm, med = res.get("ghm_forward_s"), res.get("median_s")
        if ghm is None or not med:
            cells.append("-")
        else:
            cells.append(f"{ghm * 1000:.0f} ({100 * ghm / med:.1f} %)")
    return cells


def _throughput_cells(results, cases, threads: int, per_cycle: int | None):
    """Per case: the step's conv TFLOP and each side's conv GFLOP/s with its share of the peak."""
    peak, _ = flops.cpu_peak_gflops(threads, per_cycle)

    def cells(case, ref, ours):
        count = ours.get("conv_flops", {}).get("total")
        out = [f"{count / 1e12:.2f}" if count else "-"]
        for res in (ref, ours):
            median = res.get("median_s")
            if not count or not median:
                out.append("-")
                continue
            rate = count / median / 1e9
            share = f" ({100 * rate / peak:.0f} %)" if peak else ""
            out.append(f"{rate:.0f}{share}")
        return out

    return cells


def main(argv=None):
    parser = driver.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--conv", default="onednn", help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--step", default="threaded", help=argparse.SUPPRESS)  # worker only
    parser.add_argument(
        "--paddle-convs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ours with Paddle's own convolutions (onednn_conv: false)",
    )
    parser.add_argument(
        "--paddle-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ours with Paddle's BN, add and ReLU ops (fused_frozen_bn: false)",
    )
    parser.add_argument(
        "--paddle-step",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time ours with Paddle's optimizer step (threaded_momentum: false)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        choices=("ours", "all", "none"),
        default="ours",
        help="which workers keep freed memory in glibc's heap (ppdet_ghm.engine.cpu_memory): "
        "ours, as ppdet-ghm train does on a CPU (default); all, mmdet's too; none",
    )
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(inputs.CASES), default=["b2_512", "b1_800x1333"]
    )
    parser.add_argument(
        "--flops-per-cycle",
        type=int,
        default=None,
        help="float32 FLOP per cycle and core for the peak (default: 64 with AVX-512, 32 AVX2)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        from align.weights import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    if args.worker:
        timing.emit_result(worker(args))
        return 0
    variants = {}
    if args.paddle_convs and "paddle" in args.sides:
        variants[PADDLE_CONVS] = ("paddle", ["--conv", "paddle"])
    if args.paddle_bn and "paddle" in args.sides:
        variants[PADDLE_BN] = ("paddle", ["--conv", "onednn-paddle-bn"])
    if args.paddle_step and "paddle" in args.sides:
        variants[PADDLE_STEP] = ("paddle", ["--step", "paddle"])
    results = driver.drive(
        SCRIPT,
        args,
        args.cases,
        extra_worker_args=["--keep-freed-memory", args.keep_freed_memory],
        variants=variants,
    )
    header = [*driver.COMPARISON_HEADER, "mmdet GHM fwd ms (share)", "ours GHM fwd ms (share)"]
    header += ["conv TFLOP / step", "mmdet conv GFLOP/s (peak)", "ours conv GFLOP/s (peak)"]
    throughput = _throughput_cells(results, args.cases, args.threads, args.flops_per_cycle)

    def extra(case, ref, ours):
        return _ghm_cells(case, ref, ours) + throughput(case, ref, ours)

    rows = driver.comparison_rows(results, args.cases, extra=extra)
    for name in variants:
        for case in args.cases:
            view = {(case, "torch"): results.get((case, "torch"), {})}
            view[(case, "paddle")] = results[(case, name)]
            (row,) = driver.comparison_rows(view, [case], extra=extra)
            rows.append([f"{case}, {VARIANT_LABELS[name]}", *row[1:]])
    _, peak_note = flops.cpu_peak_gflops(args.threads, args.flops_per_cycle)
    notes = [f"peak (float32 FMA, module bench.flops): {peak_note}"]
    status = driver.finish(SCRIPT, args, header, rows, results, notes=notes)
    print()
    for line in summary_lines(results, args.cases):
        print(line)
    return status


def summary_lines(results, cases):
    """One line per case, ``train step <case>: ours/mmdet <ratio>x`` (median wall times), for
    scripts that read the result; ``-`` where a side did not run or failed."""
    lines = []
    for case in cases:
        ref, ours = results.get((case, "torch"), {}), results.get((case, "paddle"), {})
        ratio = driver.fmt_ratio(ours.get("median_s"), ref.get("median_s"))
        lines.append(f"train step {case}: ours/mmdet {ratio}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
