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
