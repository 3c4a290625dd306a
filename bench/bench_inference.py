"""Inference per image: mmdet eager (torch) against ours in dygraph and as an exported predictor.

All three include post-processing (score threshold 0.05, top 1000 per level, class-aware NMS 0.5,
100 per image) and rescaling; batch 1, same weights and image. The reference's NMS is the pure-torch
greedy NMS of ``align.torch_ref`` (mmcv-lite has no compiled ops); with the seeded weights only a
few hundred candidates reach NMS, so it is a small part of the time (see BENCHMARKS.md).

The exported model is written once per run by a separate worker (``paddle.jit.to_static`` with
``full_graph=True`` + ``paddle.jit.save``), then loaded by ``paddle.inference`` with oneDNN off
(``ppdet_ghm.compat.inference_config``) and ``set_cpu_math_library_num_threads(threads)``; the
predictor's timing includes copying the inputs in and the detections out.

    python -m bench.bench_inference                      # 800x1333, 2 threads
    python -m bench.bench_inference --cases b1_512 --repeats 3
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

from bench import common, inputs

SCRIPT = "bench_inference"
MODES = ("eager", "export", "predictor")


def worker(args):
    common.set_framework_threads(args.side, args.threads)
    if args.side == "torch":
        from bench import torch_side as side
    else:
        from bench import paddle_side as side
    if args.mode == "export":
        model = side.build(args.seed)
        start = time.perf_counter()
        side.export(model, args.export_dir)
        return {
            "export_s": time.perf_counter() - start,
            "peak_rss_mib": common.process_peak_rss_mib(),
        }
    batch = inputs.make_batch(args.case)
    if args.mode == "predictor":
        step = side.predictor_step(args.export_dir, batch, args.threads)
    else:
        step = side.infer_step(side.build(args.seed), batch)
    nms_timer = common.SectionTimer()
    if args.side == "torch":
        side.hook_nms(nms_timer)
    detections = []

    def timed():
        detections.append(step())

    res = common.measure(timed, args.warmup, args.repeats, after_warmup=nms_timer.reset)
    res["detections"] = detections[-1]
    if args.side == "torch":
        res["nms_s"] = nms_timer.total_s / args.repeats
    return res


def _measurements(args):
    """(key, side, mode) of every worker to run, in order."""
    plan = []
    if "paddle" in args.sides and "predictor" in args.modes:
        plan.append(("export", "paddle", "export"))
    for case in args.cases:
        if "torch" in args.sides:
            plan.append((case, "torch", "eager"))
        if "paddle" in args.sides:
            for mode in ("eager", "predictor"):
                if mode in args.modes:
                    plan.append((case, "paddle", mode))
    return plan


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--mode", choices=MODES, default="eager", help=argparse.SUPPRESS)
    parser.add_argument("--export-dir", default=None, help="keep the exported model here")
    parser.add_argument("--cases", nargs="+", choices=sorted(inputs.CASES), default=["b1_800x1333"])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("eager", "predictor"),
        default=["eager", "predictor"],
        help="our side: dygraph and/or the exported predictor",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        from align.weights import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    if args.worker:
        common.emit_result(worker(args))
        return 0

    export_dir = args.export_dir or tempfile.mkdtemp(prefix="ppdet_ghm_bench_export_")
    os.makedirs(export_dir, exist_ok=True)
    plan = _measurements(args)
    rounds = {}
    try:
        for round_index in range(args.rounds):
            for key, side, mode in plan:
                if mode == "export" and round_index > 0:
                    continue
                worker_args = ["--side", side, "--mode", mode, "--export-dir", export_dir]
                worker_args += ["--seed", args.seed, "--warmup", args.warmup]
                worker_args += ["--repeats", args.repeats]
                if mode != "export":
                    worker_args += ["--case", key]
                load = common.load_average()
                tag = f"[{SCRIPT}] {key} / {side} {mode} round {round_index + 1}/{args.rounds}"
                print(f"{tag} (load {load}) ...", file=sys.stderr)
                res = common.run_worker(SCRIPT, worker_args, args.threads)
                res["load_before"] = load
                rounds.setdefault((key, f"{side}-{mode}"), []).append(res)
                if "error" in res:
                    summary = res["error"]
                elif "median_s" in res:
                    summary = f"median {res['median_s'] * 1000:.0f} ms"
                else:
                    summary = f"export {res['export_s']:.1f} s"
                print(f"{tag}: {summary}", file=sys.stderr)
    finally:
        if args.export_dir is None:
            shutil.rmtree(export_dir, ignore_errors=True)
    results = {key: common.merge_rounds(res) for key, res in rounds.items()}

    header = [
        "case",
        "mmdet eager ms (NMS stand-in ms)",
        "ours dygraph ms",
        "dygraph ours/ref",
        "ours predictor ms",
        "predictor ours/ref",
        "CPU ms mmdet / dygraph / predictor",
        "peak RSS MiB mmdet / dygraph / predictor",
        "detections mmdet / dygraph / predictor",
    ]
    rows = []
    for case in args.cases:
        ref = results.get((case, "torch-eager"), {})
        dyg = results.get((case, "paddle-eager"), {})
        pred = results.get((case, "paddle-predictor"), {})
        rows.append(
            [
                case,
                f"{common.fmt_ms(ref.get('median_s'))} ({common.fmt_ms(ref.get('nms_s'))})",
                common.fmt_ms(dyg.get("median_s")),
                common.fmt_ratio(dyg.get("median_s"), ref.get("median_s")),
                common.fmt_ms(pred.get("median_s")),
                common.fmt_ratio(pred.get("median_s"), ref.get("median_s")),
                " / ".join(common.fmt_ms(r.get("median_cpu_s")) for r in (ref, dyg, pred)),
                " / ".join(common.fmt_mib(r.get("peak_rss_mib")) for r in (ref, dyg, pred)),
                " / ".join(str(r.get("detections", "-")) for r in (ref, dyg, pred)),
            ]
        )
    notes = []
    export = results.get(("export", "paddle-export"))
    if export and "export_s" in export:
        notes.append(
            f"export (to_static + jit.save): {export['export_s']:.1f} s, "
            f"peak RSS {export['peak_rss_mib']:.0f} MiB"
        )
    return common.finish(SCRIPT, args, header, rows, results, notes)


if __name__ == "__main__":
    sys.exit(main())
