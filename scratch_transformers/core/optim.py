"""Optimizers, gradient clipping and learning-rate schedules for flat parameter dicts.

Parameters live in a flat ``dict[str, np.ndarray]`` and gradients in a dict of the same keys
(DESIGN.md); an optimizer's ``step(params, grads, lr=None)`` updates ``params[k]`` *in place* for
every key present in ``grads`` (a parameter without a gradient is left alone: frozen weights, LoRA).

Glossary (code symbol -> paper symbol, Loshchilov & Hutter 2019, "Decoupled Weight Decay
Regularization", Algorithm 2 "Adam with decoupled weight decay (AdamW)"):

    grads[k]        g_t         gradient at step t
    exp_avg[k]      m_t         first-moment estimate      (Alg. 2 line 7)
    exp_avg_sq[k]   v_t         second-moment estimate     (Alg. 2 line 8)
    betas           beta_1, beta_2
    lr              alpha * eta_t  (the scheduled step size; this file folds the schedule
                                    multiplier eta_t into lr, as PyTorch does)
    weight_decay    lambda      decoupled decay, applied as theta <- theta - lr * lambda * theta

AdamW (Alg. 2, lines 6-12), per parameter, t counted from 1:

    m_t     = beta_1 m_{t-1} + (1 - beta_1) g_t
    v_t     = beta_2 v_{t-1} + (1 - beta_2) g_t^2
    m_hat   = m_t / (1 - beta_1^t),    v_hat = v_t / (1 - beta_2^t)      (bias correction)
    theta_t = theta_{t-1} - lr * lambda * theta_{t-1}                    (decoupled decay)
                          - lr * m_hat / (sqrt(v_hat) + eps)             (Adam step)

The decay never enters m or v: that is the whole difference from Adam with L2 regularisation
(where lambda*theta is added to g_t and then divided by sqrt(v_hat)). The decay is applied to the
parameter *before* the Adam step (``theta *= 1 - lr*lambda``), as torch.optim.AdamW does.

State dicts hold only numpy arrays (0-d arrays for scalars and the optimizer's type name), so a
checkpoint stores them in an ``.npz`` with ``allow_pickle=False``.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np

from . import validate

__all__ = ["SGD", "AdamW", "clip_grad_norm", "warmup_cosine", "default_no_decay"]


def default_no_decay(name: str, param: np.ndarray) -> bool:
    """Default exclusion from weight decay: 0-d and 1-d parameters (norm gains, biases).

    Matrices (linear weights, embedding tables) are decayed. This is the usual GPT-2/nanoGPT
    grouping: decaying a LayerNorm gain toward 0 or a bias toward 0 has no regularising meaning.
    """
    return param.ndim < 2


def _check_params_grads(params: dict, grads: dict) -> None:
    validate.params(params, {})
    validate.params(grads, {}, name="grads")
    for k, g in grads.items():
        if k not in params:
            validate.fail("grads", f"only keys present in params (no {k!r} in params)", repr(k))
        p = params[k]
        if not isinstance(p, np.ndarray) or p.dtype not in validate.FLOAT_DTYPES:
            validate.fail(f"params[{k!r}]", "a float32 or float64 numpy array",
                          getattr(p, "dtype", type(p).__name__))
        validate.array(g, f"grads[{k!r}]", shape=p.shape, float_dtype=True)


def _check_lr(lr, name: str = "lr") -> float:
    return validate.real(lr, name, low=0.0)


class SGD:
    """Stochastic gradient descent with heavy-ball momentum and (coupled, L2) weight decay.

    Per parameter (the torch.optim.SGD formulation with dampening 0, Sutskever et al. 2013 eq. 1
    written with the velocity scaled by 1/lr):

        g   <- g + weight_decay * theta          (L2 regularisation, coupled: enters the momentum)
        buf <- momentum * buf + g                (buf starts at 0, so buf_1 = g_1)
        theta <- theta - lr * buf

    With momentum 0 this is plain ``theta -= lr * g``.
    """

    kind = "SGD"

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.lr = _check_lr(lr)
        self.momentum = validate.real(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self.weight_decay = validate.real(weight_decay, "weight_decay", low=0.0)
        self.buffers: dict[str, np.ndarray] = {}

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """Update ``params`` in place for every key of ``grads``. ``lr`` overrides ``self.lr``."""
        _check_params_grads(params, grads)
        lr = self.lr if lr is None else _check_lr(lr)
        for k, g in grads.items():
            p = params[k]
            d = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                d = d + self.weight_decay * p
            if self.momentum:
                buf = self.buffers.get(k)
                if buf is None:
                    buf = self.buffers[k] = np.zeros_like(p)
                buf *= self.momentum
                buf += d
                d = buf
            p -= (lr * d).astype(p.dtype, copy=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {
            "type": np.array(self.kind),
            "lr": np.array(self.lr),
            "momentum": np.array(self.momentum),
            "weight_decay": np.array(self.weight_decay),
        }
        for k, buf in self.buffers.items():
            state[f"momentum_buffer/{k}"] = buf.copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        _check_state_type(state, self.kind)
        lr, momentum, weight_decay = (_state_scalar(state, k) for k in ("lr", "momentum", "weight_decay"))
        buffers = {k.split("/", 1)[1]: np.array(v) for k, v in state.items() if k.startswith("momentum_buffer/")}
        # everything read and checked: only now is the optimizer changed
        self.lr, self.momentum, self.weight_decay, self.buffers = lr, momentum, weight_decay, buffers


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2); see module doc.

    no_decay: ``callable(name) -> bool`` (or ``callable(name, param) -> bool``) naming the
    parameters to exclude from weight decay; default :func:`default_no_decay` (1-d params).
    Each parameter keeps its own step count t (a parameter that received no gradient for a while
    is bias-corrected by the number of updates it actually had, like torch.optim.AdamW).
    """

    kind = "AdamW"

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, no_decay: Callable | None = None):
        self.lr = _check_lr(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            validate.fail("betas", "a pair (beta1, beta2)", repr(betas))
        b1 = validate.real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
        b2 = validate.real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
        self.betas = (b1, b2)
        self.eps = validate.positive(eps, "eps")
        self.weight_decay = validate.real(weight_decay, "weight_decay", low=0.0)
        if no_decay is not None and not callable(no_decay):
            validate.fail("no_decay", "a callable(name) -> bool or None", type(no_decay).__name__)
        self.no_decay = no_decay
        self._no_decay_takes_param = no_decay is not None and _n_positional(no_decay) >= 2
        self.exp_avg: dict[str, np.ndarray] = {}
        self.exp_avg_sq: dict[str, np.ndarray] = {}
        self.steps: dict[str, int] = {}

    def _excluded(self, name: str, param: np.ndarray) -> bool:
        if self.no_decay is None:
            return default_no_decay(name, param)
        if self._no_decay_takes_param:
            return bool(self.no_decay(name, param))
        return bool(self.no_decay(name))

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """One AdamW update (Alg. 2 lines 6-12) of every key of ``grads``, in place."""
        _check_params_grads(params, grads)
        lr = self.lr if lr is None else _check_lr(lr)
        b1, b2 = self.betas
        for k, g in grads.items():
            p = params[k]
            g = g.astype(p.dtype, copy=False)
            if k not in self.exp_avg:
                self.exp_avg[k] = np.zeros_like(p)
                self.exp_avg_sq[k] = np.zeros_like(p)
                self.steps[k] = 0
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            t = self.steps[k] = self.steps[k] + 1
            m *= b1                                             # line 7: m_t = b1 m_{t-1} + (1-b1) g_t
            m += (1.0 - b1) * g
            v *= b2                                             # line 8: v_t = b2 v_{t-1} + (1-b2) g_t^2
            v += (1.0 - b2) * (g * g)
            bc1 = 1.0 - b1 ** t                                 # lines 9-10: bias corrections
            bc2 = 1.0 - b2 ** t
            if self.weight_decay and not self._excluded(k, p):
                p *= p.dtype.type(1.0 - lr * self.weight_decay)  # line 12, decoupled decay term
            denom = np.sqrt(v / bc2) + self.eps                 # sqrt(v_hat) + eps
            p -= ((lr / bc1) * m / denom).astype(p.dtype, copy=False)  # line 12, Adam term

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {
            "type": np.array(self.kind),
            "lr": np.array(self.lr),
            "betas": np.array(self.betas, dtype=np.float64),
            "eps": np.array(self.eps),
            "weight_decay": np.array(self.weight_decay),
        }
        for k in self.exp_avg:
            state[f"exp_avg/{k}"] = self.exp_avg[k].copy()
            state[f"exp_avg_sq/{k}"] = self.exp_avg_sq[k].copy()
            state[f"step/{k}"] = np.array(self.steps[k], dtype=np.int64)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (``no_decay`` is code, not state: it is kept)."""
        _check_state_type(state, self.kind)
        lr, eps, weight_decay = (_state_scalar(state, k) for k in ("lr", "eps", "weight_decay"))
        if "betas" not in state or np.shape(state["betas"]) != (2,):
            validate.fail("state", "a 'betas' entry of shape (2,)", "none" if "betas" not in state
                          else f"shape {np.shape(state['betas'])}")
        b = np.asarray(state["betas"], dtype=np.float64)
        exp_avg, exp_avg_sq, steps = {}, {}, {}
        names = {k.split("/", 1)[1] for k in state if k.split("/", 1)[0] in ("exp_avg", "exp_avg_sq", "step")}
        for name in sorted(names):
            for key in (f"exp_avg/{name}", f"exp_avg_sq/{name}", f"step/{name}"):
                if key not in state:
                    validate.fail("state", f"an entry {key!r} (each parameter has exp_avg, exp_avg_sq and step)", "none")
            exp_avg[name] = np.array(state[f"exp_avg/{name}"])
            exp_avg_sq[name] = np.array(state[f"exp_avg_sq/{name}"])
            if exp_avg_sq[name].shape != exp_avg[name].shape:
                validate.fail(f"state['exp_avg_sq/{name}']", f"shape {exp_avg[name].shape} (as exp_avg)",
                              exp_avg_sq[name].shape)
            steps[name] = int(state[f"step/{name}"])
        # everything read and checked: only now is the optimizer changed
        self.lr, self.betas, self.eps, self.weight_decay = lr, (float(b[0]), float(b[1])), eps, weight_decay
        self.exp_avg, self.exp_avg_sq, self.steps = exp_avg, exp_avg_sq, steps


def _n_positional(fn: Callable) -> int:
    """Number of positional parameters ``fn`` accepts (a large number for ``*args``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    n = 0
    for prm in sig.parameters.values():
        if prm.kind == prm.VAR_POSITIONAL:
            return 1 << 30
        if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def _state_scalar(state, key: str) -> float:
    """A scalar entry of a state dict, named in the error if it is missing."""
    if key not in state or np.ndim(state[key]) != 0:
        validate.fail("state", f"a scalar entry {key!r}", "none" if key not in state else f"shape {np.shape(state[key])}")
    return float(state[key])


def _check_state_type(state, kind: str) -> None:
    if not isinstance(state, dict) and not hasattr(state, "keys"):
        validate.fail("state", "a dict of numpy arrays from state_dict()", type(state).__name__)
    if "type" not in state:
        validate.fail("state", f"a {kind} state dict with a 'type' entry", "no 'type' entry")
    got = str(np.asarray(state["type"]))
    if got != kind:
        validate.fail("state", f"a {kind} state dict", f"a {got} state dict")


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    total_norm = sqrt(sum_k ||grads[k]||_F^2) over the whole dict (Pascanu et al. 2013, Alg. 2).
    If total_norm > max_norm every gradient is multiplied by max_norm / total_norm, so the new
    global norm equals max_norm (no epsilon fudge). Returns the norm *before* clipping (a
    non-finite norm is returned unchanged and the gradients are left alone, so the caller sees it).
    """
    validate.params(grads, {}, name="grads")
    max_norm = validate.positive(max_norm, "max_norm")
    total_sq = 0.0
    for k, g in grads.items():
        g = validate.float_array(g, f"grads[{k!r}]")
        total_sq += float(np.sum(np.square(g, dtype=np.float64)))
    total = math.sqrt(total_sq)
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / total
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


def warmup_cosine(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> float:
    """Linear warm-up then cosine decay (Loshchilov & Hutter 2017, SGDR eq. 5, one cycle).

    step counts from 0. During warm-up (step < warmup_steps): lr = base_lr * (step+1)/warmup_steps,
    so the last warm-up step reaches base_lr. Then with progress
    p = (step - warmup_steps) / (total_steps - warmup_steps) clipped to [0, 1]:

        lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2

    (eq. 5 with T_cur/T_i = p), which is base_lr at p = 0 and min_lr from total_steps on.
    """
    step = validate.integer(step, "step", low=0)
    base_lr = validate.real(base_lr, "base_lr", low=0.0)
    min_lr = validate.real(min_lr, "min_lr", low=0.0, high=base_lr)
    total_steps = validate.positive_int(total_steps, "total_steps")
    warmup_steps = validate.integer(warmup_steps, "warmup_steps", low=0, high=total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = total_steps - warmup_steps
    if span == 0:
        return min_lr
    p = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
