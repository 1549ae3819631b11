"""FlashAttention on a CPU: exact, linear in memory, and how many "HBM" accesses the tiling saves.

Three measurements (FA-1 Theorem 1, Table 21 and Theorem 2 / Fig. 2; FA-2 §3.1.1):

1. Exactness: the FA-2-order kernel, the FA-1 Algorithm 1 kernel and the recomputation backward
   against the materialised reference in float64 (ragged tiles, Nq != Nk, causal both alignments,
   bias, padding, counter-based dropout compared with its materialised mask).
2. Time and peak extra memory (tracemalloc) of forward+backward versus N, flash vs reference, in
   float64 (the experiment's dtype; the float32 speed comparison is ``bench attention``).
3. HBM accesses versus the on-chip size M at N = 1024, d = 64: the closed-form counts of
   ``attention.io_model`` for standard attention (Algorithm 0), FA-1 Algorithm 1 and the FA-2 loop
   order (block sizes of Algorithm 1 line 1), with points from a counted execution; and the number
   of tiles computed with causal block skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..attention import io_model
from ..attention.dropout import flash_dropout_mask
from ..attention.flash import flash_attention_backward, flash_attention_forward
from ..attention.flash1 import flash_attention_fa1_forward
from ..attention.reference import attention_backward, attention_forward
from ..core import validate
from ..core.measure import median_seconds, traced_peak
from .common import ExperimentResult, markdown_table, savefig

NAME = "flash"
TITLE = "FlashAttention: exact tiled attention, memory vs N, HBM accesses vs SRAM size"

SIZES = {
    "quick": dict(ns=(128, 256, 512, 1024), repeats=3, sim_m=(4096, 16384, 65536)),
    "full": dict(ns=(256, 512, 1024, 2048, 4096), repeats=3, sim_m=(1024, 4096, 16384, 65536)),
}


def _rel(got, want):
    if got is None:
        return float("nan")
    fin = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), fin):
        return float("inf")
    return float(np.max(np.abs(got[fin] - want[fin])) / max(np.max(np.abs(want[fin])), 1e-300))


def exactness_rows(rng):
    """(label, errors...) for each configuration: out, lse, dq, dk, dv, dbias relative to max|ref|."""
    configs = [
        ("B2 H2 N100 d32, blocks 64x64", dict(shape=(2, 2, 100, 100, 32)), {}),
        ("causal, ragged tiles 32x24", dict(shape=(2, 2, 100, 100, 32), bq=32, bk=24), dict(causal=True)),
        ("bottom-right causal Nq50 Nk100, per-head bias, padding",
         dict(shape=(2, 2, 50, 100, 16), bq=16, bk=16, bias=True, pad=True),
         dict(causal=True, causal_alignment="bottom_right")),
        ("N=1, d=1", dict(shape=(1, 1, 1, 1, 1)), {}),
        ("dropout p=0.1 (seed 7) vs its materialised mask", dict(shape=(2, 2, 64, 64, 16), bq=16, bk=32, drop=True),
         dict(causal=True)),
    ]
    rows = []
    for label, c, opts in configs:
        b, h, n_q, n_k, d = c["shape"]
        q, k, v = (rng.standard_normal((b, h, n, d)) for n in (n_q, n_k, n_k))
        opts = dict(opts)
        if c.get("bias"):
            opts["bias"] = rng.standard_normal((h, n_q, n_k))
        if c.get("pad"):
            opts["key_padding_mask"] = rng.random((b, n_k)) < 0.2
        f_opts, r_opts = dict(opts), dict(opts)
        if c.get("drop"):
            f_opts.update(dropout_p=0.1, dropout_seed=7)
            r_opts.update(dropout_p=0.1, dropout_mask=flash_dropout_mask(7, (b, h, n_q, n_k), 0.1))
        blocks = dict(block_q=c.get("bq", 64), block_k=c.get("bk", 64))
        out, cache = flash_attention_forward(q, k, v, **f_opts, **blocks)
        out1, ell, m = flash_attention_fa1_forward(q, k, v, **f_opts, **blocks)
        ref, rcache = attention_forward(q, k, v, **r_opts)
        dout = rng.standard_normal(out.shape)
        grads = flash_attention_backward(dout, cache)
        rgrads = attention_backward(dout, rcache)
        errs = [_rel(out, ref), _rel(out1, ref), _rel(cache.lse, rcache.lse)]
        errs += [_rel(g, rg) if rg is not None else float("nan") for g, rg in zip(grads, rgrads)]
        rows.append([label] + errs)
    return rows


def _time_and_memory(fn, repeats):
    """Median seconds over ``repeats`` calls, then the peak extra traced bytes of one more call."""
    seconds = median_seconds(fn, repeats)
    return seconds, traced_peak(fn)[0]


def scaling_rows(rng, ns, repeats):
    """Forward+backward time and peak extra memory vs N (float64, B = 1, H = 4, d = 64, causal)."""
    rows = []
    for n in ns:
        q, k, v, dout = (rng.standard_normal((1, 4, n, 64)) for _ in range(4))

        def flash():
            out, cache = flash_attention_forward(q, k, v, causal=True)
            return flash_attention_backward(dout, cache)

        def ref():
            out, cache = attention_forward(q, k, v, causal=True)
            return attention_backward(dout, cache)

        tf, mf = _time_and_memory(flash, repeats)
        tr, mr = _time_and_memory(ref, repeats)
        rows.append(dict(n=n, flash_s=tf, ref_s=tr, flash_mb=mf / 2 ** 20, ref_mb=mr / 2 ** 20))
    return rows


def io_rows(rng, n, d, ms, sim_ms):
    """Closed-form HBM accesses vs M, and counted executions at sim_ms (one head)."""
    std = io_model.standard_hbm_accesses(n, d)["total"]
    curve = []
    for m in ms:
        curve.append(dict(m=m, standard=std,
                          fa1=io_model.flash_hbm_accesses(n, d, m, order="fa1")["total"],
                          fa2=io_model.flash_hbm_accesses(n, d, m, order="fa2")["total"]))
    q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
    sim = []
    for m in sim_ms:
        bq, bk = io_model.block_sizes(m, d)
        for order in ("fa1", "fa2"):
            _, reads, writes = io_model.simulate_flash_io(q, k, v, block_q=bq, block_k=bk, order=order)
            sim.append(dict(m=m, order=order, total=reads + writes))
    return curve, sim


def run(size="quick", rng=None, out_dir=Path("out")) -> ExperimentResult:
    validate.option(size, "size", tuple(SIZES))
    rng = np.random.default_rng(0) if rng is None else validate.rng(rng)
    cfg = SIZES[size]
    import matplotlib.pyplot as plt

    # 1. exactness
    ex = exactness_rows(rng)
    ex_table = markdown_table(["configuration (float64)", "out FA-2", "out FA-1 Alg. 1", "lse", "dq", "dk", "dv",
                               "dbias"], [[r[0]] + [f"{x:.1e}" if np.isfinite(x) else "— (no bias)" for x in r[1:]]
                                          for r in ex])
    worst = max(x for r in ex for x in r[1:] if np.isfinite(x))

    # 2. time and memory vs N
    x = rng.standard_normal((1, 4, 70, 64))                   # compile / load the kernels before timing
    out, cache = flash_attention_forward(x, x, x, causal=True)
    flash_attention_backward(out, cache)
    sc = scaling_rows(rng, cfg["ns"], cfg["repeats"])
    sc_table = markdown_table(
        ["N", "flash fwd+bwd ms", "reference ms", "time ratio ref/flash", "flash peak extra MB", "reference MB",
         "memory ratio"],
        [[r["n"], f"{1e3 * r['flash_s']:.1f}", f"{1e3 * r['ref_s']:.1f}", f"{r['ref_s'] / r['flash_s']:.2f}",
          f"{r['flash_mb']:.2f}", f"{r['ref_mb']:.1f}", f"{r['ref_mb'] / r['flash_mb']:.1f}"] for r in sc])

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ns = [r["n"] for r in sc]
    axes[0].loglog(ns, [r["flash_s"] for r in sc], "o-", label="flash (numba tiles)")
    axes[0].loglog(ns, [r["ref_s"] for r in sc], "s-", label="reference (NumPy, materialised)")
    axes[0].set(xlabel="N", ylabel="seconds (median)", title="forward+backward time, causal, float64")
    axes[1].loglog(ns, [r["flash_mb"] for r in sc], "o-", label="flash")
    axes[1].loglog(ns, [r["ref_mb"] for r in sc], "s-", label="reference")
    axes[1].set(xlabel="N", ylabel="peak extra MB (tracemalloc)", title="forward+backward memory")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("B=1, H=4, d=64; memory includes the returned out, dq, dk, dv", fontsize=9)
    fig_time = savefig(fig, out_dir, "flash_time_memory.png")

    # 3. HBM accesses vs M
    n_io, d_io = 1024, 64
    ms = [2 ** e for e in range(8, 19)]
    curve, sim = io_rows(rng, n_io, d_io, ms, cfg["sim_m"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.loglog(ms, [c["standard"] for c in curve], "k-", label="standard (Alg. 0): 4Nd + 4N^2")
    ax.loglog(ms, [c["fa1"] for c in curve], "o-", label="FA-1 Alg. 1 (outer loop K, V)")
    ax.loglog(ms, [c["fa2"] for c in curve], "s-", label="FA-2 order (outer loop Q)")
    ax.loglog(ms, [12 * n_io ** 2 * d_io ** 2 / m for m in ms], ":", color="gray", label="12 N^2 d^2 / M")
    for order, marker in (("fa1", "x"), ("fa2", "+")):
        pts = [s for s in sim if s["order"] == order]
        ax.plot([s["m"] for s in pts], [s["total"] for s in pts], marker, color="red", ms=10,
                label=f"counted execution ({order})")
    ax.set(xlabel="on-chip memory M (elements)", ylabel="HBM elements read + written",
           title=f"HBM accesses vs M (N={n_io}, d={d_io}, one head)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig_io = savefig(fig, out_dir, "flash_hbm_vs_m.png")
    io_table = markdown_table(
        ["M", "B_r x B_c", "standard", "FA-1 Alg. 1", "FA-2 order", "standard / FA-1"],
        [[c["m"], "{}x{}".format(*io_model.block_sizes(c["m"], d_io)), c["standard"], c["fa1"], c["fa2"],
          f"{c['standard'] / c['fa1']:.2f}"] for c in curve if c["m"] in (1024, 4096, 16384, 65536, 262144)])
    sim_ok = all(s["total"] == io_model.flash_hbm_accesses(n_io, d_io, s["m"], order=s["order"])["total"] for s in sim)
    m_paper = 100_000
    ratio_paper = (io_model.standard_hbm_accesses(n_io, d_io)["total"]
                   / io_model.flash_hbm_accesses(n_io, d_io, m_paper, order="fa1")["total"])
    tiles = [io_model.flash_hbm_accesses(n, 64, order="fa2", block_q=64, block_k=64, causal=True) for n in (1024, 4096)]

    last = sc[-1]
    summary = "\n\n".join([
        f"**Exactness** (relative to the largest reference entry; tolerance of the tests 1e-12): worst {worst:.1e}.",
        ex_table,
        f"**Time and memory vs N** (forward+backward, causal, float64, B=1, H=4, d=64; median of {cfg['repeats']}; "
        "peak extra memory by tracemalloc, including the returned out/dq/dk/dv). The flash memory grows linearly "
        "(outputs plus per-worker tiles), the reference's quadratically (S, P, dP, dS are N x N per head).",
        sc_table,
        f"At N={last['n']}: flash is {last['ref_s'] / last['flash_s']:.2f}x the reference's speed and uses "
        f"{last['ref_mb'] / last['flash_mb']:.1f}x less extra memory. Timings on a shared 2-core machine are noisy "
        f"(load average {os.getloadavg()[0]:.1f} when this ran; an oversubscribed OpenBLAS inflates the reference); "
        "the float32 comparison at N up to 8192 is `python -m scratch_transformers bench attention`.",
        f"**HBM accesses vs M** (N={n_io}, d={d_io}; block sizes of FA-1 Alg. 1 line 1). Counted executions agree "
        f"with the closed forms: {'yes' if sim_ok else 'NO'}. Standard attention is flat in M; FA-1 falls as "
        "12 N^2 d^2 / M (Theorem 2) and beats standard once M > ~3 d^2. The FA-2 loop order with the same block "
        "sizes stops improving once B_r reaches its cap d (it re-reads K, V once per query block, N/B_r times).",
        io_table,
        f"At M = {m_paper} elements (~ an A100 SM's SRAM in fp16) FA-1 needs {ratio_paper:.1f}x fewer accesses "
        "than standard attention (paper, Fig. 2: 40.3 vs 4.4 GB, 9.2x, on GPT-2 medium).",
        f"**Causal block skipping** (64 x 64 tiles): N=1024 computes {tiles[0]['tiles']} of {tiles[0]['all_tiles']} "
        f"tiles, N=4096 {tiles[1]['tiles']} of {tiles[1]['all_tiles']} (T(T+1)/2 of T^2).",
    ])
    metrics = {
        "max_rel_error_float64": worst,
        "time_ratio_ref_over_flash_largest_n": last["ref_s"] / last["flash_s"],
        "memory_ratio_ref_over_flash_largest_n": last["ref_mb"] / last["flash_mb"],
        "hbm_ratio_standard_over_fa1_m100k": ratio_paper,
        "causal_tile_fraction_n4096": tiles[1]["tiles"] / tiles[1]["all_tiles"],
    }
    return ExperimentResult(name=NAME, title=TITLE, summary=summary, figures=[fig_time, fig_io], metrics=metrics)
