"""Benchmark: the numba selective scan against a plain-NumPy loop over time (same run, same inputs).

    python -m scratch_transformers bench scan [--lengths 256 1024 4096] [--repeats 7]

Both compute the Mamba scan with softplus(delta + bias), the skip D and the gate silu(z), in float32.
Baseline forward: a Python loop over t whose body is vectorised over (batch, D, N); baseline forward+backward:
the same loop storing h_t for every t (it materialises (b, L, D, N)), then the reverse-time adjoint loop.
Ours: selective_scan_forward / selective_scan_backward (Delta recomputed in the kernels, states checkpointed every
``chunk`` steps, by default adaptive_chunk(L, D) ~ sqrt(L), and recomputed chunk by chunk in the backward).
Times are medians of ``--repeats`` rounds after a warm-up call that compiles; each round runs the four calls in
turn and a speedup is the median over rounds of the per-round ratio (core.measure.interleaved_seconds: both sides
of a ratio see the same machine load); memory is the peak traced by
tracemalloc during one forward+backward call, and "extra" memory is that peak minus the bytes of the arrays the
call returns (tracemalloc also traces numba's own allocations, so the kernels' scratch is included).
"""

from __future__ import annotations

import argparse

import numpy as np
from numba import get_num_threads

from scratch_transformers.core.measure import interleaved_seconds, median_ratio, traced_peak
from scratch_transformers.mamba.scan import adaptive_chunk, selective_scan_backward, selective_scan_forward


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def numpy_forward(u, delta, A, B, C, D, z, bias, store=False):
    """What a user would write in NumPy: loop over time, vectorised over (b, D, N)."""
    nb, L, Dd = u.shape
    N = A.shape[1]
    raw = delta + bias
    dt = _softplus(raw)                                                     # (b, L, D)
    h = np.zeros((nb, Dd, N), u.dtype)
    y = np.empty_like(u)
    hs = np.empty((nb, L + 1, Dd, N), u.dtype) if store else None           # materialised states
    if store:
        hs[:, 0] = h
    for t in range(L):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        y[:, t] = np.einsum("bdn,bn->bd", h, C[:, t])
        if store:
            hs[:, t + 1] = h
    s = _sigmoid(z)
    yD = y + D * u
    out = yD * z * s
    return out, (u, raw, dt, A, B, C, D, z, s, yD, hs)


def numpy_backward(dout, cache):
    """The same recurrence run backwards over the stored states (the adjoint of derivations/mamba.md)."""
    u, raw, dt, A, B, C, D, z, s, yD, hs = cache
    nb, L, Dd = u.shape
    dz = dout * yD * s * (1 + z * (1 - s))
    dy = dout * z * s
    dD = np.sum(dy * u, axis=(0, 1))
    du = dy * D
    ddt = np.zeros_like(u)
    dA = np.zeros_like(A)
    dB = np.zeros_like(B)
    dC = np.zeros_like(C)
    lam = np.zeros((nb, Dd, A.shape[1]), u.dtype)
    for t in range(L - 1, -1, -1):
        a_bar = np.exp(dt[:, t, :, None] * A)
        lam = lam + dy[:, t, :, None] * C[:, t, None, :]
        dC[:, t] = np.einsum("bd,bdn->bn", dy[:, t], hs[:, t + 1])
        dB[:, t] = np.einsum("bdn,bd->bn", lam, dt[:, t] * u[:, t])
        du[:, t] += dt[:, t] * np.einsum("bdn,bn->bd", lam, B[:, t])
        ah = a_bar * hs[:, t]
        ddt[:, t] = np.einsum("bdn,bn->bd", lam, B[:, t]) * u[:, t] + np.sum(lam * A * ah, axis=-1)
        dA += np.sum(lam * dt[:, t, :, None] * ah, axis=0)
        lam = lam * a_bar
    ddelta = ddt * _sigmoid(raw)
    return du, ddelta, dA, dB, dC, dD, dz, ddelta.sum(axis=(0, 1))


def _inputs(rng, nb, L, Dd, N, dtype):
    f = lambda *s: rng.standard_normal(s).astype(dtype)
    return dict(u=f(nb, L, Dd), delta=f(nb, L, Dd) * dtype(0.5), A=-np.exp(f(Dd, N) * dtype(0.5)),
                B=f(nb, L, N), C=f(nb, L, N), D=f(Dd), z=f(nb, L, Dd), delta_bias=f(Dd) * dtype(0.3) - dtype(2))


def _peak(fn):
    """(peak traced bytes during fn(), bytes of the arrays it returns): their difference is the extra memory."""
    peak, (out, grads) = traced_peak(fn)
    returned = out.nbytes + sum(g.nbytes for g in grads if g is not None)
    return peak, returned


def run(lengths=(256, 1024, 4096), batch=1, d=256, n=16, repeats=7, seed=0, chunk=None):
    rng = np.random.default_rng(seed)
    rows = []
    for L in lengths:
        kw = _inputs(rng, batch, L, d, n, np.float32)
        dout = rng.standard_normal((batch, L, d)).astype(np.float32)

        def ours_f():
            return selective_scan_forward(**kw, delta_softplus=True, chunk=chunk)

        def ours_fb():
            (o, _), c = selective_scan_forward(**kw, delta_softplus=True, chunk=chunk)
            return o, selective_scan_backward(dout, c)

        def np_f():
            return numpy_forward(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"])

        def np_fb():
            o, c = numpy_forward(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                                 kw["delta_bias"], store=True)
            return o, numpy_backward(dout, c)

        o1, g1 = ours_fb()                                                  # warm-up (compiles) + agreement
        o2, g2 = np_fb()
        err = max(float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
                  for a, b in zip((o1,) + tuple(g1[:6]) + (g1[6], g1[7]), (o2,) + tuple(g2)))
        row = dict(L=L, err=err, chunk=adaptive_chunk(L, d, batch) if chunk is None else chunk)
        times = interleaved_seconds(dict(np_f=np_f, ours_f=ours_f, np_fb=np_fb, ours_fb=ours_fb), repeats)
        for name, ts in times.items():
            row[name] = float(np.median(ts))
        row["speed_f"] = median_ratio(times["np_f"], times["ours_f"])
        row["speed_fb"] = median_ratio(times["np_fb"], times["ours_fb"])
        np_peak, np_ret = _peak(np_fb)
        ours_peak, ours_ret = _peak(ours_fb)
        row["np_mem"], row["ours_mem"] = np_peak, ours_peak
        row["np_extra"], row["ours_extra"] = np_peak - np_ret, ours_peak - ours_ret
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench scan", description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    rows = run(tuple(args.lengths), args.batch, args.d, args.n, args.repeats)
    print(f"selective scan, float32, B={args.batch}, D={args.d}, N={args.n}, numba threads={get_num_threads()}; "
          f"median of {args.repeats} interleaved rounds after a warm-up")
    head = (f"{'L':>6} | {'numpy fwd ms':>12} {'ours fwd ms':>11} {'speedup':>8} | {'numpy f+b ms':>12} "
            f"{'ours f+b ms':>11} {'speedup':>8} | {'numpy peak MB':>13} {'ours peak MB':>12} {'ratio':>6} | "
            f"{'numpy extra MB':>14} {'ours extra MB':>13} {'ratio':>6} | {'chunk':>5} | {'max rel diff':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['L']:>6} | {1e3 * r['np_f']:>12.1f} {1e3 * r['ours_f']:>11.2f} {r['speed_f']:>7.1f}x | "
              f"{1e3 * r['np_fb']:>12.1f} {1e3 * r['ours_fb']:>11.2f} {r['speed_fb']:>7.1f}x | "
              f"{r['np_mem'] / 2**20:>13.2f} {r['ours_mem'] / 2**20:>12.2f} {r['np_mem'] / r['ours_mem']:>5.1f}x | "
              f"{r['np_extra'] / 2**20:>14.2f} {r['ours_extra'] / 2**20:>13.2f} {r['np_extra'] / r['ours_extra']:>5.1f}x | "
              f"{r['chunk']:>5} | {r['err']:>12.1e}")
    print("peak = everything allocated during one forward+backward call; extra = peak minus the arrays it returns "
          "(out and the gradients, which both implementations must produce)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
