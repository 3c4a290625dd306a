"""SIGINT / SIGTERM during training: a resumable checkpoint, and a resumed run that ends equal.

Tiny variant of configs/demo.yml (tests/helpers/engine_tiny.py) on 8 generated images, batch 2: 2 epochs
of 4 steps (LR warmup over 3 steps, step decay after epoch 1, shuffling, flips, GHM momentum).
The straight run is the reference; interrupted runs are resumed with ``-r auto`` and must repeat
its losses from the checkpoint on (1e-5) and end with its weights (1e-5), as the resume test of
the engine does for epoch checkpoints.

- In process: the test sends itself SIGINT from a callback at the end of a chosen iteration k;
  the signal is acted on at the end of iteration k + 1 (deterministic).
- Through the command line: ``python -m ppdet_ghm train`` in a subprocess gets SIGTERM as soon
  as it logs its first iteration; where it stops depends on timing, the checks do not.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ppdet.engine.callbacks import Callback

from ppdet_ghm import cli
from ppdet_ghm.builder import load_config
from ppdet_ghm.data.demo_data import DemoDataSpec, generate
from ppdet_ghm.engine import tasks
from ppdet_ghm.engine.checkpoint_io import find_latest_checkpoint, read_meta
from ppdet_ghm.engine.interrupt import TrainingInterrupted, signals_blocked
from ppdet_ghm.engine.safe_load import safe_load
from ppdet_ghm.engine.trainer import GHMTrainer
from tests.helpers import REPO
from tests.helpers.engine_tiny import TINY_CONFIG

SPEC = DemoDataSpec(
    seed=5, num_train=8, num_val=2, image_size=64, min_size=8, max_size=32, empty_ratio=0.0
)
STEPS_PER_EPOCH, ITERATIONS = 4, 8


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    generate(SPEC, root / "data")
    config = root / "tiny.yml"
    config.write_text(TINY_CONFIG)
    overrides = {f"{n}.dataset_dir": str(root / "data") for n in ("TrainDataset", "EvalDataset")}
    trainer = tasks.train(
        str(config), overrides=overrides, output_dir=str(root / "straight"), seed=0, threads=1
    )
    records = trainer.history.records
    assert [r["iteration"] for r in records] == list(range(ITERATIONS))
    return root, str(config), overrides, records


class _SignalAt(Callback):
    """Sends ``signum`` to this process at the end of training iteration ``iteration``."""

    def __init__(self, trainer, iteration, signum=signal.SIGINT):
        super().__init__(trainer)
        self.iteration, self.signum = iteration, signum

    def on_step_end(self, status):
        if status["epoch_id"] * status["steps_per_epoch"] + status["step_id"] == self.iteration:
            os.kill(os.getpid(), self.signum)


def _interrupted_run(straight, name, at):
    root, config, overrides, _ = straight
    cfg = load_config(config, overrides)
    tasks.setup_runtime(cfg, threads=1, seed=0)
    trainer = GHMTrainer(cfg, "train", output_dir=str(root / name), data_seed=0)
    callback = _SignalAt(trainer, at)
    trainer._callbacks.append(callback)
    trainer._compose_callback._callbacks.append(callback)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    return trainer, info.value


def _assert_resumed_run_ends_equal(straight, out_dir, start):
    root, config, overrides, records = straight
    resumed = tasks.train(
        config, overrides=overrides, output_dir=str(out_dir), resume="auto", seed=123, threads=1
    )
    got = resumed.history.records
    assert [r["iteration"] for r in got] == list(range(start, ITERATIONS))
    for key in ("loss", "loss_cls", "loss_reg"):
        np.testing.assert_allclose(
            [r[key] for r in got], [r[key] for r in records[start:]], rtol=0, atol=1e-5, err_msg=key
        )
    np.testing.assert_allclose([r["lr"] for r in got], [r["lr"] for r in records[start:]], 1e-12)
    final = safe_load(Path(out_dir) / "model_final.pdparams")
    reference = safe_load(root / "straight" / "model_final.pdparams")
    assert final.keys() == reference.keys()
    for name in final:
        np.testing.assert_allclose(final[name], reference[name], rtol=0, atol=1e-5, err_msg=name)


def test_sigint_inside_an_epoch_writes_a_checkpoint_that_resumes_inside_it(straight):
    # default_int_handler normally; SIG_IGN when pytest runs as a background job of a shell
    handler_before = signal.getsignal(signal.SIGINT)
    trainer, stop = _interrupted_run(straight, "mid", at=1)
    out = Path(trainer.output_dir)
    assert (stop.signum, stop.iteration, stop.exit_status) == (signal.SIGINT, 3, 130)
    assert stop.checkpoint == str(out / "iter_3")
    assert str(stop) == (
        f"interrupted by SIGINT after 3 iteration(s); checkpoint {out / 'iter_3'} "
        f"(resume with -r {out / 'iter_3'} or -r auto)"
    )
    assert [r["iteration"] for r in trainer.history.records] == [0, 1, 2]
    assert sorted(p.name for p in out.glob("iter_3*")) == [
        "iter_3.meta.json",
        "iter_3.pdopt",
        "iter_3.pdparams",
    ]
    meta = read_meta(str(out / "iter_3"))
    assert meta == {
        "epoch": 0,
        "iteration": 3,
        "step": 3,
        "data_seed": 0,
        "interrupted_by": "SIGINT",
    }
    opt = safe_load(out / "iter_3.pdopt")
    assert opt["last_epoch"] == 0 and opt["LR_Scheduler"]["last_epoch"] == 3
    assert find_latest_checkpoint(out) == str(out / "iter_3")
    # the handler is back to what it was
    assert signal.getsignal(signal.SIGINT) is handler_before
    _assert_resumed_run_ends_equal(straight, out, start=3)


def test_a_signal_in_the_last_step_of_an_epoch_lets_the_epoch_end_first(straight):
    trainer, stop = _interrupted_run(straight, "epoch_end", at=2)
    out = Path(trainer.output_dir)
    assert (stop.iteration, stop.checkpoint) == (4, str(out / "iter_4"))
    assert (out / "0.meta.json").is_file()  # the epoch's own checkpoint came first
    assert read_meta(str(out / "iter_4"))["step"] == 0
    assert read_meta(str(out / "iter_4"))["epoch"] == 1
    assert [r["iteration"] for r in trainer.history.records] == [0, 1, 2, 3]
    _assert_resumed_run_ends_equal(straight, out, start=4)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_sigint_stops_at_once_a_second_sigterm_does_not(straight, signum):
    root, config, overrides, _ = straight
    cfg = load_config(config, overrides)
    tasks.setup_runtime(cfg, threads=1, seed=0)
    out = root / f"twice_{signum}"
    trainer = GHMTrainer(cfg, "train", output_dir=str(out))
    for callback in (_SignalAt(trainer, 0, signum), _SignalAt(trainer, 0, signum)):
        trainer._callbacks.append(callback)
        trainer._compose_callback._callbacks.append(callback)
    if signum == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopping now"):
            trainer.train()
        assert not list(out.glob("*.pdparams"))
    else:  # paddle.distributed.launch sends SIGTERM up to 3 times, 0.2 s apart
        with pytest.raises(TrainingInterrupted) as info:
            trainer.train()
        assert (info.value.iteration, info.value.exit_status) == (2, 143)
        assert find_latest_checkpoint(out) == str(out / "iter_2")


def test_signals_blocked_keeps_them_from_children_and_delivers_them_after():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with signals_blocked():
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread
            assert received == [] and signal.SIGTERM in signal.sigpending()
            child = subprocess.run(  # a process started here inherits the mask
                [sys.executable, "-c", "import signal; print(signal.pthread_sigmask(0, []))"],
                capture_output=True,
                text=True,
            )
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "SIGTERM" in child.stdout and "SIGINT" in child.stdout


def test_sigterm_to_the_cli_writes_a_checkpoint_and_resume_auto_ends_equal(straight):
    root, config, overrides, records = straight
    out = root / "cli"
    command = [sys.executable, "-m", "ppdet_ghm", "train", "-c", config, "--output_dir", str(out)]
    command += ["--seed", "0", "--threads", "1", "-o"]
    command += [f"{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(OMP_NUM_THREADS="1", GLOG_minloglevel="2")
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Epoch: [0] [0/4]" in line:  # the first iteration is done
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert status == 143, output[-3000:]
    latest = find_latest_checkpoint(out)
    assert latest is not None and Path(latest).name.startswith("iter_"), output[-3000:]
    meta = read_meta(latest)
    done = meta["iteration"]
    assert 1 <= done < ITERATIONS and meta["interrupted_by"] == "SIGTERM"
    assert meta["epoch"] * STEPS_PER_EPOCH + meta["step"] == done
    assert f"ppdet-ghm train: interrupted by SIGTERM after {done} iteration(s)" in output
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    # resume through the command line: it continues from the checkpoint and ends equal
    argv = ["train", "-c", config, "--output_dir", str(out), "--seed", "0", "--threads", "1"]
    argv += ["-r", "auto", "-o", *(f"{k}={v}" for k, v in overrides.items())]
    assert cli.main(argv) == 0
    log = (out / "train.log").read_text()
    assert f"resume auto: {latest}" in log
    final = safe_load(out / "model_final.pdparams")
    reference = safe_load(root / "straight" / "model_final.pdparams")
    for name in reference:
        np.testing.assert_allclose(final[name], reference[name], rtol=0, atol=1e-5, err_msg=name)
    assert json.loads((out / "model_final.meta.json").read_text())["iteration"] == ITERATIONS
