"""The MatMul-free LM (Zhu et al., arXiv 2406.02528, §3.3, Fig. 2): embedding -> K blocks of

    x <- x + MLGRU(RMSNorm(x))          token mixer (mlgru.py)
    x <- x + GLU(RMSNorm(x))            channel mixer (glu.py)

-> RMSNorm -> ternary BitLinear head (as the reference ``HGRNBitForCausalLM``: the embedding is full precision, the
``lm_head`` is a BitLinear). No positional encoding: the recurrence orders the tokens. Every BitLinear carries its own
RMSNorm, so block inputs are normalised twice, as in the reference code.

Training: ``forward`` / ``backward`` / ``loss_and_grads`` over (B, T) tokens, straight-through through every
BitLinear (``quantize=True``) or the float model (``quantize=False``). Inference: ``generate`` runs one token at a
time through ``mlgru_step``; with ``packed`` (from ``pack_model``) every ternary product is the add/subtract
kernel of ternary_kernel.py on 2-bit or base-3 weights (or, for comparison, a float GEMV on the dequantised
weights, fmt "dense"), and its logits equal the training forward's to float rounding (``step_logits``).

Official-code variant (config.variant="official", lower_bound=True): HGRN's per-layer forget-gate lower bounds
(arXiv 2311.04823, as in the reference code): P = softmax(Gamma) over the layer axis per channel, l_k = sum_{j=1..k} P_j,
so l_0 = 0 and the bounds increase with depth; backward dP_j = sum_{k>=j} dl_k (j >= 1), dGamma = P (dP - sum_j P_j dP_j).

Glossary (parameter names -> paper)
    emb (V, d)                       token embedding;  K = n_layers, d = d_model, I = GLU width
    l{k}.norm_t, l{k}.norm_c (d,)    RMSNorm weights before the token / channel mixer of block k
    l{k}.mlgru.*, l{k}.glu.*         the MLGRU / GLU parameters (mlgru_param_shapes, glu_param_shapes)
    norm_f (d,), head.w (d, V), head.n (d,)   final RMSNorm; the ternary head and its BitLinear norm weight
    lb_gamma (K, d)                  Gamma of the lower bounds (official variant with lower_bound=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import silu, softmax
from ..core.layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward, embedding_forward,
                           rms_norm_backward, rms_norm_forward)
from .bitlinear import RMS_EPS, bitlinear_backward, bitlinear_forward
from .glu import glu_backward, glu_forward, glu_hidden, glu_param_shapes
from .mlgru import VARIANTS, mlgru_backward, mlgru_forward, mlgru_param_shapes, mlgru_step
from .quant import absmax_int8, absmean_ternary
from .ternary_kernel import FORMATS, PackedTernary, bitlinear_packed, pack_weight

__all__ = ["MatMulFreeConfig", "param_shapes", "init_params", "forward", "backward", "loss_and_grads",
           "lower_bounds", "pack_model", "weight_bytes", "step_logits", "generate"]


@dataclass(frozen=True)
class MatMulFreeConfig:
    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    glu_hidden: int | None = None     # default glu_hidden(d_model) = 8 d / 3 (8 d^2 parameters per GLU)
    variant: str = "paper"            # "paper" | "official" (mlgru.py)
    lower_bound: bool = False         # HGRN lower bounds on the forget gates (official variant only)
    quantize: bool = True             # False: the same network with float layers (for comparison)
    eps: float = RMS_EPS

    @property
    def hidden(self) -> int:
        return self.glu_hidden if self.glu_hidden is not None else glu_hidden(self.d_model)


def _check_config(config) -> MatMulFreeConfig:
    if not isinstance(config, MatMulFreeConfig):
        validate.fail("config", "a MatMulFreeConfig", type(config).__name__)
    validate.positive_int(config.vocab_size, "config.vocab_size")
    validate.positive_int(config.d_model, "config.d_model")
    validate.positive_int(config.n_layers, "config.n_layers")
    validate.positive_int(config.hidden, "config.glu_hidden")
    validate.option(config.variant, "config.variant", VARIANTS)
    if validate.flag(config.lower_bound, "config.lower_bound") and config.variant != "official":
        validate.fail("config.lower_bound", "False unless variant='official'", True)
    validate.flag(config.quantize, "config.quantize")
    return config


def param_shapes(config: MatMulFreeConfig) -> dict[str, tuple]:
    config = _check_config(config)
    d, V = config.d_model, config.vocab_size
    shapes = {"emb": (V, d)}
    for k in range(config.n_layers):
        shapes[f"l{k}.norm_t"] = (d,)
        shapes.update({f"l{k}.mlgru.{n}": s for n, s in mlgru_param_shapes(d, config.variant).items()})
        shapes[f"l{k}.norm_c"] = (d,)
        shapes.update({f"l{k}.glu.{n}": s for n, s in glu_param_shapes(d, config.hidden).items()})
    shapes.update({"norm_f": (d,), "head.w": (d, V), "head.n": (d,)})
    if config.lower_bound:
        shapes["lb_gamma"] = (config.n_layers, d)
    return shapes


def init_params(config: MatMulFreeConfig, rng, std: float = 0.02, dtype=np.float64) -> dict[str, np.ndarray]:
    """Weights and embedding N(0, std^2) (reference init std 0.02); norm weights 1; biases and Gamma 0."""
    rng = validate.rng(rng)
    params = {}
    for name, shape in param_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if name == "emb" or leaf.startswith("w"):
            params[name] = (std * rng.standard_normal(shape)).astype(dtype)
        elif leaf.startswith("b_") or name == "lb_gamma":
            params[name] = np.zeros(shape, dtype)
        else:
            params[name] = np.ones(shape, dtype)
    return params


def _sub(params, prefix):
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def _check_params(params, config) -> np.dtype:
    if not isinstance(params, dict):
        validate.fail("params", "a dict of arrays", type(params).__name__)
    dtype = validate.float_array(params.get("emb"), "params['emb']").dtype
    for name, shape in param_shapes(config).items():
        if name not in params:
            validate.fail("params", f"a key {name!r}", "it is missing")
        validate.array(params[name], f"params[{name!r}]", shape=shape, dtype=dtype)
    return dtype


def lower_bounds(params, config):
    """(l (K, d), P (K, d)): l_k = sum_{j=1..k} softmax(Gamma)_j per channel, or (None, None) without bounds."""
    if not config.lower_bound:
        return None, None
    P = softmax(params["lb_gamma"], axis=0)                     # (K, d)
    return np.cumsum(P, axis=0) - P[0], P


class MatMulFreeCache(NamedTuple):
    emb: Any
    blocks: list        # per layer: (norm_t cache, MLGRUCache, norm_c cache, GLUCache)
    norm_f: Any
    head: Any
    P: np.ndarray | None   # (K, d) softmax(Gamma) of the lower bounds


def forward(params, config, tokens):
    """tokens: (B, T) int in [0, V). Returns logits (B, T, V) and a MatMulFreeCache."""
    config = _check_config(config)
    _check_params(params, config)
    tokens = validate.int_array(tokens, "tokens", ndim=2, low=0, high=config.vocab_size)
    q, eps = config.quantize, config.eps
    x, emb_cache = embedding_forward(tokens, params["emb"])      # (B, T, d)
    lb, P = lower_bounds(params, config)
    blocks = []
    for k in range(config.n_layers):
        u, c_nt = rms_norm_forward(x, params[f"l{k}.norm_t"], eps)
        o, c_mix = mlgru_forward(u, _sub(params, f"l{k}.mlgru."), variant=config.variant,
                                 lower_bound=None if lb is None else lb[k], quantize=q, eps=eps)
        x = x + o                                                # token-mixer residual
        v, c_nc = rms_norm_forward(x, params[f"l{k}.norm_c"], eps)
        y, c_glu = glu_forward(v, _sub(params, f"l{k}.glu."), quantize=q, eps=eps)
        x = x + y                                                # channel-mixer residual
        blocks.append((c_nt, c_mix, c_nc, c_glu))
    z, c_nf = rms_norm_forward(x, params["norm_f"], eps)
    logits, c_head = bitlinear_forward(z, params["head.w"], params["head.n"], quantize=q, eps=eps)   # (B, T, V)
    return logits, MatMulFreeCache(emb_cache, blocks, c_nf, c_head, P)


def backward(dlogits, cache: MatMulFreeCache) -> dict[str, np.ndarray]:
    """Gradients of every parameter (straight-through through the BitLinears); dlogits (B, T, V)."""
    if not isinstance(cache, MatMulFreeCache):
        validate.fail("cache", "a MatMulFreeCache from forward", type(cache).__name__)
    grads = {}
    dz, grads["head.w"], grads["head.n"] = bitlinear_backward(dlogits, cache.head)
    dx, grads["norm_f"] = rms_norm_backward(dz, cache.norm_f)
    K = len(cache.blocks)
    dlb = np.zeros((K, dx.shape[-1]), dx.dtype) if cache.P is not None else None
    for k in range(K - 1, -1, -1):
        c_nt, c_mix, c_nc, c_glu = cache.blocks[k]
        dv, g = glu_backward(dx, c_glu)
        grads.update({f"l{k}.glu.{n}": v for n, v in g.items()})
        dxc, grads[f"l{k}.norm_c"] = rms_norm_backward(dv, c_nc)
        dx = dx + dxc
        du, g, _ = mlgru_backward(dx, c_mix)
        if dlb is not None:
            dlb[k] = g.pop("lower_bound")
        grads.update({f"l{k}.mlgru.{n}": v for n, v in g.items()})
        dxt, grads[f"l{k}.norm_t"] = rms_norm_backward(du, c_nt)
        dx = dx + dxt
    if dlb is not None:                                          # l_k = sum_{j=1..k} P_j, P = softmax(Gamma)
        P = cache.P
        dP = np.cumsum(dlb[::-1], axis=0)[::-1].copy()           # dP_j = sum_{k >= j} dl_k
        dP[0] = 0.0                                              # P_0 never enters a bound
        grads["lb_gamma"] = P * (dP - np.sum(P * dP, axis=0, keepdims=True))
    grads["emb"] = embedding_backward(dx, cache.emb)
    return grads


def loss_and_grads(params, config, inputs, targets):
    """Mean next-token cross-entropy (targets == -100 ignored) and the gradients of every parameter."""
    logits, cache = forward(params, config, inputs)
    loss, ce_cache = cross_entropy_forward(logits, targets)
    return float(loss), backward(cross_entropy_backward(1.0, ce_cache), cache)


# --- inference ----------------------------------------------------------------------------------

def _bitlinear_names(config) -> list[tuple[str, str]]:
    """(weight name, norm-weight name) of every BitLinear of the model."""
    names = []
    for k in range(config.n_layers):
        names += [(f"l{k}.mlgru.w_{p}", f"l{k}.mlgru.n_{p}") for p in ("f", "c", "g", "o")]
        names += [(f"l{k}.glu.w_gu", f"l{k}.glu.n_gu"), (f"l{k}.glu.w_d", f"l{k}.glu.n_d")]
    return names + [("head.w", "head.n")]


def pack_model(params, config, fmt: str = "2bit") -> dict:
    """Every BitLinear weight quantised (absmean) and packed: {weight name: PackedTernary}.
    fmt "dense": the dequantised ternary weights as float arrays instead (the float GEMV path at inference,
    for comparison: same logits, 16x the weight bytes in float32)."""
    config = _check_config(config)
    dtype = _check_params(params, config)
    fmt = validate.option(fmt, "fmt", tuple(FORMATS) + ("dense",))
    if not config.quantize:
        validate.fail("config.quantize", "True (a float model has no ternary weights to pack)", False)
    if fmt == "dense":
        return {w: absmean_ternary(params[w]).values.astype(dtype) for w, _ in _bitlinear_names(config)}
    return {w: pack_weight(params[w], fmt) for w, _ in _bitlinear_names(config)}


def weight_bytes(params, config, packed=None) -> int:
    """Bytes of the weights at inference: float32 for every parameter, except packed ternary matrices
    (plus one float32 scale each) when ``packed`` is given."""
    total = 0
    for name, shape in param_shapes(config).items():
        if packed is not None and name in packed and isinstance(packed[name], PackedTernary):
            total += packed[name].data.nbytes + 4
        else:
            total += 4 * int(np.prod(shape))
    return total


def _linear(params, config, packed):
    """The BitLinear used at inference: packed kernel or bitlinear_forward, both on (B, d_in) rows."""
    def lin(x, w_name, n_name):
        if packed is not None and isinstance(packed[w_name], PackedTernary):
            return bitlinear_packed(x, packed[w_name], params[n_name], config.eps)
        if packed is not None:                                   # dense dequantised weights: a float GEMV
            x_bar = rms_norm_forward(x, params[n_name], config.eps)[0]
            return absmax_int8(x_bar).values @ packed[w_name]
        return bitlinear_forward(x, params[w_name], params[n_name], quantize=config.quantize, eps=config.eps)[0]
    return lin


def step_logits(params, config, token, state, packed=None):
    """One decoding step. token (B,) int; state: list of K arrays h (B, d) (None: zeros).
    Returns (logits (B, V), new state). With ``packed`` every ternary product runs on the packed weights."""
    config = _check_config(config)
    dtype = _check_params(params, config)
    token = validate.int_array(token, "token", ndim=1, low=0, high=config.vocab_size)
    if packed is not None and (not isinstance(packed, dict) or set(packed) != {w for w, _ in _bitlinear_names(config)}):
        validate.fail("packed", "the dict of pack_model for this config", type(packed).__name__)
    B, d, eps = token.shape[0], config.d_model, config.eps
    if state is None:
        state = [np.zeros((B, d), dtype) for _ in range(config.n_layers)]
    if not isinstance(state, list) or len(state) != config.n_layers:
        validate.fail("state", f"a list of {config.n_layers} arrays (B, d)", type(state).__name__)
    for k, h in enumerate(state):
        validate.array(h, f"state[{k}]", shape=(B, d), dtype=dtype)
    lin = _linear(params, config, packed)
    lb, _ = lower_bounds(params, config)
    x = params["emb"][token]                                     # (B, d)
    new_state = []
    for k in range(config.n_layers):
        pm = _sub(params, f"l{k}.mlgru.")
        u = rms_norm_forward(x, params[f"l{k}.norm_t"], eps)[0]
        o, h = mlgru_step(u, state[k], pm, variant=config.variant, lower_bound=None if lb is None else lb[k],
                          quantize=config.quantize, eps=eps,
                          linear=lambda z, p, k=k: lin(z, f"l{k}.mlgru.w_{p}", f"l{k}.mlgru.n_{p}"))
        new_state.append(h)
        x = x + o
        v = rms_norm_forward(x, params[f"l{k}.norm_c"], eps)[0]
        gu = lin(v, f"l{k}.glu.w_gu", f"l{k}.glu.n_gu")          # (B, 2I): gate, then up
        g, up = gu[:, :config.hidden], gu[:, config.hidden:]
        x = x + lin(silu(g) * up, f"l{k}.glu.w_d", f"l{k}.glu.n_d")
    z = rms_norm_forward(x, params["norm_f"], eps)[0]
    return lin(z, "head.w", "head.n"), new_state


def generate(params, config, prompt, n_new, *, rng=None, temperature: float = 1.0, greedy: bool = False,
             packed=None):
    """Continue ``prompt`` (B, T0) by ``n_new`` tokens, one recurrent step per token (constant memory in T).
    packed: pack_model(...) to run on packed ternary weights. rng is required unless greedy. Returns (B, T0 + n_new)."""
    greedy = validate.flag(greedy, "greedy")
    config = _check_config(config)
    prompt = validate.int_array(prompt, "prompt", ndim=2, low=0, high=config.vocab_size)
    if prompt.shape[1] < 1:
        validate.fail("prompt", "at least one token", prompt.shape)
    n_new = validate.integer(n_new, "n_new", low=0)
    if not greedy:
        rng = validate.rng(rng)
        temperature = validate.positive(temperature, "temperature")
    state, logits = None, None
    for t in range(prompt.shape[1]):                             # prefill: the recurrence over the prompt
        logits, state = step_logits(params, config, prompt[:, t], state, packed)
    out = [prompt.astype(np.int64)]
    for i in range(n_new):
        logits = validate.sampling_logits(logits)
        if greedy:
            tok = np.argmax(logits, axis=-1).astype(np.int64)
        else:
            p = softmax(logits.astype(np.float64) / temperature, axis=-1)
            u = rng.random((p.shape[0], 1))
            tok = np.minimum(np.sum(np.cumsum(p, axis=-1) < u, axis=-1), p.shape[1] - 1).astype(np.int64)
        out.append(tok[:, None])
        if i < n_new - 1:
            logits, state = step_logits(params, config, tok, state, packed)
    return np.concatenate(out, axis=1)
