"""Soft prompt tuning (Lester, Al-Rfou & Constant, arXiv 2104.08691, §2): p learnable vectors P_e (p, e)
prepended to the embedded input X_e (n, e); the model is frozen and only P_e is trained:

    H_0 = [P_e ; X_e]                      (p + n, e)      ``soft_prompt_forward``
    maximise log Pr_{theta; theta_P}(Y | [P; X]) by backprop into P_e only

The backward runs through the frozen encoder down to its input embeddings (``MaskedLM.backward_inputs``)
and keeps the prompt rows: dP_e = sum over the batch of dH_0[:, :p] (``soft_prompt_backward``); the
parameter gradients the encoder computes on the way are discarded, never applied.

Target. Lester et al. use a text-to-text T5 whose output is the label word; on our masked LM the
equivalent is the PET cloze (a pattern with [MASK], the verbaliser's label words scored at the mask),
so prompt tuning here learns P_e in front of P(x) with the loss of ``pet.pet_loss_forward`` (alpha = 0).

Positions: the encoder's positions are learned and absolute, so the prompt rows take positions
0..p-1 and the real tokens shift by p (T5's relative positions make this moot in the paper); training
and evaluation do the same, and max_len must hold p + T.

Initialisation (§3.2 of the paper's ablations, "Prompt Initialization"): ``"vocab"`` copies the
embeddings of tokens sampled from the most frequent ones (the paper: T5's 5,000 most common), ``"labels"``
the label words' embeddings (rows beyond the C labels sampled as "vocab", as the authors' code does),
``"uniform"`` U[-0.5, 0.5] (the authors' code's random init), ``"normal"`` N(0, 1) (peft's default
random init, far off the embedding manifold of a small model whose embeddings have std ~0.02).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..core import validate
from . import pet
from .lm import MaskedLM, mask_rows, scatter_mask_rows
from .pet import Patterned

INITS = ("vocab", "labels", "uniform", "normal")


class SoftPromptCache(NamedTuple):
    p: int              # number of prompt rows
    batch: int          # B
    shape: tuple        # (B, p + T, D) of the output


def soft_prompt_forward(prompt, x_emb):
    """H_0 = [P_e ; X_e] for every row of the batch: prompt (p, D), x_emb (B, T, D) -> (B, p + T, D)."""
    x_emb = validate.float_array(x_emb, "x_emb", ndim=3)
    prompt = validate.float_array(prompt, "prompt", ndim=2, shape=(None, x_emb.shape[2]), dtype=x_emb.dtype)
    B = x_emb.shape[0]
    h0 = np.concatenate([np.broadcast_to(prompt, (B,) + prompt.shape), x_emb], axis=1)
    return h0, SoftPromptCache(prompt.shape[0], B, h0.shape)


def soft_prompt_backward(dh0, cache: SoftPromptCache):
    """(dP_e (p, D) = sum_b dH_0[b, :p], dX_e (B, T, D) = dH_0[:, p:])."""
    if not isinstance(cache, SoftPromptCache):
        validate.fail("cache", "the SoftPromptCache of soft_prompt_forward", type(cache).__name__)
    dh0 = validate.float_array(dh0, "dh0", shape=cache.shape)
    return dh0[:, :cache.p].sum(axis=0), dh0[:, cache.p:]


def init_prompt(rng: np.random.Generator, table, n_prompt: int, how: str = "vocab", *, frequent_ids=None,
                label_ids=None) -> np.ndarray:
    """A (n_prompt, D) soft prompt initialised as ``how`` (see the module docstring).

    table: the frozen token-embedding table (V, D); frequent_ids: ids to sample from for "vocab" (and
    the rows "labels" does not fill), most frequent first; label_ids: the label words' ids for "labels".
    """
    validate.rng(rng)
    table = validate.float_array(table, "table", ndim=2, finite=True)
    n_prompt = validate.positive_int(n_prompt, "n_prompt")
    validate.option(how, "how", INITS)
    d = table.shape[1]
    if how == "uniform":
        return rng.uniform(-0.5, 0.5, size=(n_prompt, d)).astype(table.dtype)
    if how == "normal":
        return rng.standard_normal((n_prompt, d)).astype(table.dtype)
    if frequent_ids is None:
        validate.fail("frequent_ids", f"token ids to sample from for how={how!r}", None)
    frequent_ids = validate.int_array(frequent_ids, "frequent_ids", ndim=1, low=0, high=table.shape[0])
    rows = table[rng.choice(frequent_ids, size=n_prompt, replace=len(frequent_ids) < n_prompt)].copy()
    if how == "labels":
        if label_ids is None:
            validate.fail("label_ids", "the label words' ids for how='labels'", None)
        label_ids = validate.int_array(label_ids, "label_ids", ndim=1, low=0, high=table.shape[0])
        k = min(len(label_ids), n_prompt)
        rows[:k] = table[label_ids[:k]]
    return rows


def prompt_tuning_loss_and_grad(lm: MaskedLM, params, prompt, batch: Patterned, labels, verbaliser):
    """Loss of the cloze task with the soft prompt in front of P(x), and dL/dP_e (p, D) only.

    The frozen ``params`` are read, never written; the encoder's parameter gradients are discarded."""
    x_emb = lm.embed(params, batch.ids)                                           # (B, T, D)
    h0, c_prompt = soft_prompt_forward(prompt, x_emb)                             # (B, p + T, D)
    p = c_prompt.p
    pad = np.concatenate([np.zeros((len(batch.ids), p), dtype=bool), batch.padding_mask], axis=1)
    logits, cache = lm.forward_embeddings(params, h0, pad)                        # (B, p + T, V)
    mask_pos = batch.mask_pos + p                                                 # the mask moved by p
    loss, c = pet.pet_loss_forward(mask_rows(logits, mask_pos), labels, verbaliser, alpha=0.0)
    dmask, _ = pet.pet_loss_backward(1.0, c)
    dh0, _frozen_param_grads = lm.backward_inputs(scatter_mask_rows(dmask, mask_pos, logits.shape), cache)
    dprompt, _ = soft_prompt_backward(dh0, c_prompt)
    return loss, dprompt


def prompt_scores(lm: MaskedLM, params, prompt, patterned: Patterned, verbaliser, *, batch: int = 256):
    """s(l | x) (n, C) with the soft prompt in front of P(x)."""
    out = []
    p = len(prompt)
    for s in range(0, len(patterned.ids), batch):
        ids, pm = patterned.ids[s:s + batch], patterned.padding_mask[s:s + batch]
        h0, _ = soft_prompt_forward(prompt, lm.embed(params, ids))
        pad = np.concatenate([np.zeros((len(ids), p), dtype=bool), pm], axis=1)
        logits, _ = lm.forward_embeddings(params, h0, pad)
        out.append(pet.label_scores(mask_rows(logits, patterned.mask_pos[s:s + batch] + p), verbaliser))
    return np.concatenate(out)
