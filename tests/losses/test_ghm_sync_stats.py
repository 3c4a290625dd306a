"""sync_stats of the GHM losses on 2 CPU ranks (gloo), through ``paddle.distributed.launch``.

The worker (tests/helpers/dist_workers/ghm_sync_worker.py) runs 3 calls with momentum on unequal shares
of one batch with ``sync_stats=True``, and rank 0 runs the same calls without sync on the whole
batch. Both ranks must hold the same histogram, equal to the single-process one; the ranks' mean
loss (and gradient, what DataParallel averages) must be the single-process loss (gradient).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

WORKER = REPO / "tests" / "helpers" / "dist_workers" / "ghm_sync_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ghm_sync")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", CPU_NUM="1", GLOG_minloglevel="2")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    command += ["--log_dir", str(out / "log"), str(WORKER), str(out)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}"
            for p in sorted((out / "log").glob("workerlog.*"))
        )
        pytest.fail(f"launch exited {proc.returncode}\n{proc.stdout[-2000:]}\n{logs}")
    return [np.load(out / f"rank{r}.npz") for r in range(2)], np.load(out / "single.npz")


@pytest.mark.parametrize("loss", ["ghmc", "ghmr"])
def test_ranks_hold_the_single_process_histogram(results, loss):
    (rank0, rank1), single = results
    assert int(rank0["world"]) == 2
    np.testing.assert_array_equal(rank0[f"{loss}_acc"], rank1[f"{loss}_acc"])
    np.testing.assert_array_equal(rank0[f"{loss}_acc"], single[f"{loss}_acc"])
    assert single[f"{loss}_acc"].sum() > 0


@pytest.mark.parametrize("loss", ["ghmc", "ghmr"])
def test_mean_of_rank_losses_and_gradients_is_the_single_process_one(results, loss):
    ranks, single = results
    np.testing.assert_allclose(
        (ranks[0][f"{loss}_loss"] + ranks[1][f"{loss}_loss"]) / 2, single[f"{loss}_loss"], rtol=1e-6
    )
    rows = [int(r) for r in single["rows"]]
    calls = len(single[f"{loss}_loss"])
    whole = single[f"{loss}_grad"].reshape(calls, sum(rows), -1)
    start = 0
    for rank, n in zip(ranks, rows, strict=True):
        # each rank's loss is world_size x its share, so its gradient is 2x the single one
        mine = rank[f"{loss}_grad"].reshape(calls, n, -1) / 2
        np.testing.assert_allclose(mine, whole[:, start : start + n], rtol=1e-5, atol=1e-9)
        start += n
