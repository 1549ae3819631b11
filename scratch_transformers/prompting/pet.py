"""Pattern-Exploiting Training: patterns, verbalisers, the PET loss, the ensemble and its distillation.

Schick & Schütze, "Exploiting Cloze Questions for Few Shot Text Classification and Natural Language
Inference", arXiv 2001.07676 (EACL 2021). The paper numbers none of its equations; the docstrings cite
sections.

Glossary (paper -> code):
    P, pattern                   ``PVP.template``: words with "{x}" for the input and one "[MASK]"
    v, verbaliser                ``PVP.verbaliser``: (C,) token ids, v(l) for each label l (injective)
    M(w | z)                     ``mask_logits[:, w]``: the MLM's unnormalised score of token w at the mask
    s_p(l | x) = M(v(l) | P(x))  ``label_scores(mask_logits, verbaliser)``            §3.1
    q_p(l | x) = softmax_l s_p   softmax over the C verbaliser logits only             §3.1
    L = (1 - a) L_CE + a L_MLM   ``pet_loss_forward`` with ``alpha`` = a = 1e-4         §3.2
    s_M = sum_p w(p) s_p / Z     ``ensemble_scores``                                    §3.3
    q = softmax(s_M / T), T = 2  ``soft_labels``                                        §3.3
    distillation of C on q       ``distillation_loss_forward``                          §3.3

Naming trap: the reference code (timoschick/pet, ``cli.py``) calls ``alpha`` the weight of the *CE* term
(default 0.9999, ``alpha * loss + (1 - alpha) * lm_loss``); here ``alpha`` is the paper's, the weight of
the *MLM* term (1e-4). Same model, opposite naming.

The losses are means over the batch (the paper sums over T; with a fixed batch size the two differ by a
constant the learning rate absorbs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate
from ..core.functional import log_softmax, softmax
from .corpus import CLS, MASK, PAD, LabelledSet, Tokenizer

IGNORE = -100


class PVP(NamedTuple):
    """A pattern-verbaliser pair (PET §3): ``template`` words around "{x}" with exactly one "[MASK]";
    ``verbaliser`` (C,) int64 token ids, one per label."""

    name: str
    template: tuple[str, ...]
    verbaliser: np.ndarray


def make_pvp(name: str, template: str, label_words, tokenizer: Tokenizer) -> PVP:
    """A PVP from a template string such as "{x} all in all , it was [MASK] ." and one word per label."""
    words = tuple(template.split())
    if words.count("[MASK]") != 1:
        validate.fail("template", "exactly one [MASK]", f"{words.count('[MASK]')} in {template!r}")
    if words.count("{x}") != 1:
        validate.fail("template", "exactly one {x}", f"{words.count('{x}')} in {template!r}")
    verbaliser = np.array([tokenizer.id(w) for w in label_words], dtype=np.int64)
    if len(set(verbaliser.tolist())) != len(verbaliser):
        validate.fail("label_words", "distinct words (the verbaliser is injective)", list(label_words))
    return PVP(name, words, verbaliser)


class Patterned(NamedTuple):
    """P(x) for a batch: ids (n, L) int64 ([CLS] first, PAD after the end), padding_mask (n, L) bool
    (True = padded position, the encoder's convention), mask_pos (n,) the position of [MASK] in each row."""

    ids: np.ndarray
    padding_mask: np.ndarray
    mask_pos: np.ndarray


def apply_pattern(data: LabelledSet, pvp: PVP, tokenizer: Tokenizer, max_len: int) -> Patterned:
    """[CLS] + P(x) for every review; x is truncated *before* the pattern is applied, so the mask slot
    is never cut (the reference code does the same)."""
    max_len = validate.positive_int(max_len, "max_len")
    pieces = [[tokenizer.id(w)] if w != "{x}" else None for w in pvp.template]
    n_fixed = 1 + sum(len(p) for p in pieces if p is not None)
    if n_fixed >= max_len:
        validate.fail("max_len", f"more than the pattern's {n_fixed} tokens", max_len)
    n = len(data)
    ids = np.full((n, max_len), PAD, dtype=np.int64)
    mask_pos = np.zeros(n, dtype=np.int64)
    for i in range(n):
        x = data.ids[i, :min(int(data.lengths[i]), max_len - n_fixed)]
        row = [CLS]
        for p in pieces:
            if p is None:
                row.extend(x.tolist())
            else:
                if p[0] == MASK:
                    mask_pos[i] = len(row)
                row.extend(p)
        ids[i, :len(row)] = row
    return Patterned(ids, ids == PAD, mask_pos)


def label_scores(mask_logits, verbaliser) -> np.ndarray:
    """s_p(l | x) = M(v(l) | P(x)) (PET §3.1): mask_logits (n, V) -> (n, C)."""
    mask_logits = validate.float_array(mask_logits, "mask_logits", ndim=2)
    verbaliser = validate.int_array(verbaliser, "verbaliser", ndim=1, low=0, high=mask_logits.shape[1])
    return mask_logits[:, verbaliser]


class PETLossCache(NamedTuple):
    q: np.ndarray              # (n, C) softmax over the verbaliser scores
    labels: np.ndarray         # (n,)
    verbaliser: np.ndarray     # (C,)
    vocab: int                 # V
    mlm_p: np.ndarray | None   # (m, L, V) softmax of the MLM logits, or None
    mlm_targets: np.ndarray | None  # (m, L), IGNORE where not a target
    alpha: float


def _ce_mean(log_p: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Sum of -log p[target] over non-ignored rows, and their count."""
    keep = targets != IGNORE
    picked = np.take_along_axis(log_p[keep], targets[keep][:, None], axis=-1)
    return float(-np.sum(picked)), int(np.sum(keep))


def pet_loss_forward(mask_logits, labels, verbaliser, mlm_logits=None, mlm_targets=None, *, alpha: float = 1e-4):
    """L = (1 - alpha) L_CE + alpha L_MLM (PET §3.1-3.2).

    mask_logits: (n, V) MLM logits at the mask of P(x) for the labelled batch; labels: (n,) in [0, C);
    verbaliser: (C,) token ids. L_CE = mean_i -log q_p(labels_i | x_i), q_p the softmax over the C
    verbaliser scores. mlm_logits: (m, L, V) MLM logits of a patterned *unlabelled* batch, mlm_targets
    (m, L) the masked tokens' ids and IGNORE elsewhere (the pattern's own mask slot is never a target);
    L_MLM = mean over targets of -log softmax(mlm_logits)[target]. Without an MLM batch alpha must be 0.
    """
    mask_logits = validate.float_array(mask_logits, "mask_logits", ndim=2)
    n, vocab = mask_logits.shape
    verbaliser = validate.int_array(verbaliser, "verbaliser", ndim=1, low=0, high=vocab)
    labels = validate.int_array(labels, "labels", shape=(n,), low=0, high=len(verbaliser))
    alpha = validate.real(alpha, "alpha", low=0.0, high=1.0)
    if mlm_logits is None:
        if mlm_targets is not None:
            validate.fail("mlm_logits", "an array when mlm_targets is given", None)
        if alpha != 0.0:
            validate.fail("alpha", "0 when no MLM batch (mlm_logits) is given", alpha)
    else:
        mlm_logits = validate.float_array(mlm_logits, "mlm_logits", ndim=3, shape=(None, None, vocab),
                                          dtype=mask_logits.dtype)
        mlm_targets = validate.int_array(mlm_targets, "mlm_targets", shape=mlm_logits.shape[:2], low=IGNORE,
                                         high=vocab)
        if np.any((mlm_targets < 0) & (mlm_targets != IGNORE)):
            validate.fail("mlm_targets", f"token ids or {IGNORE}", "another negative value")
    s = mask_logits[:, verbaliser]                                  # (n, C)   s_p(l | x)
    log_q = log_softmax(s, axis=-1)                                 # (n, C)
    loss_ce = -float(np.mean(log_q[np.arange(n), labels])) if n else 0.0
    loss = (1.0 - alpha) * loss_ce
    mlm_p = None
    if mlm_logits is not None:
        log_p = log_softmax(mlm_logits, axis=-1)                    # (m, L, V)
        total, count = _ce_mean(log_p, mlm_targets)
        loss += alpha * total / max(count, 1)
        mlm_p = np.exp(log_p)
    cache = PETLossCache(np.exp(log_q), labels, verbaliser, vocab, mlm_p, mlm_targets, alpha)
    return loss, cache


def pet_loss_backward(dloss, cache: PETLossCache):
    """(d mask_logits (n, V), d mlm_logits (m, L, V) or None) of pet_loss_forward.

    dL/ds = (1 - alpha) (q - onehot(label)) / n, scattered into the verbaliser columns of the (n, V)
    gradient (zero elsewhere: the other tokens' logits do not enter q_p); the MLM part is the usual
    alpha (softmax - onehot) / count at the target positions. Derived in derivations/prompting.md.
    """
    if not isinstance(cache, PETLossCache):
        validate.fail("cache", "the PETLossCache of pet_loss_forward", type(cache).__name__)
    n = len(cache.labels)
    dloss = _scalar(dloss)
    ds = cache.q.copy()                                             # (n, C)
    ds[np.arange(n), cache.labels] -= 1.0
    ds *= dloss * (1.0 - cache.alpha) / max(n, 1)
    dmask = np.zeros((n, cache.vocab), dtype=cache.q.dtype)
    dmask[:, cache.verbaliser] = ds                                 # v injective: plain assignment
    dmlm = None
    if cache.mlm_p is not None:
        keep = cache.mlm_targets != IGNORE
        count = max(int(np.sum(keep)), 1)
        dmlm = np.where(keep[..., None], cache.mlm_p, 0.0).astype(cache.mlm_p.dtype)
        b, t = np.nonzero(keep)
        dmlm[b, t, cache.mlm_targets[b, t]] -= 1.0
        dmlm *= dloss * cache.alpha / count
    return dmask, dmlm


def _scalar(dloss) -> float:
    """The cotangent of a scalar loss: a Python/NumPy number or a 0-d array."""
    if np.ndim(dloss) != 0:
        validate.fail("dloss", "a scalar", f"shape {np.shape(dloss)}")
    return validate.real(float(np.asarray(dloss)), "dloss")


def ensemble_scores(scores, weights=None) -> np.ndarray:
    """s_M(l | x) = (1/Z) sum_p w(p) s_p(l | x), Z = sum_p w(p) (PET §3.3).

    scores: (P, n, C), one slice per fine-tuned model; weights: (P,) non-negative, e.g. each model's
    accuracy on T *before* training ("weighted", the paper's default), or None for uniform."""
    scores = validate.float_array(scores, "scores", ndim=3)
    if weights is None:
        weights = np.ones(scores.shape[0])
    weights = validate.float_array(np.asarray(weights, dtype=np.float64), "weights", shape=(scores.shape[0],),
                                   finite=True)
    if np.any(weights < 0) or weights.sum() <= 0:
        validate.fail("weights", "non-negative weights with a positive sum", weights)
    return np.tensordot(weights / weights.sum(), scores, axes=1).astype(scores.dtype)


def soft_labels(ensemble, temperature: float = 2.0) -> np.ndarray:
    """q(l | x) = softmax_l(s_M(l | x) / T), T = 2 (PET §3.3, after Hinton et al.): (n, C), rows sum to 1."""
    ensemble = validate.float_array(ensemble, "ensemble", ndim=2)
    temperature = validate.positive(temperature, "temperature")
    return softmax(ensemble / temperature, axis=-1)


class DistillCache(NamedTuple):
    p_student: np.ndarray   # (n, C) softmax(z / T)
    targets: np.ndarray     # (n, C) soft labels q
    temperature: float


def distillation_loss_forward(student_logits, targets, *, temperature: float = 2.0):
    """T^2 * mean_i KL(q_i || softmax(z_i / T)) (PET §3.3; the reference code's ``distillation_loss``).

    student_logits z: (n, C) of the final classifier C; targets q: (n, C) soft labels, rows summing to 1.
    KL and the soft-label cross-entropy differ by the targets' entropy, a constant: same gradient."""
    z = validate.float_array(student_logits, "student_logits", ndim=2)
    q = validate.float_array(targets, "targets", shape=z.shape, dtype=z.dtype)
    temperature = validate.positive(temperature, "temperature")
    if np.any(q < 0) or not np.allclose(q.sum(axis=-1), 1.0, atol=1e-6):
        validate.fail("targets", "rows of non-negative probabilities summing to 1", "other values")
    log_p = log_softmax(z / temperature, axis=-1)                   # (n, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    kl = np.sum(plogq - q * log_p, axis=-1)                         # (n,)
    loss = temperature ** 2 * float(np.mean(kl)) if len(z) else 0.0
    return loss, DistillCache(np.exp(log_p), q, temperature)


def distillation_loss_backward(dloss, cache: DistillCache) -> np.ndarray:
    """d student_logits = dloss * T (softmax(z / T) - q) / n."""
    if not isinstance(cache, DistillCache):
        validate.fail("cache", "the DistillCache of distillation_loss_forward", type(cache).__name__)
    dloss = _scalar(dloss)
    n = max(len(cache.targets), 1)
    return (dloss * cache.temperature / n) * (cache.p_student - cache.targets)
