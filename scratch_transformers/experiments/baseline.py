"""The baseline every later experiment compares against: a small decoder-only transformer
(``models.transformer``) trained with AdamW on (1) the copying task and (2) byte-level language
modelling of the Python standard library's own source.

What it shows: that the hand-written forward/backward pairs train a real model — copying is learned
to (near) perfect validation token accuracy, and on the corpus the validation loss falls well below
the unigram entropy of the bytes (the loss of the best model that ignores context).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import data, validate
from ..models import transformer as tf
from .common import ExperimentResult, fit, markdown_table, mean_loss, savefig

NAME = "baseline"
SAMPLE_TEMPERATURE = 0.8             # the sampled continuation shown beside the greedy one
SAMPLE_TOP_K = 10
TITLE = "Baseline transformer: copying and byte-level LM on the stdlib corpus"

SIZES = {
    # copy: tokens to copy, vocabulary, steps, batch; lm: context, steps, batch, model width; the parameters' dtype
    # (quick: float32, half the time of float64 per step; the pairs are exact in both, see tests/)
    "quick": dict(copy_len=12, copy_vocab=10, copy_steps=150, lm_ctx=64, lm_steps=300, batch=32, d_model=64,
                  dtype="float32"),
    "full": dict(copy_len=16, copy_vocab=16, copy_steps=1500, lm_ctx=128, lm_steps=3000, batch=32, d_model=64,
                 dtype="float64"),
}


def token_accuracy(params, config, inputs, targets) -> float:
    """Greedy (argmax) accuracy over the scored positions (targets != -100), teacher-forced."""
    logits, _ = tf.forward(params, config, inputs)
    mask = targets != -100
    return float(np.mean(np.argmax(logits, axis=-1)[mask] == targets[mask]))


def train_copy(cfg, rng, progress=True):
    """Copying: the model sees tokens, a separator, and must reproduce the tokens."""
    train_set = data.copy_task(rng, 4096, length=cfg["copy_len"], vocab=cfg["copy_vocab"])
    val_set = data.copy_task(rng, 512, length=cfg["copy_len"], vocab=cfg["copy_vocab"])
    config = tf.TransformerConfig(vocab_size=train_set.vocab_size, d_model=cfg["d_model"], n_layers=2, n_heads=4,
                                  max_len=train_set.inputs.shape[1], positions="learned")
    params = tf.init_params(config, rng, dtype=np.dtype(cfg["dtype"]))

    def next_batch(r, step):
        idx = r.integers(0, len(train_set.inputs), size=cfg["batch"])
        return train_set.inputs[idx], train_set.targets[idx]

    def loss_and_grads(p, batch, r):
        return tf.loss_and_grads(p, config, *batch)

    def eval_fn(p):
        return {"val_acc": token_accuracy(p, config, val_set.inputs, val_set.targets)}

    hist = fit(loss_and_grads, params, next_batch, steps=cfg["copy_steps"], lr=3e-3, rng=rng, warmup_steps=50,
               eval_fn=eval_fn, eval_every=20, progress=progress, desc="baseline copy")
    return config, params, hist, eval_fn(params)["val_acc"], hist.wall_time


def train_corpus(cfg, rng, progress=True):
    """Byte-level language modelling of the stdlib sources (vocab 256)."""
    corpus = data.load_stdlib_corpus()
    ctx = cfg["lm_ctx"]
    val_x, val_y = data.random_windows(corpus.val, np.random.default_rng(1234), 128, ctx)  # fixed eval set
    config = tf.TransformerConfig(vocab_size=256, d_model=cfg["d_model"], n_layers=2, n_heads=4, max_len=ctx,
                                  positions="learned")
    params = tf.init_params(config, rng, dtype=np.dtype(cfg["dtype"]))
    steps = cfg["lm_steps"]

    def next_batch(r, step):
        return data.random_windows(corpus.train, r, cfg["batch"], ctx)

    def loss_and_grads(p, batch, r):
        return tf.loss_and_grads(p, config, *batch)

    def eval_fn(p):
        return {"val_loss": mean_loss(p, config, val_x, val_y)}

    hist = fit(loss_and_grads, params, next_batch, steps=steps, lr=3e-3, rng=rng, weight_decay=0.01, warmup_steps=50,
               eval_fn=eval_fn, eval_every=max(steps // 8, 1), progress=progress, desc="baseline corpus")
    return corpus, config, params, hist, eval_fn(params)["val_loss"], hist.wall_time


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/baseline"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]

    c_config, c_params, c_hist, c_acc, c_sec = train_copy(cfg, rng, progress)
    corpus, l_config, l_params, l_hist, l_val, l_sec = train_corpus(cfg, rng, progress)
    h_uni = data.unigram_entropy(corpus.train)
    prompt = np.frombuffer(b"def __init__(self", dtype=np.uint8).astype(np.int64)[None, :]
    n_new = cfg["lm_ctx"] - prompt.shape[1]

    def as_text(tokens):
        return bytes(tokens[0].astype(np.uint8)).decode("utf-8", errors="replace")
    sample_text = as_text(tf.generate(l_params, l_config, prompt, n_new, greedy=True))
    sampled_text = as_text(tf.generate(l_params, l_config, prompt, n_new, rng=rng, temperature=SAMPLE_TEMPERATURE,
                                       top_k=SAMPLE_TOP_K))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(c_hist.losses, lw=0.8, label="train loss")
    ax2 = axes[0].twinx()
    es, ev = zip(*[(s, e["val_acc"]) for s, e in c_hist.evals]) if c_hist.evals else ((), ())
    ax2.plot(es, ev, "o-", color="C1", label="val token accuracy")
    ax2.set_ylim(0, 1.02)
    axes[0].set(title=f"copying ({cfg['copy_len']} tokens)", xlabel="step", ylabel="cross-entropy (nats)")
    ax2.set_ylabel("val token accuracy")
    axes[1].plot(l_hist.losses, lw=0.6, label="train")
    es, ev = zip(*[(s, e["val_loss"]) for s, e in l_hist.evals]) if l_hist.evals else ((), ())
    axes[1].plot(es, ev, "o-", label="validation")
    axes[1].axhline(h_uni, color="k", ls="--", lw=1, label=f"unigram entropy {h_uni:.2f}")
    axes[1].set(title=f"stdlib bytes, context {cfg['lm_ctx']}", xlabel="step", ylabel="nats per byte")
    axes[1].legend()
    fig.tight_layout()
    fig_path = savefig(fig, out_dir, "baseline_curves.png")

    n_params = sum(v.size for v in l_params.values())
    reached = [s for s, e in c_hist.evals if e["val_acc"] >= 0.99]
    steps_to_99 = float(reached[0]) if reached else float("nan")
    table = markdown_table(
        ["task", "params", "steps", "seconds", "result"],
        [["copying", sum(v.size for v in c_params.values()), cfg["copy_steps"], c_sec,
          f"val token accuracy {c_acc:.4f}; >= 0.99 first at step {steps_to_99:.0f} (evaluated every 20)"],
         ["stdlib LM", n_params, cfg["lm_steps"], l_sec,
          f"val loss {l_val:.3f} nats/byte (unigram entropy {h_uni:.3f})"]])
    summary = (
        f"{table}\n\nParameters in {cfg['dtype']}. Corpus: {len(corpus.files)} stdlib files, "
        f"{len(corpus.train) + len(corpus.val)} bytes, "
        f"sha256 {corpus.sha256[:16]}…\n\nContinuations of `def __init__(self` by the LM:\n\n"
        f"- greedy (argmax at every step): `{sample_text!r}`\n"
        f"- sampled (temperature {SAMPLE_TEMPERATURE:g}, top-k {SAMPLE_TOP_K}): `{sampled_text!r}`\n\n"
        "Greedy decoding of a small byte model usually falls into a loop (one byte, or a short cycle, repeated): "
        "at every step it takes the single most likely byte, and once a short cycle is the most likely "
        "continuation of itself nothing breaks it. Sampling from the (sharpened, truncated) distribution "
        "gives varied, code-shaped text instead; at this size neither is meaningful Python."
    )
    return ExperimentResult(NAME, TITLE, summary, [fig_path],
                            {"copy_val_acc": c_acc, "copy_steps_to_99": steps_to_99, "lm_val_loss": l_val, "unigram_entropy": h_uni,
                             "copy_seconds": c_sec, "lm_seconds": l_sec})
