"""One module per method: ``run(size="quick"|"full", rng, out_dir) -> ExperimentResult``.

``python -m scratch_transformers tour`` runs every experiment listed in ``TOUR`` at size quick.
"""

# The tour's order: the baseline first, then the methods in the order of the README.
TOUR = ["baseline", "flash", "mamba", "lora", "positions"]
