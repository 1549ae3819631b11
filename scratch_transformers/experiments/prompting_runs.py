"""The training runs of the prompt-learning experiment: MLM pretraining (cached), the supervised
baseline, PET (one model per pattern, weighted ensemble, distillation), iPET generations and soft
prompt tuning. ``experiments/prompting.py`` lays them out like PET's Table 1.

Every fine-tuning run starts from the same pretrained masked LM and uses the one training recipe of
the experiments (AdamW, warmup-cosine, clipping) with the learning rate of its kind chosen once by the
same small sweep (``experiments.protocol.tune``) at |T| = 50 on a validation split drawn like T, so no
method is tuned on the test set and every method gets the same procedure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core.io import atomic_write
from ..models import encoder
from ..prompting import corpus, ipet, lm, pet, soft_prompt
from .common import fit

PATTERNS = (  # PET §4.1's Yelp patterns, in this grammar's words
    ("after: x all in all , it was _ .", "{x} all in all , it was [MASK] ."),
    ("just: x just _ !", "{x} just [MASK] !"),
    ("summary: x in summary , the place is _ .", "{x} in summary , the place is [MASK] ."),
)


class Setup(NamedTuple):
    tok: corpus.Tokenizer
    config: encoder.EncoderConfig
    params: dict                 # the pretrained masked LM (never modified: runs copy it)
    model: lm.MaskedLM
    pvps: list
    max_len: int


def fit_params(loss_and_grads, params, next_batch, *, steps, lr, rng, weight_decay=0.01):
    """``experiments.common.fit`` on a copy of ``params`` (the pretrained weights are never modified);
    returns the trained copy and the history."""
    params = {k: v.copy() for k, v in params.items()}
    hist = fit(loss_and_grads, params, next_batch, steps=steps, lr=lr, rng=rng, weight_decay=weight_decay,
               progress=False)
    return params, hist


def _trim(ids, pad):
    """Drop the all-padding columns at the end of a batch (same result, less work)."""
    width = max(int(np.max(np.sum(~pad, axis=1))), 1)
    return ids[:, :width], pad[:, :width]


def _mlm_batch(rng, ids, config):
    pad = ids == corpus.PAD
    ids, pad = _trim(ids, pad)
    inputs, targets = encoder.mask_tokens(ids, rng, vocab_size=config.vocab_size, mask_id=corpus.MASK,
                                          padding_mask=pad, special_ids=(corpus.CLS, corpus.MASK))
    return inputs, targets, pad


def pretrain(cfg, rng, cache_dir: Path | None, progress=True):
    """The masked LM, pretrained on unlabelled reviews with cloze cues (BERT masking); cached as an
    .npz keyed by the configuration, so later runs of the same size load it."""
    tok = corpus.Tokenizer.build()
    config = encoder.EncoderConfig(vocab_size=tok.vocab_size, mask_id=corpus.MASK, d_model=cfg["d_model"],
                                   n_layers=cfg["n_layers"], n_heads=4, max_len=cfg["max_len"])
    key = json.dumps({k: cfg[k] for k in ("d_model", "n_layers", "max_len", "pretrain_n", "pretrain_steps",
                                          "pretrain_lr", "batch")}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = None if cache_dir is None else Path(cache_dir) / f"mlm_pretrained_{digest}.npz"
    shapes = encoder.param_shapes(config)
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as f:
            params = {k: f[k] for k in f.files if k != "__history__"}
            history = f["__history__"] if "__history__" in f.files else np.zeros(0)
        if set(params) == set(shapes) and all(params[k].shape == tuple(s) for k, s in shapes.items()):
            return tok, config, params, history, True
    r_data, r_init, r_train = rng.spawn(3)
    ids, _ = corpus.pretraining_corpus(r_data, tok, cfg["pretrain_n"], max_len=cfg["max_len"] - 1)
    ids = np.concatenate([np.full((len(ids), 1), corpus.CLS), ids], axis=1)      # [CLS] as in fine-tuning
    params = encoder.init_params(config, r_init)

    def next_batch(r, step):
        return _mlm_batch(r, ids[r.integers(0, len(ids), cfg["batch"])], config)

    def loss_and_grads(p, batch, r):
        inputs, targets, pad = batch
        return encoder.mlm_loss_and_grads(p, config, inputs, targets, padding_mask=pad)

    hist = fit(loss_and_grads, params, next_batch, steps=cfg["pretrain_steps"], lr=cfg["pretrain_lr"], rng=r_train,
               weight_decay=0.01, progress=progress, desc="prompting: MLM pretraining")
    history = np.asarray(hist.losses, dtype=np.float64)
    if path is not None:
        def write(f):
            np.savez(f, __history__=history, **params)
        atomic_write(path, write)
    return tok, config, params, history, False


def make_setup(cfg, rng, cache_dir, progress=True):
    tok, config, params, history, cached = pretrain(cfg, rng, cache_dir, progress)
    pvps = [pet.make_pvp(name, template, corpus.LABEL_WORDS, tok) for name, template in PATTERNS]
    return Setup(tok, config, params, lm.MaskedLM.bind(encoder, config), pvps, cfg["max_len"]), history, cached


def accuracy(scores, labels) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels)) if len(labels) else float("nan")


# --- the runs ------------------------------------------------------------------------------------

def _with_cls(data: corpus.LabelledSet, max_len):
    ids = np.concatenate([np.full((len(data), 1), corpus.CLS), data.ids], axis=1)[:, :max_len]
    return ids, ids == corpus.PAD


def train_supervised(s: Setup, train_set, rng, *, steps, lr, batch):
    """The supervised baseline: a new head on [CLS], the whole encoder fine-tuned with cross-entropy."""
    ids, pad = _with_cls(train_set, s.max_len)
    params = {**s.params, **lm.init_classifier_head(rng, s.config.d_model, len(corpus.LABEL_NAMES))}

    def next_batch(r, step):
        idx = r.integers(0, len(ids), min(batch, len(ids)))
        b_ids, b_pad = _trim(ids[idx], pad[idx])
        return b_ids, b_pad, train_set.labels[idx]

    def lg(p, b, r):
        return lm.classifier_loss_and_grads(s.model, p, b[0], b[1], labels=b[2])
    params, _ = fit_params(lg, params, next_batch, steps=steps, lr=lr, rng=rng)
    return params


def classifier_accuracy(s: Setup, params, data) -> float:
    ids, pad = _with_cls(data, s.max_len)
    return accuracy(lm.classifier_predict(s.model, params, ids, pad), data.labels)


def train_pvp(s: Setup, pvp, train_set, unlabelled, rng, *, steps, lr, batch, alpha=1e-4, mlm_batch=4):
    """One PET model for one PVP (§3.1-3.2): all of M fine-tuned on L = (1 - alpha) L_CE + alpha L_MLM,
    the MLM term on patterned unlabelled examples (the pattern's own mask slot is not a target)."""
    pat = pet.apply_pattern(train_set, pvp, s.tok, s.max_len)
    unl = pet.apply_pattern(unlabelled, pvp, s.tok, s.max_len) if alpha > 0 and len(unlabelled) else None

    def next_batch(r, step):
        idx = r.integers(0, len(pat.ids), min(batch, len(pat.ids)))
        ids, pad = _trim(pat.ids[idx], pat.padding_mask[idx])
        b = (pet.Patterned(ids, pad, pat.mask_pos[idx]), train_set.labels[idx])
        if unl is None:
            return b + (None,)
        j = r.integers(0, len(unl.ids), mlm_batch)
        u_ids, u_pad = _trim(unl.ids[j], unl.padding_mask[j])
        inputs, targets = encoder.mask_tokens(u_ids, r, vocab_size=s.config.vocab_size, mask_id=corpus.MASK,
                                              padding_mask=u_pad, special_ids=(corpus.CLS, corpus.MASK))
        return b + ((inputs, targets, u_pad),)

    def lg(p, b, r):
        return lm.pet_loss_and_grads(s.model, p, b[0], b[1], pvp.verbaliser, mlm_batch=b[2],
                                     alpha=alpha if b[2] is not None else 0.0)
    params, _ = fit_params(lg, s.params, next_batch, steps=steps, lr=lr, rng=rng)
    return params


def scores_of(s: Setup, params, pvp, data) -> np.ndarray:
    return lm.pvp_scores(s.model, params, pet.apply_pattern(data, pvp, s.tok, s.max_len), pvp.verbaliser)


def distill(s: Setup, unlabelled, soft, rng, *, steps, lr, batch, temperature=2.0):
    """PET §3.3 step 3: the final classifier C (a [CLS] head on the pretrained encoder) trained on the
    soft labels of D with T^2 KL at temperature T."""
    ids, pad = _with_cls(unlabelled, s.max_len)
    params = {**s.params, **lm.init_classifier_head(rng, s.config.d_model, soft.shape[1])}

    def next_batch(r, step):
        idx = r.integers(0, len(ids), batch)
        b_ids, b_pad = _trim(ids[idx], pad[idx])
        return b_ids, b_pad, soft[idx]

    def lg(p, b, r):
        return lm.classifier_loss_and_grads(s.model, p, b[0], b[1], soft_targets=b[2], temperature=temperature)
    params, _ = fit_params(lg, params, next_batch, steps=steps, lr=lr, rng=rng)
    return params


class PETResult(NamedTuple):
    models: list          # params of each PVP's model
    weights: np.ndarray   # accuracy on T before training (the ensemble's weights)
    test_acc: list        # each PVP model's test accuracy
    d_scores: np.ndarray  # (P, |D|, C) each model's scores on D


def run_pet(s: Setup, train_set, unlabelled, test, rng, *, steps, lr, batch, alpha=1e-4):
    """PET §3.3 steps 1-2: one fine-tuned model per PVP, weights = accuracy on T before training."""
    models, weights, accs, d_scores = [], [], [], []
    for pvp in s.pvps:
        weights.append(accuracy(scores_of(s, s.params, pvp, train_set), train_set.labels) if len(train_set) else 1.0)
        params = train_pvp(s, pvp, train_set, unlabelled, rng, steps=steps, lr=lr, batch=batch, alpha=alpha)
        models.append(params)
        accs.append(accuracy(scores_of(s, params, pvp, test), test.labels))
        d_scores.append(scores_of(s, params, pvp, unlabelled))
    w = np.maximum(np.asarray(weights), 1e-3)     # an all-wrong pattern would get weight 0; keep it tiny
    return PETResult(models, w, accs, np.stack(d_scores))


def run_ipet(s: Setup, train_set, unlabelled, test, rng, *, first: PETResult | None, generations, steps, lr,
             batch, alpha=1e-4):
    """iPET §3.4: generation j retrains each PVP's model on T plus examples of D labelled by a random
    λ(n-1) of the previous generation's other models. ``first`` None: zero-shot iPET (untrained M^0).
    Returns the last generation's PETResult and the mean per-model test accuracy of every generation."""
    n = len(s.pvps)
    if first is None:
        d_scores = np.stack([scores_of(s, s.params, pvp, unlabelled) for pvp in s.pvps])
        prev = PETResult([s.params] * n, np.ones(n), [accuracy(scores_of(s, s.params, p, test), test.labels)
                                                      for p in s.pvps], d_scores)
    else:
        prev = first
    per_generation = [float(np.mean(prev.test_acc))]
    for j in range(1, generations + 1):
        counts = ipet.label_counts(train_set.labels, len(corpus.LABEL_NAMES), j)
        models, accs, d_scores = [], [], []
        for i, pvp in enumerate(s.pvps):
            teachers = ipet.choose_teachers(rng, n, i)
            ens = pet.ensemble_scores(prev.d_scores[teachers], prev.weights[teachers])
            probs = np.exp(ens - ens.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            enlarged = ipet.enlarge_training_set(rng, train_set, unlabelled, probs, counts)
            params = train_pvp(s, pvp, enlarged, unlabelled, rng, steps=steps, lr=lr, batch=batch, alpha=alpha)
            models.append(params)
            accs.append(accuracy(scores_of(s, params, pvp, test), test.labels))
            d_scores.append(scores_of(s, params, pvp, unlabelled))
        prev = PETResult(models, prev.weights, accs, np.stack(d_scores))
        per_generation.append(float(np.mean(accs)))
    return prev, per_generation


def run_prompt_tuning(s: Setup, train_set, test, rng, *, steps, lr, batch, n_prompt, init="vocab", pvp=None):
    """Prompt tuning (Lester et al.): a soft prompt before P(x), the masked LM frozen."""
    pvp = pvp or s.pvps[0]
    pat = pet.apply_pattern(train_set, pvp, s.tok, s.max_len - n_prompt)
    frequent = np.argsort(-np.bincount(pat.ids[~pat.padding_mask], minlength=s.config.vocab_size), kind="stable")
    frequent = frequent[frequent >= len(corpus.SPECIALS)][:50]
    prompt = soft_prompt.init_prompt(rng, s.params["tok_emb"], n_prompt, init, frequent_ids=frequent,
                                     label_ids=pvp.verbaliser)

    def next_batch(r, step):
        idx = r.integers(0, len(pat.ids), min(batch, len(pat.ids)))
        ids, pad = _trim(pat.ids[idx], pat.padding_mask[idx])
        return pet.Patterned(ids, pad, pat.mask_pos[idx]), train_set.labels[idx]

    def lg(p, b, r):
        loss, g = soft_prompt.prompt_tuning_loss_and_grad(s.model, s.params, p["prompt"], b[0], b[1], pvp.verbaliser)
        return loss, {"prompt": g}
    trained, _ = fit_params(lg, {"prompt": prompt}, next_batch, steps=steps, lr=lr, rng=rng, weight_decay=0.0)
    test_pat = pet.apply_pattern(test, pvp, s.tok, s.max_len - n_prompt)
    return accuracy(soft_prompt.prompt_scores(s.model, s.params, trained["prompt"], test_pat, pvp.verbaliser),
                    test.labels)
