"""Step 13's probe: both sides' losses and gradients at equal weights, batch by batch."""

import os

import numpy as np
import pytest

from align import step13_probe, step13_train, train_data
from tests.helpers.step13 import STEP13_TINY_DATA

DATA = STEP13_TINY_DATA
TORCH_PREFIX = os.path.join(
    os.path.dirname(step13_train.__file__), "logs", "step13_train_prefix_torch.npy"
)


@pytest.fixture(scope="module")
def data_root(step13_data_root):
    return step13_data_root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe_weights") / "init.npz"
    np.savez(path, **train_data.numpy_init(0))
    return str(path)


def _probe(side, data_root, weights, out, dtype="float64", batches=2):
    argv = ["--side", side, "--loss", "ghm", "--weights", weights, "--out", str(out)]
    argv += ["--batches", str(batches), "--dtype", dtype, "--data-root", data_root, *DATA]
    assert step13_probe.main(argv) == 0


def test_paddle_probe_at_the_init_is_the_committed_torch_iteration_0(data_root, weights, tmp_path):
    """Batch 0 at NumPy's init in float64 is iteration 0 of the committed mmdet prefix log (same
    weights, data and batch order): the per-level losses agree to 1e-6."""
    _probe("paddle", data_root, weights, tmp_path)
    log = np.load(tmp_path / "step13_probe_ghm_float64_paddle.npy", allow_pickle=True).item()
    torch_log = np.load(TORCH_PREFIX, allow_pickle=True).item()
    for key in ("loss_cls", "loss_bbox"):
        expected = [torch_log[f"it0.{key}.{level}"][0] for level in train_data.LEVELS]
        np.testing.assert_allclose(log[f"0.{key}"], expected, rtol=1e-6)
    assert set(log) >= {"0.grad", "1.grad", "1.grad_norm"}
    norms = log["0.grad_norm"]
    assert sorted(norms) == sorted(n for n, _ in train_data.mmdet_r18_spec() if "running" not in n)
    grad = log["0.grad"]["bbox_head.retina_cls.bias"]
    assert norms["bbox_head.retina_cls.bias"] == pytest.approx(np.linalg.norm(grad))


def test_compare_reports_the_largest_differences(tmp_path, capsys):
    names = ("a.weight", "b.bias")
    rng = np.random.default_rng(0)
    torch_log = {}
    for i in range(4):
        grads = {n: rng.normal(size=(3, 2)) for n in names}
        step13_probe._record(torch_log, i, [1.0, 2.0], [0.5], grads)
    paddle_log = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in torch_log.items()}
    paddle_log["2.loss_cls"] = np.array([1.0, 2.0 * (1 + 3e-4)])
    paddle_log["3.grad_norm"] = {
        **torch_log["3.grad_norm"],
        "b.bias": torch_log["3.grad_norm"]["b.bias"] * 1.01,
    }
    g = {n: v.copy() for n, v in torch_log["1.grad"].items()}
    g["a.weight"][0, 0] += 0.05 * np.abs(g["a.weight"]).max()
    paddle_log["1.grad"] = g
    args = step13_probe.build_parser().parse_args(
        ["--compare", "--loss", "ghm", "--out", str(tmp_path)]
    )
    np.save(step13_probe.probe_file(args, "torch"), torch_log)
    np.save(step13_probe.probe_file(args, "paddle"), paddle_log)
    worst = step13_probe.compare(args)
    assert worst["loss_cls"] == pytest.approx(3e-4)
    assert worst["loss_bbox"] == 0.0
    assert worst["grad_norm"] == pytest.approx(0.01)
    assert worst["grad"] == pytest.approx(0.05)
    printed = capsys.readouterr().out
    assert "gradient norm per parameter: max rel 1.0e-02 (batch 3, b.bias)" in printed
    assert "first 3 batches: max |diff| / max |g| 5.0e-02 (batch 1, a.weight)" in printed


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.npz"):
        step13_probe.main(["--side", "paddle", "--weights", str(tmp_path / "no-such.npz")])


@pytest.mark.torch
def test_both_sides_take_the_same_step(data_root, weights, tmp_path):
    """mmdet and ours at the same weights: losses and gradients equal in float64."""
    pytest.importorskip("mmdet")
    _probe("torch", data_root, weights, tmp_path)
    _probe("paddle", data_root, weights, tmp_path)
    args = step13_probe.build_parser().parse_args(
        ["--compare", "--loss", "ghm", "--dtype", "float64", "--out", str(tmp_path)]
    )
    worst = step13_probe.compare(args)
    assert worst["loss_cls"] < 1e-6 and worst["loss_bbox"] < 1e-6, worst
    assert worst["grad_norm"] < 1e-5 and worst["grad"] < 1e-4, worst
