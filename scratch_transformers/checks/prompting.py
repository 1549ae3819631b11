"""Registry entries of prompt learning: the PET loss (with its auxiliary MLM term) and the distillation loss."""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..models import encoder
from ..prompting import corpus, lm, pet, soft_prompt

_M = "scratch_transformers.prompting.pet."


def _pet_forward(mask_logits, mlm_logits, labels, verbaliser, mlm_targets, alpha):
    loss, cache = pet.pet_loss_forward(mask_logits, labels, verbaliser, mlm_logits, mlm_targets, alpha=alpha)
    return np.asarray(loss), cache


def _pet_inputs(rng):
    v = 7
    targets = np.full((2, 4), pet.IGNORE)
    targets[0, 1], targets[1, 0], targets[1, 3] = 3, 6, 0
    # alpha = 0.3 (not the paper's 1e-4) so the MLM term's gradient is large enough to be checked
    return {"mask_logits": rng.standard_normal((3, v)), "mlm_logits": rng.standard_normal((2, 4, v)),
            "labels": np.array([0, 2, 1]), "verbaliser": np.array([5, 1, 3]), "mlm_targets": targets,
            "alpha": 0.3}


def _distill_forward(student_logits, targets, temperature):
    loss, cache = pet.distillation_loss_forward(student_logits, targets, temperature=temperature)
    return np.asarray(loss), cache


def _distill_inputs(rng):
    q = rng.random((4, 3)) + 0.1
    return {"student_logits": rng.standard_normal((4, 3)) * 2, "targets": q / q.sum(axis=1, keepdims=True),
            "temperature": 2.0}


def _soft_prompt_inputs(rng):
    return {"prompt": rng.standard_normal((3, 4)), "x_emb": rng.standard_normal((2, 5, 4))}


def _tiny_lm(rng):
    config = encoder.EncoderConfig(vocab_size=12, mask_id=corpus.MASK, d_model=8, n_layers=1, n_heads=2, max_len=6)
    params = encoder.init_params(config, rng)
    return lm.MaskedLM.bind(encoder, config), {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}


def _classifier_forward(w, b, tokens, seed):
    """The [CLS] head z = hidden[:, 0] W + b on a tiny random encoder (its weights fixed by ``seed``);
    classifier_backward returns (dL/dhidden, head grads): the check covers the head's part."""
    model, params = _tiny_lm(np.random.default_rng(seed))
    z, caches = lm.classifier_logits(model, {**params, "cls.w": w, "cls.b": b}, tokens, tokens == corpus.PAD)
    return z, caches


def _classifier_backward(dz, caches):
    _, grads = lm.classifier_backward(dz, caches)
    return grads["cls.w"], grads["cls.b"]


def _classifier_inputs(rng):
    return {"w": rng.standard_normal((8, 3)), "b": rng.standard_normal(3),
            "tokens": np.array([[3, 7, 9, 0], [3, 5, 11, 6]]), "seed": 3}


GRADCHECKS = [
    Op("prompting.pet_loss", _pet_forward, pet.pet_loss_backward, _pet_inputs,
       covers=(_M + "pet_loss_backward",), wrt=("mask_logits", "mlm_logits")),
    Op("prompting.distillation_loss", _distill_forward, pet.distillation_loss_backward, _distill_inputs,
       covers=(_M + "distillation_loss_backward",), wrt=("student_logits",)),
    Op("prompting.soft_prompt", soft_prompt.soft_prompt_forward, soft_prompt.soft_prompt_backward,
       _soft_prompt_inputs, covers=("scratch_transformers.prompting.soft_prompt.soft_prompt_backward",),
       wrt=("prompt", "x_emb")),
    Op("prompting.classifier_head", _classifier_forward, _classifier_backward, _classifier_inputs,
       covers=("scratch_transformers.prompting.lm.classifier_backward",), wrt=("w", "b")),
]
