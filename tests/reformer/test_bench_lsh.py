"""bench lsh's pure helpers: the fitted growth exponent and the interpolated crossover (no timing asserted)."""

import importlib.util
from pathlib import Path

import numpy as np

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lsh.py"
spec = importlib.util.spec_from_file_location("bench_lsh", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_growth_exponent_recovers_a_power_law():
    ns = [1024, 2048, 4096, 8192]
    assert abs(bench.growth_exponent(ns, [3e-9 * n ** 2 for n in ns]) - 2.0) < 1e-12
    assert abs(bench.growth_exponent(ns, [5e-6 * n for n in ns][:3] + [float("nan")]) - 1.0) < 1e-12   # skipped N
    assert np.isnan(bench.growth_exponent(ns, [1.0, float("nan"), float("nan"), float("nan")]))


def test_crossover_interpolates_in_log_log():
    ns = [1000, 4000]
    ours = [2.0, 1.0]           # ours / theirs: 2 at 1000, 0.5 at 4000 -> equal at the geometric midpoint 2000
    theirs = [1.0, 2.0]
    assert bench.crossover(ns, ours, theirs) == "~2000"
    assert bench.crossover(ns, [0.5, 0.5], theirs) == "below 1000"
    assert bench.crossover(ns, [5.0, 5.0], theirs) == "above 4000"
    assert bench.crossover(ns, [1.0, 1.0], [float("nan")] * 2) == "n/a"


def test_summary_names_every_method():
    nan = float("nan")
    rows = [dict(n=n, **{f"{m}_{k}": (nan if (m == "ref" and n > 1024) else float(n)) for m in ("lsh", "ref", "flash")
                         for k in ("fwd_s", "fb_s", "fwd_mem", "fb_mem")}) for n in (512, 1024, 2048)]
    text = bench.summary(rows)
    assert "| time exponent, forward | 1.00 | 1.00 | 1.00 |" in text and "crossover N (fwd+bwd)" in text
