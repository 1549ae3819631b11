"""A small Mamba language model (reference code mixer_seq_simple.py; paper Sec. 3.4, Fig. 3).

    h_0 = E[tokens]                                       embedding (V, d_model), N(0, 0.02^2)
    h_l = h_{l-1} + MambaBlock_l(RMSNorm_l(h_{l-1}))      n_layers residual blocks ("Add -> Norm -> Mixer")
    logits = RMSNorm_f(h_L) E^T                           final norm, head tied to the embedding (or a separate W)

No positional encoding and no MLP blocks (pure Mamba). ``generate`` runs in recurrent mode: the prompt is
prefilled with the parallel scan (which returns each block's last SSM state and its last K conv inputs), then
every new token costs one ``mamba_block_step`` per layer, constant in the length so far (no KV cache).
Parameter names: "embedding", "blocks.{i}.norm.w", "blocks.{i}.mixer.*" (see block.py), "norm_f.w", "lm_head"
(only when tie_embeddings=False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core import validate
from ..core.layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward, embedding_forward,
                           linear_backward, linear_forward, project_backward, project_forward, rms_norm_backward,
                           rms_norm_forward)
from .block import (init_mamba_block, mamba_block_backward, mamba_block_final_state,
                    mamba_block_forward, mamba_block_step, new_mamba_block_state)


@dataclass(frozen=True)
class MambaConfig:
    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None        # default ceil(d_model / 16)
    selective: bool = True            # False: the LTI ablation (time-invariant dt, B, C)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init: str = "log_uniform"      # "uniform": the paper's Sec. 3.6 text; see init_mamba_block

    def __post_init__(self):
        validate.positive_int(self.vocab_size, "vocab_size")
        validate.positive_int(self.d_model, "d_model")
        validate.positive_int(self.n_layers, "n_layers")
        validate.positive_int(self.d_state, "d_state")
        validate.positive_int(self.expand, "expand")
        validate.positive_int(self.d_conv, "d_conv")
        if self.dt_rank is not None:
            validate.positive_int(self.dt_rank, "dt_rank")
        validate.positive(self.norm_eps, "norm_eps")
        validate.option(self.dt_init, "dt_init", ("log_uniform", "uniform"))


def init_params(config, rng, *, dtype=np.float64):
    """Parameters of the LM (reference-code initialisation, see init_mamba_block)."""
    if not isinstance(config, MambaConfig):
        validate.fail("config", "a MambaConfig", type(config).__name__)
    rng = validate.rng(rng)
    c = config
    params = {"embedding": (rng.standard_normal((c.vocab_size, c.d_model)) * 0.02).astype(dtype)}
    for i in range(c.n_layers):
        params[f"blocks.{i}.norm.w"] = np.ones(c.d_model, dtype)
        params.update(init_mamba_block(rng, c.d_model, d_state=c.d_state, expand=c.expand, d_conv=c.d_conv,
                                       dt_rank=c.dt_rank, dt_min=c.dt_min, dt_max=c.dt_max,
                                       dt_init=c.dt_init, selective=c.selective, n_layers=c.n_layers, prefix=f"blocks.{i}.mixer",
                                       dtype=dtype))
    params["norm_f.w"] = np.ones(c.d_model, dtype)
    if not c.tie_embeddings:
        params["lm_head"] = (rng.uniform(-1, 1, (c.d_model, c.vocab_size)) / math.sqrt(c.d_model)).astype(dtype)
    return params


def count_params(params) -> int:
    return int(sum(v.size for v in params.values()))


def _head(params, config):
    return params["embedding"].T if config.tie_embeddings else params["lm_head"]          # (d_model, V)


class MambaLMCache(NamedTuple):
    tie: bool
    emb_cache: tuple
    norm_caches: list        # per block: RMSNorm cache
    block_caches: list       # per block: MambaBlockCache
    normf_cache: tuple
    head_cache: tuple


def forward(params, config, tokens):
    """tokens: (b, L) int in [0, V). Returns logits (b, L, V) and a MambaLMCache."""
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    c = config
    h, emb_cache = embedding_forward(tokens, params["embedding"])                      # (b, L, d_model)
    norm_caches, block_caches = [], []
    for i in range(c.n_layers):
        a, nc = rms_norm_forward(h, params[f"blocks.{i}.norm.w"], eps=c.norm_eps)      # (b, L, d_model)
        y, bc = mamba_block_forward(a, params, prefix=f"blocks.{i}.mixer")             # (b, L, d_model)
        h = h + y                                                                      # residual
        norm_caches.append(nc)
        block_caches.append(bc)
    hf, normf_cache = rms_norm_forward(h, params["norm_f.w"], eps=c.norm_eps)
    if c.tie_embeddings:
        logits, head_cache = linear_forward(hf, params["embedding"].T)                 # (b, L, V)
    else:
        logits, head_cache = project_forward(hf, params, "lm_head")                    # (b, L, V)
    return logits, MambaLMCache(c.tie_embeddings, emb_cache, norm_caches, block_caches, normf_cache, head_cache)


def backward(dlogits, cache):
    """Backward of forward: dlogits (b, L, V) -> grads dict (same keys as params)."""
    if not isinstance(cache, MambaLMCache):
        validate.fail("cache", "the MambaLMCache of forward", type(cache).__name__)
    grads = {}
    if cache.tie:
        dhf, dW, _ = linear_backward(dlogits, cache.head_cache)                        # (b, L, d_model)
    else:
        dhf, head_grads = project_backward(dlogits, cache.head_cache)                  # {"lm_head": dW}
    dh, grads["norm_f.w"] = rms_norm_backward(dhf, cache.normf_cache)
    for i in range(len(cache.block_caches) - 1, -1, -1):
        da, bgrads = mamba_block_backward(dh, cache.block_caches[i])                   # through the mixer
        grads.update(bgrads)
        dnorm, grads[f"blocks.{i}.norm.w"] = rms_norm_backward(da, cache.norm_caches[i])
        dh = dh + dnorm                                                                # residual: both paths
    demb = embedding_backward(dh, cache.emb_cache)
    if cache.tie:
        grads["embedding"] = demb + dW.T                                               # tied: sum both uses
    else:
        grads["embedding"] = demb
        grads.update(head_grads)
    return grads


def loss_and_grads(params, config, inputs, targets):
    """Mean cross-entropy over targets != -100 and its gradients."""
    logits, cache = forward(params, config, inputs)
    loss, ce_cache = cross_entropy_forward(logits, targets)
    return loss, backward(cross_entropy_backward(1.0, ce_cache), cache)


# ------------------------------------------------------------------------------------------------
# recurrent inference


def new_state(params, config, batch, *, dtype=None):
    """Zero recurrent state for every layer (conv (b, D, K) and SSM (b, D, N))."""
    dtype = params["embedding"].dtype if dtype is None else dtype
    return [new_mamba_block_state(params, batch, prefix=f"blocks.{i}.mixer", dtype=dtype)
            for i in range(config.n_layers)]


def step(params, config, token, state):
    """One token per sequence, token: (b,) int; state: list of MambaBlockState. Returns (logits (b, V), state)."""
    token = validate.int_array(token, "token", ndim=1, low=0, high=config.vocab_size)
    if not isinstance(state, list) or len(state) != config.n_layers:
        validate.fail("state", f"a list of {config.n_layers} MambaBlockState", type(state).__name__)
    c = config
    h = params["embedding"][token]                                                     # (b, d_model)
    new = []
    for i in range(c.n_layers):
        a, _ = rms_norm_forward(h, params[f"blocks.{i}.norm.w"], eps=c.norm_eps)
        y, s = mamba_block_step(a, params, state[i], prefix=f"blocks.{i}.mixer")
        h = h + y
        new.append(s)
    hf, _ = rms_norm_forward(h, params["norm_f.w"], eps=c.norm_eps)
    return hf @ _head(params, c), new


def prefill(params, config, prompt):
    """Run the parallel forward over a prompt (b, T0); return (logits (b, T0, V), recurrent state after it)."""
    logits, cache = forward(params, config, prompt)
    return logits, [mamba_block_final_state(bc) for bc in cache.block_caches]


def generate(params, config, prompt, n_new, *, rng, temperature=1.0, top_k=None, greedy=False):
    """Autoregressive sampling in recurrent mode. prompt: (b, T0) int, T0 >= 1. Returns (b, T0 + n_new)."""
    rng = validate.rng(rng)
    prompt = validate.int_array(prompt, "prompt", ndim=2, low=0, high=config.vocab_size)
    if prompt.shape[1] < 1:
        validate.fail("prompt", "at least one token per sequence", prompt.shape)
    n_new = validate.integer(n_new, "n_new", low=0)
    if not validate.flag(greedy, "greedy"):
        temperature = validate.positive(temperature, "temperature")
    if top_k is not None:
        top_k = validate.integer(top_k, "top_k", low=1, high=config.vocab_size)
    logits, state = prefill(params, config, prompt)
    last = logits[:, -1].astype(np.float64)                                            # (b, V)
    out = [prompt]
    for _ in range(n_new):
        validate.sampling_logits(last, "logits")     # NaN/inf logits are refused, never token 0
        if greedy:
            nxt = np.argmax(last, axis=-1)
        else:
            z = last / temperature
            if top_k is not None:
                kth = np.sort(z, axis=-1)[:, -top_k][:, None]
                z = np.where(z < kth, -np.inf, z)
            p = np.exp(z - z.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            nxt = np.array([rng.choice(config.vocab_size, p=row) for row in p])
        nxt = nxt.astype(np.int64)
        out.append(nxt[:, None])
        logits_t, state = step(params, config, nxt, state)
        last = logits_t.astype(np.float64)
    return np.concatenate(out, axis=1)
