"""The driver side of the model benchmarks: one subprocess per measurement, tables of ratios.

Every measurement (one side, one case) runs in a fresh ``python -m bench.<script> --worker ...``
process so that peak resident memory is that measurement's own and the two frameworks never share a
process (their OpenMP runtimes and allocators would interfere). The driver (the same script without
``--worker``) runs the workers one after the other with the thread count in their environment
(:func:`thread_env`), collects the JSON line each prints last (:mod:`bench.timing`), and prints a
markdown table with ratios ours / reference.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.timing import RESULT_PREFIX, SIDES

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_THREADS = 2
DEFAULT_WARMUP = 2
DEFAULT_REPEATS = 5

SIDE_LABELS = {"torch": "mmdet 3.3.0 (torch)", "paddle": "ours (Paddle)"}


# --- threads -------------------------------------------------------------------------------------


def thread_env(threads: int):
    """Environment of a worker: the parent's plus the OpenMP / MKL thread counts."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CPU_NUM"):
        env[key] = str(threads)
    env["PYTHONPATH"] = REPO_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ info lines
    return env


# --- driver --------------------------------------------------------------------------------------


def run_worker(script: str, worker_args, threads: int, timeout_s: float | None = None):
    """Run ``python -m bench.<script> --worker <worker_args>`` in a fresh process; its result dict.

    The worker's stderr passes through (progress, warnings); a failed worker gives
    ``{"error": <last lines of its output>}`` instead of raising, so one side failing still lets
    the other's numbers be printed.
    """
    cmd = [sys.executable, "-m", f"bench.{script}", "--worker", *map(str, worker_args)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(
        cmd,
        cwd=REPO_DIR,
        env=thread_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return {"error": f"worker exited {proc.returncode}: {tail}"}


def base_parser(description: str):
    """Arguments shared by every benchmark script (driver and worker)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads, both sides")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fresh workers per side, alternating sides (times pooled): for a loaded machine",
    )
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=SIDES,
        default=list(SIDES),
        help="which implementations to run",
    )
    parser.add_argument("--seed", type=int, default=None, help="weight seed (align.weights)")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    return parser


def load_average():
    """The 1-, 5- and 15-minute load averages (None where unavailable)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def machine_info():
    """One line: CPU model, cores, Python, framework versions (read without importing them)."""
    from importlib import metadata

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for dist in ("paddlepaddle", "paddledet", "torch", "mmdet", "mmcv-lite", "numpy"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} -")
    return f"{cpu}, {os.cpu_count()} cores; Python {sys.version.split()[0]}; " + ", ".join(versions)


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def fmt_mib(mib):
    return "-" if mib is None else f"{mib:.0f}"


def fmt_ratio(ours, ref):
    if ours is None or ref is None or ref == 0:
        return "-"
    return f"{ours / ref:.2f}x"


def markdown_table(header, rows):
    """A markdown table from a header list and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_rows(results: dict, cases, extra=None):
    """Rows of :data:`COMPARISON_HEADER`: wall and CPU medians, peak RSS, each with ours / ref.

    ``results[(case, side)]`` is a worker's result dict; ``extra(case, ref, ours)`` may return more
    cells for the row.
    """
    rows = []
    for case in cases:
        ref = results.get((case, "torch"), {})
        ours = results.get((case, "paddle"), {})
        row = [case]
        for key, fmt in (
            ("median_s", fmt_ms),
            ("median_cpu_s", fmt_ms),
            ("peak_rss_mib", fmt_mib),
        ):
            row += [fmt(ref.get(key)), fmt(ours.get(key)), fmt_ratio(ours.get(key), ref.get(key))]
        if extra is not None:
            row += extra(case, ref, ours)
        rows.append(row)
    return rows


COMPARISON_HEADER = [
    "case",
    "mmdet ms",
    "ours ms",
    "ours/ref",
    "mmdet CPU ms",
    "ours CPU ms",
    "CPU ours/ref",
    "mmdet peak RSS MiB",
    "ours peak RSS MiB",
    "RSS ours/ref",
]


def report_errors(results: dict):
    """Lines naming each failed measurement (printed under the table)."""
    return [
        f"- {case} / {side}: {res['error']}"
        for (case, side), res in results.items()
        if "error" in res
    ]


def write_json(path: str, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def merge_rounds(rounds):
    """One result from the results of several rounds of the same measurement.

    Times of all rounds are pooled (median over all of them), RSS values take their maximum;
    other keys come from the last round. A failed round makes the merged result the error.
    """
    for res in rounds:
        if "error" in res:
            return res
    merged = dict(rounds[-1])
    if "times_s" in merged:
        times = [t for res in rounds for t in res["times_s"]]
        cpu = [t for res in rounds for t in res.get("cpu_times_s", [])]
        faults = [n for res in rounds for n in res.get("minor_faults", [])]
        if faults:
            merged.update(minor_faults=faults, median_minor_faults=statistics.median(faults))
        merged.update(
            times_s=times,
            cpu_times_s=cpu,
            median_s=statistics.median(times),
            median_cpu_s=statistics.median(cpu) if cpu else None,
            min_s=min(times),
            max_s=max(times),
            rounds=len(rounds),
        )
    for key in ("peak_rss_mib", "phase_peak_rss_mib", "base_rss_mib"):
        values = [res[key] for res in rounds if res.get(key) is not None]
        if values:
            merged[key] = max(values)
    for key in ("ghm_forward_s", "nms_s"):
        values = [res[key] for res in rounds if res.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    return merged


def run_worker_logged(script: str, tag: str, worker_args, threads: int) -> dict:
    """:func:`run_worker` with progress on stderr: the load before, then the result (median and
    peak RSS, the export time, or the error). The result gets ``load_before``."""
    load = load_average()
    print(f"{tag} (load {load}) ...", file=sys.stderr)
    res = run_worker(script, worker_args, threads)
    res["load_before"] = load
    if "error" in res:
        print(f"{tag} FAILED: {res['error']}", file=sys.stderr)
    elif "median_s" in res:
        print(
            f"{tag}: median {res['median_s'] * 1000:.0f} ms "
            f"(CPU {res['median_cpu_s'] * 1000:.0f} ms"
            + (
                f", {res['median_minor_faults']:.0f} page faults"
                if "median_minor_faults" in res
                else ""
            )
            + f"), peak RSS {res['peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
        )
    else:
        print(f"{tag}: export {res['export_s']:.1f} s", file=sys.stderr)
    return res


def drive(script: str, args, cases, extra_worker_args=(), variants=None):
    """Run one worker per (case, side) and round; returns ``{(case, side): merged result}``.

    Cases are outermost; within a case the sides alternate round after round (torch, paddle,
    torch, paddle, ...), so that on a shared machine both see the same background load. Progress
    goes to stderr; each worker gets ``--side``, ``--case``, the timing arguments and
    ``extra_worker_args``. ``variants`` ({name: (side, more worker args)}) adds workers that run
    in the same rounds after the sides; their results are keyed ``(case, name)``.
    """
    runs = [(side, side, []) for side in args.sides]
    runs += [(name, side, list(more)) for name, (side, more) in (variants or {}).items()]
    results = {}
    for case in cases:
        per_run = {name: [] for name, _, _ in runs}
        for round_index in range(args.rounds):
            for name, side, more in runs:
                worker_args = ["--side", side, "--case", case, "--warmup", args.warmup]
                worker_args += ["--repeats", args.repeats, *extra_worker_args, *more]
                if args.seed is not None:
                    worker_args += ["--seed", args.seed]
                tag = f"[{script}] {case} / {name} round {round_index + 1}/{args.rounds}"
                per_run[name].append(run_worker_logged(script, tag, worker_args, args.threads))
        for name, rounds in per_run.items():
            results[(case, name)] = merge_rounds(rounds)
            results[(case, name)]["round_results"] = rounds
    return results


def finish(script: str, args, header, rows, results, notes=()):
    """Print the table (with machine, threads, load) and write ``--json`` when asked."""
    print(
        f"\n{script}: {args.threads} threads both sides, {args.rounds} round(s) of "
        f"{args.warmup} warm-up + {args.repeats} timed calls per side, median"
    )
    print(machine_info())
    print(f"load average at the end: {load_average()}\n")
    print(markdown_table(header, rows))
    for line in [*notes, *report_errors(results)]:
        print(line)
    if args.json:
        write_json(
            args.json,
            {
                "script": script,
                "threads": args.threads,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "rounds": args.rounds,
                "machine": machine_info(),
                "results": [
                    {"case": case, "side": side, **res} for (case, side), res in results.items()
                ],
            },
        )
    return int(bool(report_errors(results)))
