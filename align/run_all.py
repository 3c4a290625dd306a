"""Run the Paddle side of every alignment step against the torch logs and print one table.

    python -m align.run_all             # Paddle side vs the committed logs in align/logs
    python -m align.run_all --torch     # regenerate the torch logs first (needs requirements-torch.txt)

Exit status 1 when any row FAILs. Each step keeps its own defaults (thresholds, SGD settings); run
a step alone (``python -m align.step4_loss --side paddle --loss-rel 1e-5``) to change them.
"""

import argparse
import importlib
import json
import os
import platform
import sys
import time

from align import common, report

# (log name, step module, extra arguments). step5_backward_float64 repeats step 5 with both
# models in double precision: it tells float32 rounding apart from a difference of the port.
STEPS = (
    ("step1_backbone", "step1_backbone", ()),
    ("step2_fpn", "step2_fpn", ()),
    ("step3_head", "step3_head", ()),
    ("step4_loss", "step4_loss", ()),
    ("step5_backward", "step5_backward", ()),
    ("step5_backward_float64", "step5_backward", ("--dtype", "float64")),
    ("step6_detections", "step6_detections", ()),
    ("step7_eval_data", "step7_eval_data", ()),
    ("step8_metric", "step8_metric", ()),
    ("step9_train_data", "step9_train_data", ()),
    ("step10_lr", "step10_lr", ()),
    ("step11_optimizer", "step11_optimizer", ()),
    ("step12_init", "step12_init", ()),
)
STEP_NAMES = tuple(name for name, _, _ in STEPS)
MANIFEST = "MANIFEST.json"


def step_module(name):
    return importlib.import_module(f"align.{name}")


def step_args(module, extra, side, logs, out, seed, config):
    return module.build_parser().parse_args(
        [
            "--side",
            side,
            "--logs",
            logs,
            "--out",
            out,
            "--seed",
            str(seed),
            "--config",
            config,
            *extra,
        ]
    )


def selected(names):
    return [entry for entry in STEPS if entry[0] in names]


def regenerate_torch(logs, seed, names=STEP_NAMES):
    """Write the steps' torch logs into ``logs`` and a manifest (seed, checksum, versions, sizes)."""
    import mmcv
    import mmdet
    import mmengine
    import numpy as np
    import torch

    from align.torch_ref import TorchContext

    ctx = TorchContext(seed)
    for name, module_name, extra in selected(names):
        module = step_module(module_name)
        start = time.perf_counter()
        args = step_args(module, extra, "torch", logs, logs, seed, common.DEFAULT_CONFIG)
        common.run_side(module, args, ctx)
        print(f"torch {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    files = {}
    for name in STEP_NAMES:
        path = common.log_path(logs, name, "torch")
        if not os.path.isfile(path):
            continue
        files[os.path.basename(path)] = {
            "bytes": os.path.getsize(path),
            "sha256": common.sha256_of_file(path),
        }
    from align import weights

    manifest = {
        "weights_seed": seed,
        "weights_sha256": weights.checksum(ctx.state_dict or weights.generate_state_dict(seed)),
        "versions": {
            "torch": torch.__version__,
            "mmdet": mmdet.__version__,
            "mmengine": mmengine.__version__,
            "mmcv": mmcv.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }
    with open(os.path.join(logs, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def run_paddle(logs, out, seed, config, names=STEP_NAMES):
    """Rows of the steps' Paddle sides; a step that raises becomes one FAIL row (with the error)."""
    from align.paddle_ref import PaddleContext

    ctx = PaddleContext(seed, config)
    rows = []
    for name, module_name, extra in selected(names):
        module = step_module(module_name)
        start = time.perf_counter()
        try:
            args = step_args(module, extra, "paddle", logs, out, seed, config)
            rows += common.run_side(module, args, ctx)
        except Exception as exc:  # a missing piece of the port must not hide the other steps
            rows.append(
                report.Row(
                    name,
                    "step raised",
                    float("nan"),
                    float("nan"),
                    "-",
                    report.STATUS_FAIL,
                    f"{type(exc).__name__}: {exc}",
                )
            )
        print(f"paddle {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch", action="store_true", help="regenerate the torch logs first")
    parser.add_argument("--logs", default=common.DEFAULT_LOGS, help="torch logs folder")
    parser.add_argument("--out", default=None, help="Paddle logs and diff logs (default --logs)")
    parser.add_argument("--seed", type=int, default=common.weights.DEFAULT_SEED)
    parser.add_argument("--config", default=common.DEFAULT_CONFIG)
    parser.add_argument("--steps", nargs="+", choices=STEP_NAMES, default=list(STEP_NAMES))
    parser.add_argument(
        "--torch-only", action="store_true", help="with --torch: skip the Paddle side"
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.torch:
        manifest = regenerate_torch(args.logs, args.seed, args.steps)
        print(f"torch logs: {manifest['total_bytes'] / 1e6:.2f} MB in {args.logs}")
        if args.torch_only:
            return 0
    rows = run_paddle(args.logs, args.out or args.logs, args.seed, args.config, args.steps)
    print(report.format_table(rows))
    if args.json:
        report.write_rows_json(rows, args.json)
    failed = [r for r in rows if r.status == report.STATUS_FAIL]
    info = [r for r in rows if r.status == report.STATUS_INFO]
    print(
        f"\n{len(rows) - len(failed) - len(info)} of {len(rows)} rows PASS, {len(info)} INFO, "
        f"{len(failed)} FAIL"
    )
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main())
