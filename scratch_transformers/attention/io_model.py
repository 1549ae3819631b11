"""HBM-access accounting for standard attention and FlashAttention (FA-1 Theorem 2, Fig. 2).

The paper's cost model: a slow memory ("HBM") holds Q, K, V, O (N x d) and the statistics; a fast
memory ("SRAM") holds M elements; an algorithm's IO cost is the number of elements it moves between
them. This module counts those moves exactly for the three loop nests, two ways:

- ``standard_hbm_accesses`` / ``flash_hbm_accesses``: closed-form counts, one line per algorithm
  line (ragged last blocks and causal block skipping included);
- ``simulate_flash_io``: the tiled forward run in NumPy on arrays wrapped in a ``CountingHBM`` that
  counts every element read or written, so the closed forms are checked against an execution
  (tests/attention/test_flash_io.py), and the output against the reference.

Theorem 2: standard attention needs Theta(N d + N^2) accesses, FA-1 Algorithm 1 needs
Theta(N^2 d^2 / M): K, V are read once, and each of the T_c = ceil(N / B_c) = Theta(N d / M) outer
iterations reads all of Q, O, l, m and writes O, l, m back.

The backward (FA-1 Theorem 5, App. B.2-B.4 and C): the standard backward (Algorithm 3) needs
Theta(N d + N^2) accesses, FlashAttention's (FA-1 Algorithm 4, FA-2 Algorithm 2) Theta(N^2 d^2 / M): each of the
T_c outer iterations over K_j, V_j reads Q, O, dO, dQ and the statistics and writes dQ back.
``standard_backward_hbm_accesses`` / ``flash_backward_hbm_accesses`` count them, ``simulate_flash_backward_io``
executes them. The paper's Fig. 2 (40.3 vs 4.4 GB, 9.2x, GPT-2 medium) counts forward + backward.
"""

from __future__ import annotations

import math

import numpy as np

from ..core import validate

ORDERS = ("fa1", "fa2")


def block_sizes(m_sram: int, d: int) -> tuple[int, int]:
    """(B_r, B_c) of FA-1 Algorithm 1 line 1: B_c = ceil(M / 4d), B_r = min(ceil(M / 4d), d)."""
    m_sram = validate.positive_int(m_sram, "m_sram")
    d = validate.positive_int(d, "d")
    b_c = math.ceil(m_sram / (4 * d))
    return min(b_c, d), b_c


def standard_hbm_accesses(n: int, d: int) -> dict:
    """Algorithm 0 (standard attention, FA-1 §2.2), elements moved:

    line 1: read Q, K (2 N d), write S (N^2); line 2: read S, write P (2 N^2);
    line 3: read P, V (N^2 + N d), write O (N d).   Total 4 N d + 4 N^2 = Theta(N d + N^2).
    """
    n = validate.positive_int(n, "n")
    d = validate.positive_int(d, "d")
    reads = 2 * n * d + n * n + n * n + n * d
    writes = n * n + n * n + n * d
    return {"reads": reads, "writes": writes, "total": reads + writes}


def standard_backward_hbm_accesses(n: int, d: int) -> dict:
    """Algorithm 3 (standard attention backward, FA-1 App. B.2), elements moved, given P saved in HBM:

    line 1: read P, dO (N^2 + N d), write dV (N d); line 2: read dO, V (2 N d), write dP (N^2);
    line 3: read P, dP (2 N^2), write dS (N^2); line 4: read dS, K (N^2 + N d), write dQ (N d);
    line 5: read dS, Q (N^2 + N d), write dK (N d).   Total 8 N d + 7 N^2 = Theta(N d + N^2).
    """
    n = validate.positive_int(n, "n")
    d = validate.positive_int(d, "d")
    reads = (n * n + n * d) + 2 * n * d + 2 * n * n + (n * n + n * d) + (n * n + n * d)
    writes = n * d + n * n + n * n + n * d + n * d
    return {"reads": reads, "writes": writes, "total": reads + writes}


def _tile_visible(r0, br, c0, causal, offset):
    """A (query block, key block) tile is computed unless it lies entirely above the diagonal."""
    return (not causal) or c0 <= r0 + br - 1 + offset


def _check_tiling(n, d, m_sram, order, block_q, block_k, n_k, causal):
    """The shared arguments of the two tiled counts, checked; block sizes from m_sram unless both are given."""
    causal = validate.flag(causal, "causal")
    n = validate.positive_int(n, "n")
    d = validate.positive_int(d, "d")
    n_k = n if n_k is None else validate.positive_int(n_k, "n_k")
    validate.option(order, "order", ORDERS)
    if block_q is None or block_k is None:
        if m_sram is None:
            validate.fail("m_sram", "an int (or both block_q and block_k)", None)
        b_r, b_c = block_sizes(m_sram, d)
        block_q = b_r if block_q is None else block_q
        block_k = b_c if block_k is None else block_k
    block_q = validate.positive_int(block_q, "block_q")
    block_k = validate.positive_int(block_k, "block_k")
    return n, d, n_k, causal, block_q, block_k


def flash_hbm_accesses(n: int, d: int, m_sram: int | None = None, *, order: str = "fa1",
                       block_q: int | None = None, block_k: int | None = None, n_k: int | None = None,
                       causal: bool = False) -> dict:
    """Elements moved by the tiled forward (no dropout/bias), one query/key block pair at a time.

    order "fa1" (FA-1 Algorithm 1): line 2 writes O, l, m (N d + 2 N); line 6 reads K_j, V_j once
    (2 N_k d in all); per computed tile line 8 reads Q_i, O_i, l_i, m_i (2 B_r d + 2 B_r) and lines
    12-13 write O_i, l_i, m_i back (B_r d + 2 B_r).
    order "fa2" (FA-2 Algorithm 1): line 4 reads Q_i (N d in all); per computed tile line 7 reads
    K_j, V_j (2 B_c d); lines 14-15 write O_i and L_i once (N d + N).
    Block sizes from m_sram (``block_sizes``) unless given. causal: tiles entirely above the
    (top-left) diagonal are skipped (FA-2 §3.1.1), as in the kernels. Returns reads, writes,
    total, tiles (computed tile count) and all_tiles (T_r T_c).
    """
    n, d, n_k, causal, block_q, block_k = _check_tiling(n, d, m_sram, order, block_q, block_k, n_k, causal)
    reads = writes = tiles = 0
    if order == "fa1":
        writes += n * d + 2 * n                                    # line 2: O = 0, l = 0, m = -inf
        for c0 in range(0, n_k, block_k):                          # line 5: for j
            bc = min(block_k, n_k - c0)
            reads += 2 * bc * d                                    # line 6: K_j, V_j
            # query blocks whose tile is visible: r0 + br - 1 >= c0 (top-left causal)
            for r0 in range(0, n, block_q):                        # line 7: for i
                br = min(block_q, n - r0)
                if not _tile_visible(r0, br, c0, causal, 0):
                    continue
                tiles += 1
                reads += 2 * br * d + 2 * br                       # line 8: Q_i, O_i, l_i, m_i
                writes += br * d + 2 * br                          # lines 12-13: O_i, l_i, m_i
    else:
        for r0 in range(0, n, block_q):                            # line 3: for i
            br = min(block_q, n - r0)
            reads += br * d                                        # line 4: Q_i
            for c0 in range(0, n_k, block_k):                      # line 6: for j
                if not _tile_visible(r0, br, c0, causal, 0):
                    break
                tiles += 1
                reads += 2 * min(block_k, n_k - c0) * d            # line 7: K_j, V_j
            writes += br * d + br                                  # lines 14-15: O_i, L_i
    all_tiles = math.ceil(n / block_q) * math.ceil(n_k / block_k)
    return {"reads": reads, "writes": writes, "total": reads + writes, "tiles": tiles,
            "all_tiles": all_tiles, "block_q": block_q, "block_k": block_k}


def flash_backward_hbm_accesses(n: int, d: int, m_sram: int | None = None, *, order: str = "fa1",
                                block_q: int | None = None, block_k: int | None = None, n_k: int | None = None,
                                causal: bool = False) -> dict:
    """Elements moved by the tiled backward (no dropout/bias); both orders loop over K_j, V_j outside.

    order "fa1" (FA-1 Algorithm 4): line 5 writes dQ, dK, dV = 0 (N d + 2 N_k d); line 7 reads K_j, V_j once
    (2 N_k d in all); per computed tile line 10 reads Q_i, O_i, dO_i, dQ_i, l_i, m_i (4 B_r d + 2 B_r) and line
    21 writes dQ_i (B_r d); line 24 writes dK_j, dV_j (2 N_k d in all).
    order "fa2" (FA-2 Algorithm 2): line 3 writes dQ = 0 (N d); line 4 reads dO, O and writes D (2 N d + N);
    line 6 reads K_j, V_j (2 N_k d); per computed tile line 9 reads Q_i, O_i, dO_i, dQ_i, L_i, D_i
    (4 B_r d + 2 B_r; O_i as the algorithm prints it, although D_i already holds what it is needed for) and line
    15 writes dQ_i (B_r d); line 18 writes dK_j, dV_j (2 N_k d). Block sizes and causal as flash_hbm_accesses.
    """
    n, d, n_k, causal, block_q, block_k = _check_tiling(n, d, m_sram, order, block_q, block_k, n_k, causal)
    if order == "fa1":
        reads, writes = 0, n * d + 2 * n_k * d                     # line 5: dQ, dK, dV = 0
    else:
        reads, writes = 2 * n * d, n * d + n                       # line 3: dQ = 0; line 4: D = rowsum(dO o O)
    tiles = 0
    for c0 in range(0, n_k, block_k):                              # FA-1 line 6 / FA-2 line 5: for j
        bc = min(block_k, n_k - c0)
        reads += 2 * bc * d                                        # K_j, V_j
        for r0 in range(0, n, block_q):                            # for i
            br = min(block_q, n - r0)
            if not _tile_visible(r0, br, c0, causal, 0):
                continue
            tiles += 1
            reads += 4 * br * d + 2 * br                           # Q_i, O_i, dO_i, dQ_i and (l_i, m_i) or (L_i, D_i)
            writes += br * d                                       # dQ_i
        writes += 2 * bc * d                                       # dK_j, dV_j
    all_tiles = math.ceil(n / block_q) * math.ceil(n_k / block_k)
    return {"reads": reads, "writes": writes, "total": reads + writes, "tiles": tiles,
            "all_tiles": all_tiles, "block_q": block_q, "block_k": block_k}


class CountingHBM:
    """An array in simulated HBM: ``read(rows)`` and ``write(rows, value)`` count elements moved."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.reads = 0
        self.writes = 0

    def read(self, sl):
        block = self.data[sl]
        self.reads += block.size
        return block.copy()                                       # now "in SRAM"

    def write(self, sl, value):
        self.data[sl] = value
        self.writes += np.size(self.data[sl])


def simulate_flash_io(q, k, v, *, block_q: int, block_k: int, order: str = "fa1", causal: bool = False):
    """Run the tiled forward of one head in NumPy, every HBM access through ``CountingHBM``.

    q: (N, d), k: (Nk, d), v: (Nk, d) float64, scale 1/sqrt(d), top-left causal mask if causal.
    order "fa1" follows FA-1 Algorithm 1 (O, l, m round-trip through HBM per tile); "fa2" follows
    FA-2 Algorithm 1 (statistics stay on chip, one write at the end). Returns (out, reads, writes).
    """
    q = validate.float_array(q, "q", ndim=2)
    k = validate.array(k, "k", shape=(None, q.shape[1]), dtype=q.dtype)
    v = validate.array(v, "v", shape=(k.shape[0], None), dtype=q.dtype)
    validate.option(order, "order", ORDERS)
    causal = validate.flag(causal, "causal")
    block_q = validate.positive_int(block_q, "block_q")
    block_k = validate.positive_int(block_k, "block_k")
    n, d = q.shape
    n_k = k.shape[0]
    tau = 1.0 / math.sqrt(d)
    hq, hk, hv = CountingHBM(q.copy()), CountingHBM(k.copy()), CountingHBM(v.copy())
    ho = CountingHBM(np.empty((n, v.shape[1])))
    hl, hm = CountingHBM(np.empty(n)), CountingHBM(np.empty(n))

    def scores(qi, kj, r0, c0):
        s = tau * qi @ kj.T                                        # S_ij
        if causal:
            i = np.arange(r0, r0 + len(qi))[:, None]
            j = np.arange(c0, c0 + len(kj))[None, :]
            s = np.where(j <= i, s, -np.inf)
        return s

    if order == "fa1":
        ho.write(slice(None), 0.0)                                 # line 2
        hl.write(slice(None), 0.0)
        hm.write(slice(None), -np.inf)
        for c0 in range(0, n_k, block_k):                          # line 5
            kj, vj = hk.read(slice(c0, c0 + block_k)), hv.read(slice(c0, c0 + block_k))   # line 6
            for r0 in range(0, n, block_q):                        # line 7
                rows = slice(r0, min(r0 + block_q, n))
                if causal and c0 > rows.stop - 1:
                    continue                                       # tile above the diagonal
                qi, oi, li, mi = hq.read(rows), ho.read(rows), hl.read(rows), hm.read(rows)  # line 8
                s = scores(qi, kj, r0, c0)                         # line 9
                m_t = s.max(axis=1)                                # line 10
                safe_t = np.where(np.isfinite(m_t), m_t, 0.0)
                p_t = np.exp(s - safe_t[:, None])
                l_t = p_t.sum(axis=1)
                m_new = np.maximum(mi, m_t)                        # line 11
                safe = np.where(np.isfinite(m_new), m_new, 0.0)
                a_old = np.exp(np.where(np.isfinite(mi), mi - safe, -np.inf)) * li
                a_new = np.exp(np.where(np.isfinite(m_t), m_t - safe, -np.inf))
                l_new = a_old + a_new * l_t
                o_new = (a_old[:, None] * oi + a_new[:, None] * (p_t @ vj)) / np.where(l_new > 0, l_new, 1.0)[:, None]
                ho.write(rows, o_new)                              # line 12
                hl.write(rows, l_new)                              # line 13
                hm.write(rows, m_new)
    else:
        for r0 in range(0, n, block_q):                            # line 3
            rows = slice(r0, min(r0 + block_q, n))
            qi = hq.read(rows)                                     # line 4
            acc = np.zeros((len(qi), v.shape[1]))                  # line 5
            m, l = np.full(len(qi), -np.inf), np.zeros(len(qi))
            for c0 in range(0, n_k, block_k):                      # line 6
                if causal and c0 > rows.stop - 1:
                    break
                kj, vj = hk.read(slice(c0, c0 + block_k)), hv.read(slice(c0, c0 + block_k))   # line 7
                s = scores(qi, kj, r0, c0)                         # line 8
                m_new = np.maximum(m, s.max(axis=1))               # line 9
                safe = np.where(np.isfinite(m_new), m_new, 0.0)
                p_t = np.exp(s - safe[:, None])
                alpha = np.exp(np.where(np.isfinite(m), m - safe, -np.inf))
                l = alpha * l + p_t.sum(axis=1)
                acc = alpha[:, None] * acc + p_t @ vj              # line 10
                m = m_new
            ho.write(rows, acc / np.where(l > 0, l, 1.0)[:, None])  # lines 12, 14
            hl.write(rows, np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf))   # lines 13, 15
    arrays = (hq, hk, hv, ho, hl, hm)
    return ho.data, sum(a.reads for a in arrays), sum(a.writes for a in arrays)


def simulate_flash_backward_io(q, k, v, out, dout, lse, *, block_q: int, block_k: int, order: str = "fa1",
                               causal: bool = False):
    """Run the tiled backward of one head in NumPy, every HBM access through ``CountingHBM``.

    q: (N, d), k, v: (Nk, d), out, dout: (N, d), lse: (N,) the forward's log-sum-exp L = m + log l (the FA-1
    order stores l = exp(L - m) with m = L, so that P = exp(S - m) / l = exp(S - L)); scale 1/sqrt(d), top-left
    causal mask if causal. order "fa1" follows FA-1 Algorithm 4 (D_i formed per tile from dO_i, O_i), "fa2"
    FA-2 Algorithm 2 (D = rowsum(dO o O) once, line 4). Returns ((dq, dk, dv), reads, writes).
    """
    causal = validate.flag(causal, "causal")
    q = validate.float_array(q, "q", ndim=2)
    n, d = q.shape
    k = validate.array(k, "k", shape=(None, d), dtype=q.dtype)
    v = validate.array(v, "v", shape=(k.shape[0], d), dtype=q.dtype)
    out = validate.array(out, "out", shape=(n, d), dtype=q.dtype)
    dout = validate.array(dout, "dout", shape=(n, d), dtype=q.dtype)
    lse = validate.array(lse, "lse", shape=(n,), dtype=q.dtype)
    validate.option(order, "order", ORDERS)
    block_q = validate.positive_int(block_q, "block_q")
    block_k = validate.positive_int(block_k, "block_k")
    n_k = k.shape[0]
    tau = 1.0 / math.sqrt(d)
    hq, hk, hv, ho, hdo = (CountingHBM(a.copy()) for a in (q, k, v, out, dout))
    hdq, hdk, hdv = CountingHBM(np.empty((n, d))), CountingHBM(np.empty((n_k, d))), CountingHBM(np.empty((n_k, d)))
    if order == "fa1":
        hm, hl = CountingHBM(lse.copy()), CountingHBM(np.ones(n))             # P = exp(S - m) / l with l = 1
        hdk.write(slice(None), 0.0)                                           # line 5
        hdv.write(slice(None), 0.0)
        stats = (hl, hm)
    else:
        hL = CountingHBM(lse.copy())
        hD = CountingHBM(np.empty(n))
        o_all, do_all = ho.read(slice(None)), hdo.read(slice(None))           # line 4
        hD.write(slice(None), np.sum(do_all * o_all, axis=1))
        stats = (hL, hD)
    hdq.write(slice(None), 0.0)                                               # FA-1 line 5 / FA-2 line 3
    for c0 in range(0, n_k, block_k):                                         # FA-1 line 6 / FA-2 line 5
        cols = slice(c0, min(c0 + block_k, n_k))
        kj, vj = hk.read(cols), hv.read(cols)                                 # FA-1 line 7 / FA-2 line 6
        dkj, dvj = np.zeros_like(kj), np.zeros_like(vj)                       # on chip
        for r0 in range(0, n, block_q):                                       # for i
            rows = slice(r0, min(r0 + block_q, n))
            if causal and c0 > rows.stop - 1:
                continue                                                      # tile above the diagonal
            qi, oi, doi, dqi = hq.read(rows), ho.read(rows), hdo.read(rows), hdq.read(rows)
            a_i, b_i = stats[0].read(rows), stats[1].read(rows)               # (l_i, m_i) or (L_i, D_i)
            s = tau * qi @ kj.T                                               # S_ij
            if causal:
                i = np.arange(rows.start, rows.stop)[:, None]
                j = np.arange(cols.start, cols.stop)[None, :]
                s = np.where(j <= i, s, -np.inf)
            if order == "fa1":
                p = np.exp(s - b_i[:, None]) / a_i[:, None]                   # line 13
                d_i = np.sum(doi * oi, axis=1)                                # line 19
            else:
                p = np.exp(s - a_i[:, None])                                  # line 11
                d_i = b_i
            dvj += p.T @ doi                                                  # dV_j += P^T dO_i
            dp = doi @ vj.T                                                   # dP = dO_i V_j^T
            ds = p * (dp - d_i[:, None])                                      # dS = P o (dP - D_i)
            hdq.write(rows, dqi + tau * ds @ kj)                              # dQ_i += tau dS K_j, to HBM
            dkj += tau * ds.T @ qi                                            # dK_j += tau dS^T Q_i
        hdk.write(cols, dkj)                                                  # FA-1 line 24 / FA-2 line 18
        hdv.write(cols, dvj)
    arrays = (hq, hk, hv, ho, hdo, hdq, hdk, hdv) + stats
    return (hdq.data, hdk.data, hdv.data), sum(a.reads for a in arrays), sum(a.writes for a in arrays)
