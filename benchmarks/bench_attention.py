"""Benchmark: FlashAttention (numba tiles) vs the materialised NumPy reference, measured in one run.

    python -m scratch_transformers bench attention [--n 512 1024 2048 4096 8192] [--repeats 3]
                                                   [--causal both|yes|no] [--block-q B_r] [--block-k B_c]  (default: the library's)

float32, B = 1, H = 4, d = 64. For each N and mask: median wall time of forward and of
forward+backward over ``repeats`` runs after a compiling warm-up, for
``attention.flash`` and ``attention.reference`` (the plain-NumPy baseline: BLAS matmuls on the
materialised (B, H, N, N) scores); the time ratio reference / flash (median of the per-round ratios: the machine's speed drifts, and a
ratio of two calls from the same round compares them under the same conditions); the peak extra memory of the
forward and of forward+backward via tracemalloc (numba's allocations are traced too) and its
ratio; the achieved forward GFLOP/s (4 B H N^2 d, halved when causal) next to this machine's
float32 matmul peak measured at the start (a 2048^3 NumPy matmul).
Memory: the reference at N = 8192 needs 1 GiB per (B, H, N, N) float32 array and holds several.
"""

from __future__ import annotations

import argparse

import numpy as np

from scratch_transformers.core.measure import interleaved_seconds, median_ratio, median_seconds, traced_peak


def matmul_peak_gflops(repeats: int = 5, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b
    return 2 * n ** 3 / median_seconds(lambda: a @ b, repeats) / 1e9


def run(ns, repeats=3, causal_modes=(False, True), block_q=None, block_k=None, b=1, h=4, d=64, rng=None, verbose=True):
    """Measure every (N, causal) pair; returns a list of dicts (also printed as it goes)."""
    from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
    from scratch_transformers.attention.reference import attention_backward, attention_forward

    rng = np.random.default_rng(0) if rng is None else rng
    opts = {k: v for k, v in dict(block_q=block_q, block_k=block_k).items() if v is not None}  # None: library default
    # compiling warm-up (both dtypes' kernels are cached on disk after the first run)
    for causal in causal_modes:
        q = rng.standard_normal((b, h, 70, d)).astype(np.float32)
        o, c = flash_attention_forward(q, q, q, causal=causal, **opts)
        flash_attention_backward(o, c)
    rows = []
    for n in ns:
        q, k, v, dout = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(4))
        for causal in causal_modes:
            def flash_fwd():
                return flash_attention_forward(q, k, v, causal=causal, **opts)

            def flash_fwd_bwd():
                out, cache = flash_attention_forward(q, k, v, causal=causal, **opts)
                return flash_attention_backward(dout, cache)

            def ref_fwd():
                return attention_forward(q, k, v, causal=causal)

            def ref_fwd_bwd():
                out, cache = attention_forward(q, k, v, causal=causal)
                return attention_backward(dout, cache)

            out_f, _ = flash_fwd()
            out_r, _ = ref_fwd()
            err = float(np.max(np.abs(out_f - out_r)))
            del out_f, out_r
            row = dict(n=n, causal=causal, err=err)
            # flash and reference in turn within each round; speed-up = median of per-round ratios
            t = interleaved_seconds({"flash_fwd": flash_fwd, "ref_fwd": ref_fwd}, repeats)
            t.update(interleaved_seconds({"flash_fb": flash_fwd_bwd, "ref_fb": ref_fwd_bwd}, repeats))
            for name, times in t.items():
                row[name + "_s"] = float(np.median(times))
            row["fwd_speedup"] = median_ratio(t["ref_fwd"], t["flash_fwd"])
            row["fb_speedup"] = median_ratio(t["ref_fb"], t["flash_fb"])
            row["flash_fwd_mem"] = traced_peak(flash_fwd)[0]
            row["ref_fwd_mem"] = traced_peak(ref_fwd)[0]
            row["flash_fb_mem"] = traced_peak(flash_fwd_bwd)[0]
            row["ref_fb_mem"] = traced_peak(ref_fwd_bwd)[0]
            flops = 4 * b * h * n * n * d * (0.5 if causal else 1.0)
            row["flash_fwd_gflops"] = flops / row["flash_fwd_s"] / 1e9
            row["ref_fwd_gflops"] = flops / row["ref_fwd_s"] / 1e9
            rows.append(row)
            if verbose:
                print(format_row(row), flush=True)
    return rows


HEADER = ("| N | causal | fwd flash ms | fwd ref ms | fwd speed-up | fwd+bwd flash ms | fwd+bwd ref ms | "
          "fwd+bwd speed-up | fwd mem flash MB | fwd mem ref MB | fwd mem ratio | fwd+bwd mem ratio | "
          "flash fwd GFLOP/s | ref fwd GFLOP/s | max abs diff |\n|" + "---|" * 15)


def format_row(r):
    mb = 1024 * 1024
    return (f"| {r['n']} | {'yes' if r['causal'] else 'no'} | {1e3 * r['flash_fwd_s']:.1f} | {1e3 * r['ref_fwd_s']:.1f} | "
            f"{r['fwd_speedup']:.2f}x | {1e3 * r['flash_fb_s']:.1f} | {1e3 * r['ref_fb_s']:.1f} | "
            f"{r['fb_speedup']:.2f}x | {r['flash_fwd_mem'] / mb:.2f} | {r['ref_fwd_mem'] / mb:.1f} | "
            f"{r['ref_fwd_mem'] / max(r['flash_fwd_mem'], 1):.0f}x | {r['ref_fb_mem'] / max(r['flash_fb_mem'], 1):.0f}x | "
            f"{r['flash_fwd_gflops']:.1f} | {r['ref_fwd_gflops']:.1f} | {r['err']:.1e} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench attention", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    parser.add_argument("--block-q", type=int, default=None, help="B_r of both kernels (default: each kernel's own)")
    parser.add_argument("--block-k", type=int, default=None, help="B_c of both kernels (default: each kernel's own)")
    args = parser.parse_args(argv)
    modes = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    import numba

    from scratch_transformers.attention.flash import BACKWARD_BLOCKS, FORWARD_BLOCKS

    if args.block_q is None and args.block_k is None:
        blocks = (f"forward {FORWARD_BLOCKS[0]}x{FORWARD_BLOCKS[1]} (key-major), "
                  f"backward {BACKWARD_BLOCKS[0]}x{BACKWARD_BLOCKS[1]} (the library's defaults)")
    else:
        blocks = f"{args.block_q}x{args.block_k} (None: that kernel's default) in both kernels"
    peak = matmul_peak_gflops()
    print(f"float32, B=1, H=4, d=64, blocks {blocks}, numba threads {numba.get_num_threads()}, "
          f"median of {args.repeats} interleaved rounds after warm-up")
    import os

    print(f"machine float32 matmul peak (NumPy 2048^3): {peak:.1f} GFLOP/s; load average at start "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores: ratios in one run are the figure)\n")
    print(HEADER, flush=True)
    rows = run(args.n, repeats=args.repeats, causal_modes=modes, block_q=args.block_q, block_k=args.block_k)
    best = max(r["flash_fwd_gflops"] for r in rows)
    print(f"\nbest flash forward: {best:.1f} GFLOP/s = {100 * best / peak:.0f}% of the measured matmul peak; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
