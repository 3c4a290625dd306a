"""No process of ours outlives its parent: ``kill -9`` of the trainer, and of the launcher.

Tiny variant of configs/demo.yml (tests/helpers/engine_tiny.py) on 8 generated 64 px images, with
DataLoader workers on (``worker_num=2``) and enough epochs to be still training when killed.
Each test starts the command users run, waits for its first logged iteration, collects the
process tree under it, sends SIGKILL to the top process and then requires every process of the
tree to be gone (or a zombie, i.e. exited and waiting to be reaped) within a deadline. Without the
parent-death signal (``ppdet_ghm.engine.parent_death``), the workers stayed alive for good.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppdet_ghm.data.demo_data import DemoDataSpec, generate
from ppdet_ghm.engine import parent_death
from tests.helpers import REPO
from tests.helpers.engine_tiny import TINY_CONFIG

SPEC = DemoDataSpec(
    seed=5, num_train=8, num_val=2, image_size=64, min_size=8, max_size=32, empty_ratio=0.0
)
EXIT_DEADLINE_S = 20  # a rank writes its interrupt checkpoint first

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}") else []:
            try:
                kids = [
                    int(x) for x in Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                ]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _alive(pid: int) -> bool:
    """Running or sleeping (a zombie has exited: only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _command_env():
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", CPU_NUM="1", GLOG_minloglevel="2")
    return env


def _kill_9_when_training(command, log: Path, first_line: str, min_processes: int) -> list[int]:
    """Start ``command``; once ``first_line`` is in ``log`` and ``min_processes`` processes run
    under it, SIGKILL it; return the pids that were under it."""
    proc = subprocess.Popen(
        command, cwd=REPO, env=_command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "no first iteration in time"
            if log.is_file() and first_line in log.read_text(errors="replace"):
                tree = _descendants(proc.pid)
                if len(tree) >= min_processes:
                    break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return tree


def _wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + EXIT_DEADLINE_S
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for pid in left:  # do not leak them into the rest of the test session
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture()
def tiny(tmp_path):
    generate(SPEC, tmp_path / "data")
    (tmp_path / "tiny.yml").write_text(TINY_CONFIG)
    overrides = [f"{n}.dataset_dir={tmp_path / 'data'}" for n in ("TrainDataset", "EvalDataset")]
    return tmp_path, overrides + ["epoch=50", "worker_num=2"]


def test_kill_9_of_the_trainer_leaves_no_dataloader_worker(tiny):
    root, overrides = tiny
    out = root / "out"
    command = [sys.executable, "-m", "ppdet_ghm", "train", "-c", str(root / "tiny.yml")]
    command += ["--output_dir", str(out), "--threads", "1", "-o", *overrides]
    workers = _kill_9_when_training(command, out / "train.log", "Epoch: [0] [0/4]", 2)
    assert _wait_gone(workers) == [], f"DataLoader workers outlived the trainer: {workers}"


def test_kill_9_of_the_launcher_stops_every_rank_and_its_workers(tiny):
    root, overrides = tiny
    log_dir, out = root / "log", root / "out"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    command += ["--log_dir", str(log_dir), str(REPO / "scripts" / "main.py")]
    command += ["train", "-c", str(root / "tiny.yml"), "--output_dir", str(out)]
    command += ["--threads", "1", "-o", *overrides]
    # 2 ranks, each with 2 workers
    tree = _kill_9_when_training(command, log_dir / "workerlog.0", "Epoch: [0] [0/2]", 6)
    assert _wait_gone(tree) == [], f"processes outlived the launcher: {tree}"
    for rank in range(2):  # SIGTERM from the parent-death signal: the interrupt path ran
        log = (log_dir / f"workerlog.{rank}").read_text(errors="replace")
        assert "interrupted by SIGTERM" in log, log[-2000:]


def test_die_with_parent_signals_at_once_when_the_parent_is_already_gone():
    """The race: the parent died before the request; the expected parent pid tells."""
    code = (
        "import os, signal, sys\n"
        "from ppdet_ghm.engine.parent_death import die_with_parent\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
        "die_with_parent(signal.SIGUSR1, parent_pid=os.getppid() + 10**7)\n"
        "sys.exit(0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_command_env(), cwd=REPO, timeout=60)
    assert proc.returncode == 7


def test_workers_entry_point_is_wrapped_once():
    from paddle.io.dataloader import dataloader_iter

    parent_death.dataloader_workers_die_with_parent()
    first = dataloader_iter._worker_loop
    parent_death.dataloader_workers_die_with_parent()
    assert dataloader_iter._worker_loop is first
    assert getattr(first, "_ppdet_ghm_dies_with_parent", False)
