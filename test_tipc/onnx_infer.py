"""TIPC ONNX inference step: the flags of PaddleDetection's ``deploy/third_engine/onnx/infer.py``
on ONNX Runtime (CPU) through :func:`ppdet_ghm.engine.tasks.predict_onnx`.

Paddle's TIPC paddle2onnx chain runs ::

    python deploy/third_engine/onnx/infer.py --infer_cfg=EXPORT_DIR/infer_cfg.yml \
        --onnx_file=EXPORT_DIR/model.onnx --image_file=IMAGE

This script takes those flags (and ``--image_dir``), runs the same code as ``ppdet-ghm infer
--onnx``: drawn images and ``detections.json`` go to ``--output_dir`` (default
``<folder of the .onnx>/infer_onnx``), and one line per image is printed. The preprocessing is
the ``infer_cfg.yml`` stored in the ``.onnx`` file; ``--infer_cfg``, when given, must hold the
same settings (another export's ``infer_cfg.yml`` is an error, not silently ignored).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx_file", required=True, help="model.onnx of ppdet-ghm export --onnx")
    parser.add_argument("--infer_cfg", default=None, help="the export's infer_cfg.yml (checked)")
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--image_file", help="one image")
    images.add_argument("--image_dir", help="a folder of images")
    parser.add_argument("--cpu_threads", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score drawn")
    parser.add_argument("--output_dir", default=None, help="default: <onnx folder>/infer_onnx")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import yaml

    import ppdet_ghm  # noqa: F401  (compat fixes, quiet ppdet import)
    from ppdet_ghm.engine import onnx_export, tasks
    from ppdet_ghm.engine.onnx_predictor import check_onnx_model

    try:
        stored = check_onnx_model(args.onnx_file)
        if args.infer_cfg:
            with open(args.infer_cfg) as f:
                given = yaml.safe_load(f)
            if given != stored:
                raise ValueError(
                    f"{args.infer_cfg} differs from the infer_cfg.yml stored in {args.onnx_file}: "
                    "another export's?"
                )
        images = tasks.find_images(args.image_file or args.image_dir)
        output_dir = args.output_dir or tasks.onnx_infer_dir(args.onnx_file)
        records = tasks.predict_onnx(
            args.onnx_file,
            images,
            output_dir=output_dir,
            draw_threshold=args.threshold,
            threads=args.cpu_threads,
        )
    except (ValueError, FileNotFoundError, onnx_export.MissingOnnxDependency) as err:
        print(f"onnx_infer: error: {err}", file=sys.stderr)
        return 1
    per_image = Counter(r["file_name"] for r in records)
    for path in images:
        name = os.path.basename(path)
        shown = sum(r["score"] >= args.threshold for r in records if r["file_name"] == name)
        print(f"{name}: {per_image[name]} detection(s), {shown} with score >= {args.threshold}")
    print(f"{len(images)} image(s), {len(records)} detection(s); outputs in {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
