"""bench.bench_ghm_loss_revisions loads the loss module of a git revision beside ours."""

import shutil
import subprocess

import numpy as np
import paddle
import pytest

from tests.helpers import REPO


def _in_git_checkout():
    if shutil.which("git") is None:
        return False
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True)
    return proc.returncode == 0


@pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout")
def test_head_revision_loads_without_registering_and_computes_our_loss():
    from ppdet.core.workspace import global_config

    from bench.bench_ghm_loss_revisions import load_revision
    from ppdet_ghm.losses import GHMCLoss, ghm

    theirs = load_revision("HEAD")
    assert theirs is not ghm
    assert global_config["GHMCLoss"].pymodule.__name__ == "ppdet_ghm.losses.ghm"
    assert theirs.GHMCLoss is not GHMCLoss
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((50, 4)).astype("float32"))
    labels = paddle.to_tensor(rng.integers(0, 5, 50))
    weight = paddle.ones([50])
    ours, _ = ghm.ghmc_loss(x, labels, weight, bins=10)
    at_head, _ = theirs.ghmc_loss(x, labels, weight, bins=10)
    assert float(at_head) == float(ours)


def test_an_unknown_revision_is_a_clear_error():
    from bench.bench_ghm_loss_revisions import load_revision

    with pytest.raises(SystemExit, match="no-such-revision"):
        load_revision("no-such-revision")
