"""Untrusted weights: ``paddle.load`` runs a crafted file's code; ``safe_load`` refuses it.

The malicious files are pickles whose ``__reduce__`` asks for ``os.system`` / ``builtins.eval``
to create a marker file (harmless, in the test's tmp folder). ``paddle.load`` creates it (the
danger docs/security.md describes is real); the safe loader refuses the file and the marker is
never created, also through ``ppdet-ghm eval --weights``.
"""

import os
import pickle

import numpy as np
import paddle
import pytest

from ppdet_ghm import cli
from ppdet_ghm.builder import build_model
from ppdet_ghm.engine import safe_load as safe_load_module
from ppdet_ghm.engine.safe_load import UnsafeCheckpointError, ensure_safe, safe_load
from tests.helpers.engine_tiny import make_tiny


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _malicious(path, payload):
    state = {"conv.weight": np.ones((2, 2), np.float32), "conv.bias": payload}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    return path


def test_paddle_load_runs_the_code_of_a_crafted_pdparams(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.pdparams", _System(f"touch {marker}"))
    try:
        paddle.load(str(path))
    except Exception:  # whatever paddle makes of the result: the code has already run
        pass
    assert marker.exists()


@pytest.mark.parametrize("kind", ["system", "eval"])
def test_safe_load_refuses_it_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "system":
        payload, name = _System(f"touch {marker}"), r"posix\.system"
    else:
        payload, name = _Eval(f"open({str(marker)!r}, 'w')"), r"builtins\.eval"
    path = _malicious(tmp_path / "evil.pdparams", payload)
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pdparams: refused: .*calls {name}"):
        safe_load(path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"w": np.array([1, "a"], dtype=object)}, f, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="object array"):
        safe_load(path)


def test_safe_load_reads_what_paddle_saves_as_paddle_load_does(tmp_path):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4))
    optimizer = paddle.optimizer.Momentum(
        learning_rate=paddle.optimizer.lr.PiecewiseDecay([2], [0.1, 0.01]),
        parameters=model.parameters(),
    )
    model(paddle.randn([2, 3, 8, 8])).mean().backward()
    optimizer.step()
    opt_state = optimizer.state_dict()
    opt_state["last_epoch"] = 3  # what ppdet adds
    paddle.save(model.state_dict(), str(tmp_path / "m.pdparams"))
    paddle.save(opt_state, str(tmp_path / "m.pdopt"))
    paddle.save({"big": paddle.arange(5_000_000, dtype="float32")}, str(tmp_path / "big.pdparams"))
    for name in ("m.pdparams", "m.pdopt", "big.pdparams"):
        ours = safe_load(tmp_path / name)
        reference = paddle.load(str(tmp_path / name), return_numpy=True)
        assert ours.keys() == reference.keys(), name
        for key, value in reference.items():
            if isinstance(value, np.ndarray):
                assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
                np.testing.assert_array_equal(ours[key], value, err_msg=key)
            else:
                assert ours[key] == value, key
    assert safe_load(tmp_path / "m.pdopt")["LR_Scheduler"] == {"last_epoch": 0, "last_lr": 0.1}


def test_safetensors_files_are_read_too(tmp_path):
    state = {"a": paddle.arange(6, dtype="float32").reshape([2, 3])}
    paddle.save(state, str(tmp_path / "w.safetensors"), safetensors=True)
    got = safe_load(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(got["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_sanitize_writes_an_arrays_only_copy(tmp_path, capsys):
    src = tmp_path / "in.pdparams"
    paddle.save({"w": paddle.ones([2, 2])}, str(src))
    assert safe_load_module.main([str(src), str(tmp_path / "clean.pdparams")]) == 0
    assert "1 entries, 1 arrays, no code; clean copy written" in capsys.readouterr().out
    np.testing.assert_array_equal(safe_load(tmp_path / "clean.pdparams")["w"], np.ones((2, 2)))
    evil = _malicious(tmp_path / "evil.pdparams", _System("true"))
    assert safe_load_module.main([str(evil), str(tmp_path / "out.pdparams")]) == 1
    assert "refused" in capsys.readouterr().err and not (tmp_path / "out.pdparams").exists()


def test_cli_eval_with_a_malicious_weights_file_refuses_it(tmp_path, capsys):
    config, overrides = make_tiny(tmp_path)
    state = {k: v.numpy() for k, v in build_model(config, overrides).state_dict().items()}
    marker = tmp_path / "pwned"
    state["head.retina_cls.bias"] = _System(f"touch {marker}")
    with open(tmp_path / "evil.pdparams", "wb") as f:
        pickle.dump(state, f, protocol=4)
    argv = ["eval", "-c", config, "--weights", str(tmp_path / "evil.pdparams")]
    argv += ["--output_dir", str(tmp_path / "eval"), "-o"]
    argv += [f"{k}={v}" for k, v in overrides.items()]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "ppdet-ghm eval: error:" in err and "refused: the file calls posix.system" in err
    assert not marker.exists()


def test_ensure_safe_checks_every_file_of_a_checkpoint(tmp_path):
    paddle.save({"w": paddle.ones([2])}, str(tmp_path / "c.pdparams"))
    marker = tmp_path / "pwned"
    _malicious(tmp_path / "c.pdopt", _System(f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError, match=r"c\.pdopt: refused"):
        ensure_safe(tmp_path / "c")
    (tmp_path / "c.pdopt").unlink()
    paddle.save({"last_epoch": 1}, str(tmp_path / "c.pdopt"))
    expected = [str(tmp_path / "c.pdparams"), str(tmp_path / "c.pdopt")]
    assert ensure_safe(tmp_path / "c.pdparams") == expected
    assert not marker.exists()


def test_cli_train_with_malicious_pretrain_weights_refuses_them(tmp_path, capsys):
    config, overrides = make_tiny(tmp_path)
    marker = tmp_path / "pwned"
    _malicious(tmp_path / "pretrain.pdparams", _System(f"touch {marker}"))
    argv = ["train", "-c", config, "--output_dir", str(tmp_path / "out"), "-o"]
    argv += [f"{k}={v}" for k, v in overrides.items()]
    argv += [f"pretrain_weights={tmp_path / 'pretrain'}"]
    assert cli.main(argv) == 1
    assert "pretrain.pdparams: refused: the file calls posix.system" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_checks_the_optimizer_state_before_ppdet_loads_it(tmp_path, capsys):
    config, overrides = make_tiny(tmp_path)
    state = build_model(config, overrides).state_dict()
    paddle.save(state, str(tmp_path / "ckpt.pdparams"))
    marker = tmp_path / "pwned"
    _malicious(tmp_path / "ckpt.pdopt", _System(f"touch {marker}"))
    argv = ["train", "-c", config, "--output_dir", str(tmp_path / "out"), "-r"]
    argv += [str(tmp_path / "ckpt"), "-o", *(f"{k}={v}" for k, v in overrides.items())]
    assert cli.main(argv) == 1
    assert "ckpt.pdopt: refused: the file calls posix.system" in capsys.readouterr().err
    assert not marker.exists()
