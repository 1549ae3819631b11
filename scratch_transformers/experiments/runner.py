"""How ``tour`` runs its experiments: several at a time where that cannot change what they report, alone where it can.

An experiment reports losses, accuracies, counts and bytes: numbers that do not depend on what else the machine is
doing. Those experiments run ``jobs`` at a time, each in a worker process of its own with one numba thread and one
BLAS thread (so ``jobs`` workers keep ``jobs`` cores busy and no worker waits for a thread of the other). An
experiment whose report includes wall-clock speed (module attribute ``MEASURES_TIME = True``: flash, matmulfree,
tandem, linformer) runs afterwards in this process, alone, with all of numba's threads: no other experiment of ours
shares the cores with its timings.

Every experiment gets ``numpy.random.default_rng(seed)`` of its own, in a worker or not, so its numbers do not depend
on the order, on ``jobs`` or on which process ran it. Workers are started with ``spawn`` (a fresh interpreter: no
numba threads are copied by a fork); the numba kernels must already be compiled (``warmup.warm_up``), so workers
only load them from the cache, which each does before its experiment's clock starts.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import validate


@dataclass
class Outcome:
    """One experiment's run: its ExperimentResult (None if it failed), wall and CPU seconds of its process while it
    ran, the traceback text if it raised, and where it ran ("worker" or "alone")."""

    name: str
    result: object
    wall: float
    cpu: float
    error: str | None
    where: str


def measures_time(module_name: str) -> bool:
    """True if the experiment module reports wall-clock speed (``MEASURES_TIME = True``)."""
    return bool(getattr(importlib.import_module(module_name), "MEASURES_TIME", False))


def run_one(name: str, module_name: str, size: str, seed: int, out_dir, progress: bool, where: str = "alone"
            ) -> Outcome:
    """Import ``module_name`` and call its ``run(size, rng=default_rng(seed), out_dir=out_dir / name, progress)``;
    an exception becomes the Outcome's ``error`` (one broken experiment must not hide the others)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        module = importlib.import_module(module_name)
        result = module.run(size=size, rng=np.random.default_rng(seed), out_dir=Path(out_dir) / name,
                            progress=progress)
        error = None
    except Exception:
        result, error = None, traceback.format_exc()
    return Outcome(name, result, time.perf_counter() - t0, time.process_time() - c0, error, where)


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _worker(conn, name: str, module_name: str, size: str, seed: int, out_dir) -> None:
    """A worker process: one numba thread (and one BLAS thread: ``_start`` sets the variables BLAS reads when numpy
    is imported), the experiment's kernels loaded from numba's cache before its clock starts, then the experiment;
    its Outcome is sent back through ``conn``."""
    import numba

    from .warmup import warm_up

    numba.set_num_threads(1)
    warm_up([name], progress=False)
    conn.send(run_one(name, module_name, size, seed, out_dir, False, "worker"))
    conn.close()


def _start(proc) -> None:
    """Start ``proc`` with one BLAS thread: the child inherits the environment as it is at the start (a spawned
    child imports numpy afresh), and this process's own environment is left as it was."""
    saved = {v: os.environ.get(v) for v in BLAS_THREADS}
    try:
        os.environ.update({v: "1" for v in BLAS_THREADS})
        proc.start()
    finally:
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def run_all(modules: dict, size: str, seed: int, out_dir, *, jobs: int = 2, progress: bool = True,
            on_done=None, on_tick=None) -> dict:
    """Run every experiment of ``modules`` ({name: module name}, in report order); returns {name: Outcome} in that
    order. ``jobs`` > 1: the experiments without ``MEASURES_TIME`` run that many at a time, each in a worker process
    of its own (without progress bars: two processes cannot share one terminal line; a worker that dies takes only
    its own experiment with it), then the timed ones alone here. ``jobs`` = 1: all of them here, one after another,
    in order. ``on_done(outcome)`` is called as each finishes, ``on_tick(names)`` about once a second with the names
    of the running workers (for a live status line)."""
    if not isinstance(modules, dict) or not modules:
        validate.fail("modules", "a non-empty dict {experiment name: module name}", modules)
    size = validate.option(size, "size", ("quick", "full"))
    jobs = validate.integer(jobs, "jobs", low=1)
    progress = validate.flag(progress, "progress")
    done = {}

    def finish(outcome):
        done[outcome.name] = outcome
        if on_done is not None:
            on_done(outcome)

    waiting = [n for n, m in modules.items() if jobs > 1 and not measures_time(m)]
    if len(waiting) > 1:
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("spawn")
        running = {}                                              # name -> (process, receiving end, start time)
        while waiting or running:
            while waiting and len(running) < jobs:
                name = waiting.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(send, name, modules[name], size, seed, out_dir),
                                   name=f"experiment {name}", daemon=True)
                _start(proc)
                send.close()                                      # the child holds the only sending end
                running[name] = (proc, receive, time.perf_counter())
            wait([r for _, r, _ in running.values()], timeout=1.0)
            for name, (proc, receive, t0) in list(running.items()):
                if not receive.poll():
                    continue
                try:
                    outcome = receive.recv()
                except EOFError:                                  # the process ended without sending a result
                    proc.join()
                    outcome = Outcome(name, None, time.perf_counter() - t0, float("nan"),
                                      f"the worker process running {name} died (exit code {proc.exitcode}) before "
                                      f"it returned a result; `experiment {name}` runs it alone.\n", "worker")
                proc.join()
                del running[name]
                finish(outcome)
            if on_tick is not None:
                on_tick(list(running))
    for name, module_name in modules.items():
        if name not in done:
            finish(run_one(name, module_name, size, seed, out_dir, progress))
    return {name: done[name] for name in modules}
