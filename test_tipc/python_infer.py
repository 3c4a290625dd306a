"""TIPC inference step: PaddleDetection's ``deploy/python/infer.py`` flags on our Python predictor.

Paddle's TIPC scripts call the predictor as ::

    python deploy/python/infer.py --device=cpu --enable_mkldnn=False --cpu_threads=2 \
        --model_dir=EXPORT_DIR --batch_size=1 --image_dir=IMAGES --run_benchmark=False

This script takes those flags and runs :func:`ppdet_ghm.engine.tasks.predict_exported` (the same as
``ppdet-ghm infer --model_dir``): drawn images and ``detections.json`` go to ``--output_dir``
(default ``<model_dir>/infer``), and one line per image is printed. Unsupported values raise a
clear error instead of being ignored: ``--batch_size`` other than 1 (the predictor runs one image
at a time) and TensorRT run modes. ``--enable_mkldnn`` turns oneDNN on or off (CPU only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from test_tipc.tipc_args import str_to_bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="folder written by ppdet-ghm export")
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--image_dir", help="a folder of images")
    images.add_argument("--image_file", help="one image")
    parser.add_argument("--device", default="cpu", type=str.lower, choices=("cpu", "gpu"))
    parser.add_argument("--enable_mkldnn", type=str_to_bool, default=False)
    parser.add_argument("--cpu_threads", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--run_mode", default="paddle")
    parser.add_argument("--run_benchmark", type=str_to_bool, default=False)
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score drawn")
    parser.add_argument("--output_dir", default=None, help="default: <model_dir>/infer")
    return parser


def check_supported(args: argparse.Namespace) -> None:
    """ValueError naming the first option value this predictor does not implement."""
    if args.batch_size != 1:
        raise ValueError(f"--batch_size={args.batch_size} is not supported: the predictor runs 1")
    if args.run_mode != "paddle":
        raise ValueError(f"--run_mode={args.run_mode} is not supported (TensorRT): use paddle")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_supported(args)
    except ValueError as err:
        print(f"python_infer: error: {err}", file=sys.stderr)
        return 2

    import ppdet_ghm  # noqa: F401  (compat fixes, quiet ppdet import)
    from ppdet_ghm.engine import tasks

    images = tasks.find_images(args.image_file or args.image_dir)
    output_dir = args.output_dir or os.path.join(args.model_dir, "infer")
    start = time.perf_counter()
    records = tasks.predict_exported(
        args.model_dir,
        images,
        output_dir=output_dir,
        draw_threshold=args.threshold,
        threads=args.cpu_threads,
        use_gpu=args.device == "gpu",
        use_onednn=args.enable_mkldnn,
    )
    elapsed = time.perf_counter() - start
    per_image = Counter(r["file_name"] for r in records)
    for path in images:
        name = os.path.basename(path)
        shown = sum(r["score"] >= args.threshold for r in records if r["file_name"] == name)
        print(f"{name}: {per_image[name]} detection(s), {shown} with score >= {args.threshold}")
    print(f"{len(images)} image(s), {len(records)} detection(s); outputs in {output_dir}")
    if args.run_benchmark:
        # includes the predictor's construction: a coarse figure, not a benchmark
        print(f"wall time {elapsed:.3f} s ({1000 * elapsed / len(images):.1f} ms per image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
