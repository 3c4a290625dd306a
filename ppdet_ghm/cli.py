"""``ppdet-ghm`` (also ``python -m ppdet_ghm``): the command line of the pipeline.

Sub-commands, with PaddleDetection's familiar flags (``-c CONFIG``, ``-o key=value`` overrides
with dotted keys and YAML values as ppdet's ``tools/*.py``, ``--eval``, ``-r/--resume``,
``--use_vdl``, ``--output_dir``)::

    ppdet-ghm train  -c configs/demo.yml [--eval] [-r output/demo/3] [--use_vdl] [--output_dir D]
    ppdet-ghm eval   -c configs/demo.yml --weights output/demo/model_final [--output_dir D]
    ppdet-ghm eval   --json bbox.json --gt instances_val.json          # no model: COCO eval only
    ppdet-ghm infer  -c configs/demo.yml --weights W --infer_dir imgs/ [--draw_threshold 0.5]
    ppdet-ghm infer  --model_dir output/demo/export --infer_img a.jpg  # exported model, predictor
    ppdet-ghm infer  --onnx output/demo/export/model.onnx --infer_dir imgs/  # ONNX Runtime (CPU)
    ppdet-ghm eval   --model_dir D | --onnx D/model.onnx  -c CONFIG | --gt GT.json --image_dir DIR
    ppdet-ghm export -c configs/demo.yml --weights W [--output_dir D] [--onnx]
    ppdet-ghm convert SRC.pth DST.pdparams [...]                       # ppdet_ghm.convert
    ppdet-ghm check-weights UNTRUSTED.pdparams [CLEAN.pdparams]        # no code executed
    ppdet-ghm make-demo-data [--out demo_data] [--seed 0] [--kind shapes|marks]
    ppdet-ghm demo                                                     # what `make demo` runs
    ppdet-ghm plot-gradients -c CONFIG -o weights=W                    # ppdet_ghm.analysis

Exit status: 0 on success, 2 on a usage error, 1 on an error of the run (message on stderr:
bad data, a non-finite loss, ...), 128 + the signal number when SIGINT/SIGTERM stopped training
after writing a checkpoint (130, 143; resume with ``-r auto``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from ppdet_ghm.builder import add_config_arguments, parse_overrides

__all__ = ["build_parser", "main", "parse_overrides"]

logger = logging.getLogger(__name__)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True):
    add_config_arguments(parser, required)
    parser.add_argument("--output_dir", default=None, help="where outputs go")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: all available)"
    )


def _add_weights_arg(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--weights",
        default=None,
        help="model weights (.pdparams path, suffix optional); default: the config's `weights`",
    )


def _add_image_args(parser: argparse.ArgumentParser):
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--infer_img", help="one image")
    group.add_argument("--infer_dir", help="a folder of images (jpg, jpeg, png, bmp)")
    parser.add_argument(
        "--draw_threshold", type=float, default=0.5, help="minimum score drawn (default 0.5)"
    )
    parser.add_argument(
        "--bad_image",
        choices=("skip", "error"),
        default="skip",
        help="an image that does not decode: skip it (reported by name, counted) or stop "
        "(default skip)",
    )


def _add_exported_model_args(parser: argparse.ArgumentParser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--model_dir", default=None, help="exported model folder (Paddle Python predictor)"
    )
    group.add_argument(
        "--onnx",
        default=None,
        metavar="MODEL_ONNX",
        help="model.onnx of `export --onnx`, run by ONNX Runtime on the CPU",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppdet-ghm",
        description="GHM RetinaNet on PaddleDetection: train, evaluate, infer, export, convert.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model")
    _add_config_args(p)
    p.add_argument("--eval", action="store_true", help="evaluate after every snapshot epoch")
    p.add_argument(
        "-r",
        "--resume",
        default=None,
        help="checkpoint to resume (path, no suffix), or 'auto': the latest complete one in the "
        "output folder (none: start anew)",
    )
    p.add_argument("--use_vdl", action="store_true", help="log to VisualDL (<output_dir>/vdl)")
    p.add_argument(
        "--ghm_log_interval",
        type=int,
        default=None,
        metavar="K",
        help="every K iterations, log each FPN level's GHM bin counts and acc_sum to train.log "
        "(and VisualDL with --use_vdl); the config key ghm_log_interval",
    )
    p.add_argument("--seed", type=int, default=None, help="seed Paddle, NumPy and Python")
    p.add_argument("--progress", action="store_true", help="progress bar")

    p = sub.add_parser(
        "eval",
        help="COCO-evaluate a model (or, with --json and --gt, a detections file)",
    )
    _add_config_args(p, required=False)
    _add_weights_arg(p)
    p.add_argument("--json", default=None, help="detections JSON to evaluate (no model)")
    p.add_argument(
        "--gt", default=None, help="ground-truth COCO JSON for --json, --model_dir or --onnx"
    )
    _add_exported_model_args(p)
    p.add_argument(
        "--image_dir",
        default=None,
        help="with --gt and --model_dir/--onnx: the folder of the images --gt names",
    )
    p.add_argument("--progress", action="store_true", help="progress bar")
    p.add_argument(
        "--bad_image",
        choices=("error", "skip"),
        default="error",
        help="an evaluation image that cannot be decoded: stop naming it (default), or leave it "
        "out of the evaluation (named in the log and metrics.json)",
    )

    p = sub.add_parser("infer", help="detect objects, draw them and write a detections JSON")
    _add_config_args(p, required=False)
    _add_weights_arg(p)
    _add_exported_model_args(p)
    _add_image_args(p)

    p = sub.add_parser("export", help="export a Paddle inference model (and ONNX with --onnx)")
    _add_config_args(p)
    _add_weights_arg(p)
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx beside it (paddle2onnx, opset 17, NMS in the graph; needs "
        "pip install 'ppdet-ghm[onnx]')",
    )

    from ppdet_ghm.convert import cli as convert_cli
    from ppdet_ghm.engine import safe_load

    p = sub.add_parser(
        "convert",
        help="convert a PyTorch checkpoint (mmdet RetinaNet-GHM, torchvision ResNet-50)",
        description=convert_cli.DESCRIPTION,
    )
    convert_cli.add_arguments(p)

    p = sub.add_parser(
        "check-weights",
        help="check a .pdparams/.pdopt without executing it; optionally write a clean copy",
        description=safe_load.DESCRIPTION,
    )
    safe_load.add_arguments(p)

    p = sub.add_parser(
        "make-demo-data", help="generate the demo's COCO-format data set (shapes, or marks)"
    )
    p.add_argument("--out", default="demo_data", help="output folder (default demo_data)")
    _add_demo_data_args(p)

    p = sub.add_parser("demo", help="the CPU demo: data, train, evaluate, draw (make demo)")
    from ppdet_ghm.engine import demo

    demo.add_arguments(p)

    try:
        from ppdet_ghm.analysis import plot_gradients
    except ImportError:  # optional: the analysis module is not installed
        plot_gradients = None
    if plot_gradients is not None:
        p = sub.add_parser("plot-gradients", help="the paper's gradient figures from a model")
        plot_gradients.add_arguments(p)
    return parser


def _add_demo_data_args(parser: argparse.ArgumentParser):
    from ppdet_ghm.data.demo_data import KIND_DEFAULTS, KINDS, DemoDataSpec

    defaults = DemoDataSpec()
    parser.add_argument(
        "--kind",
        "--data-kind",
        dest="data_kind",
        choices=KINDS,
        default=defaults.kind,
        help=f"which generated set (default {defaults.kind}; marks: other classes, colours and "
        "sizes, see ppdet_ghm.data.demo_data)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--min-size", type=int, default=defaults.min_size)
    max_sizes = ", ".join(f"{k} {v['max_size']}" for k, v in KIND_DEFAULTS.items())
    parser.add_argument(
        "--max-size", type=int, default=None, help=f"largest object side (default: {max_sizes})"
    )
    parser.add_argument("--image-format", choices=("jpg", "png"), default=defaults.image_format)


def _print_results(results, out_dir: str | None = None):
    from ppdet_ghm.engine.coco_eval import format_per_class_table

    print(results.summary)
    print()
    print("per-class AP (0.5:0.95):")
    print(format_per_class_table(results.per_class_ap))
    if out_dir:
        print(f"\ndetections and metrics: {out_dir}")


def _cmd_train(args) -> int:
    from ppdet_ghm.engine import tasks

    overrides = parse_overrides(args.opt)
    if args.ghm_log_interval is not None:
        overrides = {**(overrides or {}), "ghm_log_interval": args.ghm_log_interval}
    trainer = tasks.train(
        args.config,
        overrides=overrides,
        output_dir=args.output_dir,
        validate=args.eval,
        resume=args.resume,
        use_vdl=args.use_vdl,
        progress=args.progress,
        seed=args.seed,
        threads=args.threads,
    )
    print(f"checkpoints and train.log: {trainer.output_dir}")
    return 0


def _cmd_eval(args) -> int:
    from ppdet_ghm.engine import tasks
    from ppdet_ghm.engine.coco_eval import evaluate_detections

    if args.model_dir or args.onnx:
        return _eval_exported(args)
    if args.image_dir:
        raise _UsageError("eval --image_dir goes with --model_dir or --onnx")
    if args.json or args.gt:
        if not (args.json and args.gt):
            raise _UsageError("eval --json needs --gt (and --gt needs --json)")
        if args.config:
            raise _UsageError("eval: give either -c CONFIG or --json/--gt, not both")
        results = evaluate_detections(args.json, args.gt)
        _print_results(results)
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
                json.dump(results.to_dict(), f, indent=1)
        return 0
    if not args.config:
        raise _UsageError("eval needs -c CONFIG (or --json DETS --gt GT)")
    results = tasks.evaluate(
        args.config,
        weights=args.weights,
        overrides=parse_overrides(args.opt),
        output_dir=args.output_dir,
        progress=args.progress,
        threads=args.threads,
        bad_image=args.bad_image,
    )
    _print_results(results, args.output_dir)
    return 0


def _exported_detector(args):
    """The Paddle predictor of ``--model_dir`` or ONNX Runtime on ``--onnx``."""
    if args.onnx:
        from ppdet_ghm.engine.onnx_predictor import OnnxDetector

        return OnnxDetector(args.onnx, threads=args.threads)
    from ppdet_ghm.engine.predictor import ExportedDetector

    return ExportedDetector(args.model_dir, threads=args.threads)


def _eval_exported(args) -> int:
    from ppdet_ghm.engine import tasks

    if args.json or args.weights:
        raise _UsageError("eval: give --model_dir/--onnx without --json or --weights")
    if bool(args.config) == bool(args.gt) or (args.gt and not args.image_dir):
        raise _UsageError(
            "eval --model_dir/--onnx needs the set: -c CONFIG (its EvalDataset) or --gt GT.json "
            "--image_dir DIR"
        )
    ground_truth, image_dir = tasks.coco_eval_set(
        args.config,
        ground_truth=args.gt,
        image_dir=args.image_dir,
        overrides=parse_overrides(args.opt),
    )
    model_path = args.onnx or args.model_dir
    output_dir = args.output_dir or os.path.join(
        os.path.dirname(os.path.abspath(model_path)) if args.onnx else model_path,
        "eval_onnx" if args.onnx else "eval",
    )
    results = tasks.evaluate_exported(
        _exported_detector(args),
        ground_truth,
        image_dir,
        output_dir=output_dir,
        bad_image=args.bad_image,
        progress=args.progress,
    )
    _print_results(results, output_dir)
    return 0


def _cmd_infer(args) -> int:
    from ppdet_ghm.engine import tasks

    images, unreadable = tasks.readable_images(
        tasks.find_images(args.infer_img or args.infer_dir), args.bad_image
    )
    if args.model_dir or args.onnx:
        flag = "--onnx" if args.onnx else "--model_dir"
        if args.config or args.weights:
            raise _UsageError(f"infer: give either {flag} or -c CONFIG/--weights, not both")
        if args.onnx:
            output_dir = args.output_dir or tasks.onnx_infer_dir(args.onnx)
            records = tasks.predict_onnx(
                args.onnx,
                images,
                output_dir=output_dir,
                draw_threshold=args.draw_threshold,
                threads=args.threads,
            )
        else:
            output_dir = args.output_dir or os.path.join(args.model_dir, "infer")
            records = tasks.predict_exported(
                args.model_dir,
                images,
                output_dir=output_dir,
                draw_threshold=args.draw_threshold,
                threads=args.threads,
            )
    else:
        if not args.config:
            raise _UsageError("infer needs -c CONFIG (with --weights), --model_dir or --onnx")
        from ppdet_ghm.builder import load_config

        output_dir = args.output_dir or tasks.default_output_dir(load_config(args.config), "infer")
        records = tasks.infer(
            args.config,
            images,
            weights=args.weights,
            overrides=parse_overrides(args.opt),
            output_dir=output_dir,
            draw_threshold=args.draw_threshold,
            threads=args.threads,
        )
    shown = sum(r["score"] >= args.draw_threshold for r in records)
    skipped = f", {len(unreadable)} unreadable skipped" if unreadable else ""
    print(
        f"{len(images)} image(s){skipped}, {len(records)} detection(s), {shown} with score >= "
        f"{args.draw_threshold} drawn; images and detections.json in {output_dir}"
    )
    return 0


def _cmd_export(args) -> int:
    from ppdet_ghm.engine import tasks

    out = tasks.export(
        args.config,
        weights=args.weights,
        overrides=parse_overrides(args.opt),
        output_dir=args.output_dir,
        onnx=args.onnx,
    )
    print(
        f"inference model: {out}"
        + (f" (and {os.path.join(out, 'model.onnx')})" if args.onnx else "")
    )
    return 0


def _cmd_convert(args) -> int:
    from ppdet_ghm.convert import cli as convert_cli

    return convert_cli.run(args)


def _cmd_check_weights(args) -> int:
    from ppdet_ghm.engine import safe_load

    return safe_load.run(args)


def _cmd_make_demo_data(args) -> int:
    from tqdm import tqdm

    from ppdet_ghm.data.demo_data import DemoDataSpec, generate, validate

    spec = DemoDataSpec(
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        min_size=args.min_size,
        max_size=args.max_size,
        image_format=args.image_format,
        kind=args.data_kind,
    )
    with tqdm(total=spec.num_train + spec.num_val, desc="demo data", unit="img") as bar:
        generate(spec, args.out, progress=bar.update)
    summary = validate(args.out, spec)
    for split, counts in summary.items():
        print(
            f"{split}: {counts['images']} images, {counts['objects']} objects, "
            f"{counts['empty_images']} without objects"
        )
    print(f"written to {args.out} (annotations/instances_train.json, instances_val.json)")
    return 0


def _cmd_demo(args) -> int:
    from ppdet_ghm.engine import demo

    demo.run(args)
    return 0


def _cmd_plot_gradients(args) -> int:
    from ppdet_ghm.analysis import plot_gradients

    plot_gradients.run(args)
    return 0


class _UsageError(Exception):
    """A wrong combination of arguments (exit status 2)."""


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "infer": _cmd_infer,
    "export": _cmd_export,
    "convert": _cmd_convert,
    "check-weights": _cmd_check_weights,
    "make-demo-data": _cmd_make_demo_data,
    "demo": _cmd_demo,
    "plot-gradients": _cmd_plot_gradients,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppdet-ghm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s] %(name)s %(levelname)s: %(message)s",
        datefmt="%m/%d %H:%M:%S",
    )
    try:
        return _COMMANDS[args.command](args)
    except _UsageError as err:
        parser.error(str(err))  # exits with status 2
    except (FileNotFoundError, ValueError) as err:
        print(f"ppdet-ghm {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # training stopped on purpose: NaN loss (1), signal (128 + signum)
        status = getattr(err, "exit_status", None)
        if status is None:
            raise
        print(f"ppdet-ghm {args.command}: {err}", file=sys.stderr)
        return int(status)
    return 0
