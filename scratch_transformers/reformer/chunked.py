"""Chunked feed-forward (Reformer §3, eq. 10): a position-wise function applied to the sequence in
chunks, so its wide intermediate (B, T, d_ff) is never held whole.

    Y2 = [Y2^(1); ...; Y2^(c)] = [X2^(1) + FF(Y1^(1)); ...; X2^(c) + FF(Y1^(c))]      eq. (10)

:func:`chunked_forward` keeps only its input; :func:`chunked_backward` recomputes each chunk's forward
and back-propagates it before moving to the next chunk, so both passes hold one chunk's intermediate
at a time: peak memory ~ B * chunk_size * d_ff instead of B * T * d_ff. A position-wise function gives
each row the same arithmetic whether computed alone or in a batch, so the output and the input
gradient equal the unchunked ones bit for bit (with one NumPy caveat: a product with a single row goes
to BLAS gemv, which sums in another order than gemm, so chunks have at least 2 rows: chunk_size >= 2,
and a 1-row remainder joins the previous chunk); parameter gradients are sums over chunks of partial
sums (the same terms added in a different order: equal to rounding, ~1e-15 relative).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate
from .reversible import RevFunction


class ChunkedCache(NamedTuple):
    x: np.ndarray          # (..., T, D) the input (the only thing kept)
    fn: RevFunction        # the position-wise function
    chunk_size: int


def _check_fn(fn) -> RevFunction:
    if not isinstance(fn, RevFunction):
        validate.fail("fn", "a RevFunction(forward, backward) of a position-wise function", type(fn).__name__)
    return fn


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of chunk_size rows each; a 1-row remainder is merged into the previous chunk."""
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def chunked_forward(x, fn, *, chunk_size):
    """y = fn(x) computed chunk_size positions at a time along axis -2 (eq. 10).

    x: (..., T, D) float; chunk_size >= 2; fn: RevFunction whose forward maps (..., t, D) -> ((..., t, D_out), cache)
    position by position. Returns y (..., T, D_out) and a ChunkedCache (holding x only).
    """
    x = validate.float_array(x, "x", min_ndim=2)
    fn = _check_fn(fn)
    chunk_size = validate.integer(chunk_size, "chunk_size", low=2)
    parts = []
    for s, e in chunk_bounds(x.shape[-2], chunk_size):
        y, _ = fn.forward(x[..., s:e, :])                   # the chunk's cache is dropped
        parts.append(y)
    return np.concatenate(parts, axis=-2), ChunkedCache(x=x, fn=fn, chunk_size=chunk_size)


def chunked_backward(dy, cache: ChunkedCache):
    """Backward of chunked_forward: per chunk, recompute fn's forward, run its backward.

    dy: (..., T, D_out). Returns (dx (..., T, D), {param name: grad summed over chunks}).
    """
    validate.cache(cache, ChunkedCache, "chunked_forward")
    dy = validate.float_array(dy, "dy", min_ndim=2)
    if dy.shape[:-1] != cache.x.shape[:-1]:
        validate.fail("dy", f"shape {cache.x.shape[:-1]} + (D_out,)", dy.shape)
    x, m = cache.x, cache.chunk_size
    dx = np.empty_like(x)
    grads: dict = {}
    for s, e in chunk_bounds(x.shape[-2], m):
        _, c = cache.fn.forward(x[..., s:e, :])             # recompute this chunk's intermediate
        dx_c, g = cache.fn.backward(dy[..., s:e, :], c)
        dx[..., s:e, :] = dx_c
        for k, gk in g.items():
            grads[k] = grads[k] + gk if k in grads else gk
    return dx, grads
