"""Benchmark: Linformer attention (k projected slots) vs the NumPy reference and the flash core, one run.

    python -m scratch_transformers bench linformer [--n 1024 2048 4096 8192 16384] [--k 256] [--repeats 3]
                                                   [--ref-max-n 8192]

float32, B = 1, H = 4, d = 64, bidirectional (Linformer cannot be causal), E and F (k, N) shared by the
heads. For each N: median wall time of forward and of forward+backward (the backward includes dE, dF)
over ``repeats`` rounds in which the three cores run in turn, after a warm-up that compiles the flash
kernels; time ratios are medians of the per-round ratios (core.measure.median_ratio); peak extra memory
of forward and of forward+backward by tracemalloc (numba's allocations are traced too).

The reference materialises (B, H, N, N) float32 arrays (1 GiB each at N = 8192, 4 GiB at 16384, several
alive at once), so it is skipped above ``--ref-max-n`` (default 8192: at 16384 it needs > 16 GiB on a
machine other people share); flash is O(N) memory but O(N^2) time, Linformer O(N k) in both (§4, eq. 7).
The paper's Table 3 measures whole-model inference on a V100, not this single layer on a CPU.
On a loaded machine, run it with OPENBLAS_NUM_THREADS=1: two spinning BLAS threads on oversubscribed cores
slowed Linformer's (k, N) x (N, d) products ~10x (the reference's large products much less).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from scratch_transformers.core.measure import interleaved_seconds, median_ratio, traced_peak

MB = 1024 * 1024


def _cores(q, k, v, dout, E, F):
    from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
    from scratch_transformers.attention.reference import attention_backward, attention_forward
    from scratch_transformers.linformer import linformer_attention_backward, linformer_attention_forward

    def pair(fwd, bwd, *extra):
        def f():
            return fwd(q, k, v, *extra)

        def fb():
            out, cache = fwd(q, k, v, *extra)
            return bwd(dout, cache)
        return f, fb

    return {"linformer": pair(linformer_attention_forward, linformer_attention_backward, E, F),
            "reference": pair(attention_forward, attention_backward),
            "flash": pair(flash_attention_forward, flash_attention_backward)}


def run(ns, k_proj=256, repeats=3, ref_max_n=8192, b=1, h=4, d=64, rng=None, verbose=True):
    """Measure every N; returns a list of dicts (also printed as a markdown table row as it goes)."""
    from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
    from scratch_transformers.linformer import init_projection

    rng = np.random.default_rng(0) if rng is None else rng
    q = rng.standard_normal((b, h, 70, d)).astype(np.float32)          # compiling warm-up
    o, c = flash_attention_forward(q, q, q)
    flash_attention_backward(o, c)
    rows = []
    for n in ns:
        q, k, v, dout = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(4))
        E = init_projection(rng, (k_proj, n), dtype=np.float32)
        F = init_projection(rng, (k_proj, n), dtype=np.float32)
        cores = _cores(q, k, v, dout, E, F)
        if n > ref_max_n:
            del cores["reference"]
        row = {"n": n, "k": k_proj}
        for mode, idx in (("fwd", 0), ("fb", 1)):
            t = interleaved_seconds({name: fns[idx] for name, fns in cores.items()}, repeats)
            for name, times in t.items():
                row[f"{name}_{mode}_s"] = float(np.median(times))
                row[f"{name}_{mode}_mem"] = traced_peak(cores[name][idx])[0]
                if name != "linformer":
                    row[f"{name}_{mode}_speedup"] = median_ratio(times, t["linformer"])
                    row[f"{name}_{mode}_memratio"] = row[f"{name}_{mode}_mem"] / max(row[f"linformer_{mode}_mem"], 1)
        rows.append(row)
        if verbose:
            print(format_row(row), flush=True)
    return rows


HEADER = ("| N | mode | Linformer ms | reference ms | flash ms | speed-up vs ref | speed-up vs flash | "
          "Linformer MB | reference MB | flash MB | memory vs ref | memory vs flash |\n|" + "---|" * 12)


def format_row(r):
    """Two markdown rows (forward, forward+backward) of one N; 'skipped' where the reference was not run."""
    ms, mb = (lambda x: f"{1e3 * x:.1f}"), (lambda x: f"{x / MB:.1f}")
    times, ratio = (lambda x: f"{x:.1f}x"), (lambda x: f"{x:.2f}x")
    lines = []
    for mode, label in (("fwd", "fwd"), ("fb", "fwd+bwd")):
        def cell(name, key, fmt):
            full = f"{name}_{mode}_{key}"
            return fmt(r[full]) if full in r else "skipped"
        cells = [str(r["n"]), label, ms(r[f"linformer_{mode}_s"]), cell("reference", "s", ms), cell("flash", "s", ms),
                 cell("reference", "speedup", times), cell("flash", "speedup", times), mb(r[f"linformer_{mode}_mem"]),
                 cell("reference", "mem", mb), cell("flash", "mem", mb), cell("reference", "memratio", times),
                 cell("flash", "memratio", ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench linformer", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--k", type=int, default=256, help="projected length k (the paper's Table 3 uses 128-2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-max-n", type=int, default=8192, help="skip the materialised reference above this N")
    args = parser.parse_args(argv)
    import numba

    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"float32, B=1, H=4, d=64, k={args.k}, bidirectional, numba threads {numba.get_num_threads()}, "
          f"OPENBLAS_NUM_THREADS={blas}, "
          f"median of {args.repeats} interleaved rounds after warm-up; load average at start {os.getloadavg()[0]:.1f} "
          "(other processes share the cores: ratios in one run are the figure)\n")
    print(HEADER, flush=True)
    run(args.n, k_proj=args.k, repeats=args.repeats, ref_max_n=args.ref_max_n)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; speed-up = other / Linformer time, "
          "memory = other's peak extra / Linformer's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
