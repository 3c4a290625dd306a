"""The last lines of ``bench.bench_train_step`` (and so of ``bench.run_all --only train``)."""

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
