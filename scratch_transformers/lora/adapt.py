"""Adapting a model by weight name (Hu et al. 2021, arXiv 2106.09685, §4.2: LoRA on chosen weight matrices).

A model is adapted without touching its code: the model's forward accepts ``linears=``, a dict weight
name -> object whose ``forward(x, params)`` replaces ``x @ params[name] + bias`` (see
``core.layers.project_forward``). :class:`LoRALinear` is that object; the adapter matrices live in a
params dict under ``<name>.lora_A`` / ``<name>.lora_B``. Adapters are saved alone with
``core.io.atomic_write``, merged into the base weights for inference, or unmerged again.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, fields as dataclass_fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import validate
from ..core.io import atomic_write
from ..core.layers import check_linears
from .linear import INITS, init_lora, lora_linear_backward, lora_linear_forward, lora_scale, merge, unmerge

DEFAULT_TARGETS = ("attn.wq", "attn.wv")  # the paper's main choice: W_q and W_v (Table 5)
_CONFIG_KEY = "__lora_config__"


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
    validate.params(params, {})
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
    validate.params(adapters, {}, name="adapters")
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
    check_rank(adapters, config)
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
    validate.function(model_loss_and_grads, "model_loss_and_grads", "(params, ..., linears=...) -> (loss, grads)")
    validate.params(base_params, {}, name="base_params")
    check_linears(linears)

    def loss_and_grads(adapters, *args, **kw):
        loss, grads = model_loss_and_grads({**base_params, **adapters}, *args, linears=linears, **kw)
        missing = [k for k in adapters if k not in grads]
        if missing:
            validate.fail("linears", f"entries that produce gradients for every trainable key (missing {missing[:3]})",
                          sorted(linears or {}))
        return loss, {k: grads[k] for k in adapters}

    return loss_and_grads


def check_rank(adapters: dict, config: LoRAConfig) -> list[str]:
    """The adapted weight names, after checking every pair has the config's rank: lora_A (d_in, r) and
    lora_B (r, d_out) with r = config.r (the scale alpha / r depends on it: a config of another rank
    would merge with the wrong scale)."""
    if not isinstance(config, LoRAConfig):
        validate.fail("config", "a LoRAConfig", type(config).__name__)
    names = adapted_names(adapters)
    for name in names:
        ka, kb = adapter_keys(name)
        sa, sb = np.shape(adapters[ka]), np.shape(adapters[kb])
        if len(sa) != 2 or len(sb) != 2 or sa[1] != config.r or sb[0] != config.r:
            validate.fail("config.r", f"the rank of the adapters ({ka} {sa}, {kb} {sb})", config.r)
    return names


def _map_adapted(params: dict, adapters: dict, config: LoRAConfig, op) -> dict:
    """A new params dict with op(W, A, B, s) for every adapted weight W (the other arrays are shared)."""
    check_rank(adapters, config)
    out = dict(params)
    for name in adapted_names(adapters):
        ka, kb = adapter_keys(name)
        if name not in params:
            validate.fail("adapters", f"weights present in params (no {name!r})", sorted(params)[:4])
        out[name] = op(params[name], adapters[ka], adapters[kb], config.scale)
    return out


def merge_adapters(params: dict, adapters: dict, config: LoRAConfig) -> dict:
    """A new params dict with every adapted weight replaced by W0 + s A B (the other arrays are shared)."""
    return _map_adapted(params, adapters, config, merge)


def unmerge_adapters(params: dict, adapters: dict, config: LoRAConfig) -> dict:
    """Inverse of merge_adapters: W0 = W - s A B for every adapted weight."""
    return _map_adapted(params, adapters, config, unmerge)


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
    fields = {f.name for f in dataclass_fields(LoRAConfig)}
    if not isinstance(cfg, dict) or set(cfg) != fields:   # no silent defaults: a file without r is not r = 8
        got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        validate.fail("path", f"an adapter config with exactly the fields {sorted(fields)} (missing "
                      f"{sorted(fields - set(cfg)) if isinstance(cfg, dict) else '?'})", got)
    cfg["targets"] = tuple(cfg["targets"])
    config = LoRAConfig(**cfg)
    check_rank(adapters, config)
    return adapters, config


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


