"""Resident memory and time of dygraph inference over images of many sizes, with freed memory
kept for reuse (``keep_freed_memory``, what every CPU task does) and with glibc's defaults.

The question: training hands free heap pages back at every epoch's end
(``ppdet_ghm.engine.cpu_memory``), evaluation and inference do not; how much does a long run over
images of different sizes hold, and does it keep growing? Each setting runs in a fresh process:
the R50 RetinaNet-GHM (``configs/retinanet_ghm_r50_fpn_1x_coco.yml``, random weights, eval
mode, no gradients) on ``--images`` random images whose sides are random multiples of 32 between
``--min-side`` and ``--max-side`` (the same sequence in both), 2 threads. Per setting: the
resident set (``VmRSS``) after images 1, 10, 25, 50, 100, ... and the last, the process's peak
(``ru_maxrss``), and the wall time.

    python -m bench.infer_memory --images 60
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHECKPOINTS = (1, 10, 25, 50, 100, 200, 500, 1000)


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(args) -> None:
    import numpy as np
    import paddle

    from ppdet_ghm.builder import build_model
    from ppdet_ghm.engine import cpu_memory

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(args.threads)
    kept = cpu_memory.keep_freed_memory() if args.keep else False
    model = build_model(args.config)
    model.eval()
    rng = np.random.default_rng(args.seed)
    low, high = args.min_side // 32, args.max_side // 32 + 1
    rss, start = {}, time.perf_counter()
    with paddle.no_grad():
        for i in range(1, args.images + 1):
            h, w = (int(s) * 32 for s in rng.integers(low, high, size=2))
            image = rng.standard_normal((1, 3, h, w)).astype("float32")
            model(
                {
                    "image": paddle.to_tensor(image),
                    "im_shape": paddle.to_tensor([[h, w]], dtype="float32"),
                    "scale_factor": paddle.to_tensor([[1.0, 1.0]], dtype="float32"),
                }
            )
            if i in CHECKPOINTS or i == args.images:
                rss[i] = round(_rss_mib())
    record = {
        "keep_freed_memory": kept,
        "rss_after_image_mib": rss,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print("RESULT " + json.dumps(record))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/retinanet_ghm_r50_fpn_1x_coco.yml")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--min-side", type=int, default=480)
    parser.add_argument("--max-side", type=int, default=1312)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    rows = []
    for keep in (True, False):
        command = [sys.executable, "-m", "bench.infer_memory", "--worker", "--config", args.config,
                   "--images", str(args.images), "--min-side", str(args.min_side), "--max-side",
                   str(args.max_side), "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
        run = subprocess.run(command + (["--keep"] if keep else []), capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stderr[-3000:])
            raise SystemExit(f"the worker (keep_freed_memory {keep}) failed")
        line = next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT ") :]))
    counts = list(rows[0]["rss_after_image_mib"])
    print("| freed memory | " + " | ".join(f"RSS after {c}" for c in counts) + " | peak | time |")
    print("|---|" + "---:|" * (len(counts) + 2))
    for row in rows:
        label = "kept" if row["keep_freed_memory"] else "glibc's defaults"
        values = " | ".join(f"{row['rss_after_image_mib'][c]} MiB" for c in counts)
        print(f"| {label} | {values} | {row['peak_rss_mib']} MiB | {row['seconds']} s |")
    kept, default = rows
    print(
        f"infer memory: peak {kept['peak_rss_mib'] / default['peak_rss_mib']:.2f}x, "
        f"time {kept['seconds'] / default['seconds']:.2f}x with freed memory kept"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
