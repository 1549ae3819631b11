"""Benchmark: LSH attention (Reformer) vs the materialised NumPy reference and the flash core, one run.

    python -m scratch_transformers bench lsh [--n 1024 2048 4096 8192 16384] [--repeats 3] [--n-hashes 2]
                                             [--bucket-size 64] [--ref-max 8192]

float32, B = 1, H = 1, d = 64, causal. LSH: ``reformer.lsh.lsh_attention_forward`` with n_hashes rounds,
chunks of bucket_size and the paper's n_buckets = 2 N / bucket_size (§2: m = 2l/n_b), so each query scores
2 * bucket_size keys per round: work ~ n_hashes * N * 2m * d, linear in N. Reference:
``attention.reference`` (materialised (N, N) scores, BLAS matmuls): quadratic time and memory. Flash:
``attention.flash`` (numba tiles, quadratic time, linear memory). For each N: the median wall time of
forward and forward+backward over ``repeats`` interleaved rounds after a warm-up, the per-round ratios,
and the peak extra memory (tracemalloc). At the end: the growth exponent of each column (least-squares
slope of log time or log memory against log N) and the crossover N where LSH becomes faster (log-log
interpolation between the measured N; "below" if LSH already wins at the smallest N).

The reference is skipped above ``--ref-max`` (default 8192): at N = 16384 one (N, N) float32 array is
1 GiB and its forward+backward holds about five, more than a shared laptop should give a benchmark.
The comparison is of cost only: LSH attention is an approximation (its error against full attention is
measured by ``python -m scratch_transformers experiment reformer``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from scratch_transformers.core.measure import interleaved_seconds, median_ratio, traced_peak


def growth_exponent(ns, values) -> float:
    """Slope of log(value) against log(N) (least squares)."""
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def crossover(ns, ours, theirs) -> str:
    """The N where ours first becomes smaller than theirs, interpolated in log-log between measured N."""
    pairs = [(n, a, b) for n, a, b in zip(ns, ours, theirs) if np.isfinite(a) and np.isfinite(b)]
    if not pairs:
        return "n/a"
    if pairs[0][1] < pairs[0][2]:
        return f"below {pairs[0][0]}"
    for (n0, a0, b0), (n1, a1, b1) in zip(pairs, pairs[1:]):
        if a1 < b1:
            r0, r1 = np.log(a0 / b0), np.log(a1 / b1)          # > 0 then < 0
            t = r0 / (r0 - r1)
            return f"~{np.exp(np.log(n0) + t * (np.log(n1) - np.log(n0))):.0f}"
    return f"above {pairs[-1][0]}"


def run(ns, repeats=3, n_hashes=2, bucket_size=64, ref_max=8192, d=64, rng=None, verbose=True):
    from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
    from scratch_transformers.attention.reference import attention_backward, attention_forward
    from scratch_transformers.reformer.lsh import lsh_attention_backward, lsh_attention_forward, random_rotations

    rng = np.random.default_rng(0) if rng is None else rng
    w = rng.standard_normal((1, 1, 256, d)).astype(np.float32)
    o, c = flash_attention_forward(w, w, w, causal=True)               # compile the flash kernels
    flash_attention_backward(o, c)
    rows = []
    for n in ns:
        qk, k, v, dout = (rng.standard_normal((1, 1, n, d)).astype(np.float32) for _ in range(4))
        rot = random_rotations(rng, d, n_hashes, max(2, 2 * n // bucket_size), dtype=np.float32)
        fns = {
            "lsh": lambda: lsh_attention_forward(qk, v, rot, bucket_size=bucket_size, causal=True),
            "flash": lambda: flash_attention_forward(qk, k, v, causal=True),
            "ref": lambda: attention_forward(qk, k, v, causal=True),
        }
        bwd = {"lsh": lsh_attention_backward, "flash": flash_attention_backward, "ref": attention_backward}
        if n > ref_max:
            del fns["ref"]
        fwd_bwd = {name: (lambda f=f, b=bwd[name]: b(dout, f()[1])) for name, f in fns.items()}
        t_f = interleaved_seconds(fns, repeats)
        t_fb = interleaved_seconds(fwd_bwd, repeats)
        row = dict(n=n)
        for name in ("lsh", "flash", "ref"):
            if name in fns:
                row[f"{name}_fwd_s"] = float(np.median(t_f[name]))
                row[f"{name}_fb_s"] = float(np.median(t_fb[name]))
                row[f"{name}_fwd_mem"] = traced_peak(fns[name])[0]
                row[f"{name}_fb_mem"] = traced_peak(fwd_bwd[name])[0]
                if name != "lsh":
                    row[f"{name}_fwd_ratio"] = median_ratio(t_f[name], t_f["lsh"])
                    row[f"{name}_fb_ratio"] = median_ratio(t_fb[name], t_fb["lsh"])
            else:
                for key in ("fwd_s", "fb_s", "fwd_mem", "fb_mem", "fwd_ratio", "fb_ratio"):
                    row[f"{name}_{key}"] = float("nan")
        rows.append(row)
        if verbose:
            print(format_row(row), flush=True)
    return rows


HEADER = ("| N | fwd LSH ms | fwd ref ms | fwd flash ms | ref/LSH | flash/LSH | fwd+bwd LSH ms | fwd+bwd ref ms | "
          "fwd+bwd flash ms | ref/LSH | flash/LSH | fwd+bwd mem LSH MB | ref MB | flash MB |\n|" + "---|" * 14)


def _ms(x):
    return "skipped" if not np.isfinite(x) else f"{1e3 * x:.1f}"


def _x(x):
    return "-" if not np.isfinite(x) else f"{x:.2f}x"


def _mb(x):
    return "skipped" if not np.isfinite(x) else f"{x / 2 ** 20:.1f}"


def format_row(r):
    return (f"| {r['n']} | {_ms(r['lsh_fwd_s'])} | {_ms(r['ref_fwd_s'])} | {_ms(r['flash_fwd_s'])} | "
            f"{_x(r['ref_fwd_ratio'])} | {_x(r['flash_fwd_ratio'])} | {_ms(r['lsh_fb_s'])} | {_ms(r['ref_fb_s'])} | "
            f"{_ms(r['flash_fb_s'])} | {_x(r['ref_fb_ratio'])} | {_x(r['flash_fb_ratio'])} | "
            f"{_mb(r['lsh_fb_mem'])} | {_mb(r['ref_fb_mem'])} | {_mb(r['flash_fb_mem'])} |")


def summary(rows) -> str:
    ns = [r["n"] for r in rows]
    lines = ["| quantity | LSH | reference | flash |", "|---|---|---|---|"]
    for key, label in (("fwd_s", "time exponent, forward"), ("fb_s", "time exponent, fwd+bwd"),
                       ("fwd_mem", "memory exponent, forward"), ("fb_mem", "memory exponent, fwd+bwd")):
        vals = [growth_exponent(ns, [r[f"{m}_{key}"] for r in rows]) for m in ("lsh", "ref", "flash")]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    for key, label in (("fwd_s", "forward"), ("fb_s", "fwd+bwd")):
        lsh = [r[f"lsh_{key}"] for r in rows]
        lines.append(f"| crossover N ({label}): LSH faster than | - | "
                     f"{crossover(ns, lsh, [r[f'ref_{key}'] for r in rows])} | "
                     f"{crossover(ns, lsh, [r[f'flash_{key}'] for r in rows])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench lsh", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-hashes", type=int, default=2)
    parser.add_argument("--bucket-size", type=int, default=64)
    parser.add_argument("--ref-max", type=int, default=8192)
    args = parser.parse_args(argv)
    import numba

    print(f"float32, B=1, H=1, d=64, causal; LSH n_hashes={args.n_hashes}, bucket_size={args.bucket_size}, "
          f"n_buckets=2N/bucket_size; numba threads {numba.get_num_threads()}; median of {args.repeats} interleaved "
          f"rounds; reference skipped above N={args.ref_max}; load average {os.getloadavg()[0]:.1f}\n")
    print(HEADER, flush=True)
    rows = run(args.n, repeats=args.repeats, n_hashes=args.n_hashes, bucket_size=args.bucket_size, ref_max=args.ref_max)
    print("\nGrowth exponents (slope of log value vs log N) and crossovers:\n")
    print(summary(rows))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
