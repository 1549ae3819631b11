"""IO accounting (attention.io_model): closed-form HBM counts equal a counted execution, the
counted execution computes attention exactly, and the counts scale as Theorem 2 says."""

import numpy as np
import pytest

from scratch_transformers.attention.io_model import (block_sizes, flash_backward_hbm_accesses, flash_hbm_accesses,
                                                     simulate_flash_backward_io, simulate_flash_io,
                                                     standard_backward_hbm_accesses, standard_hbm_accesses)
from scratch_transformers.attention.reference import attention_backward, attention_forward


@pytest.mark.parametrize("order", ["fa1", "fa2"])
@pytest.mark.parametrize("n,n_k,bq,bk,causal", [(37, 37, 8, 5, False), (37, 37, 8, 5, True), (16, 16, 4, 4, True),
                                                (20, 33, 3, 7, False), (1, 1, 4, 4, False)])
def test_closed_form_counts_equal_counted_execution(rng, order, n, n_k, bq, bk, causal):
    d = 6
    q, k, v = rng.standard_normal((n, d)), rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d))
    out, reads, writes = simulate_flash_io(q, k, v, block_q=bq, block_k=bk, order=order, causal=causal)
    counts = flash_hbm_accesses(n, d, order=order, block_q=bq, block_k=bk, n_k=n_k, causal=causal)
    assert (reads, writes) == (counts["reads"], counts["writes"])
    ref, _ = attention_forward(q[None, None], k[None, None], v[None, None], causal=causal)
    np.testing.assert_allclose(out, ref[0, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["fa1", "fa2"])
@pytest.mark.parametrize("n,n_k,bq,bk,causal", [(37, 37, 8, 5, False), (37, 37, 8, 5, True), (16, 16, 4, 4, True),
                                                (20, 33, 3, 7, False), (1, 1, 4, 4, False)])
def test_backward_closed_form_counts_equal_counted_execution(rng, order, n, n_k, bq, bk, causal):
    d = 6
    q, k, v = rng.standard_normal((n, d)), rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d))
    dout = rng.standard_normal((n, d))
    out, cache = attention_forward(q[None, None], k[None, None], v[None, None], causal=causal)
    grads, reads, writes = simulate_flash_backward_io(q, k, v, out[0, 0], dout, cache.lse[0, 0], block_q=bq,
                                                      block_k=bk, order=order, causal=causal)
    counts = flash_backward_hbm_accesses(n, d, order=order, block_q=bq, block_k=bk, n_k=n_k, causal=causal)
    assert (reads, writes) == (counts["reads"], counts["writes"])
    want = attention_backward(dout[None, None], cache)[:3]
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(got, ref[0, 0], rtol=1e-11, atol=1e-12)


def test_backward_counts_and_theorem5_scaling():
    n, d = 1024, 64
    assert standard_backward_hbm_accesses(n, d)["total"] == 8 * n * d + 7 * n * n
    # FA-1 Alg. 4: 7 N d + T_c N (5 d + 2) with T_c = ceil(N / B_c); ~ 20 N^2 d^2 / M for d^2 << M << N d
    for m in (16 * 1024, 64 * 1024, 100_000):
        b_r, b_c = block_sizes(m, d)
        t_c = -(-n // b_c)
        assert flash_backward_hbm_accesses(n, d, m, order="fa1")["total"] == 7 * n * d + t_c * n * (5 * d + 2)
    a = flash_backward_hbm_accesses(n, d, 16 * 1024)["total"]
    b = flash_backward_hbm_accesses(n, d, 64 * 1024)["total"]
    assert 2.5 < a / b < 4.1 and a < standard_backward_hbm_accesses(n, d)["total"]
    with pytest.raises(ValueError, match="order"):
        flash_backward_hbm_accesses(10, 4, 100, order="fa3")
    with pytest.raises(ValueError, match="lse: expected shape"):
        simulate_flash_backward_io(*(np.zeros((4, 2)),) * 5, np.zeros(3), block_q=2, block_k=2)


def test_block_sizes_follow_algorithm1_line1():
    assert block_sizes(16384, 64) == (64, 64)          # FA-1 Alg. 1 line 1: B_c = ceil(M / 4d), B_r = min(B_c, d)
    assert block_sizes(1024, 64) == (4, 4)
    assert block_sizes(100_000, 64) == (64, 391)


def test_standard_count_and_theorem2_scaling():
    n, d = 1024, 64
    assert standard_hbm_accesses(n, d)["total"] == 4 * n * d + 4 * n * n
    # FA-1: total ~ 12 N^2 d^2 / M for d^2 << M << N d: quadrupling M divides the count by ~4
    a = flash_hbm_accesses(n, d, 16 * 1024, order="fa1")["total"]
    b = flash_hbm_accesses(n, d, 64 * 1024, order="fa1")["total"]
    assert 3.0 < a / b < 4.1
    assert a < standard_hbm_accesses(n, d)["total"]
    # doubling N quadruples the tiled count (fixed M)
    c = flash_hbm_accesses(2 * n, d, 16 * 1024, order="fa1")["total"]
    assert 3.7 < c / a < 4.0     # plus the linear terms (K, V read once, O written)


def test_causal_skipping_counts_half_the_tiles():
    t = 16
    r = flash_hbm_accesses(64 * t, 64, order="fa2", block_q=64, block_k=64, causal=True)
    assert r["tiles"] == t * (t + 1) // 2 and r["all_tiles"] == t * t


def test_bad_options_raise():
    with pytest.raises(ValueError, match="order"):
        flash_hbm_accesses(10, 4, 100, order="fa3")
    with pytest.raises(ValueError, match="m_sram"):
        flash_hbm_accesses(10, 4)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        standard_hbm_accesses(0, 4)
