"""FlashAttention on inputs a caller should not have sent: non-finite values propagate as in the materialised
reference (never a masked-looking row), and the backward refuses a cache that is not its forward's.

Before these fixes a NaN in a query row gave out = 0 and lse = -inf (a "fully masked" row) whenever the keys
spanned more than one block, a NaN in k gave lse = +inf, and the backward read an lse shorter than Nq out of
bounds.
"""

import numpy as np
import pytest

from scratch_transformers.attention.flash import flash_attention_backward, flash_attention_forward
from scratch_transformers.attention.flash1 import flash_attention_fa1_forward
from scratch_transformers.attention.reference import attention_backward, attention_forward


def make(rng, b, h, n_q, n_k, d, dtype=np.float64):
    return tuple(rng.standard_normal(s).astype(dtype) for s in ((b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d)))


POISON = {  # where the non-finite value goes, and whether the case runs causal
    "nan_query_row": (lambda q, k, v: q.__setitem__((1, 0, 5), np.nan), True),
    "nan_in_one_query_entry": (lambda q, k, v: q.__setitem__((0, 1, 9, 2), np.nan), True),
    "nan_key": (lambda q, k, v: k.__setitem__((0, 1, 7, 0), np.nan), True),
    "nan_value": (lambda q, k, v: v.__setitem__((1, 1, 2, 3), np.nan), False),
}


@pytest.mark.parametrize("blocks", [(4, 4), (3, 5), (16, 64)], ids=["3_key_blocks", "ragged", "one_block"])
@pytest.mark.parametrize("case", list(POISON))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_propagates_like_the_reference(rng, case, blocks, dtype):
    """out and lse are NaN exactly where the reference's are (the rows that see the NaN), equal elsewhere; the
    paper-literal FA-1 kernel agrees (its O and l NaN, so m + log l is NaN too)."""
    q, k, v = make(rng, 2, 2, 12, 12, 4, dtype)
    poison, causal = POISON[case]
    poison(q, k, v)
    out, cache = flash_attention_forward(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
    with np.errstate(invalid="ignore"):
        ref_out, ref_cache = attention_forward(*(x.astype(np.float64) for x in (q, k, v)), causal=causal)
        out1, ell, m = flash_attention_fa1_forward(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
        lse1 = m + np.log(ell)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.isnan(ref_out).any() and np.isnan(ref_cache.lse).any() == (case != "nan_value")   # v: lse finite
    for got, want in ((out, ref_out), (cache.lse, ref_cache.lse), (out1, ref_out), (lse1, ref_cache.lse)):
        nan = np.isnan(want)
        assert (~nan).any() and np.array_equal(np.isnan(got), nan)
        assert np.allclose(got[~nan], want[~nan], rtol=tol, atol=tol)
    assert not np.isinf(cache.lse).any()                    # no row here is masked: no lse = +-inf


def test_nan_row_gradients_are_nan_not_zero(rng):
    """The backward of a NaN row: its dq is NaN (it was 0, as for a masked row), and so are dk, dv of the keys it
    sees; every gradient entry the NaN cannot reach equals the reference's (the reference, which multiplies
    whole matrices, is NaN on a superset)."""
    q, k, v = make(rng, 1, 2, 12, 12, 4)
    q[0, 1, 6] = np.nan
    out, cache = flash_attention_forward(q, k, v, causal=True, block_q=4, block_k=4)
    dout = rng.standard_normal(out.shape)
    grads = flash_attention_backward(dout, cache)
    with np.errstate(invalid="ignore"):
        ref_out, ref_cache = attention_forward(q, k, v, causal=True)
        ref_grads = attention_backward(dout, ref_cache)
    dq, dk, dv, _ = grads
    assert np.isnan(dq[0, 1, 6]).all() and np.isnan(dk[0, 1, :7]).all() and np.isnan(dv[0, 1, :7]).all()
    for g, rg in zip(grads[:3], ref_grads[:3]):
        nan = np.isnan(g)
        assert np.all(np.isnan(rg)[nan])
        fin = ~np.isnan(rg)
        assert np.allclose(g[fin], rg[fin], rtol=1e-12, atol=1e-12)
    assert np.isfinite(dq[0, 0]).all() and np.isfinite(dk[0, 0]).all()    # the other head is untouched


def test_inf_in_q_gives_nan_out_not_a_finite_row(rng):
    q, k, v = make(rng, 1, 1, 9, 9, 4)
    q[0, 0, 3, 1] = np.inf
    out, cache = flash_attention_forward(q, k, v, block_q=4, block_k=4)
    with np.errstate(invalid="ignore"):
        ref_out, ref_cache = attention_forward(q, k, v)
    assert np.array_equal(np.isnan(out), np.isnan(ref_out)) and np.isnan(out[0, 0, 3]).all()
    assert not np.isfinite(cache.lse[0, 0, 3]) and not np.isfinite(ref_cache.lse[0, 0, 3])


def test_backward_checks_that_the_cache_is_its_forwards(rng):
    """Everything the kernel indexes is checked against the cache's own shapes before it runs."""
    q, k, v = make(rng, 2, 2, 7, 9, 4)
    pad = np.zeros((2, 9), bool)
    pad[0, 1] = True
    out, cache = flash_attention_forward(q, k, v, causal=True, key_padding_mask=pad, bias=np.zeros((2, 1, 9)),
                                         block_q=3, block_k=4)
    dout = np.ones_like(out)
    bad = [(cache._replace(lse=cache.lse[..., :-1]), "cache.lse: expected shape"),      # was an out-of-bounds read
           (cache._replace(lse=cache.lse.astype(np.float32)), "cache.lse: expected dtype"),
           (cache._replace(k=cache.k[:, :, :5]), "cache.v: expected shape"),
           (cache._replace(v=cache.v[:1]), "cache.v: expected shape"),
           (cache._replace(out=cache.out[..., :2]), "cache.out: expected shape"),
           (cache._replace(q=cache.q[0]), "cache.q: expected 4-d"),
           (cache._replace(key_padding_mask=pad[:, :5]), "cache.key_padding_mask: expected shape"),
           (cache._replace(bias=np.zeros((3, 1, 9))), "cache.bias: expected an array broadcastable"),
           (cache._replace(block_k=0), "cache.block_k"),
           (cache._replace(offset=1.5), "cache.offset"),
           (cache._replace(dropout_p=1.0), "cache.dropout_p"),
           (tuple(cache), "cache: expected the FlashCache")]
    for c, match in bad:
        with pytest.raises(ValueError, match=match):
            flash_attention_backward(dout, c)
    _, ref_cache = attention_forward(q, k, v)
    with pytest.raises(ValueError, match="cache: expected the FlashCache"):
        flash_attention_backward(dout, ref_cache)
    flash_attention_backward(dout, cache)                   # the real cache still works
