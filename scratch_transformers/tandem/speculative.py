"""Speculative decoding (Leviathan, Kalman & Matias 2023, arXiv 2211.17192, Algorithm 1) with any drafter.

Glossary (Leviathan's letters; Chen et al. 2302.01318 swap p and q):

    p      (gamma + 1, V)  target probabilities: row i is M_p(x_t | prefix, x_1..x_i), i = 0..gamma
    q      (gamma, V)      draft probabilities: row i is M_q(x_t | prefix, x_1..x_i); x_{i+1} ~ q_i
    gamma                  tokens drafted per target call
    u_i                    uniform in [0, 1): draft i is kept while u_i < p_i(x_i) / q_i(x_i)   (strict)
    n                      accepted drafts, 0..gamma; then one more token from the residual
                           norm(max(0, p_n - q_n)) (rejection) or from p_gamma (the bonus token)

:func:`speculative_accept` is one step of Algorithm 1 after the two models have run;
:func:`speculative_decode` is the loop around it with two decoders that keep KV caches.

A *decoder* is any object with

    length: int                        tokens held in its cache (positions 0 .. length-1)
    capacity: int                      the most tokens its cache can hold
    extend(tokens, n_out) -> logits    run the tokens (t,) at positions length .. length+t-1, append them
                                       to the cache, return the logits of the last n_out of them (n_out, V)
    rollback(length)                   forget every position >= length
    vocab_size: int                    (optional) checked equal for target and drafter before anything runs

(``models.speed.TransformerDecoder`` wraps ``models.transformer``; ``models.speed.TandemDrafter`` is
the Tandem M_S.) Both caches hold every emitted token except the last between steps; the target
verifies ``[last emitted, x_1..x_gamma]`` in ONE call and both caches roll back on rejection.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate


def probabilities(logits, *, temperature=1.0, top_k=None) -> np.ndarray:
    """softmax(logits / temperature) restricted to the top_k largest logits (ties kept), in float64.

    The one "standardisation" both models go through before the acceptance test (Leviathan §2.2:
    temperature and top-k sampling are sampling from an adjusted distribution; exactness holds with
    respect to the adjusted target). logits: (..., V), finite. Returns (..., V) rows summing to 1.
    """
    logits = validate.float_array(logits, "logits", min_ndim=1, finite=True)
    temperature = validate.positive(temperature, "temperature")
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        top_k = validate.integer(top_k, "top_k", low=1, high=z.shape[-1])
        kth = np.sort(z, axis=-1)[..., z.shape[-1] - top_k][..., None]        # (..., 1) k-th largest
        z = np.where(z >= kth, z, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _check_rows(x, name, n_rows, V, greedy):
    x = validate.float_array(x, name, ndim=2, finite=True)
    if x.shape[0] != n_rows or (V is not None and x.shape[1] != V):
        validate.fail(name, f"shape ({n_rows}, {'V' if V is None else V})", x.shape)
    if not greedy:
        if np.any(x < 0):
            validate.fail(name, "probabilities >= 0", f"min {x.min()}")
        sums = x.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-6):
            validate.fail(name, "rows summing to 1 (within 1e-6)", f"sums {sums}")
    return x


def sample_categorical(weights, u) -> int:
    """Inverse-CDF draw from non-negative ``weights`` (V,) (normalised here) with ``u`` in [0, 1).

    Returns the first index whose cumulative weight exceeds u * total, so an index of weight 0 is never
    returned (also when rounding makes u * total reach the total: then the last positive index).
    """
    cdf = np.cumsum(weights)                                                  # (V,)
    idx = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(idx, int(np.flatnonzero(weights > 0)[-1]))


def speculative_accept(p, q, draft_tokens, rng=None, *, greedy=False, bonus=True):
    """Accept a prefix of the drafts and choose the next token (Leviathan et al., Algorithm 1).

    p: (gamma + 1, V) target probabilities (row i conditions on the prefix and drafts x_1..x_i);
    q: (gamma, V) the draft probabilities the drafts were sampled from; draft_tokens: (gamma,) int.
    rng: np.random.Generator (not used when greedy).

    For i = 1..gamma (u_i ~ U[0, 1)): keep x_i while u_i < p_{i-1}(x_i) / q_{i-1}(x_i) (strict: a token
    with p = 0 is never kept, even for u = 0). At the first rejection n, the next token is drawn from
    the residual p' = norm(max(0, p_n - q_n)) (§2.3); if that residual is all zero (p_n = q_n up to
    rounding, where a rejection has probability ~0) it falls back to p_n. If all gamma are kept, the
    bonus token is drawn from p_gamma. Appendix A.1 (derivations/tandem.md) proves the emitted tokens
    are distributed exactly as the target's.

    greedy=True is the argmax special case (p, q one-hot at their argmax): the drafts are kept while
    they equal argmax p_i, the next token is argmax p_n; p may then hold any scores (e.g. logits) and
    q is only shape-checked. bonus=False (Tandem's "representation generation only" mode, where the
    target saw only gamma - 1 drafts): p is (gamma, V) and when all gamma drafts are kept the next
    token is None.

    Returns (n_accepted, next_token). Non-finite p or q raise ValueError (the output is discrete).
    """
    bonus = validate.flag(bonus, "bonus")
    greedy = validate.flag(greedy, "greedy")
    draft_tokens = validate.int_array(draft_tokens, "draft_tokens", ndim=1)
    gamma = draft_tokens.shape[0]
    p = _check_rows(p, "p", gamma + 1 if bonus else gamma, None, greedy)
    V = p.shape[1]
    q = _check_rows(q, "q", gamma, V, greedy)
    validate.int_array(draft_tokens, "draft_tokens", low=0, high=V)
    rows = np.arange(gamma)
    if greedy:
        target = np.argmax(p, axis=1)                                          # (gamma (+1),)
        reject = np.flatnonzero(target[:gamma] != draft_tokens)
        n = int(reject[0]) if reject.size else gamma
        return n, (int(target[n]) if n < p.shape[0] else None)
    rng = validate.rng(rng)
    qx = q[rows, draft_tokens]                                                 # (gamma,) q_i(x_i)
    if np.any(qx <= 0):
        validate.fail("draft_tokens", "tokens with q > 0 (drafts are sampled from q)",
                      f"q = 0 at draft {int(np.flatnonzero(qx <= 0)[0])}")
    u = rng.random(gamma)                                                      # r_i ~ U[0, 1)
    ratio = p[rows, draft_tokens] / qx                                         # p_i(x_i) / q_i(x_i)
    reject = np.flatnonzero(~(u < ratio))                                      # strict comparison
    n = int(reject[0]) if reject.size else gamma
    if n < gamma:                                                              # rejection at draft n + 1
        residual = np.maximum(0.0, p[n] - q[n])                                # max(0, p_n - q_n)
        weights = residual if residual.sum() > 0 else p[n]                     # guard: residual all zero
        return n, sample_categorical(weights, rng.random())
    if not bonus:
        return n, None
    return n, sample_categorical(p[gamma], rng.random())                      # bonus token ~ p_gamma


def expected_tokens_per_call(alpha, gamma, *, bonus=True) -> float:
    """E[tokens per target call] = (1 - alpha^(gamma+1)) / (1 - alpha)   (Leviathan eq. 1; i.i.d. acceptances).

    bonus=False (no free token when all drafts pass): (1 - alpha^gamma) / (1 - alpha). alpha = 1 gives
    gamma + 1 (gamma)."""
    bonus = validate.flag(bonus, "bonus")
    alpha = validate.real(alpha, "alpha", low=0.0, high=1.0)
    gamma = validate.integer(gamma, "gamma", low=0)
    k = gamma + 1 if bonus else gamma
    return float(k) if alpha == 1.0 else float((1.0 - alpha ** k) / (1.0 - alpha))


def predicted_speedup(alpha, gamma, cost_ratio, *, bonus=True) -> float:
    """Walltime improvement (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))   (Leviathan Thm 3.8).

    cost_ratio c = time of one drafter step / time of one target call."""
    bonus = validate.flag(bonus, "bonus")
    c = validate.real(cost_ratio, "cost_ratio", low=0.0)
    return expected_tokens_per_call(alpha, gamma, bonus=bonus) / (validate.integer(gamma, "gamma", low=0) * c + 1.0)


class SpeculativeStats(NamedTuple):
    target_calls: int       # target forward calls (one per step)
    draft_calls: int        # drafter forward calls (gamma per step)
    drafted: int            # draft tokens proposed
    tested: int             # drafts that met the acceptance test (accepted + first rejections)
    accepted: int           # drafts kept
    emitted: int            # new tokens emitted

    @property
    def acceptance_rate(self) -> float:
        """Per-test acceptance frequency accepted / tested: the estimate of Leviathan's alpha."""
        return self.accepted / max(self.tested, 1)

    @property
    def tokens_per_call(self) -> float:
        return self.emitted / max(self.target_calls, 1)


def _check_decoder(obj, name):
    for attr in ("length", "capacity", "extend", "rollback"):
        if not hasattr(obj, attr):
            validate.fail(name, "a decoder with length, capacity, extend(tokens, n_out), rollback(length)",
                          f"{type(obj).__name__} without {attr!r}")
    return obj


def speculative_decode(target, drafter, prompt, n_new, *, gamma, rng=None, greedy=False, temperature=1.0,
                       top_k=None, bonus=True, stop_drafting=None):
    """Continue ``prompt`` by ``n_new`` tokens with speculative decoding (Leviathan et al., Algorithm 1).

    target, drafter: decoders (module docstring) over the same vocabulary, with empty caches or caches
    holding a prefix of ``prompt``. prompt: (T0,) int, T0 >= 1 (one sequence). gamma: drafts per step
    (the last steps draft fewer so that no token past n_new is computed). greedy: argmax drafts and the
    greedy rule (output identical to greedy decoding of the target); else both models' logits go through
    :func:`probabilities` (temperature, top_k) and rng drives every draw. bonus: see speculative_accept
    (False: the target sees gamma - 1 drafts per call). stop_drafting: None or a callable(drafter logits (V,))
    -> bool called after each draft; True ends the block early (adaptive block length, gamma the maximum;
    ``tandem.router.make_stop_rule``). It sees only the drafter's output, so the output law is unchanged.

    Returns (tokens (T0 + n_new,) int64, SpeculativeStats).
    """
    bonus = validate.flag(bonus, "bonus")
    greedy = validate.flag(greedy, "greedy")
    if stop_drafting is not None and not callable(stop_drafting):
        validate.fail("stop_drafting", "None or a callable(logits) -> bool", type(stop_drafting).__name__)
    target = _check_decoder(target, "target")
    drafter = _check_decoder(drafter, "drafter")
    vocab = [getattr(d, "vocab_size", None) for d in (target, drafter)]
    if None not in vocab and vocab[0] != vocab[1]:
        validate.fail("drafter", f"the target's vocabulary of {vocab[0]} tokens", f"{vocab[1]} tokens")
    prompt = validate.int_array(prompt, "prompt", ndim=1, low=0, high=vocab[0])
    if prompt.shape[0] < 1:
        validate.fail("prompt", "at least one token", prompt.shape)
    n_new = validate.integer(n_new, "n_new", low=0)
    gamma = validate.integer(gamma, "gamma", low=1)
    if not greedy:
        rng = validate.rng(rng)
    need = prompt.shape[0] + n_new - 1
    for name, dec in (("target", target), ("drafter", drafter)):
        if need > dec.capacity:
            validate.fail(name, f"capacity >= len(prompt) + n_new - 1 = {need}", dec.capacity)
        if dec.length > prompt.shape[0] - 1:
            validate.fail(name, f"a cache of at most len(prompt) - 1 = {prompt.shape[0] - 1} tokens", dec.length)
    tokens = [int(t) for t in prompt]
    calls = drafts_n = tested = accepted = 0
    while len(tokens) < prompt.shape[0] + n_new:
        remaining = prompt.shape[0] + n_new - len(tokens)
        g = min(gamma, remaining - 1) if bonus else min(gamma, remaining)      # never compute past n_new
        drafts, q_rows = [], []
        feed = tokens[drafter.length:]
        for _ in range(g):                                                     # drafter: gamma steps
            logits = drafter.extend(np.asarray(feed, dtype=np.int64), 1)[0]   # (V,)
            if greedy:
                x = int(np.argmax(logits))
                q_rows.append(logits)
            else:
                q = probabilities(logits, temperature=temperature, top_k=top_k)
                x = sample_categorical(q, rng.random())
                q_rows.append(q)
            drafts.append(x)
            feed = [x]
            if stop_drafting is not None and len(drafts) < g and stop_drafting(logits):
                break                                                          # adaptive block length
        g = len(drafts)
        verify = drafts if bonus else drafts[:g - 1]
        t_feed = tokens[target.length:] + verify
        logits = target.extend(np.asarray(t_feed, dtype=np.int64), len(verify) + 1)   # (g (+1), V) in one call
        p = logits if greedy else probabilities(logits, temperature=temperature, top_k=top_k)
        q = np.asarray(q_rows) if q_rows else np.zeros((0, logits.shape[-1]))
        n, nxt = speculative_accept(p, q, np.asarray(drafts, dtype=np.int64), rng, greedy=greedy, bonus=bonus)
        calls += 1
        drafts_n += g
        accepted += n
        tested += n + (1 if n < g else 0)
        tokens += drafts[:n] + ([] if nxt is None else [nxt])
        keep = len(tokens) - 1                                                 # caches: all but the last token
        target.rollback(min(target.length, keep))
        drafter.rollback(min(drafter.length, keep))
    stats = SpeculativeStats(target_calls=calls, draft_calls=drafts_n, drafted=drafts_n, tested=tested,
                             accepted=accepted, emitted=n_new)
    return np.asarray(tokens, dtype=np.int64), stats
