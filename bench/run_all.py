"""Run every model benchmark (train step, head loss, inference) with the same settings, in sequence.

Each benchmark prints its own markdown table; with ``--json-dir`` each also writes
``<json-dir>/<script>.json``. The GHM-loss micro-benchmark is separate:
``python -m bench.bench_ghm_loss``.

    python -m bench.run_all --repeats 5 --warmup 2 --json-dir bench/results
"""

import argparse
import os
import sys

from bench import bench_head_loss, bench_inference, bench_train_step, driver

SCRIPTS = {
    "train": bench_train_step,
    "loss": bench_head_loss,
    "inference": bench_inference,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=driver.DEFAULT_THREADS)
    parser.add_argument("--warmup", type=int, default=driver.DEFAULT_WARMUP)
    parser.add_argument("--repeats", type=int, default=driver.DEFAULT_REPEATS)
    parser.add_argument("--rounds", type=int, default=1, help="workers per side, alternating")
    parser.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), default=list(SCRIPTS))
    parser.add_argument("--json-dir", default=None, help="write one JSON file per benchmark here")
    args = parser.parse_args(argv)
    status = 0
    for name in args.only:
        module = SCRIPTS[name]
        sub = ["--threads", str(args.threads), "--warmup", str(args.warmup)]
        sub += ["--repeats", str(args.repeats), "--rounds", str(args.rounds)]
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            sub += ["--json", os.path.join(args.json_dir, f"{module.SCRIPT}.json")]
        status |= module.main(sub)
    return status


if __name__ == "__main__":
    sys.exit(main())
