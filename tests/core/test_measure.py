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


def test_interleaved_seconds_takes_the_calls_in_turn():
    from scratch_transformers.core.measure import interleaved_seconds

    order = []
    times = interleaved_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0.0 for v in times.values())


def test_median_ratio_is_the_median_of_per_round_ratios():
    import pytest

    from scratch_transformers.core.measure import median_ratio

    # per-round ratios 2, 3, 10: median 3 (the ratio of medians would be 4 / 1 = 4)
    assert median_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == 3.0
    assert median_ratio([4.0, 2.0, 8.0], [2.0, 1.0, 1.0]) == 2.0
    with pytest.raises(ValueError, match="equal length"):
        median_ratio([1.0, 2.0], [1.0])
