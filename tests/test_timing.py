"""The benchmarks' one timer: call counts, warm-ups, the budget, and interleaving."""

from __future__ import annotations

import time

from stadapter_deploy.timing import interleaved_ms, median_ms, median_rate, time_ms


def test_time_ms_counts_warmups_apart_and_stops_at_the_budget():
    calls = []
    times = time_ms(lambda: calls.append(time.sleep(0.002)), runs=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 2 for t in times)
    slow = time_ms(lambda: time.sleep(0.03), runs=100, budget_s=0.05)
    assert 1 <= len(slow) <= 3  # no call starts once 50 ms are spent
    assert median_ms(lambda: time.sleep(0.002), runs=3) >= 2


def test_interleaved_ms_alternates_the_variants():
    order = []
    medians = interleaved_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and medians["a"].runs == 3 and medians["a"].wall_ms >= 0


def test_median_rate():
    assert 0 < median_rate(lambda: time.sleep(0.005), work=1.0, seconds=0.02) <= 200  # 1 unit per >= 5 ms
