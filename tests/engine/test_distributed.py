"""Data-parallel training on 2 CPU ranks (gloo) through ``paddle.distributed.launch``.

The command is the one users run (README / scripts/train_coco_8gpu.sh), with
tests/helpers/dist_workers/train_worker.py in place of scripts/main.py: the same ``ppdet_ghm.cli.main``,
plus a record of what each rank saw, saved and ended with::

    python -m paddle.distributed.launch --nproc_per_node 2 scripts/main.py train -c CONFIG ...

Tiny variant of configs/demo.yml (tests/helpers/engine_tiny.py) on 8 generated 64 px images, batch 2 per
rank: 2 epochs of 2 steps. GHM-C runs with ``sync_stats`` on and GHM-R with it off, so one run
shows both: the synchronised histogram is the same on both ranks, the other one is not.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ppdet_ghm.data.demo_data import DemoDataSpec, generate
from ppdet_ghm.engine.checkpoint_io import find_latest_checkpoint, read_meta
from ppdet_ghm.engine.safe_load import safe_load
from tests.helpers import REPO
from tests.helpers.engine_tiny import TINY_CONFIG

WORKER = REPO / "tests" / "helpers" / "dist_workers" / "train_worker.py"
SPEC = DemoDataSpec(
    seed=5, num_train=8, num_val=2, image_size=64, min_size=8, max_size=32, empty_ratio=0.0
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    generate(SPEC, data)
    (root / "tiny.yml").write_text(TINY_CONFIG)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", CPU_NUM="1", GLOG_minloglevel="2")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    command += ["--log_dir", str(root / "log"), str(WORKER), str(root)]
    command += ["train", "-c", str(root / "tiny.yml"), "--output_dir", str(root / "out")]
    command += ["--seed", "0", "--threads", "1", "-o"]
    command += [f"{name}.dataset_dir={data}" for name in ("TrainDataset", "EvalDataset")]
    command += [
        "GHMRetinaHead.loss_cls.sync_stats=true",
        "GHMRetinaHead.loss_bbox.sync_stats=false",
    ]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}"
            for p in sorted((root / "log").glob("workerlog.*"))
        )
        pytest.fail(f"launch exited {proc.returncode}\n{proc.stdout[-2000:]}\n{logs}")
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    states = [np.load(root / f"rank{r}.npz") for r in range(2)]
    return root, ranks, states


def test_two_ranks_in_data_parallel_each_on_its_share_of_every_epoch(run):
    _, ranks, _ = run
    assert [(r["rank"], r["world"], r["data_parallel"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
    for r in ranks:
        assert len(r["im_ids"]) == 4  # 2 epochs x 2 steps, batch 2
        assert all(len(batch) == 2 for batch in r["im_ids"])
    for epoch in range(2):
        seen = [i for r in ranks for batch in r["im_ids"][2 * epoch : 2 * epoch + 2] for i in batch]
        assert sorted(seen) == list(range(1, 9))  # the 8 images, split between the ranks


def test_parameters_are_identical_on_both_ranks(run):
    _, ranks, (rank0, rank1) = run
    trainable = ranks[0]["trainable"]
    assert len(trainable) == 125 and trainable == ranks[1]["trainable"]
    for name in trainable:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    # BatchNorm running statistics are per rank (batch statistics of the rank's images; ppdet
    # converts to SyncBatchNorm only on GPUs with norm_type sync_bn)
    assert not np.array_equal(rank0["backbone.stem.bn._mean"], rank1["backbone.stem.bn._mean"])


def test_ghm_histogram_is_shared_with_sync_stats_and_per_rank_without(run):
    _, _, (rank0, rank1) = run
    cls0, cls1 = rank0["head.loss_cls.acc_sum"], rank1["head.loss_cls.acc_sum"]
    assert cls0.sum() > 0
    np.testing.assert_array_equal(cls0, cls1)  # sync_stats on
    reg0, reg1 = rank0["head.loss_bbox.acc_sum"], rank1["head.loss_bbox.acc_sum"]
    assert reg0.sum() > 0 and reg1.sum() > 0
    assert not np.array_equal(reg0, reg1)  # sync_stats off: each rank its own


def test_checkpoints_are_written_once_by_rank_0_and_hold_its_state(run):
    root, ranks, (rank0, _) = run
    saves = ["0.pdparams", "0.pdopt", "model_final.pdparams", "model_final.pdopt"]
    assert ranks[0]["saved"] == saves
    assert ranks[1]["saved"] == []
    out = sorted(p.name for p in (root / "out").iterdir())
    meta = ["0.meta.json", "model_final.meta.json"]
    assert out == sorted(saves + meta + ["train.log", "train.rank1.log"])
    final = safe_load(root / "out" / "model_final.pdparams")
    assert sorted(final) == sorted(rank0.files)
    for name in rank0.files:
        np.testing.assert_array_equal(final[name], rank0[name], err_msg=name)
    assert json.loads((root / "out" / "model_final.meta.json").read_text()) == {
        "epoch": 2,
        "iteration": 4,
        "data_seed": 0,
    }


def test_sigterm_to_the_launcher_stops_both_ranks_at_one_checkpoint(tmp_path):
    """The user's command (scripts/main.py under the launcher), DataLoader workers on: the
    launcher sends SIGTERM to each rank's process group (workers included) up to 3 times; both
    ranks stop after the same iteration and rank 0 writes one resumable checkpoint."""
    data = tmp_path / "data"
    generate(SPEC, data)
    (tmp_path / "tiny.yml").write_text(TINY_CONFIG)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", CPU_NUM="1", GLOG_minloglevel="2")
    log_dir, out = tmp_path / "log", tmp_path / "out"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    command += ["--log_dir", str(log_dir), str(REPO / "scripts" / "main.py")]
    command += ["train", "-c", str(tmp_path / "tiny.yml"), "--output_dir", str(out)]
    command += ["--seed", "0", "--threads", "1", "-o", "epoch=20", "worker_num=2"]
    command += [f"{name}.dataset_dir={data}" for name in ("TrainDataset", "EvalDataset")]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        log0 = log_dir / "workerlog.0"
        while not (log0.is_file() and "Epoch: [0] [0/2]" in log0.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "no first iteration"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = [(log_dir / f"workerlog.{r}").read_text() for r in range(2)]
    latest = find_latest_checkpoint(out)
    assert latest is not None and Path(latest).name.startswith("iter_"), logs[0][-2000:]
    done = read_meta(latest)["iteration"]
    assert 1 <= done < 40
    for log in logs:
        # logged once the checkpoint is complete, before the DataLoader workers shut down
        # (the CLI repeats it on exit, unless the launcher's 30 s grace period ran out first)
        assert f"interrupted by SIGTERM after {done} iteration(s)" in log, log
        assert "killed by signal" not in log
    assert sorted(p.name for p in out.glob("iter_*")) == [
        f"iter_{done}.meta.json",
        f"iter_{done}.pdopt",
        f"iter_{done}.pdparams",
    ]
