"""The Mamba LM: gradients, recurrent generation equal to the parallel forward, a short training run."""

import numpy as np
import pytest

from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.mamba.model import (MambaConfig, backward, count_params, forward, generate,
                                              init_params, loss_and_grads, new_state, prefill, step)


def perturbed(cfg, rng, scale=0.3):
    p = init_params(cfg, rng)
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in p.items()}


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("selective", [True, False])
def test_tiny_lm_gradcheck(rng, tie, selective):
    cfg = MambaConfig(vocab_size=6, d_model=4, n_layers=2, d_state=3, d_conv=3, dt_rank=2, tie_embeddings=tie,
                      selective=selective)
    p = perturbed(cfg, rng, 0.5)
    for i in range(2):
        p[f"blocks.{i}.mixer.dt_proj.b"] += 2.0
    tokens = rng.integers(0, 6, size=(2, 5))
    res = gradcheck(lambda tokens, **q: forward(q, cfg, tokens), lambda dy, c: backward(dy, c),
                    {"tokens": tokens, **p}, rng=rng, tol=1e-6)
    res.assert_ok()
    assert ("lm_head" in p) == (not tie)


@pytest.mark.parametrize("selective", [True, False])
def test_recurrent_logits_equal_parallel_forward(rng, selective):
    cfg = MambaConfig(vocab_size=11, d_model=8, n_layers=2, d_state=5, selective=selective)
    p = perturbed(cfg, rng)
    tokens = rng.integers(0, 11, size=(3, 13))
    logits, _ = forward(p, cfg, tokens)
    state = new_state(p, cfg, 3)
    for t in range(13):
        lt, state = step(p, cfg, tokens[:, t], state)
        np.testing.assert_allclose(lt, logits[:, t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t0", [1, 2, 5])
def test_generate_greedy_matches_parallel_argmax(rng, t0):
    cfg = MambaConfig(vocab_size=9, d_model=8, n_layers=2, d_state=4)
    p = perturbed(cfg, rng, 0.5)
    prompt = rng.integers(0, 9, size=(2, t0))
    seq = generate(p, cfg, prompt, 8, rng=rng, greedy=True)
    assert seq.shape == (2, t0 + 8)
    np.testing.assert_array_equal(seq[:, :t0], prompt)
    logits, _ = forward(p, cfg, seq)
    np.testing.assert_array_equal(seq[:, t0:], np.argmax(logits[:, t0 - 1:-1], axis=-1))
    # the state after a parallel prefill equals the state after stepping through the prompt
    _, st_pre = prefill(p, cfg, seq[:, :t0 + 3])
    st = new_state(p, cfg, 2)
    for t in range(t0 + 3):
        _, st = step(p, cfg, seq[:, t], st)
    for a, b in zip(st_pre, st):
        np.testing.assert_allclose(a.conv, b.conv, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.ssm, b.ssm, rtol=1e-12, atol=1e-12)


def test_generate_sampling_reproducible_and_top1_is_greedy(rng):
    cfg = MambaConfig(vocab_size=9, d_model=8, n_layers=1, d_state=4)
    p = perturbed(cfg, rng, 0.5)
    prompt = rng.integers(0, 9, size=(2, 3))
    s1 = generate(p, cfg, prompt, 6, rng=np.random.default_rng(5), temperature=0.8)
    s2 = generate(p, cfg, prompt, 6, rng=np.random.default_rng(5), temperature=0.8)
    np.testing.assert_array_equal(s1, s2)
    top1 = generate(p, cfg, prompt, 6, rng=np.random.default_rng(5), top_k=1)
    np.testing.assert_array_equal(top1, generate(p, cfg, prompt, 6, rng=rng, greedy=True))


def test_lm_is_causal(rng):
    cfg = MambaConfig(vocab_size=9, d_model=8, n_layers=2, d_state=4)
    p = perturbed(cfg, rng)
    tokens = rng.integers(0, 9, size=(1, 10))
    logits, _ = forward(p, cfg, tokens)
    t2 = tokens.copy()
    t2[0, 6] = (t2[0, 6] + 1) % 9
    logits2, _ = forward(p, cfg, t2)
    np.testing.assert_array_equal(logits2[:, :6], logits[:, :6])


def test_parameter_count_formula(rng):
    cfg = MambaConfig(vocab_size=16, d_model=64, n_layers=2, d_state=16)
    p = init_params(cfg, rng)
    D, N, R, K = 128, 16, 4, 4
    per_block = 64 * 2 * D + D * K + D + D * (R + 2 * N) + R * D + D + D * N + D + D * 64 + 64
    assert count_params(p) == 16 * 64 + 2 * per_block + 64
    # = 66,496; the paper quotes 74K for its 2-layer d_model=64 induction-heads Mamba (App. E.1); the
    # breakdown behind 74K is not given (see derivations/mamba.md)


@pytest.mark.slow
def test_short_training_learns_to_copy_a_shifted_sequence(rng):
    """A 1-layer Mamba learns y_t = x_{t-2} (needs its conv / state), loss well below uniform."""
    from scratch_transformers.core.optim import AdamW
    cfg = MambaConfig(vocab_size=8, d_model=16, n_layers=1, d_state=4)
    p = init_params(cfg, rng)
    opt = AdamW(lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(150):
        x = rng.integers(0, 8, size=(16, 12))
        y = np.full_like(x, -100)
        y[:, 2:] = x[:, :-2]
        loss, g = loss_and_grads(p, cfg, x, y)
        opt.step(p, g)
        losses.append(loss)
    assert np.mean(losses[:5]) > 1.9                  # ~log 8 = 2.08 at the start
    assert np.mean(losses[-10:]) < 0.3


def test_lm_bad_inputs(rng):
    cfg = MambaConfig(vocab_size=9, d_model=8, n_layers=1, d_state=4)
    p = init_params(cfg, rng)
    with pytest.raises(ValueError, match="tokens: expected values < 9"):
        forward(p, cfg, np.array([[1, 9]]))
    with pytest.raises(ValueError, match="tokens: expected an integer array"):
        forward(p, cfg, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="vocab_size"):
        MambaConfig(vocab_size=0)
    with pytest.raises(ValueError, match="prompt"):
        generate(p, cfg, np.zeros((2, 0), np.int64), 3, rng=rng)
    with pytest.raises(ValueError, match="state"):
        step(p, cfg, np.array([1]), [])


@pytest.mark.slow
def test_experiment_runs_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    """The experiment's plumbing (training, held-out sets, length sweep, table, figure) on a tiny config."""
    from scratch_transformers.experiments import mamba as E
    tiny = dict(copy_region=6, copy_tokens=2, copy_vocab=5, copy_steps=3, ind_len=6, ind_vocab=5, ind_steps=3,
                test_mults=(1, 2), d_model=8, d_state=2, batch=4, n_val=8, models=("s6", "lti", "attention"))
    monkeypatch.setitem(E.SIZES, "quick", tiny)
    monkeypatch.setitem(E.CHOSEN, "quick", None)                 # run the whole procedure (sweep, doubling, seeds)
    res = E.run("quick", np.random.default_rng(0), tmp_path, progress=False)
    assert res.name == "mamba" and res.figures and res.figures[0].is_file()
    for kind in ("s6", "lti", "attention"):
        assert 0.0 <= res.metrics[f"copy_acc_{kind}_min"] <= res.metrics[f"copy_acc_{kind}"] <= 1.0
        assert res.metrics[f"copy_acc_{kind}_std"] >= 0.0
        assert res.metrics[f"induction_acc_{kind}_L12"] >= 0.0
        assert res.metrics[f"params_{kind}"] > 0
        for task in ("copy", "induction"):                   # every model got the same sweep over the same grid
            assert res.metrics[f"lr_{task}_{kind}"] in E.LR_GRID
            assert res.metrics[f"steps_{task}_{kind}"] in (3, 6)       # 3 steps, or doubled once
    assert "| Mamba (S6, selective) |" in res.summary and "± " in res.summary


def test_quick_choices_cover_every_model_and_came_from_the_procedure():
    """The tour's recorded (rate, steps) exist for every (task, model), use a rate of the grid and the SIZES steps
    times a power of two no larger than the budget check allows."""
    from scratch_transformers.experiments import mamba as E
    cfg = E.SIZES["quick"]
    chosen = E.CHOSEN["quick"]
    assert set(chosen) == {(t, k) for t in E.TASKS for k in cfg["models"]}
    for (task, kind), (lr, steps, how) in chosen.items():
        base = cfg["copy_steps" if task == "copy" else "ind_steps"]
        assert lr in E.LR_GRID
        assert steps in [base * 2 ** i for i in range(E.MAX_DOUBLINGS["quick"] + 1)]
        assert "sweep" in how and "x2 steps" in how
