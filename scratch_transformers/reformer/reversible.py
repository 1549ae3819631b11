"""Reversible residual layers (Reformer §3, eqs. 7-9; RevNet, Gomez et al. 2017).

A block maps (x1, x2) to (y1, y2) and can be run backwards, so a stack of blocks needs to keep only its
top outputs for the backward pass:

    y1 = x1 + F(x2)          eq. (7)          x2 = y2 - G(y1)          eq. (8)
    y2 = x2 + G(y1)                           x1 = y1 - F(x2)

In the Reformer F is attention and G the (chunked) feed-forward, both with their layer norm inside
(eq. 9). Here F and G are any :class:`RevFunction`: a forward ``f(x) -> (y, cache)`` and a backward
``b(dy, cache) -> (dx, grads)`` with ``grads`` a dict of parameter gradients (parameters are bound
inside the functions, e.g. with ``functools.partial``). Whatever randomness F or G use (LSH rotations,
dropout masks) must be fixed inside them, so that the recomputation in the backward equals the forward.

Backward through one block, given (y1, y2) and the output gradients (dy1, dy2) (RevNet Algorithm 1;
derived in derivations/reformer.md#reversible):

    g, cG = G(y1);  x2 = y2 - g;   dy1' = dy1 + J_G(y1)^T dy2     (grads of G from dy2)
    f, cF = F(x2);  x1 = y1 - f;   dx2  = dy2 + J_F(x2)^T dy1'    (grads of F from dy1')
    dx1 = dy1'

:func:`residual_stack_forward` / :func:`residual_stack_backward` compute the same blocks the ordinary
way (every block's caches kept): the reference the reversible backward must equal, and the memory
baseline of the experiment (activation memory linear in depth instead of flat).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..core import validate


class RevFunction(NamedTuple):
    forward: Callable      # x (..., D) -> (y (..., D), cache)
    backward: Callable     # (dy, cache) -> (dx, {param name: grad})


class RevBlock(NamedTuple):
    f: RevFunction         # F of eq. (7) (attention in the Reformer)
    g: RevFunction         # G of eq. (7) (feed-forward in the Reformer)


class ReversibleCache(NamedTuple):
    y1: np.ndarray         # (..., D) top outputs: the only activations kept
    y2: np.ndarray         # (..., D)
    blocks: tuple          # the RevBlocks, bottom first


class ResidualStackCache(NamedTuple):
    caches: list           # per block: (F cache, G cache)
    blocks: tuple
    shape: tuple           # the shape of x1 and x2


def _check_blocks(blocks) -> tuple:
    if not isinstance(blocks, (list, tuple)) or not blocks:
        validate.fail("blocks", "a non-empty list of RevBlock(f, g)", type(blocks).__name__)
    for i, blk in enumerate(blocks):
        if not isinstance(blk, RevBlock) or not all(isinstance(fn, RevFunction) for fn in blk):
            validate.fail(f"blocks[{i}]", "a RevBlock of two RevFunction(forward, backward)", type(blk).__name__)
    return tuple(blocks)


def _check_pair(x1, x2, names=("x1", "x2")):
    x1 = validate.float_array(x1, names[0], min_ndim=1)
    x2 = validate.array(x2, names[1], shape=x1.shape, dtype=x1.dtype)
    return x1, x2


def _add(total: dict, new: dict) -> None:
    for k, g in new.items():
        total[k] = total[k] + g if k in total else g


def reversible_forward(x1, x2, blocks):
    """Run the blocks with eq. (7); keep only the top outputs.

    x1, x2: (..., D), the same shape and float dtype; blocks: list of RevBlock, bottom first.
    Returns (y1, y2) and a ReversibleCache.
    """
    x1, x2 = _check_pair(x1, x2)
    blocks = _check_blocks(blocks)
    for blk in blocks:
        f, _ = blk.f.forward(x2)
        y1 = x1 + f                                   # y1 = x1 + F(x2)
        g, _ = blk.g.forward(y1)
        y2 = x2 + g                                   # y2 = x2 + G(y1)
        x1, x2 = y1, y2                               # the caches are dropped: nothing per block is kept
    return (x1, x2), ReversibleCache(y1=x1, y2=x2, blocks=blocks)


def reversible_inverse(y1, y2, blocks):
    """Eq. (8) through the whole stack: the inputs (x1, x2) reconstructed from the outputs."""
    y1, y2 = _check_pair(y1, y2, ("y1", "y2"))
    for blk in reversed(_check_blocks(blocks)):
        x2 = y2 - blk.g.forward(y1)[0]                # x2 = y2 - G(y1)
        x1 = y1 - blk.f.forward(x2)[0]                # x1 = y1 - F(x2)
        y1, y2 = x1, x2
    return y1, y2


def reversible_backward(dy, cache: ReversibleCache):
    """Backward of reversible_forward, reconstructing each block's inputs from its outputs (eq. 8).

    dy: (dy1, dy2) like the outputs. Returns {"x1": dx1, "x2": dx2, **parameter gradients} (a
    parameter used by several blocks gets the sum).
    """
    validate.cache(cache, ReversibleCache, "reversible_forward")
    if not isinstance(dy, (tuple, list)) or len(dy) != 2:
        validate.fail("dy", "a pair (dy1, dy2)", type(dy).__name__)
    dy1 = validate.array(dy[0], "dy[0]", shape=cache.y1.shape, dtype=cache.y1.dtype)
    dy2 = validate.array(dy[1], "dy[1]", shape=cache.y2.shape, dtype=cache.y2.dtype)
    grads: dict = {}
    y1, y2 = cache.y1, cache.y2
    for blk in reversed(cache.blocks):
        g, g_cache = blk.g.forward(y1)
        x2 = y2 - g                                   # eq. (8)
        dg_in, g_grads = blk.g.backward(dy2, g_cache)
        dy1 = dy1 + dg_in                             # dy1' = dy1 + J_G^T dy2
        _add(grads, g_grads)
        del g, g_cache
        f, f_cache = blk.f.forward(x2)
        x1 = y1 - f                                   # eq. (8)
        df_in, f_grads = blk.f.backward(dy1, f_cache)
        dy2 = dy2 + df_in                             # dx2 = dy2 + J_F^T dy1'
        _add(grads, f_grads)
        del f, f_cache
        y1, y2 = x1, x2                               # dx1 = dy1'
    return {"x1": dy1, "x2": dy2, **grads}


def residual_stack_forward(x1, x2, blocks):
    """The same blocks (eq. 7) with every block's F and G caches kept, as an ordinary network would.
    Returns (y1, y2) and a ResidualStackCache."""
    x1, x2 = _check_pair(x1, x2)
    blocks = _check_blocks(blocks)
    shape = x1.shape
    caches = []
    for blk in blocks:
        f, f_cache = blk.f.forward(x2)
        y1 = x1 + f
        g, g_cache = blk.g.forward(y1)
        y2 = x2 + g
        caches.append((f_cache, g_cache))
        x1, x2 = y1, y2
    return (x1, x2), ResidualStackCache(caches=caches, blocks=blocks, shape=shape)


def residual_stack_backward(dy, cache: ResidualStackCache):
    """Backward of residual_stack_forward from the stored caches (the chain rule of eq. 7, no
    recomputation). Returns {"x1", "x2", **parameter gradients} like reversible_backward."""
    validate.cache(cache, ResidualStackCache, "residual_stack_forward")
    if not isinstance(dy, (tuple, list)) or len(dy) != 2:
        validate.fail("dy", "a pair (dy1, dy2)", type(dy).__name__)
    dy1 = validate.float_array(dy[0], "dy[0]", shape=cache.shape)
    dy2 = validate.array(dy[1], "dy[1]", shape=cache.shape, dtype=dy1.dtype)
    grads: dict = {}
    for blk, (f_cache, g_cache) in zip(reversed(cache.blocks), reversed(cache.caches)):
        dg_in, g_grads = blk.g.backward(dy2, g_cache)
        dy1 = dy1 + dg_in
        _add(grads, g_grads)
        df_in, f_grads = blk.f.backward(dy1, f_cache)
        dy2 = dy2 + df_in
        _add(grads, f_grads)
    return {"x1": dy1, "x2": dy2, **grads}
