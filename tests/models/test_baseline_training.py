"""The baseline transformer really trains: copying to >= 99% validation token accuracy, the stdlib
corpus below its unigram entropy, bit-identical reruns, and checkpoint + resume equal to one run."""

import numpy as np
import pytest

from scratch_transformers.core import data, optim, train
from scratch_transformers.experiments import baseline
from scratch_transformers.experiments.common import mean_loss
from scratch_transformers.models import transformer as tf


@pytest.mark.slow
def test_learns_copying_to_99_percent():
    cfg = baseline.SIZES["quick"]
    config, params, hist, acc, seconds = baseline.train_copy(cfg, np.random.default_rng(0), progress=False)
    assert acc >= 0.99, f"validation token accuracy {acc:.4f} after {cfg['copy_steps']} steps ({seconds:.1f} s)"
    assert hist.losses[-1] < 0.1 * hist.losses[0]


def _lm_setup(seed, steps=12, ctx=32):
    corpus = data.load_stdlib_corpus()
    config = tf.TransformerConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, max_len=ctx)
    rng = np.random.default_rng(seed)
    params = tf.init_params(config, rng)

    def next_batch(r, step):
        return data.random_windows(corpus.train, r, 8, ctx)

    def loss_and_grads(p, batch, r):
        return tf.loss_and_grads(p, config, *batch)

    return corpus, config, params, rng, next_batch, loss_and_grads


def _adamw():
    return optim.AdamW(lr=3e-3, weight_decay=0.01)


def test_same_seed_gives_bit_identical_losses():
    runs = []
    for _ in range(2):
        _, _, params, rng, nb, lg = _lm_setup(7)
        hist = train.train(lg, params, _adamw(), nb, steps=12, rng=rng, clip_norm=1.0, progress=False)
        runs.append((hist.losses, params))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    _, _, params, rng, nb, lg = _lm_setup(8)
    other = train.train(lg, params, _adamw(), nb, steps=12, rng=rng, progress=False)
    assert other.losses != runs[0][0]


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    _, _, params, rng, nb, lg = _lm_setup(3)
    full = train.train(lg, params, _adamw(), nb, steps=12, rng=rng, clip_norm=1.0, progress=False)

    ck = tmp_path / "ck.npz"
    _, _, p1, rng1, nb1, lg1 = _lm_setup(3)
    train.train(lg1, p1, _adamw(), nb1, steps=6, rng=rng1, clip_norm=1.0, checkpoint_path=ck,
                checkpoint_every=6, progress=False)
    # a fresh process state: new params (different init), new optimizer, new rng; all restored from the file
    _, _, p2, _, nb2, lg2 = _lm_setup(99)
    resumed = train.train(lg2, p2, _adamw(), nb2, steps=12, rng=np.random.default_rng(99), clip_norm=1.0,
                          checkpoint_path=ck, resume=True, progress=False)
    assert resumed.losses == full.losses
    assert all(np.array_equal(p2[k], params[k]) for k in params)


@pytest.mark.slow
def test_corpus_loss_falls_well_below_unigram_entropy():
    corpus, config, params, rng, _, _ = _lm_setup(0, ctx=64)
    config = tf.TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_len=64)
    params = tf.init_params(config, rng)
    steps = 250

    def next_batch(r, step):
        return data.random_windows(corpus.train, r, 32, 64)

    train.train(lambda p, b, r: tf.loss_and_grads(p, config, *b), params, _adamw(), next_batch, steps=steps, rng=rng,
                lr_schedule=lambda s: optim.warmup_cosine(s, base_lr=3e-3, warmup_steps=25, total_steps=steps),
                clip_norm=1.0, progress=False)
    vx, vy = data.random_windows(corpus.val, np.random.default_rng(1), 64, 64)
    val = mean_loss(params, config, vx, vy)
    h = data.unigram_entropy(corpus.train)
    assert val < h - 0.5, f"val loss {val:.3f} nats/byte vs unigram entropy {h:.3f}"
