"""MatMul-free LM (Zhu et al., arXiv 2406.02528): ternary dense layers, the MLGRU token mixer, the GLU channel
mixer, and an inference kernel that only adds and subtracts.

    quant.py           absmean ternary weights / per-token absmax int8 activations (BitNet b1.58, 2402.17764)
    bitlinear.py       RMSNorm -> int8 -> ternary product, straight-through backward (§3.1, §3.4)
    mlgru.py           MatMul-free linear GRU over time, backward through time, one decoding step (§3.3)
    glu.py             the GLU channel mixer with BitLinear projections (§3.3)
    ternary_kernel.py  2-bit / base-3 weight packing and the numba add/subtract (lookup-table) kernel
    model.py           the LM: embedding -> blocks of MLGRU and GLU -> ternary head; generate on packed weights

Derivations: derivations/matmulfree.md.
"""
