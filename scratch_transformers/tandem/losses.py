"""Tandem-CE and Tandem-Distil (Tandem Transformers, arXiv 2402.08644, §3 "Training"; §4, Table 1).

Tandem-CE:     L = CE(M_S logits, ground truth)
Tandem-Distil: L = (1 - lambda) CE(M_S logits, ground truth) + lambda CE(softmax(M_L logits / T), M_S logits / T)
               with lambda = 0.5 in the paper (the second stage; the first stage is Tandem-CE). The
               temperature T is not given in the paper; T = 1 by default here.

The distillation term (logit distillation against the frozen M_L):

    D = -(1/N) sum_r sum_v p^T_rv log s_rv,   p^T_r = softmax(t_r / T),  s_r = softmax(z_r / T)
    dD/dz_r = (s_r - p^T_r) / (T N)                      (derivations/tandem.md#losses)

over the N rows whose target is not ``ignore_index``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import log_softmax, softmax
from ..core.layers import cross_entropy_backward, cross_entropy_forward
from . import model


class DistillationCache(NamedTuple):
    s: np.ndarray          # (..., V) softmax(z / T) of the student
    p_teacher: np.ndarray  # (..., V) softmax(t / T)
    rows: np.ndarray       # (...,) bool: rows that count
    temperature: float
    n: int                 # number of rows that count (>= 1)


def distillation_forward(logits, teacher_logits, *, temperature=1.0, rows=None):
    """Mean soft cross-entropy of the student ``logits`` (..., V) against softmax(teacher_logits / T).

    rows: bool (...) selecting the rows that count (default all). NaN in either input propagates.
    Returns (loss, DistillationCache)."""
    logits = validate.float_array(logits, "logits", min_ndim=1)
    teacher_logits = validate.array(teacher_logits, "teacher_logits", shape=logits.shape, dtype=logits.dtype)
    temperature = validate.positive(temperature, "temperature")
    rows = np.ones(logits.shape[:-1], dtype=bool) if rows is None else validate.bool_array(
        rows, "rows", shape=logits.shape[:-1])
    n = max(int(rows.sum()), 1)
    z, t = logits / temperature, teacher_logits / temperature
    p_teacher = softmax(t, axis=-1)
    per_row = -np.sum(p_teacher * log_softmax(z, axis=-1), axis=-1)                 # (...)
    loss = np.sum(np.where(rows, per_row, 0.0)) / n
    return loss, DistillationCache(softmax(z, axis=-1), p_teacher, rows, float(temperature), n)


def distillation_backward(dloss, cache: DistillationCache) -> np.ndarray:
    """d logits = dloss (s - p_teacher) / (T N) on the counted rows, 0 elsewhere."""
    if not isinstance(cache, DistillationCache):
        validate.fail("cache", "the DistillationCache of distillation_forward", type(cache).__name__)
    dloss = validate.real(float(dloss), "dloss")
    g = (cache.s - cache.p_teacher) * (dloss / (cache.temperature * cache.n))
    return np.where(cache.rows[..., None], g, 0.0).astype(cache.s.dtype)


def loss_and_grads(params, config, tokens, targets, ml_states, ml_logits=None, *, distil_weight=0.0,
                   temperature=1.0, ignore_index=-100):
    """Tandem-CE (distil_weight = 0) or Tandem-Distil (distil_weight = lambda, M_L's ``ml_logits``
    (B, S, V) as the teacher) of the Tandem M_S; returns (loss, grads of M_S and the projections)."""
    lam = validate.real(distil_weight, "distil_weight", low=0.0, high=1.0)
    if lam > 0 and ml_logits is None:
        validate.fail("ml_logits", "M_L's logits (B, S, V) when distil_weight > 0", None)
    logits, cache = model.forward(params, config, tokens, ml_states)
    targets = validate.int_array(targets, "targets", shape=logits.shape[:2])
    ce, c_ce = cross_entropy_forward(logits, targets, ignore_index=ignore_index)
    dlogits = cross_entropy_backward(1.0 - lam, c_ce)
    loss = (1.0 - lam) * ce
    if lam > 0:
        dist, c_d = distillation_forward(logits, ml_logits, temperature=temperature, rows=targets != ignore_index)
        loss = loss + lam * dist
        dlogits = dlogits + distillation_backward(lam, c_d)
    return float(loss), model.backward(dlogits, cache)
