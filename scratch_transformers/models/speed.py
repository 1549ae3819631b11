"""Decoders for speculative decoding over the baseline transformer's KV cache, and SPEED.

``TransformerDecoder`` wraps ``models.transformer.forward(..., kv_cache=...)`` in the decoder interface of
``tandem.speculative`` (length, capacity, extend, rollback): a rollback only moves the caches' length
back, the stale rows are overwritten by the next extend.
"""

from __future__ import annotations

import numpy as np

from ..core import validate
from ..core.layers import embedding_forward, layer_norm_forward, linear_forward
from . import transformer as tf
from .blocks import block_forward


def check_params(params, config) -> np.dtype:
    """Validate a ``models.transformer`` parameter dict against its config; returns the dtype."""
    if not isinstance(config, tf.TransformerConfig):
        validate.fail("config", "a TransformerConfig", type(config).__name__)
    if not isinstance(params, dict) or "tok_emb" not in params:
        validate.fail("params", "a dict with the keys of param_shapes(config)", type(params).__name__)
    dtype = validate.float_array(params["tok_emb"], "params['tok_emb']").dtype
    for name, shape in tf.param_shapes(config).items():
        x = params.get(name)
        if not isinstance(x, np.ndarray) or x.shape != shape or x.dtype != dtype:
            validate.fail(f"params[{name!r}]", f"an array of shape {shape} and dtype {dtype}",
                          "none" if x is None else getattr(x, "shape", type(x).__name__))
    return dtype


class TransformerDecoder:
    """One sequence decoded by a ``models.transformer`` LM with its KV cache (batch 1)."""

    def __init__(self, params, config):
        self.params, self.config = params, config
        self.dtype = check_params(params, config)
        self.cache = tf.new_kv_cache(config, 1, self.dtype)
        self.calls = 0

    @property
    def length(self) -> int:
        return self.cache[0].length

    @property
    def capacity(self) -> int:
        return self.config.max_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _check_extend(self, tokens, n_out):
        tokens = validate.int_array(tokens, "tokens", ndim=1, low=0, high=self.config.vocab_size)
        if not 1 <= tokens.shape[0] <= self.capacity - self.length:
            validate.fail("tokens", f"1 .. {self.capacity - self.length} tokens (cache room)", tokens.shape[0])
        n_out = validate.integer(n_out, "n_out", low=1, high=tokens.shape[0])
        return tokens, n_out

    def extend(self, tokens, n_out=1):
        """Run tokens (t,) after the cached prefix; return the logits (n_out, V) of the last n_out."""
        tokens, n_out = self._check_extend(tokens, n_out)
        logits, _ = tf.forward(self.params, self.config, tokens[None], kv_cache=self.cache)   # (1, t, V)
        self.calls += 1
        return logits[0, -n_out:]

    def rollback(self, length):
        length = validate.integer(length, "length", low=0, high=self.length)
        for layer in self.cache:
            layer.length = length


# --- M_L with its representations (the Tandem primary model) ---------------------------------------

def large_forward(params, config, tokens, layers, *, kv_cache=None):
    """``models.transformer.forward`` in inference mode, also returning M_L's representations
    x^(l) (the residual stream after block l; x^(0) = the embeddings) for every l in ``layers``.

    tokens: (B, T) int; kv_cache as in transformer.forward. Same ops in the same order as
    transformer.forward (the one block code, models.blocks.block_forward), so the logits are
    bit-identical to it (test). Returns (logits (B, T, V),
    {l: (B, T, D)})."""
    dtype = check_params(params, config)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    layers = tuple(layers)
    if not all(isinstance(l, (int, np.integer)) and 0 <= l <= config.n_layers for l in layers):
        validate.fail("layers", f"M_L layer indices in [0, {config.n_layers}]", layers)
    B, T = tokens.shape
    offset = 0 if kv_cache is None else kv_cache[0].length
    if kv_cache is not None and (len(kv_cache) != config.n_layers or offset + T > kv_cache[0].capacity):
        validate.fail("kv_cache", f"{config.n_layers} KVCaches with room for {T} more positions", offset)
    if T < 1 or (config.positions == "learned" and offset + T > config.max_len):
        validate.fail("tokens", f"1 .. {config.max_len - offset} positions", T)
    pos = tf.position_inputs(config, T, offset)
    h, _ = embedding_forward(tokens, params["tok_emb"])                                  # (B, T, D)
    if config.positions == "learned":
        h = h + params["pos_emb"][offset:offset + T]
    elif pos.additive is not None:
        h = h + pos.additive.astype(dtype)
    states = {0: h} if 0 in layers else {}
    for i in range(config.n_layers):
        h, _ = block_forward(h, params, f"blocks.{i}.", n_heads=config.n_heads, core=config.attention, causal=True,
                             ln_eps=config.ln_eps, p_drop=0.0, rng=None, training=False, attn_bias=pos.attn_bias,
                             rope=pos.rope, kv_cache=None if kv_cache is None else kv_cache[i])   # (B, T, D)
        if i + 1 in layers:
            states[i + 1] = h
    hf, _ = layer_norm_forward(h, params["ln_f.weight"], params["ln_f.bias"], eps=config.ln_eps)
    head = params["tok_emb"].T if config.tie_embeddings else params["lm_head"]
    logits, _ = linear_forward(hf, head)                                                  # (B, T, V)
    return logits, states


class LargeDecoder(TransformerDecoder):
    """M_L as the SPEED verifier: a TransformerDecoder that also keeps, by position, its representations
    x^(l) of every cached token for the layers Tandem's M_S reads (rolled back with the KV cache)."""

    def __init__(self, params, config, layers):
        super().__init__(params, config)
        self.layers = tuple(sorted(set(layers)))
        large_forward(params, config, np.zeros((1, 1), dtype=np.int64), self.layers)   # validates layers
        self.states = {l: np.zeros((1, config.max_len, config.d_model), dtype=self.dtype) for l in self.layers}

    def extend(self, tokens, n_out=1):
        tokens, n_out = self._check_extend(tokens, n_out)
        s = self.length
        logits, states = large_forward(self.params, self.config, tokens[None], self.layers, kv_cache=self.cache)
        for l, x in states.items():
            self.states[l][:, s:s + tokens.shape[0]] = x
        self.calls += 1
        return logits[0, -n_out:]


class TandemDrafter:
    """Tandem's M_S as the drafter of SPEED (arXiv 2402.08644 §3.1): before each draft it takes, from the
    verifier ``large``, M_L's representations of every token M_L has processed (the verification pass of
    the previous block supplies them: no extra M_L call), and drafts with context c = their number, i.e.
    attending to M_L rows < c and to its own rows from c on (its block starts at the first token M_L has
    not processed; own rows before c are never needed, so those tokens are skipped)."""

    def __init__(self, params, config, large: LargeDecoder):
        from ..tandem import model as tandem_model

        self.tm = tandem_model
        self.params, self.config, self.large = params, config, large
        dtype = tandem_model.check_params(params, config)
        if not isinstance(large, LargeDecoder) or not set(config.ml_layers) <= set(large.layers):
            validate.fail("large", f"a LargeDecoder keeping M_L layers {config.ml_layers}", type(large).__name__)
        if large.config.d_model != config.d_large or large.config.vocab_size != config.vocab_size:
            validate.fail("large", f"an M_L of width d_large={config.d_large} and vocab {config.vocab_size}",
                          (large.config.d_model, large.config.vocab_size))
        self.state = tandem_model.new_state(config, 1, dtype)
        self.calls = 0

    @property
    def length(self) -> int:
        return self.state.own_length

    @property
    def capacity(self) -> int:
        return min(self.config.max_len, self.large.capacity)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def extend(self, tokens, n_out=1):
        tokens = validate.int_array(tokens, "tokens", ndim=1, low=0, high=self.config.vocab_size)
        n_out = validate.integer(n_out, "n_out", low=1, high=1)
        p0, c = self.length, self.large.length
        if tokens.shape[0] < 1 or c > p0 + tokens.shape[0] - 1 or p0 + tokens.shape[0] > self.capacity:
            validate.fail("tokens", f"tokens reaching past M_L's {c} processed tokens, within capacity",
                          tokens.shape[0])
        if self.state.ml_length > c:
            self.state.rollback(ml_length=c)                  # M_L rolled back: its rejected rows are gone
        if c > self.state.ml_length:
            s = self.state.ml_length
            self.tm.add_ml_rows(self.params, self.config, self.state,
                                {l: self.large.states[l][:, s:c] for l in self.config.ml_layers})
        start = max(p0, c)                                    # own rows before c: never used, skipped
        logits = self.tm.decode(self.params, self.config, self.state, tokens[None, start - p0:], contexts=c,
                                position=start)
        self.calls += 1
        return logits[0, -1:]

    def rollback(self, length):
        self.state.rollback(own_length=min(validate.integer(length, "length", low=0), self.state.own_length))


MODES = ("free_token", "representation_only")


def speed_decode(large_params, large_config, tandem_params, tandem_config, prompt, n_new, *, gamma,
                 mode="free_token", rng=None, greedy=False, temperature=1.0, top_k=None, stop_drafting=None):
    """SPEED with Tandem (arXiv 2402.08644 §3.1): Tandem's M_S drafts gamma tokens, M_L verifies them in one
    pass (Leviathan et al. Algorithm 1, ``tandem.speculative``), and that pass is also the one that gives
    M_S the M_L representations of the accepted tokens.

    M_L first processes the prompt except its last token (Fig. 4). mode="free_token" (Fig. 2,
    "Representation Generation + Token Prediction"): each M_L call processes the last emitted token and the
    gamma drafts and also emits its own next token (the bonus when all drafts pass). mode=
    "representation_only" (Fig. 4): M_L processes only the gamma tokens M_S consumed (the last emitted token
    and gamma - 1 drafts), so it yields representations and verdicts but no extra token.
    stop_drafting: the adaptive block length (``tandem.router.make_stop_rule``; gamma is then the maximum).
    Returns (tokens (T0 + n_new,), SpeculativeStats) with target_calls counting the prefill call too.
    """
    greedy = validate.flag(greedy, "greedy")
    from ..tandem.speculative import speculative_decode

    validate.option(mode, "mode", MODES)
    large = LargeDecoder(large_params, large_config, tandem_config.ml_layers)
    drafter = TandemDrafter(tandem_params, tandem_config, large)
    prompt = validate.int_array(prompt, "prompt", ndim=1, low=0, high=large_config.vocab_size)
    if prompt.shape[0] < 1:
        validate.fail("prompt", "at least one token", prompt.shape)
    n_new = validate.integer(n_new, "n_new", low=0)
    if prompt.shape[0] + n_new - 1 > drafter.capacity:
        validate.fail("n_new", f"len(prompt) + n_new - 1 <= {drafter.capacity}", prompt.shape[0] + n_new - 1)
    if prompt.shape[0] > 1:
        large.extend(prompt[:-1], 1)                                      # M_L: the prompt but its last token
    tokens, stats = speculative_decode(large, drafter, prompt, n_new, gamma=gamma, rng=rng, greedy=greedy,
                                       temperature=temperature, top_k=top_k, bonus=mode == "free_token",
                                       stop_drafting=stop_drafting)
    return tokens, stats._replace(target_calls=stats.target_calls + (prompt.shape[0] > 1))
