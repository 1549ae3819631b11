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
