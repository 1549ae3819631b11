"""Wall time and traced memory of a call: what the benchmarks and the experiments' tables use.

Times are medians over repeats (call once before to compile numba kernels). Memory is measured with
``tracemalloc``, which sees NumPy's buffers and numba's own allocations inside jitted code.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from . import validate


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (seconds)."""
    repeats = validate.positive_int(repeats, "repeats")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each ``fns[name]()`` over ``repeats`` rounds, the calls taken in turn inside each
    round (a, b, c, a, b, c, ...). On a shared machine whose speed drifts over seconds, the ratio of two
    calls from the same round compares them under the same conditions; the median of those per-round
    ratios is the benchmark figure (``median_ratio``)."""
    repeats = validate.positive_int(repeats, "repeats")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i] (e.g. baseline time / our time)."""
    if len(numerator) != len(denominator) or not numerator:
        validate.fail("numerator, denominator", "two non-empty lists of equal length",
                      f"lengths {len(numerator)} and {len(denominator)}")
    return float(np.median(np.asarray(numerator, float) / np.asarray(denominator, float)))


def traced_peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn()`` once under tracemalloc; return (peak bytes allocated during the call above what
    was allocated when it started, the call's result). Inputs made before the call do not count."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, result
