"""LoRA: low-rank adapters on frozen weights (Hu et al. 2021, arXiv 2106.09685), with rsLoRA scaling
(Kalajdzievski 2023, arXiv 2312.03732). Derivations: derivations/lora.md.

Glossary (code symbol -> paper symbol). The paper writes column vectors, h = W0 x + B A x (eq. 3) with
W0 (d x k), A (r x k), B (d x r). We use row batches, h = x W0 + b0 + s (x A) B, so every matrix is the
paper's transposed once:

    w0  (d_in, d_out)   W0^T, frozen                 a  (d_in, r)   A^T, the down-projection
    b0  (d_out,)        frozen bias (not in paper)   b  (r, d_out)  B^T, the up-projection
    s   scale           alpha / r (§4.1) or alpha / sqrt(r) (rsLoRA, Theorem 3.2)
    delta_w = s a b     (d_in, d_out) = (s B A)^T, rank <= r

A model is adapted without touching its code: the model's forward accepts ``linears=``, a dict weight
name -> object whose ``forward(x, params)`` replaces ``x @ params[name] + bias``. :class:`LoRALinear` is
that object; the adapter matrices live in the params dict under ``<name>.lora_A`` / ``<name>.lora_B``.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from .core import validate
from .core.io import atomic_write
from .core.registry import Op

INITS = ("kaiming_uniform", "gaussian")
DEFAULT_TARGETS = ("attn.wq", "attn.wv")  # the paper's main choice: W_q and W_v (Table 5)
_CONFIG_KEY = "__lora_config__"


# --------------------------------------------------------------------------------------------------
# The LoRA linear pair
# --------------------------------------------------------------------------------------------------

def lora_scale(alpha, r, *, rslora: bool = False) -> float:
    """The adapter's scale s: alpha / r (LoRA §4.1) or alpha / sqrt(r) (rsLoRA, Theorem 3.2)."""
    alpha = validate.real(alpha, "alpha")
    r = validate.positive_int(r, "r")
    return alpha / np.sqrt(r) if rslora else alpha / r


def init_lora(rng, d_in, d_out, r, *, init: str = "kaiming_uniform", dtype=np.float64):
    """A random, B = 0 (LoRA §4.1), so delta_w = s a b = 0 and the adapted model starts at the base.

    init="kaiming_uniform" (default, as loralib and peft): a ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), i.e.
    PyTorch's kaiming_uniform_(a=sqrt(5)) on lora_A (r, d_in): bound = sqrt(1/3) * sqrt(3 / d_in).
    Its variance 1/(3 d_in) does not depend on r, which is the assumption under which rsLoRA's
    Theorem 3.2 ties all r-dependence to the scale s. init="gaussian" (peft's option): a ~ N(0, 1/r^2),
    whose variance shrinks with r. Returns a (d_in, r), b (r, d_out).
    """
    rng = validate.rng(rng)
    d_in = validate.positive_int(d_in, "d_in")
    d_out = validate.positive_int(d_out, "d_out")
    r = validate.positive_int(r, "r")
    validate.option(init, "init", INITS)
    dtype = np.dtype(dtype)
    if dtype not in validate.FLOAT_DTYPES:
        validate.fail("dtype", "float32 or float64", dtype)
    if init == "kaiming_uniform":
        bound = 1.0 / np.sqrt(d_in)
        a = rng.uniform(-bound, bound, size=(d_in, r))
    else:
        a = rng.normal(0.0, 1.0 / r, size=(d_in, r))
    return a.astype(dtype), np.zeros((r, d_out), dtype=dtype)


class LoRACache(NamedTuple):
    x_drop: np.ndarray       # (N, d_in) dropout(x), flattened over leading axes; x itself without dropout
    keep: np.ndarray | None  # (N, d_in) bool keep-mask of the LoRA-branch dropout, None without dropout
    keep_scale: float        # 1 / (1 - p)
    h: np.ndarray            # (N, r) x_drop @ a
    w0: np.ndarray           # (d_in, d_out)
    a: np.ndarray            # (d_in, r)
    b: np.ndarray            # (r, d_out)
    scale: float             # s
    x_shape: tuple           # (..., d_in)


def lora_linear_forward(x, w0, b0, a, b, *, scale, dropout_p=0.0, rng=None, training=True, dropout_mask=None):
    """h = x w0 + b0 + s * (dropout(x) a) b   (LoRA eq. 3 with the §4.1 scale, transposed for rows).

    x (..., d_in); w0 (d_in, d_out) and b0 (d_out,) | None are frozen; a (d_in, r), b (r, d_out) trainable.
    Dropout (inverted, rate dropout_p) acts on the LoRA branch's input only, as in loralib and peft; it
    is active when training and dropout_p > 0, with the keep-mask drawn from ``rng`` or given as
    ``dropout_mask`` (bool, shape of x). Returns y (..., d_out) and the cache for lora_linear_backward.
    """
    x = validate.float_array(x, "x", min_ndim=1)
    d_in = x.shape[-1]
    w0 = validate.float_array(w0, "w0", ndim=2, shape=(d_in, None))
    validate.same_dtype(w0, "w0", x, "x")
    d_out = w0.shape[1]
    if b0 is not None:
        b0 = validate.array(b0, "b0", shape=(d_out,), dtype=x.dtype)
    a = validate.array(a, "a", ndim=2, shape=(d_in, None), dtype=x.dtype)
    r = a.shape[1]
    if r < 1:
        validate.fail("a", "at least one column (rank r >= 1)", a.shape)
    b = validate.array(b, "b", shape=(r, d_out), dtype=x.dtype)
    scale = validate.real(scale, "scale")
    p = validate.probability(dropout_p, "dropout_p")
    x2 = x.reshape(-1, d_in)                                  # (N, d_in)
    keep, keep_scale = None, 1.0
    if training and (p > 0.0 or dropout_mask is not None):
        if dropout_mask is not None:
            keep = validate.bool_array(dropout_mask, "dropout_mask", shape=x.shape).reshape(-1, d_in)
        else:
            keep = validate.rng(rng, "rng").random(x2.shape) >= p
        keep_scale = 1.0 / (1.0 - p)
        x_drop = x2 * keep * x.dtype.type(keep_scale)         # (N, d_in)
    else:
        x_drop = x2
    h = x_drop @ a                                            # (N, r)
    base = x @ w0                                             # (..., d_out)  frozen path, as linear_forward
    if b0 is not None:
        base = base + b0
    delta = x.dtype.type(scale) * (h @ b)                     # (N, d_out)    s (x A) B
    y = base + delta.reshape(base.shape)                      # (..., d_out)  eq. (3); == base when b = 0
    cache = LoRACache(x_drop, keep, keep_scale, h, w0, a, b, scale, x.shape)
    return y, cache


def lora_linear_backward(dy, cache: LoRACache):
    """Gradients (dx, da, db) of lora_linear_forward; w0 and b0 are frozen and get none.

    dB = s h^T dy,  dh = s dy b^T,  dA = x_drop^T dh,  dx = dy w0^T + dropout'(dh a^T)
    (derivations/lora.md#backward). At init b = 0, so dh = 0 and dA = 0: A starts moving one step after B.
    """
    c = cache
    d_out = c.w0.shape[1]
    dy = validate.array(dy, "dy", shape=(*c.x_shape[:-1], d_out), dtype=c.w0.dtype)
    s = c.w0.dtype.type(c.scale)
    dy2 = dy.reshape(-1, d_out)                               # (N, d_out)
    db = s * (c.h.T @ dy2)                                    # (r, d_out)
    dh = s * (dy2 @ c.b.T)                                    # (N, r)
    da = c.x_drop.T @ dh                                      # (d_in, r)
    dx_drop = dh @ c.a.T                                      # (N, d_in)
    if c.keep is not None:
        dx_drop = dx_drop * c.keep * c.w0.dtype.type(c.keep_scale)
    dx = dy2 @ c.w0.T + dx_drop                               # (N, d_in)
    return dx.reshape(c.x_shape), da, db


def delta_weight(a, b, scale):
    """delta_w = s a b (d_in, d_out), the transpose of the paper's s B A (eq. 3)."""
    a = validate.float_array(a, "a", ndim=2)
    b = validate.array(b, "b", shape=(a.shape[1], None), dtype=a.dtype)
    return a.dtype.type(validate.real(scale, "scale")) * (a @ b)


def merge(w0, a, b, scale):
    """W = W0 + s A B: the deployed weight, no additional inference latency (LoRA §4.1). Returns a new array."""
    w0 = validate.float_array(w0, "w0", ndim=2)
    a = validate.array(a, "a", ndim=2, shape=(w0.shape[0], None), dtype=w0.dtype)
    validate.array(b, "b", shape=(a.shape[1], w0.shape[1]), dtype=w0.dtype)
    return w0 + delta_weight(a, b, scale)


def unmerge(w, a, b, scale):
    """W0 = W - s A B: recover the base weight to switch tasks (LoRA §4.1, "No Additional
    Inference Latency"). Exact up to rounding of
    one add and one subtract (relative error ~ eps * |delta_w| / |W0|)."""
    w = validate.float_array(w, "w", ndim=2)
    a = validate.array(a, "a", ndim=2, shape=(w.shape[0], None), dtype=w.dtype)
    validate.array(b, "b", shape=(a.shape[1], w.shape[1]), dtype=w.dtype)
    return w - delta_weight(a, b, scale)


# --------------------------------------------------------------------------------------------------
# Adapting a model by weight name
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoRAConfig:
    """Which projections to adapt and how. alpha=None means alpha = r (scale 1 for LoRA, as peft's
    default r=8, alpha=8). targets: name suffixes ("attn.wq" matches "blocks.0.attn.wq") or fnmatch
    patterns ("blocks.1.*.w?"); default the paper's W_q and W_v in every attention layer."""

    r: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rslora: bool = False
    dropout: float = 0.0
    init: str = "kaiming_uniform"

    def __post_init__(self):
        validate.positive_int(self.r, "r")
        if self.alpha is not None:
            validate.real(self.alpha, "alpha")
        if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
            validate.fail("targets", "a tuple of non-empty name patterns", repr(self.targets))
        if len(self.targets) == 0:
            validate.fail("targets", "at least one name pattern", "()")
        object.__setattr__(self, "targets", tuple(self.targets))
        validate.probability(self.dropout, "dropout")
        validate.option(self.init, "init", INITS)
        if not isinstance(self.rslora, bool):
            validate.fail("rslora", "a bool", repr(self.rslora))

    @property
    def scale(self) -> float:
        return lora_scale(self.r if self.alpha is None else self.alpha, self.r, rslora=self.rslora)


def adapter_keys(name: str) -> tuple[str, str]:
    """Keys of the adapter matrices of weight ``name`` in a params dict."""
    return f"{name}.lora_A", f"{name}.lora_B"


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def find_targets(params: dict, targets=DEFAULT_TARGETS) -> list[str]:
    """Names of the 2-D weights in ``params`` matching any target pattern (sorted). Raises ValueError
    if a pattern matches nothing or matches a non-matrix."""
    if not isinstance(params, dict):
        validate.fail("params", "a dict name -> array", type(params).__name__)
    if isinstance(targets, str):
        targets = (targets,)
    found = set()
    for pattern in targets:
        hits = [k for k in params if ".lora_" not in k and _matches(k, pattern)]
        if not hits:
            validate.fail("targets", f"a pattern matching some weight name (e.g. {next(iter(params), '')!r})",
                          repr(pattern))
        for k in hits:
            if np.ndim(params[k]) != 2:
                validate.fail(f"targets ({pattern!r} -> {k!r})", "a 2-d weight", f"shape {np.shape(params[k])}")
        found.update(hits)
    return sorted(found)


def bias_name(name: str, params: dict) -> str | None:
    """The bias that goes with weight ``name`` in the model's params ("...attn.wq" -> "...attn.bq"), or
    None if the model has no such key."""
    head, _, last = name.rpartition(".")
    if last.startswith("w"):
        cand = (head + "." if head else "") + "b" + last[1:]
        if cand in params:
            return cand
    return None


def init_adapters(params: dict, config: LoRAConfig, rng) -> dict:
    """Fresh adapter matrices (a random, b = 0) for every target weight of ``params``, in the weights' dtype."""
    rng = validate.rng(rng)
    if not isinstance(config, LoRAConfig):
        validate.fail("config", "a LoRAConfig", type(config).__name__)
    adapters = {}
    for name in find_targets(params, config.targets):
        w = validate.float_array(params[name], f"params[{name!r}]", ndim=2)
        ka, kb = adapter_keys(name)
        adapters[ka], adapters[kb] = init_lora(rng, w.shape[0], w.shape[1], config.r, init=config.init, dtype=w.dtype)
    return adapters


def adapted_names(adapters: dict) -> list[str]:
    """Weight names that ``adapters`` adapts (each needs both its lora_A and lora_B)."""
    if not isinstance(adapters, dict):
        validate.fail("adapters", "a dict name -> array", type(adapters).__name__)
    names = sorted(k[: -len(".lora_A")] for k in adapters if k.endswith(".lora_A"))
    for k in adapters:
        if not (k.endswith(".lora_A") or k.endswith(".lora_B")):
            validate.fail("adapters", "only '<weight>.lora_A' / '<weight>.lora_B' keys", repr(k))
    for n in names:
        if adapter_keys(n)[1] not in adapters:
            validate.fail("adapters", f"a lora_B for {n!r}", "none")
    if len(names) * 2 != len(adapters):
        validate.fail("adapters", "a lora_A for every lora_B", sorted(adapters))
    return names


class LoRALinear:
    """The object a model's ``linears=`` takes for weight ``name``: forward(x, params) -> (y, cache) reads the
    frozen params[name] (and its bias) and the trainable params[name.lora_A], params[name.lora_B];
    backward(dy, cache) -> (dx, {name.lora_A: da, name.lora_B: db}). Dropout draws from ``rng`` while
    ``training`` is True (set it False for evaluation)."""

    def __init__(self, name: str, *, scale: float, dropout: float = 0.0, rng=None, bias: str | None = None):
        self.name = name
        self.scale = validate.real(scale, "scale")
        self.dropout = validate.probability(dropout, "dropout")
        self.rng = validate.rng(rng) if dropout > 0 else rng
        self.bias = bias
        self.training = True

    def forward(self, x, params):
        ka, kb = adapter_keys(self.name)
        for k in (self.name, ka, kb):
            if k not in params:
                validate.fail("params", f"a key {k!r}", "none")
        b0 = params[self.bias] if self.bias is not None else None
        return lora_linear_forward(x, params[self.name], b0, params[ka], params[kb], scale=self.scale,
                                   dropout_p=self.dropout, rng=self.rng, training=self.training)

    def backward(self, dy, cache):
        dx, da, db = lora_linear_backward(dy, cache)
        ka, kb = adapter_keys(self.name)
        return dx, {ka: da, kb: db}


def make_linears(params: dict, adapters: dict, config: LoRAConfig, *, rng=None) -> dict:
    """The ``linears`` dict for a model forward: weight name -> LoRALinear, for every adapted weight."""
    if not isinstance(config, LoRAConfig):
        validate.fail("config", "a LoRAConfig", type(config).__name__)
    out = {}
    for name in adapted_names(adapters):
        if name not in params:
            validate.fail("adapters", f"weights present in the model (no {name!r})", sorted(params)[:4])
        out[name] = LoRALinear(name, scale=config.scale, dropout=config.dropout, rng=rng,
                               bias=bias_name(name, params))
    return out


def adapter_loss_and_grads(model_loss_and_grads: Callable, base_params: dict, linears: dict) -> Callable:
    """Wrap a model's ``loss_and_grads(params, *args, linears=..., **kw) -> (loss, grads)`` into one over the
    adapters only: f(adapters, *args, **kw) -> (loss, grads restricted to the adapter keys). The base
    params are frozen (their gradients are dropped), so an optimizer given ``adapters`` keeps state for
    r (d_in + d_out) numbers per adapted matrix instead of the whole model (LoRA §4.2)."""

    if not callable(model_loss_and_grads):
        validate.fail("model_loss_and_grads", "a callable(params, ..., linears=...) -> (loss, grads)",
                      type(model_loss_and_grads).__name__)
    if not isinstance(base_params, dict):
        validate.fail("base_params", "a dict name -> array", type(base_params).__name__)
    if linears is not None and not isinstance(linears, dict):
        validate.fail("linears", "None or a dict weight name -> LoRALinear", type(linears).__name__)

    def loss_and_grads(adapters, *args, **kw):
        loss, grads = model_loss_and_grads({**base_params, **adapters}, *args, linears=linears, **kw)
        missing = [k for k in adapters if k not in grads]
        if missing:
            validate.fail("linears", f"entries that produce gradients for every trainable key (missing {missing[:3]})",
                          sorted(linears or {}))
        return loss, {k: grads[k] for k in adapters}

    return loss_and_grads


def merge_adapters(params: dict, adapters: dict, config: LoRAConfig) -> dict:
    """A new params dict with every adapted weight replaced by W0 + s A B (the other arrays are shared)."""
    out = dict(params)
    for name in adapted_names(adapters):
        ka, kb = adapter_keys(name)
        if name not in params:
            validate.fail("adapters", f"weights present in params (no {name!r})", sorted(params)[:4])
        out[name] = merge(params[name], adapters[ka], adapters[kb], config.scale)
    return out


def unmerge_adapters(params: dict, adapters: dict, config: LoRAConfig) -> dict:
    """Inverse of merge_adapters: W0 = W - s A B for every adapted weight."""
    out = dict(params)
    for name in adapted_names(adapters):
        ka, kb = adapter_keys(name)
        out[name] = unmerge(params[name], adapters[ka], adapters[kb], config.scale)
    return out


def n_params(params: dict) -> int:
    """Number of scalars in a params dict (r (d_in + d_out) per adapter, LoRA §5.1)."""
    return int(sum(np.size(v) for v in params.values()))


def save_adapters(path, adapters: dict, config: LoRAConfig) -> Path:
    """Write the adapters alone (plus their config as JSON) to an .npz with core.io.atomic_write."""
    adapted_names(adapters)
    if not isinstance(config, LoRAConfig):
        validate.fail("config", "a LoRAConfig", type(config).__name__)
    arrays = {k: np.asarray(v) for k, v in adapters.items()}
    arrays[_CONFIG_KEY] = np.array(json.dumps(asdict(config)))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_adapters(path) -> tuple[dict, LoRAConfig]:
    """Read what save_adapters wrote: (adapters, config). np.load with allow_pickle=False."""
    with np.load(Path(path), allow_pickle=False) as f:
        if _CONFIG_KEY not in f.files:
            validate.fail("path", f"an adapter file with a {_CONFIG_KEY!r} entry", str(path))
        cfg = json.loads(str(f[_CONFIG_KEY]))
        adapters = {k: f[k] for k in f.files if k != _CONFIG_KEY}
    cfg["targets"] = tuple(cfg["targets"])
    adapted_names(adapters)
    return adapters, LoRAConfig(**cfg)


def apply_adapters(base_params: dict, adapters: dict, config: LoRAConfig) -> dict:
    """Apply saved adapters to a base model's params (e.g. from core.train.load_checkpoint): checks that
    each adapter fits its weight, then merges. Returns a new params dict; base_params is untouched."""
    for name in adapted_names(adapters):
        if name not in base_params:
            validate.fail("adapters", f"weights present in the base params (no {name!r})", sorted(base_params)[:4])
        ka, kb = adapter_keys(name)
        w = base_params[name]
        validate.array(adapters[ka], ka, shape=(w.shape[0], config.r), dtype=w.dtype)
        validate.array(adapters[kb], kb, shape=(config.r, w.shape[1]), dtype=w.dtype)
    return merge_adapters(base_params, adapters, config)


# --------------------------------------------------------------------------------------------------
# Subspace similarity (LoRA §7.2, eq. 4)
# --------------------------------------------------------------------------------------------------

def subspace_similarity(a1, a2):
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) for all i <= r1, j <= r2 (eq. 4).

    a1 (d_in, r1), a2 (d_in, r2) in our layout (the paper's A^T), so the paper's right-singular vectors of
    A are our left-singular vectors U. Returns phi (r1, r2) with phi[i-1, j-1] in [0, 1]. For independent
    random subspaces E[phi] ~ max(i, j) / d_in.
    """
    a1 = validate.float_array(a1, "a1", ndim=2)
    a2 = validate.array(a2, "a2", ndim=2, shape=(a1.shape[0], None), dtype=a1.dtype)
    if a1.shape[1] > a1.shape[0] or a2.shape[1] > a2.shape[0]:
        validate.fail("a1, a2", "rank <= d_in", (a1.shape, a2.shape))
    u1 = np.linalg.svd(a1.astype(np.float64), full_matrices=False)[0]   # (d_in, r1), by singular value
    u2 = np.linalg.svd(a2.astype(np.float64), full_matrices=False)[0]   # (d_in, r2)
    m2 = (u1.T @ u2) ** 2                                               # (r1, r2)
    cum = np.cumsum(np.cumsum(m2, axis=0), axis=1)                      # ||U1^i^T U2^j||_F^2
    i = np.arange(1, a1.shape[1] + 1)[:, None]
    j = np.arange(1, a2.shape[1] + 1)[None, :]
    return cum / np.minimum(i, j)


# --------------------------------------------------------------------------------------------------
# Gradient-check registry
# --------------------------------------------------------------------------------------------------

def _gc_inputs(rng, dropout: bool):
    x = rng.standard_normal((2, 3, 5))
    w0, b0 = rng.standard_normal((5, 4)), rng.standard_normal(4)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((2, 4))   # b != 0 so dA is non-trivial
    inp = {"x": x, "a": a, "b": b, "w0": w0, "b0": b0}
    if dropout:
        inp["mask"] = rng.random(x.shape) >= 0.3
    return inp


def _gc_forward(x, a, b, w0, b0, mask=None):
    return lora_linear_forward(x, w0, b0, a, b, scale=0.7, dropout_p=0.3 if mask is not None else 0.0,
                               dropout_mask=mask)


GRADCHECKS = [
    Op(name="lora_linear", forward=_gc_forward, backward=lora_linear_backward,
       make_inputs=lambda rng: _gc_inputs(rng, False), wrt=("x", "a", "b"),
       covers=("scratch_transformers.lora.lora_linear_backward",)),
    Op(name="lora_linear_dropout", forward=_gc_forward, backward=lora_linear_backward,
       make_inputs=lambda rng: _gc_inputs(rng, True), wrt=("x", "a", "b"),
       covers=("scratch_transformers.lora.lora_linear_backward",)),
]
