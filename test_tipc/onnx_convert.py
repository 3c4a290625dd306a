"""TIPC conversion step: paddle2onnx's command-line flags on our converter.

Paddle's TIPC paddle2onnx chain converts with ::

    paddle2onnx --model_dir=EXPORT_DIR --model_filename=model.pdmodel \
        --params_filename=model.pdiparams --save_file=EXPORT_DIR/model.onnx \
        --opset_version=11 --enable_onnx_checker=True

This script takes those flags and runs :func:`ppdet_ghm.engine.onnx_export.convert_export` (what
``ppdet-ghm export --onnx`` runs): paddle2onnx itself, then the repairs our detector needs (the
NonMaxSuppression limit, the group norms' epsilon) and the metadata that ONNX Runtime inference
checks. Values it cannot honour are a clear error instead of being ignored: another opset than
``ppdet_ghm.engine.onnx_export.OPSET``, other file names than the export's, the checker off.
"""

from __future__ import annotations

import argparse
import os
import sys

from test_tipc.tipc_args import str_to_bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="folder written by ppdet-ghm export")
    parser.add_argument("--model_filename", default="model.json")
    parser.add_argument("--params_filename", default="model.pdiparams")
    parser.add_argument("--save_file", default=None, help="default: <model_dir>/model.onnx")
    parser.add_argument("--opset_version", type=int, default=None)
    parser.add_argument("--enable_onnx_checker", type=str_to_bool, default=True)
    return parser


def check_supported(args: argparse.Namespace, opset: int) -> None:
    """ValueError naming the first flag value the converter does not implement."""
    if args.opset_version is not None and args.opset_version != opset:
        raise ValueError(
            f"--opset_version={args.opset_version} is not supported: ppdet-ghm converts to and "
            f"runs opset {opset}"
        )
    if os.path.basename(args.model_filename) not in ("model.json", "model.pdmodel"):
        raise ValueError(f"--model_filename={args.model_filename}: the export writes model.json")
    if os.path.basename(args.params_filename) != "model.pdiparams":
        raise ValueError(
            f"--params_filename={args.params_filename}: the export writes model.pdiparams"
        )
    if not args.enable_onnx_checker:
        raise ValueError(
            "--enable_onnx_checker=False is not supported: the model is always checked"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ppdet_ghm  # noqa: F401  (compat fixes, quiet ppdet import)
    from ppdet_ghm.engine import onnx_export

    try:
        check_supported(args, onnx_export.OPSET)
        path = onnx_export.convert_export(args.model_dir, args.save_file)
    except (ValueError, FileNotFoundError, onnx_export.MissingOnnxDependency) as err:
        print(f"onnx_convert: error: {err}", file=sys.stderr)
        return 2 if "not supported" in str(err) else 1
    print(f"ONNX model (opset {onnx_export.OPSET}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
