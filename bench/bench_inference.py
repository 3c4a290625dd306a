"""Inference per image: mmdet eager (torch) against ours in dygraph and as an exported predictor.

Every variant includes post-processing (score threshold 0.05, top 1000 per level, class-aware NMS
0.5, 100 per image) and rescaling; batch 1, same weights and image. The reference's NMS is the
pure-torch greedy NMS of ``align.torch_ref`` (mmcv-lite has no compiled ops); its time is reported
separately (``NMS stand-in``).

Our variants (``--modes``):

- ``eager``: the dygraph model;
- ``predictor``: exported once per run by a separate worker (``paddle.jit.to_static`` with
  ``full_graph=True`` + ``paddle.jit.save``), run by ``paddle.inference`` with
  ``ppdet_ghm.compat.inference_config`` (oneDNN on, as ``ppdet-ghm infer --model_dir``) and
  ``set_cpu_math_library_num_threads``;
- ``predictor-plain``: the same exported model with oneDNN off (Paddle's plain CPU kernels);
- ``onnx``: the same exported model converted as ``ppdet-ghm export --onnx`` does
  (``ppdet_ghm.engine.onnx_export``: paddle2onnx 2.1.0, opset 17, NMS in the graph), run by ONNX
  Runtime's CPU provider through ``ppdet_ghm.engine.onnx_predictor.OnnxDetector`` with ``threads``
  intra-op threads (batch-1 cases only).

The predictors' timings include copying the inputs in and the detections out.

    python -m bench.bench_inference                      # 800x1333, 2 threads
    python -m bench.bench_inference --cases b1_512 --repeats 3
    python -m bench.bench_inference --modes predictor onnx   # mmdet eager, predictor, ONNX Runtime
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

from bench import driver, inputs, timing

SCRIPT = "bench_inference"
OUR_MODES = ("eager", "predictor", "predictor-plain", "onnx")
MODES = ("eager", "export", "predictor", "predictor-plain", "onnx")
LABELS = {
    ("torch", "eager"): "mmdet eager (torch)",
    ("paddle", "eager"): "ours dygraph",
    ("paddle", "predictor"): "ours exported predictor (oneDNN)",
    ("paddle", "predictor-plain"): "ours exported predictor, oneDNN off",
    ("paddle", "onnx"): "ours ONNX Runtime (export --onnx, CPU provider)",
}


def worker(args):
    timing.set_framework_threads(args.side, args.threads)
    if args.side == "torch":
        from bench import torch_side as side
    else:
        from bench import paddle_side as side
    if args.mode == "export":
        model = side.build(args.seed)
        start = time.perf_counter()
        side.export(model, args.export_dir)
        result = {"export_s": time.perf_counter() - start}
        if args.with_onnx:
            start = time.perf_counter()
            side.convert_onnx(args.export_dir)
            result["onnx_convert_s"] = time.perf_counter() - start
        return {**result, "peak_rss_mib": timing.process_peak_rss_mib()}
    batch = inputs.make_batch(args.case)
    if args.mode.startswith("predictor"):
        step = side.predictor_step(
            args.export_dir, batch, args.threads, onednn=args.mode == "predictor"
        )
    elif args.mode == "onnx":
        step = side.onnx_step(args.export_dir, batch, args.threads)
    else:
        step = side.infer_step(side.build(args.seed), batch)
    nms_timer = timing.SectionTimer()
    if args.side == "torch":
        side.hook_nms(nms_timer)
    detections = []

    def timed():
        detections.append(step())

    res = timing.measure(timed, args.warmup, args.repeats, after_warmup=nms_timer.reset)
    res["detections"] = detections[-1]
    if args.side == "torch":
        res["nms_s"] = nms_timer.total_s / args.repeats
    return res


def _measurements(args):
    """(key, side, mode) of every worker to run in one round, in order."""
    plan = []
    if "paddle" in args.sides:
        if any(mode.startswith("predictor") or mode == "onnx" for mode in args.modes):
            plan.append(("export", "paddle", "export"))
    for case in args.cases:
        if "torch" in args.sides:
            plan.append((case, "torch", "eager"))
        if "paddle" in args.sides:
            plan += [(case, "paddle", mode) for mode in args.modes]
    return plan


def _run(args, export_dir):
    plan = _measurements(args)
    rounds = {}
    for round_index in range(args.rounds):
        for key, side, mode in plan:
            if mode == "export" and round_index > 0:
                continue
            worker_args = ["--side", side, "--mode", mode, "--export-dir", export_dir]
            worker_args += ["--seed", args.seed, "--warmup", args.warmup]
            worker_args += ["--repeats", args.repeats]
            if mode != "export":
                worker_args += ["--case", key]
            elif "onnx" in args.modes:
                worker_args += ["--with-onnx"]
            tag = f"[{SCRIPT}] {key} / {side} {mode} round {round_index + 1}/{args.rounds}"
            res = driver.run_worker_logged(SCRIPT, tag, worker_args, args.threads)
            rounds.setdefault((key, f"{side}:{mode}"), []).append(res)
    return {key: driver.merge_rounds(res) for key, res in rounds.items()}


def main(argv=None):
    parser = driver.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--mode", choices=MODES, default="eager", help=argparse.SUPPRESS)
    parser.add_argument("--export-dir", default=None, help="keep the exported models here")
    parser.add_argument("--with-onnx", action="store_true", help=argparse.SUPPRESS)  # worker
    parser.add_argument("--cases", nargs="+", choices=sorted(inputs.CASES), default=["b1_800x1333"])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=OUR_MODES,
        default=list(OUR_MODES),
        help="our variants (see the module docstring)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        from align.weights import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    if args.worker:
        timing.emit_result(worker(args))
        return 0

    export_dir = args.export_dir or tempfile.mkdtemp(prefix="ppdet_ghm_bench_export_")
    os.makedirs(export_dir, exist_ok=True)
    try:
        results = _run(args, export_dir)
    finally:
        if args.export_dir is None:
            shutil.rmtree(export_dir, ignore_errors=True)

    header = [
        "case",
        "implementation",
        "median ms",
        "ours/ref",
        "CPU ms",
        "CPU ours/ref",
        "peak RSS MiB",
        "RSS ours/ref",
        "detections",
    ]
    rows = []
    for case in args.cases:
        ref = results.get((case, "torch:eager"), {})
        variants = [("torch", "eager")] * ("torch" in args.sides)
        variants += [("paddle", m) for m in args.modes] * ("paddle" in args.sides)
        for side, mode in variants:
            res = results.get((case, f"{side}:{mode}"), {})
            label = LABELS[(side, mode)]
            if side == "torch" and res.get("nms_s") is not None:
                label += f", of which NMS stand-in {driver.fmt_ms(res['nms_s'])} ms"
            rows.append(
                [
                    case,
                    label,
                    driver.fmt_ms(res.get("median_s")),
                    driver.fmt_ratio(res.get("median_s"), ref.get("median_s")),
                    driver.fmt_ms(res.get("median_cpu_s")),
                    driver.fmt_ratio(res.get("median_cpu_s"), ref.get("median_cpu_s")),
                    driver.fmt_mib(res.get("peak_rss_mib")),
                    driver.fmt_ratio(res.get("peak_rss_mib"), ref.get("peak_rss_mib")),
                    str(res.get("detections", "-")),
                ]
            )
    notes = []
    export = results.get(("export", "paddle:export"))
    if export and "export_s" in export:
        onnx_note = (
            f", ONNX conversion {export['onnx_convert_s']:.1f} s"
            if "onnx_convert_s" in export
            else ""
        )
        notes.append(
            f"export (to_static + jit.save): {export['export_s']:.1f} s{onnx_note}, "
            f"peak RSS {export['peak_rss_mib']:.0f} MiB"
        )
    return driver.finish(SCRIPT, args, header, rows, results, notes)


if __name__ == "__main__":
    sys.exit(main())
