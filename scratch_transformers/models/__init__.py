"""Models assembled from the package's layers.

- ``transformer``: the decoder-only pre-LN transformer LM that every experiment compares against.
- ``encoder``: the bidirectional pre-LN encoder with a masked-LM head and BERT's masking (Linformer, prompting).
"""
