"""Freed CPU memory kept in glibc's heap (ppdet_ghm.engine.cpu_memory) and the config key that
applies it (``keep_freed_memory`` in ``tasks.setup_runtime``)."""

import json
import platform
import subprocess
import sys

import pytest

from ppdet_ghm.engine import cpu_memory, tasks
from tests.helpers import REPO

# A process that makes the same 48 MB tensor out of place five times and reports the minor page
# faults of the last one (after keep_freed_memory when asked), then frees it and reports how much
# resident memory release_freed_memory() gives back. glibc's defaults serve and return such a
# block with mmap / munmap: every allocation faults in all of its pages again.
_FAULTS_SCRIPT = """
import json, resource, sys
import paddle
from ppdet_ghm.engine.cpu_memory import keep_freed_memory, release_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
x = paddle.ones([12 * 2**20])
for _ in range(4):
    y = x * 2.0
    del y
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = x * 2.0
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
total = float(y.sum())
del y  # its 48 MB stay in the heap when kept, until release_freed_memory()

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

held = rss_mb()
released = release_freed_memory()
print(json.dumps({"applied": applied, "faults": faults, "sum": total, "released": released,
                  "rss_drop_mb": held - rss_mb()}))
"""
PAGES = 48 * 2**20 // 4096


def _faults(mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_tensor_is_reused_without_page_faults():
    kept, default = _faults("keep"), _faults("default")
    assert kept["applied"] and not default["applied"]
    assert kept["sum"] == default["sum"] == 2.0 * 12 * 2**20  # the same numbers either way
    assert kept["faults"] < PAGES // 20, kept
    if default["faults"] > PAGES // 2:  # glibc's defaults fault the block in again (no THP)
        assert kept["faults"] * 10 < default["faults"], (kept, default)
    # the kept block goes back to the system at release_freed_memory(), a no-op otherwise
    assert kept["released"] and kept["rss_drop_mb"] > 40, kept
    assert not default["released"] and abs(default["rss_drop_mb"]) < 8, default


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(cpu_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert cpu_memory.keep_freed_memory() is False


@pytest.mark.parametrize(
    "value, applied",
    [(None, True), (True, True), ("true", True), (False, False), ("false", False)],
)
def test_setup_runtime_keeps_freed_memory_on_cpu_unless_turned_off(monkeypatch, value, applied):
    calls = []
    monkeypatch.setattr(tasks, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = {"use_gpu": False} if value is None else {"use_gpu": False, "keep_freed_memory": value}
    assert tasks.setup_runtime(cfg, threads=1) == "cpu"
    assert calls == ([1] if applied else [])


def test_setup_runtime_names_a_bad_keep_freed_memory_value(monkeypatch):
    monkeypatch.setattr(tasks, "keep_freed_memory", lambda: True)
    with pytest.raises(ValueError, match="keep_freed_memory: expected true or false, got 'yes'"):
        tasks.setup_runtime({"use_gpu": False, "keep_freed_memory": "yes"}, threads=1)


def test_training_epochs_release_freed_memory(monkeypatch):
    """The trainer's callback hands free heap pages back after each training epoch, not after an
    evaluation."""
    from ppdet_ghm.engine.trainer import FreedMemoryRelease

    calls = []
    monkeypatch.setattr(cpu_memory, "release_freed_memory", lambda: calls.append(1) or True)
    callback = FreedMemoryRelease(model=None)
    callback.on_epoch_end({"mode": "train", "epoch_id": 0})
    callback.on_epoch_end({"mode": "eval"})
    assert calls == [1]
