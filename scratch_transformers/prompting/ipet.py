"""iPET (Schick & Schütze, arXiv 2001.07676, §3.4): generations of PET models, each trained on its
labelled set enlarged with unlabelled examples labelled by an ensemble of the *other* models.

Generation j trains, for every pattern p_i, a model M^j_i on T^j_i = T ∪ ⋃_l T_N(l), where

1. N ⊂ M^{j-1} \\ {M^{j-1}_i} is drawn at random, |N| = λ (n - 1) (at least one), λ = 0.25;
2. T_N = {(x, argmax_l s_N(l | x)) : x ∈ D};
3. for each label l, c_j(l) - c_0(l) examples of T_N labelled l are drawn, each with probability
   proportional to the ensemble's confidence in l (the paper writes ∝ s_N(l | x); scores are logits and
   may be negative, so, as the reference code does, the softmax probability is used);
4. c_j(l) = d · c_{j-1}(l), d = 5, keeping T's label ratio; k = ceil(log_d(1000 / |T|)) generations.

Zero-shot iPET starts from untrained models and c_1(l) = 10 / C; when T_N has no or too few examples
labelled l, the candidates are the 100 examples of D with the highest s_N(l | x), even if l is not
their argmax (§3.4, "iPET with zero examples"). With too few candidates in the ordinary case, examples
are drawn with replacement (the reference code upsamples).
"""

from __future__ import annotations

import math

import numpy as np

from ..core import validate
from .corpus import LabelledSet


def n_generations(n_train: int, d: int = 5, target: int = 1000) -> int:
    """k = ceil(log_d(target / |T|)) (§3.4): 3 for |T| = 10, 2 for 50 and 100, 0 for 1000."""
    n_train = validate.positive_int(n_train, "n_train")
    d = validate.integer(d, "d", low=2)
    if n_train >= target:
        return 0
    return math.ceil(math.log(target / n_train) / math.log(d) - 1e-12)


def label_counts(train_labels, n_classes: int, generation: int, *, d: int = 5) -> np.ndarray:
    """c_j(l) = d^j c_0(l) (§3.4); with an empty T (zero-shot iPET), c_1(l) = 10 / C and c_j = d c_{j-1}."""
    train_labels = validate.int_array(train_labels, "train_labels", ndim=1, low=0, high=n_classes)
    generation = validate.integer(generation, "generation", low=1)
    c0 = np.bincount(train_labels, minlength=n_classes)
    if len(train_labels) == 0:
        return np.full(n_classes, int(round(10 / n_classes * d ** (generation - 1))), dtype=np.int64)
    return (c0 * d ** generation).astype(np.int64)


def choose_teachers(rng: np.random.Generator, n_models: int, student: int, *, lam: float = 0.25) -> np.ndarray:
    """N: λ(n - 1) models drawn without replacement from the previous generation, the student's own
    predecessor excluded (at least one)."""
    validate.rng(rng)
    n_models = validate.integer(n_models, "n_models", low=2)
    student = validate.integer(student, "student", low=0, high=n_models - 1)
    lam = validate.real(lam, "lam", low=0.0, high=1.0, low_open=True)
    others = np.array([m for m in range(n_models) if m != student])
    k = max(1, int(round(lam * (n_models - 1))))
    return np.sort(rng.choice(others, size=k, replace=False))


def enlarge_training_set(rng: np.random.Generator, train: LabelledSet, unlabelled: LabelledSet, probs,
                         counts, *, zero_shot_pool: int = 100) -> LabelledSet:
    """T^j_i = T ∪ ⋃_l T_N(l) (§3.4 step 3).

    probs: (|D|, C) the teachers' ensemble distribution softmax(s_N) on D; counts: (C,) c_j(l). For every
    label l, c_j(l) - c_0(l) examples labelled l are drawn from those whose argmax is l, with
    probability ∝ probs[:, l] (without replacement when there are enough, else with). When none has
    argmax l, the pool is the ``zero_shot_pool`` examples with the highest probs[:, l].
    """
    validate.rng(rng)
    n_d = len(unlabelled)
    probs = validate.float_array(probs, "probs", ndim=2, shape=(n_d, None), finite=True)
    n_classes = probs.shape[1]
    counts = validate.int_array(counts, "counts", shape=(n_classes,), low=0)
    if np.any(probs < 0):
        validate.fail("probs", "probabilities (>= 0)", "negative entries")
    c0 = np.bincount(train.labels, minlength=n_classes) if len(train) else np.zeros(n_classes, dtype=np.int64)
    argmax = np.argmax(probs, axis=1)
    chosen, chosen_labels = [], []
    for label in range(n_classes):
        need = int(counts[label] - c0[label])
        if need <= 0 or n_d == 0:
            continue
        pool = np.flatnonzero(argmax == label)
        if len(pool) == 0:
            pool = np.argsort(-probs[:, label], kind="stable")[:zero_shot_pool]
        w = probs[pool, label]
        w = w / w.sum() if w.sum() > 0 else np.full(len(pool), 1.0 / len(pool))
        replace = len(pool) < need or np.count_nonzero(w) < need
        idx = rng.choice(pool, size=need, replace=replace, p=w)
        chosen.append(idx)
        chosen_labels.append(np.full(need, label, dtype=np.int64))
    if not chosen:
        return train
    idx = np.concatenate(chosen)
    extra = LabelledSet(unlabelled.ids[idx], unlabelled.lengths[idx], np.concatenate(chosen_labels))
    if len(train) == 0:
        return extra
    width = max(train.ids.shape[1], extra.ids.shape[1])

    def widen(a):
        return np.pad(a, ((0, 0), (0, width - a.shape[1])))

    return LabelledSet(np.concatenate([widen(train.ids), widen(extra.ids)]),
                       np.concatenate([train.lengths, extra.lengths]),
                       np.concatenate([train.labels, extra.labels]))
