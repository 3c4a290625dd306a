"""Soak run: train the demo config for many iterations and sample the resident memory.

Runs ``python -m ppdet_ghm train -c <config>`` with ``epoch`` raised to reach ``--iters``
iterations (the cosine schedule stretched to match), and every ``--interval`` seconds reads the
memory of the trainer and of each of its child processes (the DataLoader worker, a new one per
epoch, forked from the trainer). Writes into ``--out``:

- ``rss.csv`` per sample: ``seconds, iteration``, the resident set (``VmRSS``) of the trainer
  and of the workers, and ``total_mib``, the proportional set size (``Pss``) of all of them
  summed: a forked worker's RSS counts the pages it shares with the trainer again, so the sum of
  RSS grows with the trainer at each new worker although no memory is added; PSS splits shared
  pages between the processes that share them;
- ``rss.png``: the curves against the iteration;
- ``summary.json``: for the trainer's RSS and the tree's PSS after the warm-up (the first
  ``--warmup-iters`` iterations: allocator pools, every input shape seen once), the maximum over
  the last 20 % of the iterations against the maximum over the first 20 % (growth in percent),
  the least-squares slope, and pass/fail against ``--max-growth`` (5 %) for both.

``--summarize`` recomputes summary.json and the PNG from an existing ``rss.csv``.

    python -m bench.soak_rss --iters 2000 --out output/soak

The data is generated first when ``demo_data`` is missing (``ppdet-ghm make-demo-data``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

_ITER_LINE = re.compile(r"Epoch: \[(\d+)\]\s*\[\s*(\d+)/(\d+)\]")


def _memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, Pss) of one process in MiB; zeros when it is gone."""
    rss = pss = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024.0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return rss, pss


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _last_iteration(log_path: str, steps_per_epoch: int) -> int:
    """Iterations done according to the newest ``Epoch: [e] [ s/n]`` line of ``train.log``."""
    try:
        with open(log_path, errors="replace") as f:
            lines = f.readlines()[-50:]
    except OSError:
        return 0
    for line in reversed(lines):
        match = _ITER_LINE.search(line)
        if match:
            epoch, step, n = (int(g) for g in match.groups())
            return epoch * (n or steps_per_epoch) + step
    return 0


def _growth(rows: list[dict], key: str, window: float) -> dict:
    """Growth of ``key`` over ``rows`` (samples after the warm-up): the maximum in the last
    ``window`` share of the iterations against the maximum in the first one, in percent, and the
    least-squares slope in MiB per 1000 iterations. Maxima of equal windows compare the same
    phases (a new loader worker per epoch, allocator pools filling and emptying); a leak raises
    every later window."""
    first_it, last_it = rows[0]["iteration"], rows[-1]["iteration"]
    span = max(last_it - first_it, 1) * window
    early = [r[key] for r in rows if r["iteration"] <= first_it + span]
    late = [r[key] for r in rows if r["iteration"] >= last_it - span]
    its = np.array([r["iteration"] for r in rows], dtype=np.float64)
    values = np.array([r[key] for r in rows], dtype=np.float64)
    slope = float(np.polyfit(its, values, 1)[0]) * 1000 if len(rows) > 1 else 0.0
    return {
        "max_early_mib": round(max(early), 1),
        "max_late_mib": round(max(late), 1),
        "min_mib": round(float(values.min()), 1),
        "max_mib": round(float(values.max()), 1),
        "growth_percent": round(100.0 * (max(late) - max(early)) / max(early), 2),
        "slope_mib_per_1000_it": round(slope, 1),
    }


def summarize(rows: list[dict], warmup_iters: int, max_growth: float, window: float = 0.2) -> dict:
    """Trainer RSS and tree PSS after the warm-up: early vs late window maxima (:func:`_growth`);
    rows as in ``rss.csv``."""
    after = [r for r in rows if r["iteration"] >= warmup_iters]
    if len(after) < 2:
        raise ValueError(f"fewer than 2 samples after the warm-up ({warmup_iters} iterations)")
    trainer, total = _growth(after, "trainer_mib", window), _growth(after, "total_mib", window)
    return {
        "warmup_iters": warmup_iters,
        "window": window,
        "last_iteration": after[-1]["iteration"],
        "trainer_rss": trainer,
        "total_pss": total,
        "max_growth_percent": max_growth,
        "passed": max(trainer["growth_percent"], total["growth_percent"]) <= max_growth,
    }


def read_rows(path: str) -> list[dict]:
    """The samples of a ``rss.csv``."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot(rows: list[dict], path: str, summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (
        ("total_mib", "trainer + workers (PSS)"),
        ("trainer_mib", "trainer (RSS)"),
        ("workers_mib", "DataLoader worker (RSS)"),
    ):
        ax.plot(it, [r[key] for r in rows], label=label)
    ax.axvline(summary["warmup_iters"], color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("iteration")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(
        f"soak run: growth after warm-up {summary['trainer_rss']['growth_percent']:.2f} % "
        f"(trainer RSS), {summary['total_pss']['growth_percent']:.2f} % (all, PSS)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/demo.yml")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="of the config's data")
    parser.add_argument("--warmup-iters", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent")
    parser.add_argument("--out", default="output/soak")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--summarize", action="store_true", help="only summarise <out>/rss.csv (no training)"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        rows = read_rows(os.path.join(args.out, "rss.csv"))
        return _write_summary(args, rows, {"samples": len(rows)})

    epochs = -(-args.iters // args.steps_per_epoch)
    os.makedirs(args.out, exist_ok=True)
    if not os.path.isdir("demo_data"):
        subprocess.run([sys.executable, "-m", "ppdet_ghm", "make-demo-data"], check=True)
    train_dir = os.path.join(args.out, "train")
    cmd = [
        sys.executable, "-m", "ppdet_ghm", "train", "-c", args.config,
        "--output_dir", train_dir, "--threads", str(args.threads),
        "-o", f"epoch={epochs}",
        f"LearningRate.schedulers=[!CosineDecay {{max_epochs: {epochs}}}, "
        "!LinearWarmup {start_factor: 0.001, steps: 50}]",
    ]  # fmt: skip
    print(" ".join(cmd), flush=True)
    log = open(os.path.join(args.out, "train.stdout"), "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rows, start = [], time.time()
    log_path = os.path.join(train_dir, "train.log")
    with open(os.path.join(args.out, "rss.csv"), "w", newline="") as f:
        writer = csv.DictWriter(
            f, ["seconds", "iteration", "trainer_mib", "workers_mib", "total_mib"]
        )
        writer.writeheader()
        while proc.poll() is None:
            trainer_rss, trainer_pss = _memory_mib(proc.pid)
            workers = [_memory_mib(p) for p in _children(proc.pid)]
            row = {
                "seconds": round(time.time() - start, 1),
                "iteration": _last_iteration(log_path, args.steps_per_epoch),
                "trainer_mib": round(trainer_rss, 1),
                "workers_mib": round(sum(rss for rss, _ in workers), 1),
                "total_mib": round(trainer_pss + sum(pss for _, pss in workers), 1),
            }
            rows.append(row)
            writer.writerow(row)
            f.flush()
            time.sleep(args.interval)
    log.close()
    if proc.returncode != 0:
        print(f"training failed (exit {proc.returncode}); see {log.name}", file=sys.stderr)
        return 1
    extra = {"command": " ".join(cmd), "wall_s": round(time.time() - start, 1)}
    return _write_summary(args, rows, {**extra, "samples": len(rows)})


def _write_summary(args, rows: list[dict], extra: dict) -> int:
    summary = {**summarize(rows, args.warmup_iters, args.max_growth), **extra}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(rows, os.path.join(args.out, "rss.png"), summary)
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
