"""Models assembled from the package's layers.

- ``transformer``: the decoder-only pre-LN transformer LM that every experiment compares against.
"""
