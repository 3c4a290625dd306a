"""Worker of tests/losses/test_ghm_sync_stats.py, run by ``paddle.distributed.launch`` on 2 CPU ranks.

Every rank builds the same seeded batch, takes its own share of the rows (unequal shares), runs
GHMCLoss / GHMRLoss with ``sync_stats=True`` for 3 calls with momentum, and saves its histograms,
losses and gradients to ``<out_dir>/rank<r>.npz``. Rank 0 also runs the losses without sync on
the whole batch (the single-process result) and saves it to ``<out_dir>/single.npz``.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/helpers/dist_workers/ghm_sync_worker.py OUT
"""

import os
import sys

import numpy as np
import paddle
import paddle.distributed as dist

import ppdet_ghm  # noqa: F401
from ppdet_ghm.losses import GHMCLoss, GHMRLoss

CALLS = 3
NUM_CLASSES = 5
ROWS = (70, 50)  # rows of rank 0, rank 1 (unequal on purpose)


def batch(call):
    rng = np.random.default_rng(100 + call)
    n = sum(ROWS)
    logits = (rng.standard_normal((n, NUM_CLASSES)) * 3 + call).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES + 1, n)
    label_weight = (rng.random(n) > 0.1).astype(np.float32)
    deltas = (rng.standard_normal((n, 4)) * 0.05).astype(np.float32)
    box_weight = np.repeat((rng.random((n, 1)) > 0.5).astype(np.float32), 4, axis=1)
    return logits, labels, label_weight, deltas, box_weight


def run(ghmc, ghmr, rows):
    out = {"ghmc_loss": [], "ghmr_loss": [], "ghmc_grad": [], "ghmr_grad": []}
    for call in range(CALLS):
        logits, labels, label_weight, deltas, box_weight = (a[rows] for a in batch(call))
        x = paddle.to_tensor(logits, stop_gradient=False)
        loss = ghmc(x, paddle.to_tensor(labels), paddle.to_tensor(label_weight))
        loss.backward()
        d = paddle.to_tensor(deltas, stop_gradient=False)
        box_loss = ghmr(d, paddle.zeros_like(d), paddle.to_tensor(box_weight))
        box_loss.backward()
        out["ghmc_loss"].append(float(loss))
        out["ghmr_loss"].append(float(box_loss))
        out["ghmc_grad"].append(x.grad.numpy())
        out["ghmr_grad"].append(d.grad.numpy())
    out = {k: np.concatenate(v) if k.endswith("grad") else np.array(v) for k, v in out.items()}
    out["ghmc_acc"] = ghmc.acc_sum.numpy()
    out["ghmr_acc"] = ghmr.acc_sum.numpy()
    return out


def main(out_dir):
    paddle.set_device("cpu")
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == len(ROWS), world
    start = sum(ROWS[:rank])
    mine = slice(start, start + ROWS[rank])
    synced = run(
        GHMCLoss(bins=30, momentum=0.75, sync_stats=True),
        GHMRLoss(bins=10, momentum=0.7, sync_stats=True),
        mine,
    )
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), world=world, **synced)
    if rank == 0:
        single = run(GHMCLoss(bins=30, momentum=0.75), GHMRLoss(bins=10, momentum=0.7), slice(None))
        np.savez(os.path.join(out_dir, "single.npz"), rows=np.array(ROWS), **single)


if __name__ == "__main__":
    main(sys.argv[1])
