"""The training loop: determinism, exact resume (incl. after a crash), atomic checkpoints, hooks.

The model is a softmax regression written inline in NumPy (with its own gradient), so these tests
depend only on core.optim / core.train. Its loss draws from the rng (feature dropout), so an exact
resume needs both the data stream and the rng state restored.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scratch_transformers.core import train as train_mod
from scratch_transformers.core.optim import SGD, AdamW, warmup_cosine
from scratch_transformers.core.train import History, load_checkpoint, save_checkpoint, train

D, C = 6, 4
W_TRUE = np.random.default_rng(2024).standard_normal((D, C)) * 2.0


def init(seed):
    r = np.random.default_rng(seed)
    return {"w": r.standard_normal((D, C)) * 0.1, "b": np.zeros(C)}


def next_batch(rng, step):
    x = rng.standard_normal((16, D))
    return x, np.argmax(x @ W_TRUE, axis=1)


def loss_and_grads(params, batch, rng):
    x, y = batch
    keep = rng.random(x.shape) >= 0.1                        # dropout on the inputs, p = 0.1
    xd = x * keep / 0.9
    z = xd @ params["w"] + params["b"]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.mean(np.log(p[np.arange(n), y]))
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    return loss, {"w": xd.T @ dz, "b": dz.sum(axis=0)}


def make_opt():
    return AdamW(lr=0.05, weight_decay=0.1)


def sched(step):
    return warmup_cosine(step, base_lr=0.05, warmup_steps=3, total_steps=20, min_lr=0.005)


def run(steps, seed=0, params=None, **kw):
    params = init(1) if params is None else params
    hist = train(loss_and_grads, params, kw.pop("optimizer", make_opt()), kw.pop("next_batch", next_batch),
                 steps=steps, rng=np.random.default_rng(seed), lr_schedule=sched, clip_norm=1.0,
                 progress=False, **kw)
    return params, hist


def test_gradient_of_inline_model_is_right(rng):
    # the test model itself must be right for the convergence test to mean anything
    params = init(3)
    batch = next_batch(rng, 0)
    _, g = loss_and_grads(params, batch, np.random.default_rng(5))
    eps = 1e-6
    for k in params:
        for idx in np.ndindex(params[k].shape):
            hi = {kk: v.copy() for kk, v in params.items()}
            lo = {kk: v.copy() for kk, v in params.items()}
            hi[k][idx] += eps
            lo[k][idx] -= eps
            num = (loss_and_grads(hi, batch, np.random.default_rng(5))[0]
                   - loss_and_grads(lo, batch, np.random.default_rng(5))[0]) / (2 * eps)
            assert abs(num - g[k][idx]) <= 1e-6 * max(1.0, abs(num))


def test_training_reduces_loss_and_learns():
    xv = np.random.default_rng(99).standard_normal((500, D))
    yv = np.argmax(xv @ W_TRUE, axis=1)

    def eval_fn(params):
        return {"acc": float(np.mean(np.argmax(xv @ params["w"] + params["b"], axis=1) == yv))}

    hist = train(loss_and_grads, init(1), SGD(0.1, momentum=0.9), next_batch, steps=150,
                 rng=np.random.default_rng(0), eval_fn=eval_fn, progress=False)
    assert np.mean(hist.losses[-20:]) < 0.6 * np.mean(hist.losses[:5])
    assert hist.evals[-1][1]["acc"] >= 0.9
    assert hist.steps == list(range(1, 151)) and len(hist.losses) == 150


def test_same_seed_bit_identical_and_other_seed_differs():
    p1, h1 = run(20, seed=0)
    p2, h2 = run(20, seed=0)
    p3, h3 = run(20, seed=1)
    assert h1.losses == h2.losses
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
    assert h1.losses != h3.losses


def test_resume_equals_uninterrupted_run(tmp_path):
    ck = tmp_path / "ck.npz"
    p_full, h_full = run(20, seed=0)
    run(10, seed=0, checkpoint_path=ck)
    # fresh objects everywhere: other initial params, a new optimizer, an rng with another seed
    p_res, h_res = run(20, seed=999, params=init(77), checkpoint_path=ck, resume=True)
    assert h_res.losses == h_full.losses                        # bit-identical, all 20
    assert h_res.lrs == h_full.lrs and h_res.grad_norms == h_full.grad_norms
    for k in p_full:
        np.testing.assert_array_equal(p_res[k], p_full[k])


def test_resume_after_crash_in_a_new_process(tmp_path):
    """Crash at step 13 with checkpoints every 5 steps; a new interpreter resumes from step 10."""
    ck = tmp_path / "ck.npz"
    p_full, h_full = run(20, seed=0)

    def crashing_batch(rng, step):
        if step == 13:
            raise KeyboardInterrupt("simulated crash")
        return next_batch(rng, step)

    with pytest.raises(KeyboardInterrupt):
        run(20, seed=0, next_batch=crashing_batch, checkpoint_path=ck, checkpoint_every=5)
    assert load_checkpoint(ck).step == 10
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]           # no temp file left behind
    script = textwrap.dedent(f"""
        import json, sys, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_train as t
        params, hist = t.run(20, seed=12345, params=t.init(8), checkpoint_path={str(ck)!r}, resume=True)
        np.save({str(tmp_path / "w.npy")!r}, params["w"])
        print(json.dumps(hist.losses))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == h_full.losses
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), p_full["w"])


def test_checkpoint_contents_are_plain_arrays(tmp_path, rng):
    params = init(1)
    opt = make_opt()
    opt.step(params, {"w": np.ones((D, C)), "b": np.ones(C)})
    hist = History(steps=[1], losses=[0.25], lrs=[0.1], grad_norms=[float("nan")], evals=[(1, {"acc": 0.5})])
    rng.random(3)
    path = save_checkpoint(tmp_path / "sub" / "c.npz", params, opt, 1, rng, hist)
    with np.load(path, allow_pickle=False) as z:
        assert int(z["step"]) == 1
        assert z["rng"].dtype.kind == "U" and z["rng"].ndim == 0
        assert json.loads(str(z["rng"]))["bit_generator"] == "PCG64"
        np.testing.assert_array_equal(z["params/w"], params["w"])
        np.testing.assert_array_equal(z["optim/exp_avg/w"], opt.exp_avg["w"])
    ck = load_checkpoint(path)
    assert ck.history.losses == [0.25] and ck.history.evals == [(1, {"acc": 0.5})]
    assert np.isnan(ck.history.grad_norms[0])
    assert ck.rng.random() == rng.random()                      # same stream continues


def test_mt19937_rng_state_round_trips(tmp_path):
    rng = np.random.Generator(np.random.MT19937(5))
    rng.random(7)
    save_checkpoint(tmp_path / "c.npz", init(1), SGD(0.1), 0, rng)
    assert load_checkpoint(tmp_path / "c.npz").rng.integers(0, 2**62, 5).tolist() == rng.integers(0, 2**62, 5).tolist()


def test_failed_save_keeps_old_checkpoint_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, init(1), SGD(0.1), 3, np.random.default_rng(0))
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.np, "savez", broken_savez)
    with pytest.raises(OSError):
        save_checkpoint(path, init(2), SGD(0.1), 4, np.random.default_rng(0))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]


def test_evals_and_schedule_recorded():
    calls = []

    def eval_fn(params):
        calls.append(1)
        return {"w_norm": float(np.linalg.norm(params["w"]))}

    _, hist = run(10, eval_fn=eval_fn, eval_every=4)
    assert [s for s, _ in hist.evals] == [4, 8, 10] and len(calls) == 3
    assert hist.lrs == [sched(s) for s in range(10)]
    assert hist.wall_time > 0


def test_lr_schedule_reaches_the_optimizer():
    # plain SGD with lr from the schedule: params after one step = p0 - lr(0) * grad
    params = init(1)
    p0 = {k: v.copy() for k, v in params.items()}
    train(loss_and_grads, params, SGD(123.0), next_batch, steps=1, rng=np.random.default_rng(0),
          lr_schedule=lambda s: 0.01, progress=False)
    r = np.random.default_rng(0)
    _, g = loss_and_grads(p0, next_batch(r, 0), r)
    for k in p0:
        np.testing.assert_allclose(params[k], p0[k] - 0.01 * g[k], rtol=1e-15, atol=1e-17)


def test_progress_false_is_silent(capsys):
    run(3)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_nonfinite_loss_raises():
    def bad(params, batch, rng):
        return float("nan"), {"w": np.zeros((D, C))}

    with pytest.raises(FloatingPointError, match="step 0"):
        train(bad, init(1), SGD(0.1), next_batch, steps=3, rng=np.random.default_rng(0), progress=False)


@pytest.mark.parametrize("kw, match", [
    (dict(steps=-1), "steps: expected"),
    (dict(rng=np.random), "rng: expected"),
    (dict(clip_norm=0.0), "clip_norm: expected"),
    (dict(eval_every=2), "eval_fn: expected a callable when eval_every"),
    (dict(resume=True), "checkpoint_path: expected"),
    (dict(checkpoint_every=2), "checkpoint_path: expected"),
    (dict(lr_schedule=0.1), "lr_schedule: expected"),
    (dict(next_batch=None), "next_batch: expected"),
])
def test_bad_arguments_raise(kw, match):
    args = dict(steps=2, rng=np.random.default_rng(0), progress=False, next_batch=next_batch)
    args.update(kw)
    nb = args.pop("next_batch")
    with pytest.raises(ValueError, match=match):
        train(loss_and_grads, init(1), SGD(0.1), nb, **args)


def test_resume_with_mismatched_params_raises(tmp_path):
    ck = tmp_path / "c.npz"
    run(2, checkpoint_path=ck)
    with pytest.raises(ValueError, match="checkpoint_path: expected a checkpoint with params"):
        run(4, params={"w": np.zeros((D, C))}, checkpoint_path=ck, resume=True)
    with pytest.raises(ValueError, match="path: expected an existing checkpoint"):
        load_checkpoint(tmp_path / "none.npz")


@pytest.mark.slow
def test_bigram_byte_model_on_stdlib_corpus_beats_unigram_entropy():
    """Integration with core.layers and core.data: a bigram table (embedding of width 256 used as
    logits) trained with train() on random windows of the stdlib corpus gets its validation loss
    below the unigram entropy of the validation bytes (it uses one byte of context)."""
    from scratch_transformers.core.data import load_stdlib_corpus, random_windows, unigram_entropy
    from scratch_transformers.core.layers import (cross_entropy_backward, cross_entropy_forward,
                                                  embedding_backward, embedding_forward)

    corpus = load_stdlib_corpus()

    def lg(params, batch, rng):
        x, y = batch
        logits, c_emb = embedding_forward(x, params["table"])       # (B, T, 256)
        loss, c_ce = cross_entropy_forward(logits, y)
        return loss, {"table": embedding_backward(cross_entropy_backward(1.0, c_ce), c_emb)}

    vx, vy = random_windows(corpus.val, np.random.default_rng(1), 64, 64)

    def eval_fn(params):
        return {"val_loss": cross_entropy_forward(embedding_forward(vx, params["table"])[0], vy)[0]}

    params = {"table": np.zeros((256, 256))}
    hist = train(lg, params, AdamW(lr=0.1, weight_decay=0.0),
                 lambda rng, step: random_windows(corpus.train, rng, 32, 64), steps=200,
                 rng=np.random.default_rng(0), eval_fn=eval_fn, eval_every=100, progress=False)
    h_unigram = unigram_entropy(corpus.val)
    assert hist.evals[0][1]["val_loss"] > hist.evals[-1][1]["val_loss"]
    assert hist.evals[-1][1]["val_loss"] < h_unigram - 0.5, (hist.evals, h_unigram)
