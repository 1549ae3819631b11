"""Reformer (Kitaev, Kaiser, Levskaya 2020, arXiv 2001.04451): LSH attention (lsh.py), reversible
residual layers (reversible.py), chunked feed-forward (chunked.py) and the Reformer LM (model.py)."""
