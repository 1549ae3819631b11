"""Decoders for speculative decoding over the baseline transformer's KV cache, and SPEED.

``TransformerDecoder`` wraps ``models.transformer.forward(..., kv_cache=...)`` in the decoder interface of
``tandem.speculative`` (length, capacity, extend, rollback): a rollback only moves the caches' length
back, the stale rows are overwritten by the next extend.
"""

from __future__ import annotations

import numpy as np

from ..core import validate
from . import transformer as tf


def check_params(params, config) -> np.dtype:
    """Validate a ``models.transformer`` parameter dict against its config; returns the dtype."""
    if not isinstance(config, tf.TransformerConfig):
        validate.fail("config", "a TransformerConfig", type(config).__name__)
    if not isinstance(params, dict) or "tok_emb" not in params:
        validate.fail("params", "a dict with the keys of param_shapes(config)", type(params).__name__)
    dtype = validate.float_array(params["tok_emb"], "params['tok_emb']").dtype
    for name, shape in tf.param_shapes(config).items():
        if name not in params:
            validate.fail("params", f"a key {name!r}", "none")
        validate.array(params[name], f"params[{name!r}]", shape=shape, dtype=dtype)
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
