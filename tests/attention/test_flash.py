"""FlashAttention (attention.flash) against the materialised reference (attention.reference).

Tolerances: float64 outputs and gradients agree to 1e-12 relative to the largest entry (observed
~1e-15); float32 kernels agree with the float64 reference to 1e-5 relative.
"""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from scratch_transformers.attention.dropout import flash_dropout_mask
from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
from scratch_transformers.attention.flash1 import flash_attention_fa1_forward
from scratch_transformers.attention.reference import attention_backward, attention_forward
from scratch_transformers.core.gradcheck import gradcheck


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def assert_lse_equal(got, want, tol):
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    assert np.all(np.isfinite(got[fin]))
    if fin.any():
        assert rel_err(got[fin], want[fin]) < tol


def make(rng, b, h, n_q, n_k, d, d_v=None, dtype=np.float64):
    d_v = d if d_v is None else d_v
    q = rng.standard_normal((b, h, n_q, d)).astype(dtype)
    k = rng.standard_normal((b, h, n_k, d)).astype(dtype)
    v = rng.standard_normal((b, h, n_k, d_v)).astype(dtype)
    return q, k, v


def compare(rng, b, h, n_q, n_k, d, *, d_v=None, block_q, block_k, tol=1e-12, bias_shape=None, pad=False,
            dtype=np.float64, **options):
    q, k, v = make(rng, b, h, n_q, n_k, d, d_v, dtype)
    if bias_shape is not None:
        options["bias"] = rng.standard_normal(bias_shape).astype(dtype)
    if pad:
        options["key_padding_mask"] = rng.random((b, n_k)) < 0.3
    out, cache = flash_attention_forward(q, k, v, block_q=block_q, block_k=block_k, **options)
    as64 = lambda x: None if x is None else np.asarray(x, np.float64) if x.dtype != bool else x
    ref_opts = {kk: (as64(vv) if isinstance(vv, np.ndarray) else vv) for kk, vv in options.items()}
    ref_out, ref_cache = attention_forward(as64(q), as64(k), as64(v), **ref_opts)
    assert out.dtype == dtype and cache.lse.dtype == dtype
    assert rel_err(out, ref_out) < tol
    assert_lse_equal(cache.lse, ref_cache.lse, tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = flash_attention_backward(dout, cache)
    ref_grads = attention_backward(as64(dout), ref_cache)
    for name, g, rg in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        if rg is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == rg.shape, name
        assert np.all(np.isfinite(g)), name
        assert rel_err(g, rg) < tol, (name, rel_err(g, rg))
    return out, cache, grads


CASES = [  # b, h, n_q, n_k, d, block_q, block_k, options
    (2, 3, 70, 70, 16, 32, 16, dict(causal=True)),                                # DESIGN.md's example
    (1, 1, 1, 1, 1, 64, 64, dict()),                                              # N = 1, d = 1
    (1, 2, 1, 9, 4, 3, 4, dict(causal=True, causal_alignment="bottom_right")),    # one query, last position
    (2, 2, 37, 53, 16, 16, 7, dict()),                                            # Nq != Nk, ragged both
    (2, 2, 53, 37, 16, 5, 16, dict(causal=True, causal_alignment="bottom_right")),  # Nq > Nk: empty rows
    (2, 2, 37, 53, 16, 8, 8, dict(causal=True, causal_alignment="top_left")),
    (2, 2, 37, 53, 16, 8, 8, dict(causal=True, causal_alignment="bottom_right")),
    (1, 2, 40, 40, 64, 16, 16, dict(causal=True, bias_shape=(2, 40, 40), pad=True)),
    (1, 1, 19, 23, 128, 4, 6, dict(bias_shape=(1, 1, 19, 23), pad=True, scale=0.3)),
    (2, 2, 17, 17, 8, 1, 1, dict(causal=True, bias_shape=(17, 17))),             # 1 x 1 tiles
    (2, 2, 17, 17, 8, 3, 16, dict(bias_shape=(2, 1, 1, 17), pad=True)),          # per-(b, key) bias
    (2, 3, 17, 17, 8, 17, 17, dict(causal=True, bias_shape=(2, 3, 17, 17))),     # full bias, one tile
    (3, 2, 21, 21, 16, 64, 64, dict(bias_shape=(3, 1, 21, 21), pad=True, d_v=5)),  # per-batch bias, dv != d
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_reference_float64(rng, case):
    b, h, n_q, n_k, d, bq, bk, opts = case
    compare(rng, b, h, n_q, n_k, d, block_q=bq, block_k=bk, tol=1e-12, **opts)


@pytest.mark.parametrize("bq,bk", [(1, 3), (3, 16), (16, 1), (29, 29), (64, 64)])
def test_block_size_sweep(rng, bq, bk):
    compare(rng, 1, 2, 29, 29, 8, block_q=bq, block_k=bk, causal=True, pad=True, bias_shape=(2, 29, 29))


def test_default_blocks_each_kernel_its_own_and_explicit_blocks_reach_the_backward(rng):
    from scratch_transformers.attention.flash import BACKWARD_BLOCKS, FORWARD_BLOCKS

    # N = 600 > 512: two query blocks in the forward, ragged key blocks in both kernels
    opts = dict(causal=True, bias_shape=(2, 600, 600), pad=True)
    _, cache, grads = compare(rng, 1, 2, 600, 600, 8, block_q=None, block_k=None, **opts)
    assert (cache.block_q, cache.block_k) == BACKWARD_BLOCKS and FORWARD_BLOCKS == (512, 128)
    q, k, v = make(rng, 1, 2, 50, 50, 8)
    out_default, _ = flash_attention_forward(q, k, v, causal=True)
    out_explicit, _ = flash_attention_forward(q, k, v, causal=True, block_q=FORWARD_BLOCKS[0], block_k=FORWARD_BLOCKS[1])
    assert np.array_equal(out_default, out_explicit)
    _, cache = flash_attention_forward(q, k, v, block_q=3)          # one given, the other each kernel's default
    assert (cache.block_q, cache.block_k) == (3, BACKWARD_BLOCKS[1])


def test_backward_is_the_same_for_any_number_of_threads(rng):
    """Work items (b, h, key group) and one dQ copy per group: the sums do not depend on the threads."""
    import numba

    q, k, v = make(rng, 1, 1, 300, 300, 16)                        # B = H = 1: still two work items
    out, cache = flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=48)
    dout = rng.standard_normal(out.shape)
    before = numba.get_num_threads()
    try:
        grads = []
        for threads in (1, before):
            numba.set_num_threads(threads)
            grads.append(flash_attention_backward(dout, cache))
    finally:
        numba.set_num_threads(before)
    for g1, g2 in zip(grads[0][:3], grads[1][:3]):
        assert np.array_equal(g1, g2)
    _, ref_cache = attention_forward(q, k, v, causal=True)
    for g, rg in zip(grads[1][:3], attention_backward(dout, ref_cache)[:3]):
        assert rel_err(g, rg) < 1e-12


def test_bias_broadcast_over_keys_gets_zero_gradient(rng):
    """Softmax is shift-invariant per row, so a bias constant along the keys has dbias_i = sum_j dS_ij =
    D_i - D_i = 0; the key groups of the backward each add their part, and the parts must cancel."""
    q, k, v = make(rng, 2, 2, 40, 45, 8)
    bias = rng.standard_normal((1, 2, 40, 1))
    out, cache = flash_attention_forward(q, k, v, bias=bias, causal=True, block_q=8, block_k=8)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv, dbias = flash_attention_backward(dout, cache)
    assert dbias.shape == bias.shape and np.all(np.abs(dbias) < 1e-13)
    _, ref_cache = attention_forward(q, k, v, bias=bias, causal=True)
    for g, rg in zip((dq, dk, dv), attention_backward(dout, ref_cache)[:3]):
        assert rel_err(g, rg) < 1e-12


def test_float32_within_1e5(rng):
    for opts in (dict(), dict(causal=True, pad=True, bias_shape=(2, 1, 100))):
        compare(rng, 2, 2, 100, 100, 32, block_q=32, block_k=24, tol=1e-5, dtype=np.float32, **opts)


def test_fa1_algorithm1_equals_fa2_and_its_statistics(rng):
    """FA-1 Alg. 1 (outer loop over K/V) returns the same O; its (l, m) are the row statistics of
    Theorem 1: m = rowmax(S), l = rowsum(exp(S - m)), and m + log l = FA-2's L."""
    for opts in (dict(), dict(causal=True, causal_alignment="bottom_right", pad=True)):
        q, k, v = make(rng, 2, 2, 23, 31, 8)
        if opts.pop("pad", False):
            opts["key_padding_mask"] = rng.random((2, 31)) < 0.3
        out2, cache = flash_attention_forward(q, k, v, block_q=5, block_k=7, **opts)
        out1, ell, m = flash_attention_fa1_forward(q, k, v, block_q=5, block_k=7, **opts)
        ref_out, ref_cache = attention_forward(q, k, v, **opts)
        assert rel_err(out1, ref_out) < 1e-12 and rel_err(out1, out2) < 1e-12
        s = np.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(8)
        s = np.where(ref_cache.p > 0, s, -np.inf)
        want_m = s.max(-1)
        fin = np.isfinite(want_m)
        assert np.array_equal(np.isneginf(m), ~fin) and np.all(ell[~fin] == 0)
        want_l = np.exp(s - np.where(fin, want_m, 0)[..., None]).sum(-1)
        assert rel_err(m[fin], want_m[fin]) < 1e-14 and rel_err(ell[fin], want_l[fin]) < 1e-12
        assert rel_err((m + np.log(ell))[fin], cache.lse[fin]) < 1e-12


def test_fully_masked_rows_give_zero_and_no_nan(rng):
    q, k, v = make(rng, 2, 2, 6, 6, 4)
    pad = np.zeros((2, 6), bool)
    pad[0] = True                          # batch 0: every key padded
    pad[1, :2] = True                      # batch 1, causal: rows 0 and 1 see nothing
    out, cache = flash_attention_forward(q, k, v, causal=True, key_padding_mask=pad, block_q=4, block_k=4)
    assert np.all(out[0] == 0) and np.all(np.isneginf(cache.lse[0]))
    assert np.all(out[1, :, :2] == 0) and np.all(np.isneginf(cache.lse[1, :, :2]))
    assert np.all(np.isfinite(cache.lse[1, :, 2:]))
    grads = flash_attention_backward(rng.standard_normal(out.shape), cache)
    for g in grads[:3]:
        assert np.all(np.isfinite(g))
    assert np.all(grads[0][0] == 0) and np.all(grads[1][0] == 0) and np.all(grads[2][0] == 0)
    out1, ell, m = flash_attention_fa1_forward(q, k, v, causal=True, key_padding_mask=pad, block_q=4, block_k=4)
    assert np.all(out1[0] == 0) and np.all(ell[0] == 0) and np.all(np.isneginf(m[0]))


def test_large_logits_stay_finite(rng):
    q, k, v = make(rng, 1, 2, 33, 33, 8)
    q *= 300.0                               # logits ~1e4
    compare_out, cache = flash_attention_forward(q, k, v, causal=True, block_q=8, block_k=8)
    ref_out, ref_cache = attention_forward(q, k, v, causal=True)
    assert np.all(np.isfinite(compare_out)) and rel_err(compare_out, ref_out) < 1e-12
    grads = flash_attention_backward(np.ones_like(compare_out), cache)
    for g, rg in zip(grads[:3], attention_backward(np.ones_like(ref_out), ref_cache)[:3]):
        assert np.all(np.isfinite(g)) and rel_err(g, rg) < 1e-10


def test_causal_future_perturbation_leaves_past_bit_identical(rng):
    q, k, v = make(rng, 1, 2, 40, 40, 8)
    out, _ = flash_attention_forward(q, k, v, causal=True, block_q=16, block_k=16)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 25:] += 1.0
    v2[:, :, 25:] -= 3.0
    out2, _ = flash_attention_forward(q, k2, v2, causal=True, block_q=16, block_k=16)
    assert np.array_equal(out[:, :, :25], out2[:, :, :25])
    assert not np.allclose(out[:, :, 25:], out2[:, :, 25:])


def test_blocks_above_the_diagonal_are_skipped_not_masked(rng):
    """NaN keys/values in blocks entirely above query block 0's diagonal cannot reach its rows if
    those blocks are skipped (masking would give 0 * NaN = NaN); same for dK/dV of the backward."""
    q, k, v = make(rng, 1, 1, 32, 32, 4)
    k[:, :, 8:] = np.nan
    v[:, :, 8:] = np.nan
    out, cache = flash_attention_forward(q, k, v, causal=True, block_q=8, block_k=8)
    assert np.all(np.isfinite(out[:, :, :8]))
    out1, _, _ = flash_attention_fa1_forward(q, k, v, causal=True, block_q=8, block_k=8)
    assert np.all(np.isfinite(out1[:, :, :8]))
    # backward: query rows 8.. are NaN-free and pair only with key blocks they see
    q, k, v = make(rng, 1, 1, 32, 32, 4)
    q[:, :, :8] = np.nan
    out, cache = flash_attention_forward(q, k, v, causal=True, block_q=8, block_k=8)
    dout = np.ones_like(out)
    dout[:, :, :8] = 0.0
    _, dk, dv, _ = flash_attention_backward(dout, cache)
    assert np.all(np.isfinite(dk[:, :, 8:])) and np.all(np.isfinite(dv[:, :, 8:]))


def test_dropout_equals_reference_with_the_materialised_mask(rng):
    """The kernels' counter-based mask, materialised by flash_dropout_mask, is what they applied in
    the forward and what the backward regenerated (the reference gets it as an explicit mask)."""
    q, k, v = make(rng, 2, 3, 29, 35, 8)
    bias = rng.standard_normal((3, 29, 35))
    opts = dict(causal=True, causal_alignment="bottom_right", bias=bias, dropout_p=0.25)
    out, cache = flash_attention_forward(q, k, v, dropout_seed=1234, block_q=8, block_k=5, **opts)
    mask = flash_dropout_mask(1234, (2, 3, 29, 35), 0.25)
    ref_out, ref_cache = attention_forward(q, k, v, dropout_mask=mask, **opts)
    assert rel_err(out, ref_out) < 1e-12
    dout = rng.standard_normal(out.shape)
    for g, rg in zip(flash_attention_backward(dout, cache), attention_backward(dout, ref_cache)):
        assert rel_err(g, rg) < 1e-12
    out1, _, _ = flash_attention_fa1_forward(q, k, v, dropout_seed=1234, block_q=8, block_k=5, **opts)
    assert rel_err(out1, ref_out) < 1e-12
    # the explicit-mask path of the flash kernels agrees too
    out_m, cache_m = flash_attention_forward(q, k, v, dropout_mask=mask, block_q=8, block_k=5, **opts)
    assert rel_err(out_m, ref_out) < 1e-12
    for g, rg in zip(flash_attention_backward(dout, cache_m), attention_backward(dout, ref_cache)):
        assert rel_err(g, rg) < 1e-12


def test_dropout_mask_statistics_and_seed_dependence():
    m1 = flash_dropout_mask(1, (2, 2, 64, 64), 0.3)
    m2 = flash_dropout_mask(2, (2, 2, 64, 64), 0.3)
    assert abs(m1.mean() - 0.7) < 0.02                     # 16384 entries: sd of the mean ~0.0036
    assert np.array_equal(m1, flash_dropout_mask(1, (2, 2, 64, 64), 0.3))
    assert 0.3 < np.mean(m1 != m2) < 0.5                   # independent masks differ in 2 p (1 - p) = 42%
    assert flash_dropout_mask(5, (1, 1, 8, 8), 0.0).all()


def test_dropout_expectation_matches_no_dropout(rng):
    """E_Z[out] = out without dropout (inverted dropout is unbiased): the mean over 400 seeds is
    within 5 standard errors of the undropped output, and the error shrinks as seeds are added."""
    q, k, v = make(rng, 1, 2, 12, 12, 4)
    exact, _ = flash_attention_forward(q, k, v, causal=True)
    outs = np.stack([flash_attention_forward(q, k, v, causal=True, dropout_p=0.4, dropout_seed=s,
                                             block_q=4, block_k=4)[0] for s in range(400)])
    mean, se = outs.mean(0), outs.std(0) / np.sqrt(len(outs)) + 1e-12
    assert np.all(np.abs(mean - exact) < 5 * se)
    err_small = np.abs(outs[:25].mean(0) - exact).mean()
    assert np.abs(mean - exact).mean() < err_small


def test_gradcheck_flash_pair_float64(rng):
    q, k, v = make(rng, 1, 2, 5, 7, 3)
    inputs = dict(q=q, k=k, v=v, bias=rng.standard_normal((2, 1, 7)))

    def fwd(q, k, v, bias):
        return flash_attention_forward(q, k, v, bias=bias, causal=True, causal_alignment="bottom_right",
                                       dropout_p=0.2, dropout_seed=3, block_q=2, block_k=3)

    gradcheck(fwd, flash_attention_backward, inputs, wrt=("q", "k", "v", "bias"), tol=1e-6).assert_ok()


def test_rng_draws_a_seed_and_backward_is_pure(rng):
    q, k, v = make(rng, 1, 1, 9, 9, 4)
    out, cache = flash_attention_forward(q, k, v, dropout_p=0.5, rng=np.random.default_rng(3))
    out2, _ = flash_attention_forward(q, k, v, dropout_p=0.5, rng=np.random.default_rng(3))
    assert np.array_equal(out, out2)
    g1 = flash_attention_backward(np.ones_like(out), cache)
    g2 = flash_attention_backward(np.ones_like(out), cache)
    for a, b in zip(g1[:3], g2[:3]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("call,match", [
    (lambda q, k, v: flash_attention_forward(q[0], k, v), "q: expected 4-d"),
    (lambda q, k, v: flash_attention_forward(q, k[..., :2], v), "k: expected shape"),
    (lambda q, k, v: flash_attention_forward(q, k.astype(np.float32), v), "k: expected dtype"),
    (lambda q, k, v: flash_attention_forward(q.astype(int), k, v), "q: expected dtype float32 or float64"),
    (lambda q, k, v: flash_attention_forward(q, k, v[:, :, :3]), "v: expected shape"),
    (lambda q, k, v: flash_attention_forward(q, k, v, block_q=0), "block_q: expected an integer >= 1"),
    (lambda q, k, v: flash_attention_forward(q, k, v, block_k=2.0), "block_k: expected an integer"),
    (lambda q, k, v: flash_attention_forward(q, k, v, causal=True, causal_alignment="left"), "causal_alignment"),
    (lambda q, k, v: flash_attention_forward(q, k, v, causal="yes"), "causal: expected a bool"),
    (lambda q, k, v: flash_attention_forward(q, k, v, scale=-1.0), "scale"),
    (lambda q, k, v: flash_attention_forward(q, k, v, dropout_p=0.1), "dropout_seed"),
    (lambda q, k, v: flash_attention_forward(q, k, v, dropout_p=1.0, dropout_seed=1), "dropout_p"),
    (lambda q, k, v: flash_attention_forward(q, k, v, bias=np.zeros((3, 5, 5))), "bias: expected an array broadcastable"),
    (lambda q, k, v: flash_attention_forward(q, k, v, bias=np.zeros((5, 5), np.float32)), "bias: expected dtype"),
    (lambda q, k, v: flash_attention_forward(q, k, v, key_padding_mask=np.zeros((1, 5))), "key_padding_mask"),
    (lambda q, k, v: flash_attention_forward(q, k, v, dropout_p=0.1, dropout_seed=1,
                                             dropout_mask=np.ones((5, 5), bool)), "dropout_seed"),
    (lambda q, k, v: flash_attention_backward(np.zeros((1, 2, 5, 4)), None), "cache"),
    (lambda q, k, v: flash_attention_backward(np.zeros((1, 2, 4, 4)), flash_attention_forward(q, k, v)[1]),
     "dout: expected shape"),
    (lambda q, k, v: flash_dropout_mask(1, (2, 2, 3), 0.5), "shape"),
])
def test_bad_inputs_raise(rng, call, match):
    q, k, v = make(rng, 1, 2, 5, 5, 4)
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


def test_runs_without_jit():
    """NUMBA_DISABLE_JIT=1: the kernels run as plain Python (a reader can step through them) and
    still match the reference, dropout and bias included."""
    code = textwrap.dedent("""
        import numpy as np
        from scratch_transformers.attention.dropout import flash_dropout_mask
        from scratch_transformers.attention.flash import flash_attention_forward, flash_attention_backward
        from scratch_transformers.attention.flash1 import flash_attention_fa1_forward
        from scratch_transformers.attention.reference import attention_forward, attention_backward
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, 2, 7, 3)) for _ in range(3))
        bias = rng.standard_normal((2, 1, 7))
        opts = dict(causal=True, bias=bias, dropout_p=0.3)
        out, cache = flash_attention_forward(q, k, v, dropout_seed=9, block_q=3, block_k=2, **opts)
        mask = flash_dropout_mask(9, (1, 2, 7, 7), 0.3)
        ref, rc = attention_forward(q, k, v, dropout_mask=mask, **opts)
        err = [np.abs(out - ref).max()]
        for g, rg in zip(flash_attention_backward(np.ones_like(out), cache), attention_backward(np.ones_like(ref), rc)):
            err.append(np.abs(g - rg).max())
        err.append(np.abs(flash_attention_fa1_forward(q, k, v, dropout_seed=9, block_q=3, block_k=2, **opts)[0] - ref).max())
        import numba
        print(numba.config.DISABLE_JIT, max(err))
    """)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    flag, err = res.stdout.split()
    assert flag in ("1", "True") and float(err) < 1e-12


def test_memory_is_linear_not_quadratic(rng):
    """tracemalloc at N = 4096 (float64, B = H = 1, d = 64): the extra memory of forward and of
    backward, beyond their inputs and returned outputs, stays below 5% of one N x N float64 matrix.
    (numba's NRT allocations go through the traced allocator, so kernel-side tiles count.)"""
    n, d = 4096, 64
    q, k, v = make(rng, 1, 1, n, n, d)
    o, c = flash_attention_forward(q[:, :, :70], k[:, :, :70], v[:, :, :70], causal=True)  # compile/load
    flash_attention_backward(o, c)                                                       # outside the trace
    budget = 0.05 * n * n * 8
    tracemalloc.start()
    try:
        out, cache = flash_attention_forward(q, k, v, causal=True)
        fwd_peak = tracemalloc.get_traced_memory()[1] - out.nbytes - cache.lse.nbytes
        dout = np.ones_like(out)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        grads = flash_attention_backward(dout, cache)
        bwd_peak = tracemalloc.get_traced_memory()[1] - base - sum(g.nbytes for g in grads[:3])
    finally:
        tracemalloc.stop()
    assert fwd_peak < budget, (fwd_peak, budget)
    assert bwd_peak < budget, (bwd_peak, budget)


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["learned", "alibi"])
def test_training_with_flash_reproduces_reference_loss_curve(positions):
    """attention="flash" in the baseline transformer: the same float64 training run as with the
    materialised reference gives the same loss curve to 1e-10 (ALiBi exercises the bias path)."""
    from scratch_transformers.core import data, optim, train
    from scratch_transformers.models import transformer as tf

    corpus = data.load_stdlib_corpus()
    curves = {}
    for attention in ("reference", "flash"):
        config = tf.TransformerConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_len=40,
                                      positions=positions, attention=attention)
        rng = np.random.default_rng(11)
        params = tf.init_params(config, rng)

        def loss_and_grads(p, batch, r, config=config):
            return tf.loss_and_grads(p, config, *batch)

        hist = train.train(loss_and_grads, params, optim.AdamW(lr=3e-3),
                           lambda r, step: data.random_windows(corpus.train, r, 4, 40),
                           steps=15, rng=rng, progress=False)
        curves[attention] = np.array(hist.losses)
    assert curves["reference"][-1] < curves["reference"][0] - 0.1          # it trains
    np.testing.assert_allclose(curves["flash"], curves["reference"], rtol=1e-10, atol=0)


@pytest.mark.slow
def test_experiment_quick_runs_and_reports(tmp_path):
    from scratch_transformers.experiments import flash as experiment

    res = experiment.run("quick", rng=np.random.default_rng(0), out_dir=tmp_path)
    assert res.name == "flash" and len(res.figures) == 2 and all(p.is_file() for p in res.figures)
    assert res.metrics["max_rel_error_float64"] < 1e-12
    assert res.metrics["memory_ratio_ref_over_flash_largest_n"] > 4          # N = 1024: measured ~12x
    assert abs(res.metrics["causal_tile_fraction_n4096"] - 2080 / 4096) < 1e-12
    from scratch_transformers.attention import io_model as io
    std = io.standard_hbm_accesses(1024, 64)["total"] + io.standard_backward_hbm_accesses(1024, 64)["total"]
    fa1 = (io.flash_hbm_accesses(1024, 64, 100_000)["total"]
           + io.flash_backward_hbm_accesses(1024, 64, 100_000)["total"])
    assert res.metrics["hbm_ratio_fwd_bwd_standard_over_fa1_m100k"] == std / fa1
    assert "forward + backward" in res.summary and "9.2x" in res.summary
    assert "| N |" in res.summary
