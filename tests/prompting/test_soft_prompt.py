"""Soft prompt tuning and PET's objectives through a real (tiny) encoder."""

import numpy as np
import pytest

from scratch_transformers.core.functional import softmax
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.models import encoder
from scratch_transformers.prompting import corpus, lm, pet, soft_prompt

TOL = 1e-6  # float64 central differences through a whole encoder, max relative error


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    tok = corpus.Tokenizer.build()
    config = encoder.EncoderConfig(vocab_size=tok.vocab_size, mask_id=corpus.MASK, d_model=16, n_layers=1,
                                   n_heads=2, max_len=40)
    params = encoder.init_params(config, rng)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}   # off the init's symmetries
    model = lm.MaskedLM.bind(encoder, config)
    splits = corpus.make_task(rng, tok, n_train=3, n_unlabelled=0, n_test=3, max_len=12)
    pvp = pet.make_pvp("after", "{x} all in all , it was [MASK] .", corpus.LABEL_WORDS, tok)
    batch = pet.apply_pattern(splits.train, pvp, tok, max_len=20)
    return tok, config, params, model, splits, pvp, batch


def test_soft_prompt_concat_gradcheck(rng):
    def fwd(prompt, x_emb):
        return soft_prompt.soft_prompt_forward(prompt, x_emb)
    res = gradcheck(fwd, soft_prompt.soft_prompt_backward,
                    {"prompt": rng.standard_normal((3, 4)), "x_emb": rng.standard_normal((2, 5, 4))}, tol=1e-9, rng=rng)
    assert res.passed, str(res)


def test_prompt_gradient_through_the_frozen_encoder_gradcheck(setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    labels = splits.train.labels

    def fwd(prompt):
        loss, _ = soft_prompt.prompt_tuning_loss_and_grad(model, params, prompt, batch, labels, pvp.verbaliser)
        return np.asarray(loss), prompt

    def bwd(dloss, prompt):
        _, g = soft_prompt.prompt_tuning_loss_and_grad(model, params, prompt, batch, labels, pvp.verbaliser)
        return (float(dloss) * g,)

    res = gradcheck(fwd, bwd, {"prompt": 0.5 * rng.standard_normal((2, config.d_model))}, wrt=("prompt",),
                    tol=TOL, rng=rng)
    assert res.passed, str(res)


def test_prompt_tuning_leaves_the_frozen_weights_bit_identical(setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    before = {k: v.copy() for k, v in params.items()}
    prompt = soft_prompt.init_prompt(rng, params["tok_emb"], 3, "labels", frequent_ids=np.arange(5, 40),
                                     label_ids=pvp.verbaliser)
    for _ in range(3):
        _, g = soft_prompt.prompt_tuning_loss_and_grad(model, params, prompt, batch, splits.train.labels,
                                                       pvp.verbaliser)
        prompt = prompt - 0.1 * g
    for k in params:
        assert np.array_equal(params[k], before[k]), k


def test_prompt_scores_equal_the_training_path(setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    prompt = rng.standard_normal((2, config.d_model))
    s = soft_prompt.prompt_scores(model, params, prompt, batch, pvp.verbaliser, batch=2)
    loss, _ = soft_prompt.prompt_tuning_loss_and_grad(model, params, prompt, batch, splits.train.labels,
                                                      pvp.verbaliser)
    q = softmax(s, -1)
    assert abs(loss + np.mean(np.log(q[np.arange(3), splits.train.labels]))) < 1e-12


def test_label_scores_equal_a_direct_computation_from_the_mlm_logits(setup):
    tok, config, params, model, splits, pvp, batch = setup
    s = lm.pvp_scores(model, params, batch, pvp.verbaliser, batch=2)
    logits, _ = encoder.forward(params, config, batch.ids, padding_mask=batch.padding_mask)
    for i in range(len(batch.ids)):
        np.testing.assert_allclose(s[i], logits[i, batch.mask_pos[i], pvp.verbaliser], rtol=1e-13)


def test_pet_loss_and_grads_gradcheck_with_mlm_term(setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    mlm_inputs, mlm_targets = encoder.mask_tokens(batch.ids, rng, vocab_size=config.vocab_size, mask_id=corpus.MASK,
                                                  padding_mask=batch.padding_mask, special_ids=(corpus.CLS, corpus.MASK))
    names = ("blocks.0.mlp.w1", "tok_emb", "mlm_head.b")

    def fwd(**sub):
        p = dict(params, **sub)
        loss, grads = lm.pet_loss_and_grads(model, p, batch, splits.train.labels, pvp.verbaliser,
                                            mlm_batch=(mlm_inputs, mlm_targets, batch.padding_mask), alpha=0.3)
        return np.asarray(loss), grads

    def bwd(dloss, grads):
        return {k: float(dloss) * grads[k] for k in names}

    res = gradcheck(fwd, bwd, {k: params[k].copy() for k in names}, tol=TOL, rng=rng, max_entries=40)
    assert res.passed, str(res)


def test_classifier_distillation_gradcheck(setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    head = lm.init_classifier_head(rng, config.d_model, 3)
    head = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in head.items()}
    q = softmax(rng.standard_normal((3, 3)), -1)
    names = ("cls.w", "cls.b", "blocks.0.ln1.weight")

    def fwd(**sub):
        p = {**params, **head, **sub}
        loss, grads = lm.classifier_loss_and_grads(model, p, batch.ids, batch.padding_mask, soft_targets=q)
        return np.asarray(loss), grads

    res = gradcheck(fwd, lambda d, g: {k: float(d) * g[k] for k in names},
                    {k: dict(params, **head)[k].copy() for k in names}, tol=TOL, rng=rng)
    assert res.passed, str(res)


@pytest.mark.parametrize("how", soft_prompt.INITS)
def test_init_prompt_kinds(how, setup, rng):
    tok, config, params, model, splits, pvp, batch = setup
    p = soft_prompt.init_prompt(rng, params["tok_emb"], 5, how, frequent_ids=np.arange(5, 30),
                                label_ids=pvp.verbaliser)
    assert p.shape == (5, config.d_model)
    if how == "labels":
        np.testing.assert_array_equal(p[:3], params["tok_emb"][pvp.verbaliser])
    if how == "vocab":
        assert all(any(np.array_equal(r, params["tok_emb"][i]) for i in range(5, 30)) for r in p)


def test_soft_prompt_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="prompt"):
        soft_prompt.soft_prompt_forward(rng.standard_normal((2, 3)), rng.standard_normal((1, 4, 5)))
    with pytest.raises(ValueError, match="how"):
        soft_prompt.init_prompt(rng, rng.standard_normal((6, 3)), 2, "zeros")
    with pytest.raises(ValueError, match="label_ids"):
        soft_prompt.init_prompt(rng, rng.standard_normal((6, 3)), 2, "labels", frequent_ids=np.arange(6))
    _, c = soft_prompt.soft_prompt_forward(rng.standard_normal((2, 3)), rng.standard_normal((1, 4, 3)))
    with pytest.raises(ValueError, match="dh0"):
        soft_prompt.soft_prompt_backward(np.zeros((1, 5, 3)), c)
