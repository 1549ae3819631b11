"""LSH attention (Kitaev, Kaiser, Levskaya 2020, "Reformer", arXiv 2001.04451, §2 and Appendix A).

Shared-QK attention restricted, per hash round, to the keys that an angular LSH puts near the query:

    h(x) = argmax([x R; -x R])                                 §2 (unnumbered), R: (d, n_buckets/2) per round
    k_j = qk_j / ||qk_j||,  s_ij = scale * qk_i . k_j          §2 "shared-QK"; scale = d^-1/2 (eq. 1)
    sort the n_hashes * N items by (round, bucket, position)   §2, Fig. 2c
    chunks of m = bucket_size sorted items attend to themselves and the previous chunk     eq. (5), (11)
    o_i^(r) = sum_j exp(s_ij - m_ij^(r) - z_r) v_j             eq. (15); z_r the round's log-sum-exp
    o_i = sum_r exp(z_r - logsumexp_r' z_r') o_i^(r)           eq. (14)

Masks m_ij^(r) (eq. 16): 10^5 (finite, subtracted) when i == j, so a token attends to itself only when
it has nothing else; +inf (key removed) for a key after the query when ``causal`` (positions are carried
through the sort, so the masks compare ORIGINAL positions) and for padding keys; log N_ij with
``dedup=True``, where N_ij counts how many times key j occurs among query i's candidates over all
rounds and look-back copies, so every distinct key gets its weight exp(s_ij) once (Appendix A's
duplicate correction; off by default, like trax and reformer-pytorch).

As in trax and reformer-pytorch, the sorted items of all rounds form one sequence of chunks, so the
first chunk of round r looks back at the last chunk of round r-1 and the very first chunk wraps
around to the last one; keys are not masked to the query's bucket (a chunk sees neighbouring
buckets too: a superset of eq. 4's P_i, harmless because masks use positions).

Padding: a length N that is not a multiple of 2 * bucket_size is padded with zero vectors to
N_pad = ceil(N / 2m) * 2m (at least two chunks per round, so "previous chunk" is never the chunk
itself); padding tokens get the extra bucket id n_buckets (they sort after every real token of their
round, leaving the real tokens' order unchanged), real queries never attend to them, and their
outputs are dropped.

Glossary (code -> paper): ``qk`` (B, H, N, d) the shared Q = K before normalisation; ``k_hat`` k_j;
``rotations`` (d, n_hashes, n_buckets/2) the R^(r); ``buckets`` h^(r)(x); ``perm`` the sort, sorted
slot -> flat index r * N_pad + i (the paper's i -> s_i inverted); ``tok`` sorted slot -> position i;
``p`` the per-round softmax exp(s - m - z_r) of each chunk; ``w`` (B, H, R, N_pad) the round weights
exp(z_r - Z_i). Everything is vectorised NumPy (gather, sort, batched matmul): no numba needed.

    >>> rng = np.random.default_rng(0)
    >>> qk, v = rng.standard_normal((1, 2, 16, 8)), rng.standard_normal((1, 2, 16, 8))
    >>> rot = random_rotations(rng, 8, n_hashes=2, n_buckets=4)
    >>> out, cache = lsh_attention_forward(qk, v, rot, bucket_size=4, causal=True)
    >>> dqk, dv = lsh_attention_backward(np.ones_like(out), cache)
    >>> out.shape, dqk.shape, np.allclose(lsh_attention_matrix(cache).sum(-1), 1.0)
    ((1, 2, 16, 8), (1, 2, 16, 8), True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..attention.reference import AttentionCache, attention_backward, attention_forward
from ..core import validate

SELF_PENALTY = 1e5      # eq. (16): m_ii = 10^5, large but finite
NORM_EPS = 1e-12        # k_hat = qk / sqrt(||qk||^2 + NORM_EPS): a zero vector gives k_hat = 0, not NaN


def random_rotations(rng, d: int, n_hashes: int, n_buckets: int, dtype=np.float64) -> np.ndarray:
    """Gaussian R of shape (d, n_hashes, n_buckets / 2): one random projection per hash round (§2)."""
    rng = validate.rng(rng)
    d = validate.positive_int(d, "d")
    n_hashes = validate.positive_int(n_hashes, "n_hashes")
    n_buckets = validate.integer(n_buckets, "n_buckets", low=2)
    if n_buckets % 2:
        validate.fail("n_buckets", "an even number (h(x) = argmax([xR; -xR]) has 2 * R.shape[-1] buckets)",
                      n_buckets)
    dtype = np.dtype(dtype)
    if dtype not in validate.FLOAT_DTYPES:
        validate.fail("dtype", "float32 or float64", dtype)
    return rng.standard_normal((d, n_hashes, n_buckets // 2)).astype(dtype)


def lsh_hash(x, rotations) -> np.ndarray:
    """Angular LSH bucket ids h^(r)(x) = argmax([x R^(r); -x R^(r)])   (§2, after Andoni et al. 2015).

    x: (..., N, d) float; rotations: (d, n_hashes, n_buckets/2). Returns int64 (..., n_hashes, N) with
    values in [0, n_buckets). h is invariant to positive rescaling of x. Discrete output: a NaN or inf
    in x or rotations is rejected with a ValueError (it has no bucket).
    """
    x = validate.float_array(x, "x", min_ndim=2, finite=True)
    rotations = validate.float_array(rotations, "rotations", ndim=3, shape=(x.shape[-1], None, None), finite=True)
    if rotations.shape[1] < 1 or rotations.shape[2] < 1:
        validate.fail("rotations", "shape (d, n_hashes >= 1, n_buckets/2 >= 1)", rotations.shape)
    d, n_hashes, half = rotations.shape
    u = x @ rotations.astype(x.dtype, copy=False).reshape(d, n_hashes * half)      # (..., N, R nb/2)
    u = np.moveaxis(u.reshape(x.shape[:-1] + (n_hashes, half)), -2, -3)           # (..., R, N, nb/2)
    return np.argmax(np.concatenate([u, -u], axis=-1), axis=-1).astype(np.int64)   # (..., R, N)


class LSHCache(NamedTuple):
    qk: np.ndarray         # (B, H, N_pad, d) padded shared query-key
    v: np.ndarray          # (B, H, N_pad, dv) padded values
    norm: np.ndarray       # (B, H, N_pad, 1) sqrt(||qk||^2 + NORM_EPS)
    perm: np.ndarray       # (B, H, R * N_pad) int64: sorted slot -> flat index r * N_pad + i
    undo: np.ndarray       # (B, H, R * N_pad) int64: flat index -> sorted slot (inverse of perm)
    p: np.ndarray          # (B, H, n_chunks, m, 2m) per-round softmax of each chunk (0 where masked)
    w: np.ndarray          # (B, H, R, N_pad) round weights exp(z_r - Z)  (eq. 14)
    out: np.ndarray        # (B, H, N_pad, dv) padded output
    n: int                 # the real length N
    bucket_size: int       # m
    n_hashes: int          # R
    scale: float


def _chunked_gather(x, tok, n_chunks, m):
    """Gather rows of x (B, H, N_pad, c) in sorted order and cut into chunks: (B, H, n_chunks, m, c)."""
    b, h, n_pad, c = x.shape
    rows = tok + (np.arange(b * h) * n_pad).reshape(b, h, 1)           # row index into x viewed (B H N_pad, c)
    return x.reshape(b * h * n_pad, c)[rows].reshape(b, h, n_chunks, m, c)


def _look_one_back(x):
    """Each chunk followed by the previous chunk (chunk 0's previous is the last one): eq. (5) window.
    x: (B, H, n_chunks, m, ...) -> (B, H, n_chunks, 2m, ...)."""
    return np.concatenate([x, np.roll(x, 1, axis=2)], axis=3)


def _fold_look_one_back(g, m):
    """Adjoint of _look_one_back: (B, H, n_chunks, 2m, c) -> (B, H, n_chunks, m, c)."""
    return g[:, :, :, :m] + np.roll(g[:, :, :, m:], -1, axis=2)


def _t(x):
    """Contiguous transpose of the last two axes. NumPy's stacked matmul takes a slow non-BLAS loop when
    an operand of a stack is a transposed view (measured 90x slower in float32 for 64 x 128 chunks)."""
    return np.ascontiguousarray(x.swapaxes(-1, -2))


def _unsort(x_sorted, undo, n_hashes):
    """Sorted items (B, H, R N_pad, ...) back to (B, H, R, N_pad, ...)."""
    b, h, rn = x_sorted.shape[:3]
    idx = undo.reshape(undo.shape + (1,) * (x_sorted.ndim - 3))
    x = np.take_along_axis(x_sorted, idx, axis=2)
    return x.reshape((b, h, n_hashes, rn // n_hashes) + x_sorted.shape[3:])


def _duplicate_counts(kpos, perm, undo, n_hashes, n_chunks, m):
    """N_ij of Appendix A: how often key position j occurs among query i's candidates over all rounds
    and look-back copies; returned in the chunk layout (B, H, n_chunks, m, 2m) of the logits."""
    b, h = kpos.shape[:2]
    per_query = np.broadcast_to(kpos[..., None, :], (b, h, n_chunks, m, 2 * m))
    rows = _unsort(per_query.reshape(b, h, n_chunks * m, 2 * m), undo, n_hashes)   # (B, H, R, N_pad, 2m)
    n_pad = rows.shape[3]
    rows = rows.transpose(0, 1, 3, 2, 4).reshape(-1, n_hashes * 2 * m)         # one row per query i
    order = np.argsort(rows, axis=1, kind="stable")
    srt = np.take_along_axis(rows, order, axis=1)
    new_run = np.ones(srt.shape, dtype=bool)
    new_run[:, 1:] = srt[:, 1:] != srt[:, :-1]
    run = np.cumsum(new_run, axis=1) - 1 + np.arange(len(rows))[:, None] * rows.shape[1]
    count_sorted = np.bincount(run.ravel(), minlength=rows.size)[run]
    counts = np.empty_like(count_sorted)
    np.put_along_axis(counts, order, count_sorted, axis=1)
    counts = counts.reshape(b, h, n_pad, n_hashes, 2 * m).transpose(0, 1, 3, 2, 4).reshape(b, h, -1, 2 * m)
    counts = np.take_along_axis(counts, perm[..., None], axis=2)                # sorted order
    return counts.reshape(b, h, n_chunks, m, 2 * m)


def lsh_attention_forward(qk, v, rotations, *, bucket_size, causal=False, scale=None, dedup=False,
                          self_penalty=SELF_PENALTY):
    """Multi-round LSH attention with shared QK (Reformer §2, eqs. 3-6; Appendix A eqs. 11-16).

    qk: (B, H, N, d) the shared query/key (keys are qk normalised to unit length, queries are not);
    v: (B, H, N, dv), qk's dtype; rotations: (d, n_hashes, n_buckets/2) fixed random projections
    (``random_rotations``). bucket_size: the chunk length m. causal: a query never sees a later
    position. scale: logit scale (default d^-1/2). dedup: Appendix A's -log N_ij correction.
    self_penalty: eq. 16's finite 10^5 subtracted from a token's logit with itself.

    Returns out (B, H, N, dv) and an LSHCache. A NaN/inf in v propagates to every output whose window
    holds it (as in the reference formula, where a masked weight 0 times NaN is NaN); qk and rotations
    must be finite (they are hashed into bucket ids: ValueError otherwise).
    """
    causal = validate.flag(causal, "causal")
    dedup = validate.flag(dedup, "dedup")
    qk = validate.float_array(qk, "qk", ndim=4, finite=True)
    b, h, n, d = qk.shape
    if n < 1 or d < 1:
        validate.fail("qk", "N >= 1 and d >= 1", qk.shape)
    v = validate.array(v, "v", shape=(b, h, n, None), dtype=qk.dtype)
    rotations = validate.float_array(rotations, "rotations", ndim=3, shape=(d, None, None), finite=True)
    m = validate.positive_int(bucket_size, "bucket_size")
    scale = float(1.0 / np.sqrt(d)) if scale is None else validate.positive(scale, "scale")
    self_penalty = validate.positive(self_penalty, "self_penalty")
    buckets = lsh_hash(qk, rotations)                                  # (B, H, R, N)
    n_hashes, n_buckets = rotations.shape[1], 2 * rotations.shape[2]
    dt = qk.dtype

    # Pad to a multiple of 2m; padding tokens get bucket n_buckets (sorted after the real ones).
    n_pad = -(-n // (2 * m)) * (2 * m)
    extra = n_pad - n
    qk_p = np.pad(qk, ((0, 0), (0, 0), (0, extra), (0, 0))) if extra else qk     # (B, H, N_pad, d)
    v_p = np.pad(v, ((0, 0), (0, 0), (0, extra), (0, 0))) if extra else v        # (B, H, N_pad, dv)
    buckets = np.pad(buckets, ((0, 0), (0, 0), (0, 0), (0, extra)), constant_values=n_buckets)

    # Sort by (round, bucket, position): one stable argsort of the integer key   (§2, Fig. 2c)
    rounds = np.arange(n_hashes)[:, None]
    pos = np.arange(n_pad)
    sort_key = ((rounds * (n_buckets + 1) + buckets) * n_pad + pos).reshape(b, h, n_hashes * n_pad)
    perm = np.argsort(sort_key, axis=-1, kind="stable")                # (B, H, R N_pad)
    undo = np.argsort(perm, axis=-1, kind="stable")
    tok = perm % n_pad                                                 # sorted slot -> position
    n_chunks = n_hashes * n_pad // m

    norm = np.sqrt(np.sum(qk_p * qk_p, axis=-1, keepdims=True) + dt.type(NORM_EPS))   # (B, H, N_pad, 1)
    k_hat = qk_p / norm                                                # shared-QK keys (§2)
    sq = _chunked_gather(qk_p, tok, n_chunks, m)                       # (B, H, C, m, d) queries
    kk = _look_one_back(_chunked_gather(k_hat, tok, n_chunks, m))      # (B, H, C, 2m, d) keys, eq. (5)
    vv = _look_one_back(_chunked_gather(v_p, tok, n_chunks, m))        # (B, H, C, 2m, dv)
    qpos = tok.reshape(b, h, n_chunks, m)                              # (B, H, C, m)
    kpos = _look_one_back(qpos[..., None])[..., 0]                     # (B, H, C, 2m)

    # Logits with the masks of eq. (16)
    s = dt.type(scale) * (sq @ _t(kk))                                 # (B, H, C, m, 2m)
    same = qpos[..., :, None] == kpos[..., None, :]
    np.subtract(s, dt.type(self_penalty), out=s, where=same)          # m_ii = 10^5
    if dedup:
        s = s - np.log(_duplicate_counts(kpos, perm, undo, n_hashes, n_chunks, m)).astype(dt)   # log N_ij
    visible = (kpos[..., None, :] < n) | (qpos[..., :, None] >= n)     # real queries skip padding keys
    if causal:
        visible &= kpos[..., None, :] <= qpos[..., :, None]            # +inf when key after query
    np.copyto(s, dt.type(-np.inf), where=~visible)
    del same, visible
    # Per-round softmax and log-sum-exp z_r (eq. 15); the own position is always visible, so rows
    # are never empty. In place (s becomes p): the (C, m, 2m) arrays are this op's memory.
    mx = np.max(s, axis=-1, keepdims=True)                             # (B, H, C, m, 1)
    s -= mx
    np.exp(s, out=s)
    ell = np.sum(s, axis=-1, keepdims=True)
    s /= ell
    p = s                                                              # (B, H, C, m, 2m)
    z = (mx + np.log(ell))[..., 0]                                     # (B, H, C, m)
    o_sorted = p @ vv                                                  # (B, H, C, m, dv)

    # Undo the sort, then mix the rounds with softmax_r(z_r)            (eq. 14)
    o_r = _unsort(o_sorted.reshape(b, h, n_hashes * n_pad, -1), undo, n_hashes)   # (B, H, R, N_pad, dv)
    z_r = _unsort(z.reshape(b, h, n_hashes * n_pad), undo, n_hashes)               # (B, H, R, N_pad)
    z_max = np.max(z_r, axis=2, keepdims=True)
    w = np.exp(z_r - z_max)
    w = w / np.sum(w, axis=2, keepdims=True)                           # (B, H, R, N_pad)
    out_p = np.sum(w[..., None] * o_r, axis=2)                         # (B, H, N_pad, dv)
    cache = LSHCache(qk=qk_p, v=v_p, norm=norm, perm=perm, undo=undo, p=p, w=w, out=out_p, n=n,
                     bucket_size=m, n_hashes=n_hashes, scale=scale)
    return out_p[:, :, :n], cache


def _check_cache(cache) -> None:
    validate.cache(cache, LSHCache, "lsh_attention_forward")
    b, h, n_pad, _ = cache.qk.shape
    r, m = cache.n_hashes, cache.bucket_size
    if (cache.perm.shape != (b, h, r * n_pad) or cache.w.shape != (b, h, r, n_pad)
            or cache.p.shape != (b, h, r * n_pad // m, m, 2 * m) or cache.out.shape[:3] != (b, h, n_pad)):
        validate.fail("cache", "an LSHCache with consistent shapes", "inconsistent shapes")


def _round_weighted_p(cache):
    """a_{i,(r,j)} = w_r(i) p^(r)_ij in the chunk layout (B, H, C, m, 2m): the one-softmax view."""
    b, h, c, m, _ = cache.p.shape
    w_flat = cache.w.reshape(b, h, -1)                                 # flat index r * N_pad + i
    w_sorted = np.take_along_axis(w_flat, cache.perm, axis=2).reshape(b, h, c, m)
    return cache.p * w_sorted[..., None]


def lsh_attention_backward(dout, cache: LSHCache):
    """Backward of lsh_attention_forward (derivations/reformer.md#lsh-backward).

    Multi-round LSH attention is one softmax over the list of (round, key) candidates of each query,
    with weights a = w_r p^(r) (eq. 14 times eq. 15). The sort and the buckets are piecewise constant:
    gradients flow through the softmax only.

        dv_j  += a_ij do_i                                   (summed over chunks, rounds, look-back copies)
        ds_ij  = a_ij (do_i . v_j - do_i . o_i)              o_i the FINAL output (mixing weights included)
        dq_i  += scale sum_j ds_ij k_hat_j,    dk_hat_j += scale sum_i ds_ij qk_i
        dqk    = dq + (dk_hat - k_hat (k_hat . dk_hat)) / ||qk||      (shared QK, key normalisation)

    dout: (B, H, N, dv). Returns (dqk (B, H, N, d), dv (B, H, N, dv)).
    """
    _check_cache(cache)
    b, h, n_pad, d = cache.qk.shape
    n, m, r = cache.n, cache.bucket_size, cache.n_hashes
    dout = validate.array(dout, "dout", shape=(b, h, n, cache.v.shape[-1]), dtype=cache.qk.dtype)
    dt = cache.qk.dtype
    tok = cache.perm % n_pad
    n_chunks = r * n_pad // m
    do_p = np.pad(dout, ((0, 0), (0, 0), (0, n_pad - n), (0, 0))) if n_pad > n else dout
    k_hat = cache.qk / cache.norm
    sq = _chunked_gather(cache.qk, tok, n_chunks, m)                   # (B, H, C, m, d)
    kk = _look_one_back(_chunked_gather(k_hat, tok, n_chunks, m))      # (B, H, C, 2m, d)
    vv = _look_one_back(_chunked_gather(cache.v, tok, n_chunks, m))    # (B, H, C, 2m, dv)
    do_s = _chunked_gather(do_p, tok, n_chunks, m)                     # (B, H, C, m, dv)
    o_s = _chunked_gather(cache.out, tok, n_chunks, m)                 # (B, H, C, m, dv) final o_i

    a = _round_weighted_p(cache)                                       # (B, H, C, m, 2m)
    dvv = _t(a) @ do_s                                                 # (B, H, C, 2m, dv)
    dp = do_s @ _t(vv)                                                 # (B, H, C, m, 2m)
    d_row = np.sum(do_s * o_s, axis=-1, keepdims=True)                 # (B, H, C, m, 1)
    dp -= d_row
    dp *= a
    ds = dp                                                            # a (dp - D), in place
    dsq = dt.type(cache.scale) * (ds @ kk)                             # (B, H, C, m, d)
    dkk = dt.type(cache.scale) * (_t(ds) @ sq)                         # (B, H, C, 2m, d)

    def to_tokens(g_sorted):                                           # (B, H, C, m, c) -> (B, H, N_pad, c)
        return _unsort(g_sorted.reshape(b, h, n_chunks * m, -1), cache.undo, r).sum(axis=2)

    dv = to_tokens(_fold_look_one_back(dvv, m))
    dq = to_tokens(dsq)
    dk_hat = to_tokens(_fold_look_one_back(dkk, m))
    dk = _normalise_backward(dk_hat, k_hat, cache.norm)
    return (dq + dk)[:, :, :n].astype(dt, copy=False), dv[:, :, :n].astype(dt, copy=False)


def lsh_attention_matrix(cache: LSHCache) -> np.ndarray:
    """The effective attention matrix A (B, H, N, N) of a forward: A_ij = sum over rounds and look-back
    copies of w_r p^(r)_ij, so out = A @ v and every row sums to 1 (tests, experiments)."""
    _check_cache(cache)
    b, h, n_pad, _ = cache.qk.shape
    n = cache.n
    a = _round_weighted_p(cache)                                       # (B, H, C, m, 2m)
    tok = cache.perm % n_pad
    qpos = tok.reshape(a.shape[:4])
    kpos = _look_one_back(qpos[..., None])[..., 0]
    bh = np.arange(b * h).reshape(b, h, 1, 1, 1)
    idx = (bh * n_pad + qpos[..., :, None]) * n_pad + kpos[..., None, :]
    dense = np.bincount(idx.ravel(), weights=a.ravel().astype(np.float64), minlength=b * h * n_pad * n_pad)
    return dense.reshape(b, h, n_pad, n_pad)[:, :, :n, :n].astype(cache.qk.dtype)


# --- full shared-QK attention: what LSH attention approximates (the "Full" rows of Table 2) -------

class SharedQKCache(NamedTuple):
    attn: AttentionCache   # reference attention with q = qk, k = k_hat
    k_hat: np.ndarray      # (B, H, N, d)
    norm: np.ndarray       # (B, H, N, 1)


def _normalise_backward(dk_hat, k_hat, norm):
    """Adjoint of k_hat = qk / sqrt(||qk||^2 + eps): (dk_hat - k_hat (k_hat . dk_hat)) / norm."""
    return (dk_hat - k_hat * np.sum(k_hat * dk_hat, axis=-1, keepdims=True)) / norm


def shared_qk_attention_forward(qk, v, *, causal=False, scale=None, self_penalty=SELF_PENALTY):
    """Dense shared-QK attention (§2): keys qk / ||qk||, logits scale * qk_i . k_j, the own position
    penalised by eq. 16's 10^5, optional causal mask; every query sees every key. qk: (B, H, N, d),
    v: (B, H, N, dv). Returns out (B, H, N, dv) and a SharedQKCache. NaN/inf propagate."""
    causal = validate.flag(causal, "causal")
    qk = validate.float_array(qk, "qk", ndim=4)
    v = validate.array(v, "v", shape=qk.shape[:3] + (None,), dtype=qk.dtype)
    self_penalty = validate.positive(self_penalty, "self_penalty")
    n = qk.shape[2]
    norm = np.sqrt(np.sum(qk * qk, axis=-1, keepdims=True) + qk.dtype.type(NORM_EPS))
    k_hat = qk / norm
    bias = (-self_penalty * np.eye(n)).astype(qk.dtype)
    out, attn = attention_forward(qk, k_hat, v, scale=scale, causal=causal, bias=bias)
    return out, SharedQKCache(attn=attn, k_hat=k_hat, norm=norm)


def shared_qk_attention_backward(dout, cache: SharedQKCache):
    """Backward of shared_qk_attention_forward: the reference backward gives dq and dk_hat; the key's
    normalisation is undone and both land on the shared qk. Returns (dqk, dv)."""
    validate.cache(cache, SharedQKCache, "shared_qk_attention_forward")
    dq, dk_hat, dv, _ = attention_backward(dout, cache.attn)
    return dq + _normalise_backward(dk_hat, cache.k_hat, cache.norm), dv
