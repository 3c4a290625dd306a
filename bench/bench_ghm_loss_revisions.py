"""The GHM losses of the working tree against those of another git revision: time and bits.

For a change to ``ppdet_ghm/losses/ghm.py`` that must not cost speed: the module of ``--rev`` (read
with ``git show``, loaded beside ours without registering its layers in ppdet) and ours run the
same forward + backward on the same seeded tensors (the cases of ``bench.bench_ghm_loss``: GHM-C
on [120000 x 80] with labels and in mmdet's input form, the five RetinaNet levels, GHM-R on
[2000 x 4]), alternating call by call so
that both see the same load. Prints the median wall time of each, their ratio, and the largest
difference of loss and gradient (0 when the arithmetic is unchanged).

    OMP_NUM_THREADS=2 python -m bench.bench_ghm_loss_revisions --rev dd027f0
"""

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

from bench.driver import REPO_DIR, load_average, machine_info

MODULE = "ppdet_ghm/losses/ghm.py"


@contextlib.contextmanager
def _no_ppdet_registration():
    """ppdet's ``register`` / ``serializable`` as no-ops (a second ``GHMCLoss`` would clash)."""
    from ppdet.core import workspace

    saved = workspace.register, workspace.serializable
    workspace.register = workspace.serializable = lambda cls: cls
    try:
        yield
    finally:
        workspace.register, workspace.serializable = saved


def load_revision(rev: str):
    """The loss module as it is at git revision ``rev``."""
    proc = subprocess.run(
        ["git", "show", f"{rev}:{MODULE}"], cwd=REPO_DIR, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"git show {rev}:{MODULE} failed: {proc.stderr.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ghm_at_rev.py")
        with open(path, "w") as f:
            f.write(proc.stdout)
        spec = importlib.util.spec_from_file_location("ghm_at_rev", path)
        module = importlib.util.module_from_spec(spec)
        with _no_ppdet_registration():
            spec.loader.exec_module(module)
    return module


def _step(module, batch, kind):
    """A closure: forward + backward of ``module``'s loss on ``batch``; (loss, gradient)."""
    import paddle

    x0, target, weight = (paddle.to_tensor(a) for a in batch)
    acc = paddle.zeros([30 if kind == "C" else 10])

    def step():
        x = x0.detach()
        x.stop_gradient = False
        if kind == "C":
            loss, _ = module.ghmc_loss(x, target, weight, acc, bins=30, momentum=0.75)
        else:
            loss, _ = module.ghmr_loss(x, target, weight, acc, mu=0.02, bins=10, momentum=0.7)
        loss.backward()
        return float(loss), x.grad.numpy()

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision to compare with, e.g. HEAD~3")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per side (large: /2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import paddle

    import ppdet_ghm  # noqa: F401  (quiet ppdet import)
    from bench.bench_ghm_loss import ghmc_inputs, ghmr_inputs, mmdet_form, retina_level_sizes
    from ppdet_ghm.losses import ghm as ours

    paddle.base.core.set_num_threads(args.threads)
    theirs = load_revision(args.rev)
    rng = np.random.default_rng(0)
    flat = ghmc_inputs(rng, 120000)
    cases = [
        ("GHM-C [120000 x 80]", flat, "C"),
        ("GHM-C [120000 x 80], one-hot + [N, C] weights", mmdet_form(flat), "C"),
    ]
    for name, n in zip(("P3", "P4", "P5", "P6", "P7"), retina_level_sizes(), strict=True):
        cases.append((f"GHM-C {name} [{n} x 80]", ghmc_inputs(rng, n), "C"))
    cases.append(("GHM-R [2000 x 4]", ghmr_inputs(rng), "R"))

    print(
        f"| case | {args.rev} ms | working tree ms | ratio | loss diff (rel) | grad diff (max rel) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, kind in cases:
        steps = {"rev": _step(theirs, batch, kind), "tree": _step(ours, batch, kind)}
        (loss_a, grad_a), (loss_b, grad_b) = steps["rev"](), steps["tree"]()  # warm-up
        repeats = max(3, args.repeats // 2) if batch[0].size > 5e6 else args.repeats
        times = {"rev": [], "tree": []}
        for i in range(repeats):
            for side in ("rev", "tree") if i % 2 == 0 else ("tree", "rev"):
                start = time.perf_counter()
                steps[side]()
                times[side].append(time.perf_counter() - start)
        rev_ms, tree_ms = (1e3 * float(np.median(times[k])) for k in ("rev", "tree"))
        loss_diff = abs(loss_b - loss_a) / max(abs(loss_a), 1e-30)
        grad_diff = float(np.abs(grad_b - grad_a).max() / max(np.abs(grad_a).max(), 1e-30))
        print(
            f"| {name} | {rev_ms:.2f} | {tree_ms:.2f} | {tree_ms / rev_ms:.3f} | "
            f"{loss_diff:.1e} | {grad_diff:.1e} |",
            flush=True,
        )
    print(f"\n{machine_info()}; {args.threads} threads; load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
