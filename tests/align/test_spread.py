"""Step 13's spread of runs that differ by rounding only (``align/step13_spread.py``), on hand-made logs."""

import json

import numpy as np
import pytest

from align import step13_spread, train_data

BASE = train_data.run_name("focal", "adamw", 0, 8)


def _log(second_half, digest=1, iters=8):
    """A log whose loss is 1 over the first half and ``second_half`` over the second."""
    loss = np.ones(iters)
    loss[iters // 2 :] = second_half
    log = {"loss": loss, "loss_cls": loss * 0.75, "loss_bbox": loss * 0.25}
    log["meta.data_sha256"] = np.full(32, digest, np.uint8)
    return log


def _save(folder, suffix, log):
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{BASE}{suffix}.npy", log)


def _args(tmp_path, *folders):
    return step13_spread.build_parser().parse_args(
        ["--loss", "focal", "--iters", "8", "--out", str(tmp_path / "out")]
        + ["--data-root", str(tmp_path / "nodata"), "--runs", *map(str, folders)]
    )


def test_find_runs_takes_the_rounding_variants_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for suffix in ("_torch", "_paddle", "_float64_paddle", "_perturb1e-7_torch"):
        _save(a, suffix, _log(1.0))
    # other settings: an ablation tag, another seed, a float64 ablation
    for suffix in ("_ghmc_sl1_paddle", "_noise20_torch", "_float64_noise20_paddle"):
        _save(b, suffix, _log(1.0))
    np.save(b / f"{train_data.run_name('focal', 'adamw', 1, 8)}_torch.npy", _log(1.0))
    runs = step13_spread.find_runs([str(a), str(b)], BASE)
    assert sorted((r["side"], r["start"]) for r in runs) == [
        ("paddle", "float32"),
        ("paddle", "float64"),
        ("torch", "float32"),
        ("torch", "float32+perturb1e-7"),
    ]
    assert all(r["dets"] is None for r in runs)
    _save(b, "_torch", _log(1.0))  # the plain mmdet run in two folders
    with pytest.raises(ValueError, match="found twice"):
        step13_spread.find_runs([str(a), str(b)], BASE)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        step13_spread.find_runs([str(tmp_path / "missing")], BASE)


def test_permutation_test_by_hand():
    # pooled 3, 4 | 1, 2: the 6 splits give differences 2, -2, -1, 0, 0, 1; two reach |2|
    out = step13_spread.permutation_test([3.0, 4.0], [1.0, 2.0])
    assert out == {"difference": 2.0, "p_value": pytest.approx(1 / 3), "splits": 6}
    # overlapping groups: 1, 4 | 2, 3 -> difference 0, every split at least as extreme
    assert step13_spread.permutation_test([1.0, 4.0], [2.0, 3.0])["p_value"] == 1.0
    # 3 against 1: C(4, 3) = 4 splits, the observed one alone at its extreme
    out = step13_spread.permutation_test([5.0, 6.0, 7.0], [1.0])
    assert out["splits"] == 4 and out["p_value"] == pytest.approx(1 / 4)


def test_first_parting():
    b = np.ones(6)
    a = np.array([1.0, 1 + 1e-7, 1 + 2e-6, 1 + 5e-3, 1.0, 1.5])
    assert step13_spread.first_parting(a, b) == {"1e-06": 2, "0.001": 3, "0.01": 5}
    assert step13_spread.first_parting(b, b) == {"1e-06": None, "0.001": None, "0.01": None}


def test_spread_of_hand_made_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _save(runs, "_torch", _log(0.50))
    _save(runs, "_perturb1e-7_torch", _log(0.52))
    _save(runs, "_paddle", _log(0.48))
    paddle_perturbed = _log(0.49)
    paddle_perturbed["loss"][1] *= 1 + 2e-3  # parts from mmdet's perturbed run at iteration 1
    _save(runs, "_perturb1e-7_paddle", paddle_perturbed)
    out = step13_spread.spread(_args(tmp_path, runs))
    assert out["sides"]["torch"]["loss_mean"] == pytest.approx(0.51)
    assert out["sides"]["paddle"]["loss_sd"] == pytest.approx(np.std([0.48, 0.49], ddof=1))
    assert out["sides"]["paddle"]["AP_mean"] is None  # no detection files
    # ours 0.48, 0.49 against mmdet 0.50, 0.52: of the 6 splits of the pooled four, this one and
    # its mirror image reach |difference| 0.025
    test = out["loss_test"]
    assert test["difference"] == pytest.approx(-0.025)
    assert test["relative"] == pytest.approx(-0.025 / 0.51)
    assert test["p_value"] == pytest.approx(2 / 6)
    assert out["pairs"]["float32"]["first_parting"] == {"1e-06": 4, "0.001": 4, "0.01": 4}
    assert out["pairs"]["float32+perturb1e-7"]["first_parting"]["0.001"] == 1
    assert out["pairs"]["float32"]["second_half_shift"] == pytest.approx(0.48 / 0.50 - 1)
    # smoothed over 8 iterations = the running mean; the largest gap is at the last iteration
    pairs = out["smoothed_pairs"]
    assert sorted(pairs) == ["mmdet/mmdet", "ours/mmdet", "ours/ours"]
    assert len(pairs["ours/mmdet"]["pairs"]) == 4
    assert pairs["ours/mmdet"]["pairs"]["float32 / float32"] == pytest.approx(0.01 / 0.75)
    assert pairs["mmdet/mmdet"]["max"] == pytest.approx(0.01 / 0.76)  # 0.75 against 0.76
    perturbed_mean = (4 + 0.002 + 4 * 0.49) / 8
    assert pairs["ours/ours"]["max"] == pytest.approx(abs(0.74 - perturbed_mean) / perturbed_mean)
    assert pairs["ours/mmdet"]["max"] == pytest.approx((0.76 - 0.74) / 0.76)
    saved = json.loads((tmp_path / "out" / f"{BASE}_spread.json").read_text())
    assert saved["loss_test"]["p_value"] == pytest.approx(2 / 6)
    assert (tmp_path / "out" / f"{BASE}_spread.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| ours | float32 | 0.4800 | 0.3600 | 0.1200 | - |" in printed
    assert "ours - mmdet, second-half loss: -4.9 % of mmdet's mean, permutation p = 0.33" in printed


def test_spread_refuses_mixed_data_and_lengths(tmp_path):
    runs = tmp_path / "runs"
    _save(runs, "_torch", _log(0.5))
    _save(runs, "_paddle", _log(0.5, digest=2))
    with pytest.raises(ValueError, match="other data"):
        step13_spread.spread(_args(tmp_path, runs))
    _save(runs, "_paddle", _log(0.5, iters=6))
    with pytest.raises(ValueError, match="6 iterations, not 8"):
        step13_spread.spread(_args(tmp_path, runs))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no run of"):
        step13_spread.spread(_args(tmp_path, empty))


def test_results_are_replaced_atomically(tmp_path):
    from align.common import replaced_atomically

    path = tmp_path / "x_spread.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), replaced_atomically(str(path)) as tmp:
        assert tmp.endswith(".tmp.json")  # the extension kept, for writers that go by it
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old"  # the last result stays, no temporary left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["x_spread.json"]
    with replaced_atomically(str(path)) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["x_spread.json"]
