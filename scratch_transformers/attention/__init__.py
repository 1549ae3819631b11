"""Attention cores and the multi-head layer.

- ``reference``: materialised softmax attention (FA-1 §2.2 / App. B), the exact reference.
- ``flash``: tiled FlashAttention kernels (numba), same signature as ``reference``.
- ``multihead``: q/k/v/o projections, head split/merge, a core chosen by name, KV cache.

Submodules are imported on demand (``from scratch_transformers.attention.reference import ...``).
"""
