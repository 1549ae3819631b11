"""Tandem Transformers (arXiv 2402.08644) and speculative decoding (arXiv 2211.17192).

speculative.py: the acceptance rule and the decoding loop with any drafter; attention.py: the Tandem
M_S attention over projected M_L rows and its own rows; model.py: the Tandem M_S model, its losses and
its cached decode path. The M_L side (the baseline transformer) and SPEED live in ``models.speed``.
"""
