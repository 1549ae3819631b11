"""bench linformer runs at a tiny size and reports every column (no timing is asserted)."""

import importlib.util
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_linformer.py"
spec = importlib.util.spec_from_file_location("bench_linformer", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_tiny_run_reports_every_core_and_skips_the_reference_above_its_limit():
    rows = bench.run([64, 128], k_proj=16, repeats=1, ref_max_n=64, h=2, d=8, verbose=False)
    small, large = rows
    for mode in ("fwd", "fb"):
        assert small[f"linformer_{mode}_s"] > 0 and small[f"linformer_{mode}_mem"] > 0
        assert small[f"reference_{mode}_speedup"] > 0 and small[f"flash_{mode}_memratio"] > 0
        assert f"reference_{mode}_s" not in large and large[f"flash_{mode}_speedup"] > 0
    table = bench.format_row(large)
    assert table.count("\n") == 1 and "skipped" in table and table.startswith("| 128 | fwd |")
