"""Position information: sinusoidal (Vaswani et al. 2017), RoPE (2104.09864), ALiBi (2108.12409),
and context extension by interpolation and base scaling (2306.15595, 2310.13017, 2309.00071, 2310.05209).

    sinusoidal.sinusoidal_table        fixed absolute encoding added to the embeddings
    rope.rope_forward / rope_backward  rotary embedding of queries and keys (both layouts)
    alibi.alibi_slopes / alibi_bias    linear distance penalties added to the attention scores
    scaling.*                          PI for RoPE and ALiBi, NTK-aware bases, base-scaling laws
"""
