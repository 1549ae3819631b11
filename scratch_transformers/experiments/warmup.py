"""Compile (first run) or load (later runs) every numba kernel the experiments use, before anything is timed.

numba compiles a kernel the first time it is called with a given combination of argument types, and caches
the machine code on disk (``@njit(cache=True)``: next to the sources, or in numba's user cache folder when that
is not writable). The first ``tour`` therefore spends a while compiling, later ones only load. Doing it here,
once, on tiny inputs of the same types the experiments use, keeps that time out of every reported training
time and out of tqdm's rate (a first step that compiles would otherwise make the bar promise hours).
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm


def _flash():
    """The flash kernels in every variant the flash experiment calls (float64: forward FA-2 and FA-1 orders,
    backward; causal both alignments, bias, padding, dropout), on tiny inputs."""
    from . import flash

    rng = np.random.default_rng(0)
    flash.exactness_rows(rng)
    x = rng.standard_normal((1, 4, 70, 64))
    out, cache = flash.flash_attention_forward(x, x, x, causal=True)
    flash.flash_attention_backward(out, cache)


def _mamba():
    """The selective scan as the Mamba experiment calls it: float32 LMs, selective and LTI, both the threaded
    build (b L D N >= PARALLEL_MIN_WORK) and the serial one, forward + backward."""
    from ..mamba import model as mm
    from ..mamba.scan import PARALLEL_MIN_WORK

    rng = np.random.default_rng(0)
    for selective in (True, False):
        config = mm.MambaConfig(vocab_size=8, d_model=32, n_layers=1, d_state=8, selective=selective)
        params = mm.init_params(config, rng, dtype=np.float32)
        d_inner = config.expand * config.d_model
        for length in (4, -(-PARALLEL_MIN_WORK // (2 * d_inner * config.d_state))):   # serial, then threaded
            tokens = rng.integers(0, 8, size=(2, length))
            mm.loss_and_grads(params, config, tokens, tokens)


BUILTIN = {"flash": _flash, "mamba": _mamba}


def stages(names) -> list:
    """(name, function) for each experiment in ``names`` that has numba kernels to prepare: the two above, or
    a module-level ``warm_up()`` that an experiment module defines itself (tiny calls with the argument types
    its run uses)."""
    import importlib

    out = []
    for name in names:
        if name in BUILTIN:
            out.append((name, BUILTIN[name]))
            continue
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        if callable(getattr(module, "warm_up", None)):
            out.append((name, module.warm_up))
    return out


def warm_up(names=None, progress: bool = True) -> float:
    """Prepare the kernels of the experiments ``names`` (default: the tour); returns the seconds it took
    (a minute or two on a first run on 2 cores, a few seconds once cached)."""
    from . import TOUR

    t0 = time.perf_counter()
    for _, fn in tqdm(stages(TOUR if names is None else names), desc="numba kernels (compiled on the first run, "
                      "then cached)", unit="experiment", disable=not progress):
        fn()
    return time.perf_counter() - t0
