"""Run the Paddle side of every step under several CPU kernel paths and thread counts; report the
worst value of each row and the margin left to its threshold.

    python -m align.kernel_paths                      # all settings, ~10 min on 2 cores
    python -m align.kernel_paths --settings 1-thread mkl-avx2 --steps step4_loss

float32 results depend on the kernels a CPU runs: the BLAS (MKL) code path picked at run time for
the instruction set (AVX-512 / AVX2 / SSE, Intel or AMD), the number of threads that split a
reduction, oneDNN's ISA. The torch logs are fixed, so running our side under each setting shows
how far each row moves on another machine. Each setting runs ``python -m align.run_all`` in a
fresh process with the environment variables below (read when the libraries load). The margin of
a row is threshold / worst value (``report.Row.margin``); a chained threshold is chosen so that
this margin stays >= 5 under every setting.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile

from align import common, report, run_all

# name -> environment. MKL_ENABLE_INSTRUCTIONS caps the ISA of MKL's dispatched kernels (an AMD
# CPU or an older Intel one runs the AVX2 / SSE paths); MKL_CBWR=COMPATIBLE is MKL's most
# portable (non-vectorised-order) mode; ONEDNN_MAX_CPU_ISA caps oneDNN's JIT kernels.
SETTINGS = {
    "1-thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "2-threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "mkl-avx2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-sse42": {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
    "mkl-cbwr-compatible": {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
    "onednn-avx2": {
        "OMP_NUM_THREADS": "2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "DNNL_MAX_CPU_ISA": "AVX2",
    },
}


def run_setting(name: str, steps, out_dir: str):
    """Rows of ``run_all`` (Paddle side) under setting ``name``, in a fresh process."""
    env = dict(os.environ, **SETTINGS[name])
    json_path = os.path.join(out_dir, f"{name}.json")
    cmd = [
        sys.executable,
        "-m",
        "align.run_all",
        "--out",
        os.path.join(out_dir, name),
        "--json",
        json_path,
        "--steps",
        *steps,
    ]
    proc = subprocess.run(cmd, env=env, cwd=common.REPO_DIR, capture_output=True, text=True)
    if not os.path.isfile(json_path):
        raise RuntimeError(f"setting {name}: run_all wrote no rows\n{proc.stdout}\n{proc.stderr}")
    return report.read_rows_json(json_path)


def worst_rows(rows_by_setting: dict):
    """Per (step, quantity): threshold, statuses, worst margin, the value that set it, where."""
    table = {}
    for setting, rows in rows_by_setting.items():
        for row in rows:
            key = (row.step, row.quantity)
            entry = table.setdefault(
                key,
                {
                    "threshold": row.threshold,
                    "statuses": set(),
                    "margin": None,
                    "worst": "-",
                    "at": "-",
                },
            )
            entry["statuses"].add(row.status)
            if row.margin is not None and (entry["margin"] is None or row.margin < entry["margin"]):
                entry["margin"], entry["worst"], entry["at"] = row.margin, row.worst, setting
    return table


def format_worst(table: dict):
    lines = [
        "| step | quantity | threshold | status under every setting | worst value | margin | at |",
        "|---|---|---|---|---|---|---|",
    ]
    for (step, quantity), entry in table.items():
        status = "/".join(sorted(entry["statuses"]))
        margin = entry["margin"]
        text = "-" if margin is None else ("inf" if math.isinf(margin) else f"{margin:.3g}")
        cells = [
            step,
            quantity,
            entry["threshold"],
            status,
            entry["worst"] or "-",
            text,
            entry["at"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--steps", nargs="+", choices=run_all.STEP_NAMES, default=list(run_all.STEP_NAMES)
    )
    parser.add_argument("--out", default=None, help="folder for the logs (default: a temp dir)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="align_kernel_paths_")
    rows_by_setting = {}
    for name in args.settings:
        rows_by_setting[name] = run_setting(name, args.steps, out)
        failed = [r for r in rows_by_setting[name] if r.status == report.STATUS_FAIL]
        print(f"{name}: {len(rows_by_setting[name])} rows, {len(failed)} FAIL", file=sys.stderr)
    print(format_worst(worst_rows(rows_by_setting)))
    return int(
        any(report.STATUS_FAIL in e["statuses"] for e in worst_rows(rows_by_setting).values())
    )


if __name__ == "__main__":
    sys.exit(main())
