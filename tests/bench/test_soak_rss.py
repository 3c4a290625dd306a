"""bench.soak_rss's verdict on memory growth: equal early / late windows, hand-made series."""

import pytest

from bench.soak_rss import summarize


def _rows(values, start=0, step=10):
    """One sample per ``step`` iterations; trainer RSS and tree PSS both ``values``."""
    return [
        {"seconds": i, "iteration": start + i * step, "trainer_mib": v, "workers_mib": 0.0,
         "total_mib": v}
        for i, v in enumerate(values)
    ]  # fmt: skip


def test_a_sawtooth_without_a_trend_passes():
    """A new loader worker per epoch: the same peak every 100 iterations is not growth."""
    values = [1000 + (i % 10) * 30 for i in range(200)]  # 1000 .. 1270, period 100 iterations
    out = summarize(_rows(values), warmup_iters=0, max_growth=5.0)
    assert out["trainer_rss"]["growth_percent"] == 0.0 and out["passed"]
    assert out["trainer_rss"]["max_early_mib"] == out["trainer_rss"]["max_late_mib"] == 1270.0


def test_a_leak_fails_and_the_slope_measures_it():
    values = [1000 + 0.5 * i for i in range(201)]  # +0.5 MiB per sample = 50 MiB / 1000 it
    out = summarize(_rows(values), warmup_iters=0, max_growth=5.0)
    # early window: iterations 0..400 -> max 1020; late: 1600..2000 -> max 1100
    assert out["total_pss"]["growth_percent"] == pytest.approx(100 * 80 / 1020, abs=0.01)
    assert out["total_pss"]["slope_mib_per_1000_it"] == pytest.approx(50.0, abs=0.1)
    assert not out["passed"]


def test_the_warm_up_is_left_out():
    values = [500] * 20 + [1000] * 100  # the first 200 iterations fill the pools
    out = summarize(_rows(values), warmup_iters=200, max_growth=5.0)
    assert out["trainer_rss"]["max_early_mib"] == 1000 and out["passed"]
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        summarize(_rows(values), warmup_iters=10_000, max_growth=5.0)
