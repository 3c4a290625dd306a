"""The last lines of ``bench.bench_train_step`` (and so of ``bench.run_all --only train``)."""

import argparse

from bench import bench_train_step, driver
from bench.bench_train_step import summary_lines


def test_one_line_per_case_with_the_median_ratio():
    results = {
        ("b2_512", "torch"): {"median_s": 6.0},
        ("b2_512", "paddle"): {"median_s": 7.5},
        ("b1_800x1333", "torch"): {"median_s": 14.0},
        ("b1_800x1333", "paddle"): {"error": "worker exited 1"},
    }
    assert summary_lines(results, ["b2_512", "b1_800x1333"]) == [
        "train step b2_512: ours/mmdet 1.25x",
        "train step b1_800x1333: ours/mmdet -",
    ]


def test_drive_runs_variants_in_the_same_rounds(monkeypatch):
    calls = []

    def fake_worker(script, tag, worker_args, threads):
        calls.append((tag.split("] ")[1], worker_args))
        return {"median_s": float(len(calls)), "times_s": [float(len(calls))]}

    monkeypatch.setattr(driver, "run_worker_logged", fake_worker)
    args = argparse.Namespace(
        sides=["torch", "paddle"], rounds=2, warmup=1, repeats=3, seed=None, threads=2
    )
    variants = {bench_train_step.PADDLE_CONVS: ("paddle", ["--conv", "paddle"])}
    results = driver.drive("bench_train_step", args, ["b2_512"], variants=variants)
    assert [tag for tag, _ in calls] == [
        f"b2_512 / {name} round {r}/2"
        for r in (1, 2)
        for name in ("torch", "paddle", "paddle-convs")
    ]
    assert calls[2][1][:2] == ["--side", "paddle"] and calls[2][1][-2:] == ["--conv", "paddle"]
    assert calls[1][1][-2:] == ["--repeats", 3]  # the default side: no --conv (oneDNN)
    assert results[("b2_512", "paddle-convs")]["times_s"] == [3.0, 6.0]  # rounds pooled
    assert results[("b2_512", "torch")]["median_s"] == 2.5


def test_the_table_has_a_row_per_variant(monkeypatch, capsys):
    """Ours as trained (oneDNN convolutions, fused frozen BN), then ours with Paddle's
    convolutions and ours with Paddle's BN ops, each against the same mmdet row."""
    runs = []

    def fake_worker(script, tag, worker_args, threads):
        runs.append(worker_args)
        conv = worker_args[worker_args.index("--conv") + 1] if "--conv" in worker_args else None
        seconds = {None: 3.0, "paddle": 4.5, "onednn-paddle-bn": 3.3}[conv]
        if worker_args[1] == "torch":
            seconds = 3.5
        return {"median_s": seconds, "times_s": [seconds]}

    monkeypatch.setattr(driver, "run_worker_logged", fake_worker)
    assert bench_train_step.main(["--cases", "b2_512", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| b2")
    }
    assert set(rows) == {"b2_512", "b2_512, Paddle convs", "b2_512, Paddle BN ops"}
    assert "0.86x" in rows["b2_512"] and "0.94x" in rows["b2_512, Paddle BN ops"]
    assert out.rstrip().endswith("train step b2_512: ours/mmdet 0.86x")
