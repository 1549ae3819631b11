import numpy as np

from scratch_transformers.core.measure import median_seconds, traced_peak


def test_traced_peak_counts_what_the_call_allocates_not_its_inputs():
    big = np.ones(1_000_000)                                    # made before: not counted
    peak, result = traced_peak(lambda: (big * 2).sum())        # one temporary of 8 MB
    assert 8_000_000 <= peak < 9_000_000
    assert result == 2_000_000.0


def test_median_seconds_is_a_median():
    calls = []
    assert median_seconds(lambda: calls.append(1), 3) >= 0.0
    assert len(calls) == 3
