"""speculative_accept (Leviathan et al. 2211.17192, Algorithm 1) and the decoding loop around it.

The distribution tests use Pearson's chi-square at significance ALPHA = 1e-3 (Bonferroni-split over the
positions tested) and, to show the test has power, run the same statistic on three wrong rules, each of
which must be rejected: resampling from p instead of the residual, no bonus token, and drafts sampled
from a q' other than the q given to the rule.
"""

import math

import numpy as np
import pytest

from scratch_transformers.models import transformer as tf
from scratch_transformers.models.speed import TransformerDecoder
from scratch_transformers.tandem.speculative import (expected_tokens_per_call, predicted_speedup, probabilities,
                                                     sample_categorical, speculative_accept, speculative_decode)

ALPHA = 1e-3


def chi2_sf(x, dof):
    """P(X > x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, x/2)
    (series for x < a + 1, Lentz continued fraction otherwise; Numerical Recipes §6.2)."""
    a, z = dof / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if not math.isfinite(z):
        return 0.0
    gln = math.lgamma(a)
    if z < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return 1.0 - total * math.exp(-z + a * math.log(z) - gln)
    b = z + 1 - a
    c, d = 1e300, 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(-z + a * math.log(z) - gln) * h


def test_chi2_sf_known_values():
    # chi-square critical values from standard tables
    assert abs(chi2_sf(3.841458820694124, 1) - 0.05) < 1e-9
    assert abs(chi2_sf(16.918977604620448, 9) - 0.05) < 1e-9
    assert abs(chi2_sf(29.587790, 10) - 0.001) < 1e-6
    assert abs(chi2_sf(2.0, 2) - math.exp(-1.0)) < 1e-12


def pearson(counts, probs):
    """Pearson statistic and p-value; a count in a zero-probability cell gives p-value 0."""
    n = counts.sum()
    if np.any(counts[probs == 0] > 0):
        return math.inf, 0.0
    keep = probs > 0
    e = n * probs[keep]
    stat = float(np.sum((counts[keep] - e) ** 2 / e))
    return stat, chi2_sf(stat, int(keep.sum()) - 1)


# --- the rule and three wrong ones, all with the signature of speculative_accept -----------------

def accept_resample_from_p(p, q, x, rng):
    """Wrong: on rejection draw from p_n instead of norm(max(0, p_n - q_n))."""
    for i in range(len(x)):
        if not rng.random() < p[i, x[i]] / q[i, x[i]]:
            return i, sample_categorical(p[i], rng.random())
    return len(x), sample_categorical(p[len(x)], rng.random())


def accept_no_bonus(p, q, x, rng):
    """Wrong: all drafts kept -> no extra token from p_gamma."""
    n, t = speculative_accept(p, q, x, rng)
    return (n, None) if n == len(x) else (n, t)


def emitted_position_counts(rule, p, q, q_draw, n_samples, rng):
    """Counts[k, v]: samples whose (k+1)-th emitted token is v; counts[k, V]: samples emitting < k+1 tokens.
    Drafts are drawn from q_draw (= q for the real rule)."""
    gamma, V = q.shape
    counts = np.zeros((gamma + 1, V + 1), dtype=np.int64)
    cdfs = np.cumsum(q_draw, axis=1)
    for _ in range(n_samples):
        x = np.array([min(int(np.searchsorted(cdfs[i], rng.random(), side="right")), V - 1)
                      for i in range(gamma)])
        n, t = rule(p, q, x, rng)
        emitted = list(x[:n]) + ([] if t is None else [t])
        for k in range(gamma + 1):
            counts[k, emitted[k] if k < len(emitted) else V] += 1
    return counts


def expected_position_probs(p, q):
    """Under Algorithm 1: P(k+1-th emitted = v) = P(reach k+1) p_k(v), P(reach k+1) = prod_{i<k} beta_i,
    beta_i = sum_v min(p_i, q_i) (Leviathan Thm 3.5); the last column is P(fewer than k+1 emitted)."""
    gamma, V = q.shape
    beta = np.minimum(p[:gamma], q).sum(axis=1)
    out = np.zeros((gamma + 1, V + 1))
    reach = 1.0
    for k in range(gamma + 1):
        out[k, :V] = reach * p[k]
        out[k, V] = 1.0 - reach
        if k < gamma:
            reach *= beta[k]
    return out


def position_test(counts, probs):
    """Smallest p-value over the positions, Bonferroni-corrected (times the number of positions)."""
    pvals = [pearson(counts[k], probs[k])[1] for k in range(counts.shape[0])]
    return min(1.0, min(pvals) * len(pvals))


def toy_distributions(rng, gamma, V):
    p = rng.dirichlet(np.full(V, 0.7), size=gamma + 1)
    q = rng.dirichlet(np.full(V, 0.7), size=gamma)
    p[0, 1] = 0.0                                   # a token the target never emits ...
    q[0, 1] = max(q[0, 1], 0.2)                     # ... that the drafter often proposes
    p /= p.sum(1, keepdims=True)
    q /= q.sum(1, keepdims=True)
    q_other = 0.5 * q + 0.5 * rng.dirichlet(np.ones(V), size=gamma)   # drafts sampled from another q
    return p, q, q_other


@pytest.mark.parametrize("gamma", [1, 3])
def test_emitted_tokens_have_the_target_distribution_and_wrong_rules_fail(gamma):
    rng = np.random.default_rng(100 + gamma)
    V, n_samples = 6, 6000
    p, q, q_other = toy_distributions(rng, gamma, V)
    want = expected_position_probs(p, q)
    rule = lambda p_, q_, x_, r_: speculative_accept(p_, q_, x_, r_)   # noqa: E731
    pval = position_test(emitted_position_counts(rule, p, q, q, n_samples, rng), want)
    assert pval > ALPHA, f"the rule fails its own distribution test: p = {pval:.2e}"
    wrong = {"resample from p": (accept_resample_from_p, q),
             "no bonus token": (accept_no_bonus, q),
             "drafts from another q": (rule, q_other)}
    for name, (bad, q_draw) in wrong.items():
        pval_bad = position_test(emitted_position_counts(bad, p, q, q_draw, n_samples, rng), want)
        assert pval_bad < ALPHA, f"wrong rule {name!r} passes (p = {pval_bad:.2e}): the test has no power"


def test_first_emitted_token_is_exactly_p0_for_any_q(rng):
    # Appendix A.1: P(first token = v) = min(p, q)(v) + (1 - beta) residual(v) = p(v), whatever q is.
    V = 5
    p = rng.dirichlet(np.ones(V), size=2)
    q = rng.dirichlet(np.ones(V), size=1)
    counts = np.zeros(V, dtype=np.int64)
    for _ in range(8000):
        x = np.array([sample_categorical(q[0], rng.random())])
        n, t = speculative_accept(p, q, x, rng)
        counts[x[0] if n == 1 else t] += 1
    assert pearson(counts, p[0])[1] > ALPHA


class _ZeroRng(np.random.Generator):
    """A generator whose uniforms are all exactly 0 (the edge of U[0, 1))."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))

    def random(self, size=None, dtype=np.float64, out=None):
        return np.zeros(size) if size is not None else 0.0


def test_token_with_zero_target_probability_is_never_accepted_even_at_u0():
    p = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    q = np.array([[1.0, 0.0, 0.0]])
    n, t = speculative_accept(p, q, np.array([0]), _ZeroRng())
    assert n == 0                       # 0 < 0 / 1 is False
    assert t in (1, 2)                  # from the residual max(0, p - q) = (0, .5, .5)
    # and a token with p > 0 is accepted at u = 0
    assert speculative_accept(p, np.array([[0.0, 1.0, 0.0]]), np.array([1]), _ZeroRng())[0] == 1


def test_residual_all_zero_falls_back_to_p():
    # p == q: ratio 1 > u always, so no rejection; force one with ratio < 1 by a tiny rounding gap
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    q = np.array([[0.5 + 1e-17, 0.5 - 1e-17]])          # rounds to p: residual is exactly zero
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, t = speculative_accept(p, q, np.array([0]), rng)
        assert n in (0, 1) and t in (0, 1)
    # a row where p <= q everywhere but ratio < 1 at the draft: p = (0.4999.., 0.5000..), q = p with
    # rounding moved: the residual sums to 0 -> sample from p, never NaN
    p2 = np.array([[0.25, 0.75], [1.0, 0.0]])
    q2 = np.array([[0.25, 0.75]])
    counts = np.zeros(2)
    for _ in range(200):
        counts[speculative_accept(p2, q2, np.array([1]), rng)[1]] += 1
    assert counts[1] == 0               # bonus from p_1 = (1, 0)


def test_sample_categorical_never_returns_zero_weight():
    w = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    for u in (0.0, 0.29999, 0.3, 0.9999999999999999, np.nextafter(1.0, 0.0)):
        assert w[sample_categorical(w, u)] > 0


def test_greedy_special_case():
    p = np.array([[0.1, 0.9, 0.0], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.0, 0.0, 1.0]])
    q = np.full((3, 3), 1 / 3)
    assert speculative_accept(p, q, np.array([1, 0, 2]), greedy=True) == (3, 2)   # all agree + bonus
    assert speculative_accept(p, q, np.array([1, 2, 2]), greedy=True) == (1, 0)   # first disagreement
    assert speculative_accept(p, q, np.array([0, 0, 2]), greedy=True) == (0, 1)
    assert speculative_accept(p[:3], q, np.array([1, 0, 2]), greedy=True, bonus=False) == (3, None)
    # one-hot p and q: the sampling rule gives the greedy answer for every rng
    onehot = np.eye(3)[np.argmax(p, axis=1)]
    for seed in range(20):
        for x in ([1, 0, 2], [1, 2, 2]):
            got = speculative_accept(onehot, np.eye(3)[x], np.array(x), np.random.default_rng(seed))
            assert got == speculative_accept(p, q, np.array(x), greedy=True)


@pytest.mark.parametrize("bad", [
    dict(p=np.array([[0.5, np.nan], [0.5, 0.5]])),
    dict(q=np.array([[np.inf, 0.0]])),
    dict(p=np.array([[0.5, 0.6], [0.5, 0.5]])),
    dict(p=np.array([[1.5, -0.5], [0.5, 0.5]])),
    dict(p=np.full((3, 2), 0.5)),
    dict(x=np.array([2])),
    dict(x=np.array([0.0])),
    dict(q=np.array([[0.0, 1.0]])),          # draft 0 has q = 0: it was not sampled from q
    dict(rng=None),
])
def test_accept_rejects_bad_inputs(bad):
    args = dict(p=np.array([[0.5, 0.5], [0.5, 0.5]]), q=np.array([[0.5, 0.5]]), x=np.array([0]),
                rng=np.random.default_rng(0))
    args.update(bad)
    with pytest.raises(ValueError):
        speculative_accept(args["p"], args["q"], args["x"], args["rng"])


def test_failed_accept_does_not_consume_the_rng():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    with pytest.raises(ValueError):
        speculative_accept(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.0, 1.0]]), np.array([0]), rng)
    assert rng.bit_generator.state == state


def test_expected_tokens_and_speedup_match_leviathan_table():
    # Leviathan et al. §3, eq. (1) and Thm 3.8; Table 1 rows with c = 0: alpha .8, gamma 5 -> 3.69x
    assert abs(expected_tokens_per_call(0.8, 5) - (1 - 0.8 ** 6) / 0.2) < 1e-12
    assert abs(predicted_speedup(0.8, 5, 0.0) - 3.69) < 0.005
    assert abs(predicted_speedup(0.6, 2, 0.0) - 1.96) < 0.005
    assert expected_tokens_per_call(1.0, 4) == 5 and expected_tokens_per_call(1.0, 4, bonus=False) == 4
    assert abs(expected_tokens_per_call(0.5, 3, bonus=False) - 1.75) < 1e-12


def test_probabilities_temperature_and_top_k():
    z = np.array([[1.0, 2.0, 3.0, 3.0]])
    p = probabilities(z, temperature=0.5, top_k=2)
    np.testing.assert_allclose(p, [[0, 0, 0.5, 0.5]], atol=1e-15)
    with pytest.raises(ValueError):
        probabilities(np.array([[1.0, np.nan]]))


# --- the loop with transformer decoders ----------------------------------------------------------

def tiny_models(seed, V=5, max_len=16):
    rng = np.random.default_rng(seed)
    ct = tf.TransformerConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, max_len=max_len)
    cd = tf.TransformerConfig(vocab_size=V, d_model=8, n_layers=1, n_heads=2, max_len=max_len)
    pt, pd = tf.init_params(ct, rng), tf.init_params(cd, rng)
    for params, scale in ((pt, 1.0), (pd, 0.6)):             # sharper distributions than the init
        params["lm_head"] *= 60 * scale
    return ct, pt, cd, pd


def test_greedy_speculative_equals_target_greedy_over_many_prompts():
    # 60 prompts x 64 new tokens, gamma 1..5, with and without the bonus token; the reference is the
    # target's own greedy decoding (models.transformer.generate), batched over prompts of one length
    ct, pt, cd, pd = tiny_models(0, V=11, max_len=80)
    rng = np.random.default_rng(1)
    total_calls = 0
    for length in (1, 4, 7):
        prompts = rng.integers(0, 11, size=(20, length))
        want = tf.generate(pt, ct, prompts, 64, greedy=True)
        for i, prompt in enumerate(prompts):
            got, stats = speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pd, cd), prompt, 64,
                                            gamma=1 + i % 5, greedy=True, bonus=i % 3 != 0)
            np.testing.assert_array_equal(got, want[i])
            assert stats.emitted == 64 and stats.tokens_per_call >= 1.0
            total_calls += stats.target_calls
    assert total_calls < 60 * 64                          # fewer target calls than plain decoding


def test_drafter_equal_to_target_accepts_everything():
    ct, pt, _, _ = tiny_models(2)
    prompt = np.array([1, 2, 3])
    _, stats = speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pt, ct), prompt, 12, gamma=3,
                                  rng=np.random.default_rng(0))
    assert stats.accepted == stats.drafted and stats.acceptance_rate == 1.0
    assert stats.target_calls == 3                          # 12 = 3 steps x (3 drafts + bonus)


def exact_target_law(pt, ct, prompt, n, V):
    """P(next n tokens = s) for every s in V^n, from the target's own conditionals."""
    probs = np.ones(1)
    seqs = [()]
    for _ in range(n):
        new_p, new_s = [], []
        for s, ps in zip(seqs, probs):
            logits, _ = tf.forward(pt, ct, np.array([list(prompt) + list(s)]))
            row = probabilities(logits[0, -1])
            for v in range(V):
                new_p.append(ps * row[v])
                new_s.append(s + (v,))
        probs, seqs = np.array(new_p), new_s
    return probs


def test_sampled_speculative_decoding_matches_the_target_law_of_the_first_tokens():
    V, n = 4, 3
    ct, pt, cd, pd = tiny_models(3, V=V)
    for params in (pt, pd):
        params["lm_head"] /= 20                               # spread-out distributions
    prompt = np.array([0, 2])
    want = exact_target_law(pt, ct, prompt, n, V)             # (V^n,)
    rng = np.random.default_rng(4)
    counts = np.zeros(V ** n, dtype=np.int64)
    for _ in range(2500):
        out, _ = speculative_decode(TransformerDecoder(pt, ct), TransformerDecoder(pd, cd), prompt, n, gamma=2,
                                    rng=rng)
        counts[np.ravel_multi_index(tuple(out[2:]), (V,) * n)] += 1
    assert pearson(counts, want)[1] > ALPHA
    # the drafter's own law is far from the target's (the test would see a sampler that ignored p)
    dlaw = exact_target_law(pd, cd, prompt, n, V)
    assert pearson(np.round(dlaw * 2500).astype(np.int64), want)[1] < ALPHA


def test_decode_validates_before_touching_the_caches():
    ct, pt, cd, pd = tiny_models(5, max_len=8)
    target, drafter = TransformerDecoder(pt, ct), TransformerDecoder(pd, cd)
    with pytest.raises(ValueError):
        speculative_decode(target, drafter, np.array([1, 2, 3]), 7, gamma=2, greedy=True)    # 3 + 7 - 1 > 8
    with pytest.raises(ValueError):
        speculative_decode(target, drafter, np.array([1, 9]), 2, gamma=2, greedy=True)       # token >= V
    with pytest.raises(ValueError):
        speculative_decode(target, drafter, np.array([1, 2]), 2, gamma=0, greedy=True)
    with pytest.raises(ValueError):
        speculative_decode(target, drafter, np.array([1, 2]), 2, gamma=2)                    # no rng
    other = tf.TransformerConfig(vocab_size=7, d_model=8, n_layers=1, n_heads=2, max_len=8)
    with pytest.raises(ValueError, match="drafter"):                                            # vocabularies differ
        speculative_decode(target, TransformerDecoder(tf.init_params(other, np.random.default_rng(0)), other),
                           np.array([1, 2]), 2, gamma=2, greedy=True)
    assert target.length == 0 and drafter.length == 0
    with pytest.raises(ValueError):
        target.extend(np.arange(9) % 5)
    assert target.length == 0
