"""One module per method: ``run(size="quick"|"full", rng, out_dir) -> ExperimentResult``.

``python -m scratch_transformers tour`` runs every experiment listed in ``TOUR`` at size quick. Before any
experiment runs, ``warmup.warm_up`` compiles (first run) or loads (cached) the numba kernels, so no reported
training time includes compilation: an experiment with kernels of its own defines a module-level ``warm_up()``
that calls them on tiny inputs of the types its ``run`` uses.
"""

# The tour's order: the baseline first, then the methods in the order of the README.
TOUR = ["baseline", "flash", "mamba", "lora", "positions", "matmulfree", "tandem", "reformer", "linformer", "prompting"]
