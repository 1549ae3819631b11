"""The masked LM that PET and prompt tuning drive, as plain functions, and the objectives built on it.

``prompting`` is a method package: it imports no model (DESIGN: methods import core only). The
experiment binds a model to :class:`MaskedLM` (``MaskedLM.bind(models.encoder, config)``); the
objectives below are written against that interface:

    pet_loss_and_grads        PET §3.1-3.2: L = (1 - alpha) L_CE(q_p) + alpha L_MLM, gradients of all of M
    pvp_scores                s_p(l | x) for a whole set, in batches (evaluation, ensembles, iPET)
    classifier_*              the sequence-classification head C on [CLS] (supervised baseline, PET §3.3's
                              final classifier trained on soft labels by distillation)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..core import validate
from ..core.layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from . import pet
from .pet import Patterned


class MaskedLM(NamedTuple):
    """A masked LM as functions of (params, ...); padding_mask is bool (B, T), True = padded.

    forward(params, tokens, padding_mask) -> (logits (B, T, V), cache); backward(dlogits, cache) -> grads;
    encode(params, tokens, padding_mask) -> (hidden (B, T, D), cache), whose backward is ``backward`` too;
    embed(params, tokens) -> X (B, T, D); forward_embeddings(params, X, padding_mask) -> (logits, cache);
    backward_inputs(dlogits, cache) -> (dX, grads).
    """

    forward: Callable
    backward: Callable
    encode: Callable
    embed: Callable
    forward_embeddings: Callable
    backward_inputs: Callable

    @classmethod
    def bind(cls, module, config) -> "MaskedLM":
        """Bind a model module with the encoder's API (``models.encoder``) to one configuration."""
        return cls(
            forward=lambda p, t, m: module.forward(p, config, t, padding_mask=m),
            backward=module.backward,
            encode=lambda p, t, m: module.encode(p, config, t, padding_mask=m),
            embed=lambda p, t: module.embed(p, config, t),
            forward_embeddings=lambda p, x, m: module.forward_embeddings(p, config, x, padding_mask=m),
            backward_inputs=module.backward_inputs,
        )


def mask_rows(logits, mask_pos) -> np.ndarray:
    """The logits at each row's mask slot: (B, T, V), (B,) -> (B, V)."""
    return logits[np.arange(len(mask_pos)), mask_pos]


def scatter_mask_rows(dmask, mask_pos, shape) -> np.ndarray:
    """Backward of :func:`mask_rows`: (B, V) into zeros of ``shape`` (B, T, V) at the mask slots."""
    d = np.zeros(shape, dtype=dmask.dtype)
    d[np.arange(len(mask_pos)), mask_pos] = dmask
    return d


def _add(total: dict, new: dict, scale: float = 1.0) -> None:
    for k, g in new.items():
        total[k] = total[k] + scale * g if k in total else scale * g


def pet_loss_and_grads(lm: MaskedLM, params, batch: Patterned, labels, verbaliser, *, mlm_batch=None,
                       alpha: float = 1e-4):
    """PET's fine-tuning step (§3.1-3.2): the loss of one labelled batch of P(x) (and, with
    ``mlm_batch`` = (inputs, targets, padding_mask) of patterned unlabelled text, the auxiliary MLM
    term) and the gradients of every parameter of the masked LM (PET fine-tunes all of M)."""
    logits, cache = lm.forward(params, batch.ids, batch.padding_mask)              # (B, T, V)
    mlm_logits = mlm_cache = mlm_targets = None
    if mlm_batch is not None:
        inputs, mlm_targets, mlm_pad = mlm_batch
        mlm_logits, mlm_cache = lm.forward(params, inputs, mlm_pad)
    loss, c = pet.pet_loss_forward(mask_rows(logits, batch.mask_pos), labels, verbaliser, mlm_logits,
                                   mlm_targets, alpha=alpha)
    dmask, dmlm = pet.pet_loss_backward(1.0, c)
    grads = lm.backward(scatter_mask_rows(dmask, batch.mask_pos, logits.shape), cache)
    if dmlm is not None:
        _add(grads, lm.backward(dmlm, mlm_cache))
    return loss, grads


def pvp_scores(lm: MaskedLM, params, patterned: Patterned, verbaliser, *, batch: int = 256) -> np.ndarray:
    """s_p(l | x) (n, C) for every row of ``patterned`` (PET §3.1), ``batch`` rows at a time."""
    batch = validate.positive_int(batch, "batch")
    out = []
    for s in range(0, len(patterned.ids), batch):
        logits, _ = lm.forward(params, patterned.ids[s:s + batch], patterned.padding_mask[s:s + batch])
        out.append(pet.label_scores(mask_rows(logits, patterned.mask_pos[s:s + batch]), verbaliser))
    return np.concatenate(out) if out else np.zeros((0, len(verbaliser)))


# --- the sequence-classification head C (supervised baseline; PET §3.3's final classifier) -------

def init_classifier_head(rng: np.random.Generator, d_model: int, n_classes: int, dtype=np.float64) -> dict:
    """{'cls.w': (D, C) ~ N(0, 0.02^2), 'cls.b': (C,) zeros}: a new head on the [CLS] position."""
    validate.rng(rng)
    return {"cls.w": (0.02 * rng.standard_normal((d_model, n_classes))).astype(dtype),
            "cls.b": np.zeros(n_classes, dtype=dtype)}


def classifier_logits(lm: MaskedLM, params, tokens, padding_mask):
    """z = hidden[:, 0] W + b (B, C), the [CLS] row's class logits, and the caches for the backward."""
    hidden, cache = lm.encode(params, tokens, padding_mask)                       # (B, T, D)
    z, c_head = linear_forward(hidden[:, 0], params["cls.w"], params["cls.b"])    # (B, C)
    return z, (cache, c_head, hidden.shape)


def classifier_backward(dz, caches):
    """(dL/dhidden (B, T, D), the head's gradients) from dL/dz (B, C); the encoder's backward takes dhidden."""
    _, c_head, shape = caches
    dcls, dw, db = linear_backward(dz, c_head)                                    # (B, D)
    dhidden = np.zeros(shape, dtype=dcls.dtype)
    dhidden[:, 0] = dcls                                                          # only [CLS] feeds the head
    return dhidden, {"cls.w": dw, "cls.b": db}


def classifier_loss_and_grads(lm: MaskedLM, params, tokens, padding_mask, *, labels=None, soft_targets=None,
                              temperature: float = 2.0):
    """Cross-entropy on ``labels`` (supervised baseline) or, with ``soft_targets`` (n, C), the distillation
    loss T^2 KL(q || softmax(z / T)) of PET §3.3; gradients of the encoder and the head."""
    if (labels is None) == (soft_targets is None):
        validate.fail("labels", "exactly one of labels and soft_targets", "both or neither")
    z, caches = classifier_logits(lm, params, tokens, padding_mask)
    if labels is not None:
        loss, c = cross_entropy_forward(z, labels)
        dz = cross_entropy_backward(1.0, c)
    else:
        loss, c = pet.distillation_loss_forward(z, soft_targets, temperature=temperature)
        dz = pet.distillation_loss_backward(1.0, c)
    dhidden, grads = classifier_backward(dz, caches)
    _add(grads, lm.backward(dhidden, caches[0]))
    return loss, grads


def classifier_predict(lm: MaskedLM, params, tokens, padding_mask, *, batch: int = 256) -> np.ndarray:
    """Class logits (n, C) of the head, ``batch`` rows at a time."""
    out = [classifier_logits(lm, params, tokens[s:s + batch], padding_mask[s:s + batch])[0]
           for s in range(0, len(tokens), batch)]
    return np.concatenate(out)
