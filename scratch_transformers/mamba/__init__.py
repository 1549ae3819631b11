"""Mamba (Gu & Dao 2023): the selective scan S6 in numba, the Mamba block, and a small Mamba LM.

    scan.py   selective_scan_forward / selective_scan_backward / selective_scan_step  (Algorithm 2)
    block.py  the Mamba block of Fig. 3 (in_proj, causal conv, x_proj, dt_proj, scan, gate, out_proj)
    model.py  embedding -> residual RMSNorm blocks -> final norm -> tied head; recurrent ``generate``

Derivations: derivations/mamba.md.
"""
