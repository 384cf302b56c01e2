"""The benchmarks' one timer: wall (and process CPU) milliseconds of repeated calls, medians.

Machines here are shared and noisy, so every figure is a median, and variants compared with each
other run interleaved (one call of each per round) so that load from other processes hits them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 0, budget_s: float | None = None) -> list[float]:
    """Wall milliseconds of `runs` calls of fn(), after `warmup` untimed ones; no call starts once the
    timed ones have taken `budget_s` (at least one always runs)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    while len(out) < runs and (budget_s is None or not out or sum(out) < budget_s * 1e3):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall milliseconds of `runs` calls of fn(), after `warmup` untimed ones."""
    return statistics.median(time_ms(fn, runs, warmup))


def median_rate(fn: Callable[[], object], work: float, seconds: float) -> float:
    """Median of `work` / seconds per call over calls for `seconds` (at least 3), after one warm-up."""
    fn()
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        start = time.perf_counter()
        fn()
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


@dataclass
class Medians:
    wall_ms: float
    cpu_ms: float  # process CPU time: on a loaded machine it moves less than the wall time
    runs: int


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, Medians]:
    """name -> medians over `rounds` rounds of one call of each fn in turn, after `warmup` rounds."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                walls[name].append((time.perf_counter() - wall) * 1e3)
                cpus[name].append((time.process_time() - cpu) * 1e3)
    return {name: Medians(statistics.median(walls[name]), statistics.median(cpus[name]), rounds) for name in fns}
