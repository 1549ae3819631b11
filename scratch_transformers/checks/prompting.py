"""Registry entries of prompt learning: the PET loss (with its auxiliary MLM term) and the distillation loss."""

from __future__ import annotations

import numpy as np

from ..core.registry import Op
from ..prompting import pet

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


GRADCHECKS = [
    Op("prompting.pet_loss", _pet_forward, pet.pet_loss_backward, _pet_inputs,
       covers=(_M + "pet_loss_backward",), wrt=("mask_logits", "mlm_logits")),
    Op("prompting.distillation_loss", _distill_forward, pet.distillation_loss_backward, _distill_inputs,
       covers=(_M + "distillation_loss_backward",), wrt=("student_logits",)),
]
