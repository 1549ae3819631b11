"""The training loop, evaluation hooks and atomic, exactly-resumable checkpoints.

One step of :func:`train` (step counts from 0, ``history.steps`` records step+1 = steps done):

    batch        = next_batch(rng, step)              # data drawn from the loop's rng
    loss, grads  = loss_and_grads(params, batch, rng)  # may draw from rng too (dropout)
    gnorm        = clip_grad_norm(grads, clip_norm)    # optional
    optimizer.step(params, grads, lr=lr_schedule(step))

Everything random flows through the one ``rng`` the caller passes, so a run is a pure function
of (initial params, optimizer, seed). A checkpoint stores the params, the optimizer state, the
step, the rng's bit-generator state (JSON in a 0-d unicode array) and the history, all as plain
arrays in one ``.npz`` readable with ``allow_pickle=False``; it is written with
:func:`core.io.atomic_write` (temporary file in the same directory, fsync, ``os.replace``), so a
crash never leaves a half-written checkpoint. Resuming restores all of it, and the resumed
run's losses are bit-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from tqdm import tqdm

from . import validate
from .io import atomic_write
from .optim import clip_grad_norm

__all__ = ["History", "Checkpoint", "train", "save_checkpoint", "load_checkpoint", "restore_rng"]

_FORMAT = "scratch_transformers.checkpoint.v1"


@dataclass
class History:
    """What a run recorded. ``losses[i]`` is the training loss of step ``steps[i] - 1``."""

    steps: list = field(default_factory=list)       # steps done after each recorded step (1, 2, ...)
    losses: list = field(default_factory=list)      # training loss per step (before its update)
    lrs: list = field(default_factory=list)         # learning rate used (nan: the optimizer's own)
    grad_norms: list = field(default_factory=list)  # global grad norm before clipping (nan: no clip)
    evals: list = field(default_factory=list)       # (steps done, {metric: value})
    wall_time: float = 0.0                          # seconds spent in train(), summed over resumes

    def to_json(self) -> str:
        return json.dumps({"steps": self.steps, "losses": self.losses, "lrs": self.lrs,
                           "grad_norms": self.grad_norms,
                           "evals": [[s, d] for s, d in self.evals], "wall_time": self.wall_time})

    @classmethod
    def from_json(cls, text: str) -> "History":
        d = json.loads(text)
        return cls(steps=[int(s) for s in d["steps"]], losses=[float(x) for x in d["losses"]],
                   lrs=[float(x) for x in d["lrs"]], grad_norms=[float(x) for x in d["grad_norms"]],
                   evals=[(int(s), {k: float(v) for k, v in m.items()}) for s, m in d["evals"]],
                   wall_time=float(d["wall_time"]))


class Checkpoint(NamedTuple):
    params: dict            # name -> array
    optimizer_state: dict   # as from optimizer.state_dict()
    step: int               # steps done
    rng: np.random.Generator  # a new generator in the saved state
    rng_state: dict         # the bit generator's state dict
    history: History


# --- rng state <-> JSON (MT19937's state holds an ndarray; PCG64/Philox/SFC64 hold ints) ---------

def _to_jsonable(obj):
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _from_jsonable(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_jsonable(v) for k, v in obj.items()}
    return obj


def restore_rng(state: dict) -> np.random.Generator:
    """A new ``np.random.Generator`` whose bit generator is in ``state`` (``bit_generator.state``)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, str(name), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, np.random.BitGenerator):
        validate.fail("rng_state", "a bit_generator state dict (PCG64, MT19937, ...)", repr(name))
    bg = cls()
    bg.state = state
    return np.random.Generator(bg)


# --- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(path, params: dict, optimizer, step: int, rng: np.random.Generator,
                    history: History | None = None) -> Path:
    """Write a checkpoint atomically to ``path`` (an ``.npz``; see module doc). Returns the path."""
    path = Path(os.fspath(path))
    validate.params(params, {})
    step = validate.integer(step, "step", low=0)
    rng = validate.rng(rng)
    if not hasattr(optimizer, "state_dict"):
        validate.fail("optimizer", "an optimizer with state_dict()", type(optimizer).__name__)
    history = History() if history is None else history
    arrays = {"format": np.array(_FORMAT), "step": np.array(step, dtype=np.int64),
              "rng": np.array(json.dumps(_to_jsonable(rng.bit_generator.state))),
              "history": np.array(history.to_json())}
    for k, v in params.items():
        arrays[f"params/{k}"] = validate.array(v, f"params[{k!r}]")
    for k, v in optimizer.state_dict().items():
        arrays[f"optim/{k}"] = np.asarray(v)
    for k, v in arrays.items():
        if v.dtype == object:
            validate.fail(k, "a numeric or string array (no pickled objects)", "dtype object")
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``allow_pickle=False``)."""
    path = Path(os.fspath(path))
    if not path.is_file():
        validate.fail("path", "an existing checkpoint file", str(path))
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != _FORMAT:
            validate.fail("path", f"a checkpoint in format {_FORMAT}", str(path))
        params = {k[len("params/"):]: z[k] for k in z.files if k.startswith("params/")}
        optim_state = {k[len("optim/"):]: z[k] for k in z.files if k.startswith("optim/")}
        step = int(z["step"])
        rng_state = _from_jsonable(json.loads(str(z["rng"])))
        history = History.from_json(str(z["history"]))
    return Checkpoint(params, optim_state, step, restore_rng(rng_state), rng_state, history)


def _check_optimizer_state(state: dict, params: dict, optimizer) -> None:
    """The checkpoint's optimizer state loads into ``optimizer`` (tried on a copy) and every per-parameter
    entry ("<kind>/<name>", e.g. exp_avg/w) has its parameter's shape. Raises ValueError, changes nothing."""
    for key, value in state.items():
        kind, _, name = key.partition("/")
        if name and np.ndim(value) > 0 and (name not in params or np.shape(value) != params[name].shape):
            want = f"shape {params[name].shape} (of params[{name!r}])" if name in params else "a parameter's name"
            validate.fail(f"checkpoint_path (optimizer state {key!r})", want, f"shape {np.shape(value)}")
    try:
        copy.deepcopy(optimizer).load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        validate.fail("checkpoint_path", "optimizer state that fits the optimizer", f"{type(err).__name__}: {err}")


# --- the loop ------------------------------------------------------------------------------------

def train(loss_and_grads: Callable, params: dict, optimizer, next_batch: Callable, *, steps: int,
          rng: np.random.Generator, lr_schedule: Callable | None = None, clip_norm: float | None = None,
          eval_fn: Callable | None = None, eval_every: int = 0, checkpoint_path=None,
          checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
          desc: str = "train", stop_on_nonfinite: bool = True) -> History:
    """Train ``params`` in place for ``steps`` steps in total; return the :class:`History`.

    loss_and_grads(params, batch, rng) -> (loss, grads); next_batch(rng, step) -> batch;
    lr_schedule(step) -> lr (default: the optimizer's lr); clip_norm: global grad-norm clipping;
    eval_fn(params) -> {metric: float}, called every ``eval_every`` steps and after the last one.
    checkpoint_path: written every ``checkpoint_every`` steps and at the end. resume=True: if the
    checkpoint exists, restore params (in place, same arrays), optimizer state, rng state and
    history from it and continue from its step up to ``steps``. ``steps`` counts from the start
    of the run, so a resumed call with the same ``steps`` finishes the original run.
    stop_on_nonfinite: raise FloatingPointError when a loss is NaN/inf (after recording it).
    """
    validate.function(loss_and_grads, "loss_and_grads", "(params, batch, rng) -> (loss, grads)")
    validate.function(next_batch, "next_batch", "(rng, step) -> batch")
    validate.params(params, {})
    if not hasattr(optimizer, "step"):
        validate.fail("optimizer", "an optimizer with step(params, grads, lr=None)", type(optimizer).__name__)
    steps, rng = validate.integer(steps, "steps", low=0), validate.rng(rng)
    resume = validate.flag(resume, "resume")
    progress = validate.flag(progress, "progress")
    stop_on_nonfinite = validate.flag(stop_on_nonfinite, "stop_on_nonfinite")
    validate.function(lr_schedule, "lr_schedule", "(step) -> lr", optional=True)
    clip_norm = None if clip_norm is None else validate.positive(clip_norm, "clip_norm")
    eval_every = validate.integer(eval_every, "eval_every", low=0)
    checkpoint_every = validate.integer(checkpoint_every, "checkpoint_every", low=0)
    validate.function(eval_fn, "eval_fn", "(params) -> dict[str, float]", optional=True)
    if eval_every and eval_fn is None:
        validate.fail("eval_fn", "a callable when eval_every > 0", None)
    if (checkpoint_every or resume) and checkpoint_path is None:
        validate.fail("checkpoint_path", "a path when checkpoint_every > 0 or resume=True", None)

    history, start = History(), 0
    if resume and Path(checkpoint_path).is_file():
        ck = load_checkpoint(checkpoint_path)
        # Everything is checked before anything changes: a failed resume leaves the caller's params,
        # optimizer and rng as they were.
        if set(ck.params) != set(params):
            validate.fail("checkpoint_path", f"a checkpoint with params {sorted(params)}", sorted(ck.params))
        for k, v in ck.params.items():
            if params[k].shape != v.shape or params[k].dtype != v.dtype:
                validate.fail(f"params[{k!r}]", f"shape {v.shape} dtype {v.dtype} as in the checkpoint",
                              f"shape {params[k].shape} dtype {params[k].dtype}")
        if ck.step > steps:
            validate.fail("steps", f"at least the checkpoint's step {ck.step}", steps)
        kind = rng.bit_generator.state.get("bit_generator")
        if ck.rng_state.get("bit_generator") != kind:
            validate.fail("rng", f"a {ck.rng_state.get('bit_generator')} generator, as in the checkpoint", kind)
        _check_optimizer_state(ck.optimizer_state, params, optimizer)
        optimizer.load_state_dict(ck.optimizer_state)
        for k, v in ck.params.items():
            params[k][...] = v
        rng.bit_generator.state = ck.rng_state
        history, start = ck.history, ck.step

    def run_eval(done: int) -> None:
        metrics = eval_fn(params)
        if not isinstance(metrics, dict):
            validate.fail("eval_fn", "to return a dict[str, float]", type(metrics).__name__)
        history.evals.append((done, {k: float(v) for k, v in metrics.items()}))

    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress,
               leave=False, dynamic_ncols=True)
    try:
        for step in bar:
            batch = next_batch(rng, step)
            loss, grads = loss_and_grads(params, batch, rng)
            loss = float(loss)
            gnorm = clip_grad_norm(grads, clip_norm) if clip_norm is not None else math.nan
            lr = None if lr_schedule is None else float(lr_schedule(step))
            done = step + 1
            history.steps.append(done)
            history.losses.append(loss)
            history.lrs.append(math.nan if lr is None else lr)
            history.grad_norms.append(gnorm)
            if not math.isfinite(loss) and stop_on_nonfinite:
                raise FloatingPointError(f"train: loss is {loss} at step {step}")
            optimizer.step(params, grads, lr=lr)
            if progress and (done % 10 == 0 or done == steps):
                bar.set_postfix(loss=f"{loss:.4f}")
            if eval_fn is not None and eval_every and done % eval_every == 0:
                run_eval(done)
            if checkpoint_every and done % checkpoint_every == 0 and done != steps:
                history.wall_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                save_checkpoint(checkpoint_path, params, optimizer, done, rng, history)
    finally:
        bar.close()
    if eval_fn is not None and (not history.evals or history.evals[-1][0] != steps):
        run_eval(steps)
    history.wall_time += time.perf_counter() - t0
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, params, optimizer, steps, rng, history)
    return history
