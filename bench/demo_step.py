"""The CPU demo's training iteration (``configs/demo.yml``) with its convolutions on one thread and
on two (``paddle_conv_threads`` 1 / 2), each in a fresh process; and, with ``--profile``, where the
iteration's time goes, op by op (Paddle's profiler).

As the demo trains: one math thread (``--threads 1``), seed 0, the demo's first batches (read
before timing, so data loading is not timed; in ``make demo`` a loader process runs beside
training). Per setting: median seconds per iteration, and the last losses and a weight checksum,
which two settings that compute the same thing print identically.

    python -m bench.demo_step --iters 25                       # both settings
    python -m bench.demo_step --iters 25 --profile 2            # the op table of setting 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _worker(args) -> None:
    import paddle
    import paddle.profiler as profiler

    from ppdet_ghm.builder import load_config
    from ppdet_ghm.engine.tasks import setup_runtime
    from ppdet_ghm.engine.trainer import GHMTrainer

    overrides = {"epoch": 1, "worker_num": 0, "paddle_conv_threads": args.conv_threads}
    cfg = load_config(args.config, overrides)
    setup_runtime(cfg, threads=1, seed=0)
    trainer = GHMTrainer(cfg, "train", output_dir=args.output_dir)
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    loader = iter(trainer.loader)
    batches = [next(loader) for _ in range(args.warmup + args.iters)]

    def step(batch) -> float:
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    for batch in batches[: args.warmup]:
        step(batch)
    prof = None
    if args.profile:
        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
        prof.start()
    times, losses = [], []
    for batch in batches[args.warmup :]:
        start = time.perf_counter()
        losses.append(step(batch))
        times.append(time.perf_counter() - start)
        if prof:
            prof.step()
    if prof:
        prof.stop()
        prof.summary(op_detail=False, thread_sep=False, time_unit="ms")
    checksum = float(sum(p.abs().sum() for p in model.parameters()))
    record = {
        "conv_threads": args.conv_threads,
        "threaded_convs": trainer.threaded_convs,
        "median_s": statistics.median(times),
        "last_losses": losses[-3:],
        "weight_checksum": checksum,
        "paddle": paddle.__version__,
    }
    print("RESULT " + json.dumps(record))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yml")
    parser.add_argument("--iters", type=int, default=25, help="timed iterations (25)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first (5)")
    parser.add_argument("--profile", type=int, choices=(1, 2), default=None,
                        help="print the op table of this setting instead of timing both")  # fmt: skip
    parser.add_argument("--output-dir", default="output/bench_demo_step")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--conv-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    settings = [args.profile] if args.profile else [1, 2]
    results = []
    for threads in settings:
        command = [sys.executable, "-m", "bench.demo_step", "--worker", "--conv-threads",
                   str(threads), "--config", args.config, "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--output-dir", args.output_dir]  # fmt: skip
        if args.profile:
            command.append("--profile")
            command.append(str(args.profile))
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stderr[-3000:])
            raise SystemExit(f"the worker for paddle_conv_threads {threads} failed")
        lines = run.stdout.splitlines()
        if args.profile:
            print("\n".join(line for line in lines if not line.startswith("RESULT ")))
        results.append(json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:]))
    print(
        "| paddle_conv_threads | convolutions switched | s / iteration | last losses | checksum |"
    )
    print("|---|---:|---:|---|---:|")
    for r in results:
        losses = ", ".join(f"{v:.6f}" for v in r["last_losses"])
        print(f"| {r['conv_threads']} | {r['threaded_convs']} | {r['median_s']:.3f} | {losses} "
              f"| {r['weight_checksum']:.6f} |")  # fmt: skip
    if len(results) == 2:
        same = all(results[0][k] == results[1][k] for k in ("last_losses", "weight_checksum"))
        ratio = results[0]["median_s"] / results[1]["median_s"]
        print(f"demo step: 2 threads {ratio:.2f}x faster; same losses and weights: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
