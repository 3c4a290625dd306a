"""Checkpoint files: atomic writes, and which checkpoint ``-r auto`` picks (checkpoint_io)."""

import errno
import json
import os

import numpy as np
import paddle
import pytest

from ppdet_ghm.engine import checkpoint_io
from ppdet_ghm.engine.checkpoint_io import (
    atomic_file,
    atomic_paddle_save,
    find_latest_checkpoint,
    is_complete,
    save_checkpoint,
    write_meta,
)
from ppdet_ghm.engine.safe_load import safe_load


def _checkpoint(directory, name, iteration, *, meta=True, opt=True):
    prefix = os.path.join(directory, name)
    paddle.save({"w": paddle.full([2], float(iteration))}, prefix + ".pdparams")
    paddle.save({"last_epoch": 0}, prefix + ".pdopt")
    if meta:
        write_meta(prefix, {"epoch": 0, "iteration": iteration, "data_seed": 0})
    if not opt:
        os.remove(prefix + ".pdopt")
    return prefix


def test_a_crash_mid_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pdparams"
    atomic_paddle_save({"w": paddle.ones([3])}, path)
    before = path.read_bytes()

    def crashing_save(obj, target):
        with open(target, "wb") as f:
            f.write(b"\x80\x04 half a pickle")  # what a kill mid-write leaves behind
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(paddle, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_paddle_save({"w": paddle.zeros([3])}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pdparams"]
    np.testing.assert_array_equal(safe_load(path)["w"], [1, 1, 1])


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "x.json"
    with atomic_file(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not path.exists()
        with open(tmp, "w") as f:
            f.write("1")
    assert path.read_text() == "1"


def test_latest_is_the_complete_checkpoint_with_most_iterations(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, "0", 4)
    best = _checkpoint(tmp_path, "iter_6", 6)
    _checkpoint(tmp_path, "1", 8, meta=False)  # crashed before its meta: incomplete
    _checkpoint(tmp_path, "iter_9", 9, opt=False)  # optimizer state gone: incomplete
    broken = _checkpoint(tmp_path, "iter_10", 10)
    (tmp_path / "iter_10.meta.json").write_text('{"epoch": 1, "iter')  # torn meta
    assert [is_complete(str(tmp_path / n)) for n in ("0", "iter_6", "1", "iter_9")] == [
        True,
        True,
        False,
        False,
    ]
    assert not is_complete(broken)
    assert find_latest_checkpoint(tmp_path) == best


def test_save_checkpoint_is_ppdets_format_and_drops_the_stale_meta_first(tmp_path, monkeypatch):
    layer = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.Momentum(learning_rate=0.1, parameters=layer.parameters())
    prefix = _checkpoint(tmp_path, "3", 4)
    seen = []

    def recording_save(obj, path):
        seen.append((os.path.basename(path), os.path.exists(prefix + ".meta.json")))
        paddle.save(obj, path)

    monkeypatch.setattr(checkpoint_io, "atomic_paddle_save", recording_save)
    save_checkpoint(layer.state_dict(), optimizer, str(tmp_path), "3", 7)
    assert seen == [("3.pdparams", False), ("3.pdopt", False)]
    assert not is_complete(prefix)  # until the caller writes the new meta
    state = safe_load(prefix + ".pdparams")
    np.testing.assert_array_equal(state["weight"], layer.weight.numpy())
    assert safe_load(prefix + ".pdopt")["last_epoch"] == 7
    write_meta(prefix, {"epoch": 7, "iteration": 70})
    assert json.loads((tmp_path / "3.meta.json").read_text()) == {"epoch": 7, "iteration": 70}


def test_only_rank_0_writes(tmp_path, monkeypatch):
    layer = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters())
    monkeypatch.setattr(paddle.distributed, "get_rank", lambda: 1)
    save_checkpoint(layer.state_dict(), optimizer, str(tmp_path), "0", 1)
    assert list(tmp_path.iterdir()) == []


def test_meta_needs_the_files_it_describes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no \['.pdparams', '.pdopt'\] to describe"):
        write_meta(str(tmp_path / "5"), {"iteration": 5})


def _disk_full_on(suffix):
    """A ``paddle.save`` that writes half a file for ``suffix`` and then fails with ENOSPC."""
    real_save = paddle.save

    def save(obj, target):
        if f"{suffix}." in os.path.basename(target):  # the temporary file of that suffix
            with open(target, "wb") as f:
                f.write(b"\x80\x04 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, target)

    return save


@pytest.mark.parametrize("failing", [".pdparams", ".pdopt", ".meta.json"])
def test_a_write_error_removes_the_half_checkpoint_and_names_file_and_last_good(
    tmp_path, monkeypatch, failing
):
    good = _checkpoint(tmp_path, "0", 10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    layer = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters())
    prefix = str(tmp_path / "1")
    if failing == ".meta.json":
        monkeypatch.setattr(
            checkpoint_io,
            "_write_json",
            lambda data, path: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            ),
        )
    else:
        monkeypatch.setattr(paddle, "save", _disk_full_on(failing))
    with pytest.raises(checkpoint_io.CheckpointWriteError) as caught:
        save_checkpoint(layer.state_dict(), optimizer, str(tmp_path), "1", 2)
        write_meta(prefix, {"epoch": 2, "iteration": 20})
    assert str(caught.value) == (
        f"cannot write checkpoint {prefix}: {prefix}{failing}: [Errno {errno.ENOSPC}] No space "
        f"left on device; its files were removed; last complete checkpoint: {good}"
    )
    assert caught.value.exit_status == 1 and caught.value.last_complete == good
    # nothing of checkpoint 1 (no temporary either), checkpoint 0 untouched
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert find_latest_checkpoint(tmp_path) == good


def test_a_write_error_with_no_complete_checkpoint_says_none(tmp_path, monkeypatch):
    layer = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters())
    monkeypatch.setattr(paddle, "save", _disk_full_on(".pdopt"))
    with pytest.raises(checkpoint_io.CheckpointWriteError, match="last complete checkpoint: none"):
        save_checkpoint(layer.state_dict(), optimizer, str(tmp_path), "model_final", 2)
    assert list(tmp_path.iterdir()) == []
