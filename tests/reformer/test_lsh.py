"""LSH attention (Reformer §2, Appendix A): against full shared-QK attention, against an independent
loop implementation of eqs. (14)-(16), the effective attention matrix, gradients, causality, NaN policy."""

import math

import numpy as np
import pytest

from scratch_transformers.attention.reference import attention_forward
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.reformer.lsh import (NORM_EPS, LSHCache, lsh_attention_backward, lsh_attention_forward,
                                               lsh_attention_matrix, lsh_hash, random_rotations)


def full_shared_qk_reference(qk, v, causal, penalty=1e5):
    """Dense shared-QK attention: keys qk/||qk||, scale d^-1/2, the own position penalised by 10^5."""
    n, d = qk.shape[-2:]
    k_hat = qk / np.sqrt(np.sum(qk * qk, axis=-1, keepdims=True) + NORM_EPS)
    out, _ = attention_forward(qk, k_hat, v, causal=causal, bias=-penalty * np.eye(n, dtype=qk.dtype))
    return out


def naive_lsh(qk, v, rot, m, causal=False, dedup=False, penalty=1e5):
    """One head, loops over tokens: eq. (14)-(16) with the trax/reformer-pytorch chunking (all rounds in
    one sorted list, look-back with wrap-around), padding tokens in an extra bucket at each round's end."""
    n, d = qk.shape
    n_hashes, nb = rot.shape[1], 2 * rot.shape[2]
    n_pad = math.ceil(n / (2 * m)) * 2 * m
    bucket = [[int(np.argmax(np.concatenate([qk[i] @ rot[:, r], -(qk[i] @ rot[:, r])]))) for i in range(n)]
              for r in range(n_hashes)]
    items = []
    for r in range(n_hashes):
        items += sorted(range(n), key=lambda i: (bucket[r][i], i)) + list(range(n, n_pad))
    chunks = [items[c * m:(c + 1) * m] for c in range(len(items) // m)]
    windows = {}                                          # (round, i) -> candidate positions
    for c, chunk in enumerate(chunks):
        for slot, i in enumerate(chunk):
            windows[((c * m + slot) // n_pad, i)] = chunk + chunks[c - 1]
    scale = 1 / math.sqrt(d)
    out = np.zeros((n, v.shape[1]))
    for i in range(n):
        counts = {}
        for r in range(n_hashes):
            for j in windows[(r, i)]:
                counts[j] = counts.get(j, 0) + 1
        zs, os_ = [], []
        for r in range(n_hashes):
            logits, vals = [], []
            for j in windows[(r, i)]:
                if j >= n or (causal and j > i):
                    continue
                kj = qk[j] / math.sqrt(qk[j] @ qk[j] + NORM_EPS)
                logits.append(scale * qk[i] @ kj - (penalty if j == i else 0.0)
                              - (math.log(counts[j]) if dedup else 0.0))
                vals.append(v[j])
            logits = np.array(logits)
            z = logits.max() + math.log(np.sum(np.exp(logits - logits.max())))
            zs.append(z)
            os_.append(np.exp(logits - z) @ np.array(vals))
        zs = np.array(zs)
        w = np.exp(zs - zs.max()) / np.sum(np.exp(zs - zs.max()))
        out[i] = sum(wr * o for wr, o in zip(w, os_))
    return out


def data(rng, b=2, h=2, n=16, d=8, dv=5, dtype=np.float64):
    return (rng.standard_normal((b, h, n, d)).astype(dtype), rng.standard_normal((b, h, n, dv)).astype(dtype))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,m", [(16, 8), (13, 7)])       # 13: padded to 14, still two chunks
def test_one_round_two_chunks_equals_full_shared_qk_attention(rng, causal, n, m):
    qk, v = data(rng, n=n)
    rot = random_rotations(rng, 8, n_hashes=1, n_buckets=4)
    out, _ = lsh_attention_forward(qk, v, rot, bucket_size=m, causal=causal)
    np.testing.assert_allclose(out, full_shared_qk_reference(qk, v, causal), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal,dedup,n,m,n_hashes", [(False, False, 24, 4, 3), (True, False, 24, 4, 3),
                                                        (False, True, 21, 4, 2), (True, True, 19, 3, 4),
                                                        (True, False, 5, 4, 1)])
def test_matches_independent_loop_implementation(rng, causal, dedup, n, m, n_hashes):
    qk, v = data(rng, b=1, h=2, n=n, d=6)
    rot = random_rotations(rng, 6, n_hashes=n_hashes, n_buckets=6)
    out, _ = lsh_attention_forward(qk, v, rot, bucket_size=m, causal=causal, dedup=dedup)
    for hd in range(2):
        np.testing.assert_allclose(out[0, hd], naive_lsh(qk[0, hd], v[0, hd], rot, m, causal, dedup),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dedup", [False, True])
def test_effective_attention_rows_sum_to_one_and_reproduce_out(rng, causal, dedup):
    qk, v = data(rng, n=30)
    rot = random_rotations(rng, 8, n_hashes=4, n_buckets=8)
    out, cache = lsh_attention_forward(qk, v, rot, bucket_size=4, causal=causal, dedup=dedup)
    attn = lsh_attention_matrix(cache)
    assert attn.shape == (2, 2, 30, 30) and np.all(attn >= 0)
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(attn @ v, out, rtol=1e-12, atol=1e-12)
    if causal:
        assert np.all(np.triu(attn, 1) == 0)


def test_dedup_is_a_softmax_over_the_union_of_candidates(rng):
    """With Appendix A's -log N_ij every distinct candidate key gets weight exp(s_ij) / sum once."""
    qk, v = data(rng, b=1, h=1, n=24, d=6)
    rot = random_rotations(rng, 6, n_hashes=4, n_buckets=6)
    _, cache = lsh_attention_forward(qk, v, rot, bucket_size=4, dedup=True)
    attn = lsh_attention_matrix(cache)[0, 0]
    support = attn > 0                 # every candidate of the union has a positive weight (self: tiny or 0)
    k_hat = qk[0, 0] / np.sqrt(np.sum(qk[0, 0] ** 2, -1, keepdims=True) + NORM_EPS)
    s = qk[0, 0] @ k_hat.T / np.sqrt(6) - 1e5 * np.eye(24)
    s = np.where(support, s, -np.inf)
    want = np.exp(s - s.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(attn, want, rtol=1e-12, atol=1e-12)
    assert support.sum(-1).min() < 24   # the union is a strict subset: the test is not vacuous


@pytest.mark.parametrize("causal,dedup,n,m", [(False, False, 12, 3), (True, False, 11, 3), (True, True, 10, 2)])
def test_gradient_check_fixed_rotations(rng, causal, dedup, n, m):
    qk, v = data(rng, b=1, h=2, n=n, d=4, dv=3)
    rot = random_rotations(rng, 4, n_hashes=3, n_buckets=4)

    def fwd(qk, v):
        return lsh_attention_forward(qk, v, rot, bucket_size=m, causal=causal, dedup=dedup)

    res = gradcheck(fwd, lsh_attention_backward, {"qk": qk, "v": v}, wrt=("qk", "v"), rng=rng)
    assert res.passed, str(res)


def test_backward_is_pure_and_float32_follows_float64(rng):
    qk, v = data(rng, n=20)
    rot = random_rotations(rng, 8, n_hashes=2, n_buckets=4)
    out, cache = lsh_attention_forward(qk, v, rot, bucket_size=5, causal=True)
    do = rng.standard_normal(out.shape)
    g1, g2 = lsh_attention_backward(do, cache), lsh_attention_backward(do, cache)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))
    out32, c32 = lsh_attention_forward(qk.astype(np.float32), v.astype(np.float32), rot.astype(np.float32),
                                       bucket_size=5, causal=True)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out, rtol=1e-4, atol=1e-5)
    for a, b in zip(lsh_attention_backward(do.astype(np.float32), c32), g1):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_causal_future_value_change_leaves_earlier_outputs_bit_identical(rng):
    qk, v = data(rng, n=32)
    rot = random_rotations(rng, 8, n_hashes=4, n_buckets=8)
    out, _ = lsh_attention_forward(qk, v, rot, bucket_size=4, causal=True)
    for t in (0, 7, 20, 31):
        v2 = v.copy()
        v2[:, :, t] += 100.0 * rng.standard_normal(v2[:, :, t].shape)
        out2, _ = lsh_attention_forward(qk, v2, rot, bucket_size=4, causal=True)
        assert np.array_equal(out2[:, :, :t], out[:, :, :t])
        if t < 31:                      # (the last token sees its own value only with weight exp(-10^5) = 0)
            assert not np.array_equal(out2[:, :, t:], out[:, :, t:])     # the change is seen from t on
    # and no gradient flows from an output to a later value
    do = np.zeros_like(out)
    do[:, :, 10] = 1.0
    _, cache = lsh_attention_forward(qk, v, rot, bucket_size=4, causal=True)
    _, dv = lsh_attention_backward(do, cache)
    assert np.all(dv[:, :, 11:] == 0)


def test_a_lone_token_attends_to_itself(rng):
    """Eq. (16)'s penalty is finite: the first causal token has only itself, so it outputs its value."""
    qk, v = data(rng, n=8)
    rot = random_rotations(rng, 8, n_hashes=2, n_buckets=4)
    out, _ = lsh_attention_forward(qk, v, rot, bucket_size=4, causal=True)
    np.testing.assert_allclose(out[:, :, 0], v[:, :, 0], rtol=1e-15, atol=0)


def test_nan_in_values_propagates_and_non_finite_qk_is_rejected(rng):
    qk, v = data(rng, b=1, h=1, n=32)
    rot = random_rotations(rng, 8, n_hashes=2, n_buckets=8)
    v[0, 0, 9, 1] = np.nan
    out, cache = lsh_attention_forward(qk, v, rot, bucket_size=4)
    # the queries whose window (any round) holds position 9
    tok = cache.perm[0, 0] % cache.qk.shape[2]
    chunks = tok.reshape(-1, 4)
    sees = set()
    for c in range(len(chunks)):
        if 9 in chunks[c] or 9 in chunks[c - 1]:
            sees.update(int(i) for i in chunks[c])
    bad = np.isnan(out[0, 0]).any(-1)
    assert set(np.flatnonzero(bad)) == sees and 9 in sees and len(sees) < 32
    assert np.all(np.isfinite(out[0, 0][~bad]))
    for bad_value in (np.nan, np.inf):
        qk2 = qk.copy()
        qk2[0, 0, 3, 0] = bad_value
        with pytest.raises(ValueError, match="qk"):
            lsh_attention_forward(qk2, v, rot, bucket_size=4)
    rot2 = rot.copy()
    rot2[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="rotations"):
        lsh_attention_forward(qk, v, rot2, bucket_size=4)
    with pytest.raises(ValueError, match="x"):
        lsh_hash(qk2, rot)


def test_lsh_hash_is_the_argmax_of_the_rotated_pair_and_scale_invariant(rng):
    x = rng.standard_normal((3, 10, 5))
    rot = random_rotations(rng, 5, n_hashes=2, n_buckets=6)
    h = lsh_hash(x, rot)
    assert h.shape == (3, 2, 10) and h.dtype == np.int64 and h.min() >= 0 and h.max() < 6
    for r in range(2):
        u = x @ rot[:, r]
        np.testing.assert_array_equal(h[:, r], np.argmax(np.concatenate([u, -u], -1), -1))
    np.testing.assert_array_equal(lsh_hash(3.7 * x, rot), h)
    np.testing.assert_array_equal(lsh_hash(-x, rot), (h + 3) % 6)    # antipodal points: opposite buckets


def test_zero_vector_keys_give_finite_outputs(rng):
    qk, v = data(rng, n=8)
    qk[:, :, 2] = 0.0
    rot = random_rotations(rng, 8, n_hashes=1, n_buckets=2)
    out, cache = lsh_attention_forward(qk, v, rot, bucket_size=4)
    assert np.all(np.isfinite(out))
    assert all(np.all(np.isfinite(g)) for g in lsh_attention_backward(np.ones_like(out), cache))


def test_bad_inputs_raise_and_change_nothing(rng):
    qk, v = data(rng, n=8)
    rot = random_rotations(rng, 8, n_hashes=2, n_buckets=4)
    before = (qk.copy(), v.copy(), rot.copy())
    with pytest.raises(ValueError, match="bucket_size"):
        lsh_attention_forward(qk, v, rot, bucket_size=0)
    with pytest.raises(ValueError, match="v"):
        lsh_attention_forward(qk, v[:, :, :7], rot, bucket_size=4)
    with pytest.raises(ValueError, match="v"):
        lsh_attention_forward(qk, v.astype(np.float32), rot, bucket_size=4)
    with pytest.raises(ValueError, match="rotations"):
        lsh_attention_forward(qk, v, rot[:4], bucket_size=4)
    with pytest.raises(ValueError, match="causal"):
        lsh_attention_forward(qk, v, rot, bucket_size=4, causal="yes")
    with pytest.raises(ValueError, match="qk"):
        lsh_attention_forward(qk[0], v, rot, bucket_size=4)
    with pytest.raises(ValueError, match="n_buckets"):
        random_rotations(rng, 8, 2, 5)
    assert all(np.array_equal(a, b) for a, b in zip((qk, v, rot), before))
    out, cache = lsh_attention_forward(qk, v, rot, bucket_size=4)
    with pytest.raises(ValueError, match="cache"):
        lsh_attention_backward(out, tuple(cache))
    with pytest.raises(ValueError, match="cache"):
        lsh_attention_backward(out, cache._replace(w=cache.w[:, :, :1]))
    with pytest.raises(ValueError, match="dout"):
        lsh_attention_backward(out[:, :, :3], cache)
    assert isinstance(cache, LSHCache)
