"""Forward + backward time of the GHM losses: ours, the per-bin loop port, mmdet, plain losses.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.bench_ghm_loss [--repeats 5] [--no-mmdet]

Contenders, all on the same tensors (seeded), median wall time of ``repeats`` forward+backward
calls after one warm-up call:

* ``ours``: :class:`ppdet_ghm.losses.GHMCLoss` / ``GHMRLoss`` (paper settings: GHM-C 30 bins,
  momentum 0.75; GHM-R 10 bins, mu 0.02, momentum 0.7), integer labels as the head passes them;
* ``loop``: the straightforward Paddle port of the reference's per-bin loop
  (``bench/ghm_loop_baseline.py``);
* ``mmdet``: mmdet 3.3.0's ``GHMC`` / ``GHMR`` on torch (skipped when not importable);
* ``plain``: Paddle's ``binary_cross_entropy_with_logits`` (GHM-C) / ``smooth_l1_loss`` (GHM-R) on
  the same tensor with a precomputed float target: the floor of any loss of this shape.

Cases: GHM-C on ``[120000 x 80]`` logits with 0.5 % positive anchors and 1 % ignored (with integer
labels and ``[N]`` weights as our head passes them, and in mmdet's form: float one-hot targets and
``[N, C]`` weights); RetinaNet's
five FPN levels P3-P7 for 2 images of 800 x 1333 (``ceil(800/s) * ceil(1344/s) * 9 * 2`` anchors,
s = 8 ... 128), each level alone and one iteration of all five (5 calls, one backward, as the head
does); GHM-R on ``[2000 x 4]``. Threads: ``--threads`` (default 2) for both frameworks.

Prints a markdown table and a machine / versions line. Not a test: numbers depend on the machine
and its load.
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time

NUM_CLASSES = 80


def _set_threads_env(threads):
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CPU_NUM"):
        os.environ[key] = str(threads)
    os.environ.setdefault("GLOG_minloglevel", "2")


def retina_level_sizes(height=800, width=1344, images=2, anchors=9):
    """Anchors per FPN level P3-P7 for ``images`` images padded to ``height x width``."""
    return [
        math.ceil(height / s) * math.ceil(width / s) * anchors * images
        for s in (8, 16, 32, 64, 128)
    ]


def ghmc_inputs(rng, num_anchors, num_classes=NUM_CLASSES):
    """Logits ~ N(-4, 2), 0.5 % positive anchors (random class), 1 % ignored, rest background."""
    import numpy as np

    logits = (rng.standard_normal((num_anchors, num_classes)) * 2.0 - 4.0).astype(np.float32)
    labels = np.full(num_anchors, num_classes, dtype=np.int64)
    positive = rng.random(num_anchors) < 0.005
    labels[positive] = rng.integers(0, num_classes, int(positive.sum()))
    label_weight = (rng.random(num_anchors) >= 0.01).astype(np.float32)
    return logits, labels, label_weight


def ghmr_inputs(rng, num=2000):
    import numpy as np

    pred = (rng.standard_normal((num, 4)) * 0.1).astype(np.float32)
    target = (rng.standard_normal((num, 4)) * 0.1).astype(np.float32)
    weight = np.ones((num, 4), dtype=np.float32)
    return pred, target, weight


def median_ms(step, repeats, warmup=1):
    """Medians of (wall, process CPU) time of ``step()`` in ms, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


# --- contenders: each returns a step() running forward + backward over a list of inputs ---------
def paddle_step(loss_fn, batches):
    import paddle

    tensors = [tuple(paddle.to_tensor(a) for a in batch) for batch in batches]

    def step():
        total = 0
        for pred, target, weight in tensors:
            pred = pred.detach()
            pred.stop_gradient = False
            total = total + loss_fn(pred, target, weight)
        total.backward()

    return step


def plain_bce_batches(batches):
    import numpy as np

    out = []
    for logits, labels, weight in batches:
        if labels.ndim == 2:  # already float targets
            out.append((logits, labels, weight))
            continue
        target = np.zeros_like(logits)
        rows = np.nonzero(labels < logits.shape[1])[0]
        target[rows, labels[rows]] = 1.0
        out.append((logits, target, weight))
    return out


def mmdet_form(batch):
    """``batch`` as mmdet's head hands it to GHMC: float one-hot targets, ``[N, C]`` weights."""
    import numpy as np

    ((logits, target, weight),) = plain_bce_batches([batch])
    return logits, target, np.repeat(weight[:, None], logits.shape[1], axis=1)


def torch_step(loss_fn, batches):
    import torch

    tensors = [tuple(torch.from_numpy(a) for a in batch) for batch in batches]

    def step():
        total = 0
        for pred, target, weight in tensors:
            pred = pred.detach().requires_grad_(True)
            total = total + loss_fn(pred, target, weight)
        total.backward()

    return step


def import_mmdet_losses():
    """mmdet's GHMC / GHMR, or None when torch / mmdet are missing."""
    import types

    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    if "mmcv._ext" not in sys.modules:  # mmcv-lite has no compiled ops; the losses need none

        class _NoExt(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return None

        sys.modules["mmcv._ext"] = _NoExt("mmcv._ext")
    try:
        from mmdet.models.losses.ghm_loss import GHMC, GHMR
    except ImportError:
        return None
    return GHMC, GHMR


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=3, help="for the slow loop contenders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-mmdet", action="store_true")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-bin loop port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every anchor count (a quick check: 0.05)"
    )
    args = parser.parse_args(argv)
    _set_threads_env(args.threads)

    import numpy as np
    import paddle
    import paddle.nn.functional as F

    import ppdet_ghm  # noqa: F401  (quiet ppdet import)
    from bench.ghm_loop_baseline import GHMCLoop, GHMRLoop
    from ppdet_ghm.losses import GHMCLoss, GHMRLoss

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(args.threads)
    mmdet_losses = None if args.no_mmdet else import_mmdet_losses()
    if mmdet_losses is not None:
        import torch

        torch.set_num_threads(args.threads)

    load_at_start = _load_average()
    rng = np.random.default_rng(args.seed)
    levels = [max(1, round(n * args.scale)) for n in retina_level_sizes()]
    flat = max(1, round(120000 * args.scale))
    flat_batch = ghmc_inputs(rng, flat)
    ghmc_cases = [
        (f"GHM-C [{flat} x 80]", [flat_batch]),
        (f"GHM-C [{flat} x 80], one-hot + [N, C] weights", [mmdet_form(flat_batch)]),
    ]
    level_batches = [ghmc_inputs(rng, n) for n in levels]
    for name, n, batch in zip(("P3", "P4", "P5", "P6", "P7"), levels, level_batches, strict=True):
        ghmc_cases.append((f"GHM-C {name} [{n} x 80]", [batch]))
    ghmc_cases.append(("GHM-C P3-P7, one iteration (5 calls)", level_batches))
    boxes = max(1, round(2000 * args.scale))
    ghmr_cases = [(f"GHM-R [{boxes} x 4]", [ghmr_inputs(rng, boxes)])]

    rows = []
    for case, batches in ghmc_cases:
        row = {"case": case}
        ours = GHMCLoss(bins=30, momentum=0.75)
        row["ours"] = median_ms(paddle_step(ours, batches), args.repeats)
        row["plain"] = median_ms(
            paddle_step(
                lambda x, t, w: F.binary_cross_entropy_with_logits(x, t, reduction="sum"),
                plain_bce_batches(batches),
            ),
            args.repeats,
        )
        if not args.no_loop:
            row["loop"] = median_ms(
                paddle_step(GHMCLoop(bins=30, momentum=0.75), batches), args.loop_repeats
            )
        if mmdet_losses is not None:
            row["mmdet"] = median_ms(
                torch_step(mmdet_losses[0](bins=30, momentum=0.75), batches), args.loop_repeats
            )
        rows.append(row)
        print(_format_row(row), flush=True)
    for case, batches in ghmr_cases:
        row = {"case": case}
        row["ours"] = median_ms(
            paddle_step(GHMRLoss(mu=0.02, bins=10, momentum=0.7), batches), args.repeats
        )
        row["plain"] = median_ms(
            paddle_step(lambda x, t, w: F.smooth_l1_loss(x, t, reduction="sum"), batches),
            args.repeats,
        )
        if not args.no_loop:
            row["loop"] = median_ms(
                paddle_step(GHMRLoop(mu=0.02, bins=10, momentum=0.7), batches), args.loop_repeats
            )
        if mmdet_losses is not None:
            row["mmdet"] = median_ms(
                torch_step(mmdet_losses[1](mu=0.02, bins=10, momentum=0.7), batches),
                args.loop_repeats,
            )
        rows.append(row)
        print(_format_row(row), flush=True)

    print()
    print(
        f"forward+backward, median of {args.repeats} (ours, plain) / {args.loop_repeats} "
        f"(loop, mmdet) repeats after 1 warm-up, ms; {args.threads} threads"
    )
    for title, which in (("wall time", 0), ("process CPU time (all threads)", 1)):
        print()
        print(f"{title}:")
        print()
        print(_table(rows, which))
    print()
    print(_machine_line(mmdet_losses is not None))
    print(f"load average (1 min) at start {load_at_start}, at end {_load_average()}")


def _load_average():
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _cell(value):
    return "-" if value is None else f"{value:.1f}"


def _ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "-"


def _format_row(row):
    cells = [row["case"]]
    cells += [f"{k}={v[0]:.1f}/{v[1]:.1f}" for k, v in row.items() if k != "case"]
    return " | ".join(cells) + "  (wall/cpu ms)"


def _table(rows, which):
    """Markdown table of the wall (which=0) or CPU (which=1) times."""
    head = (
        "| case | ours | per-bin loop (Paddle) | mmdet GHMC/GHMR (torch) | plain BCE / SmoothL1 "
        "(Paddle) | mmdet / ours | ours / plain |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ours, plain = row["ours"][which], row["plain"][which]
        loop = row["loop"][which] if "loop" in row else None
        mmdet = row["mmdet"][which] if "mmdet" in row else None
        cells = [
            row["case"],
            _cell(ours),
            _cell(loop),
            _cell(mmdet),
            _cell(plain),
            _ratio(mmdet, ours),
            _ratio(ours, plain),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _machine_line(with_torch):
    import paddle

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} cores visible",
        f"Python {platform.python_version()}",
        f"paddlepaddle {paddle.__version__}",
    ]
    if with_torch:
        import mmdet
        import torch

        parts += [f"torch {torch.__version__}", f"mmdet {mmdet.__version__}"]
    return "machine: " + ", ".join(parts)


if __name__ == "__main__":
    main()
