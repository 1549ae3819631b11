"""Reformer (arXiv 2001.04451) at laptop scale: the duplication task of §2.1 / Table 2, the LSH
approximation error against the number of hash rounds, memory against depth for reversible and ordinary
stacks, and how often a future token moves earlier outputs under causal LSH.

1. Duplication (§2.1): sequences 0 w 0 w, w uniform over symbols 1..V-1; next-token LM, scored only on the
   second copy. Table 2's layout: one-layer Reformer LMs trained with full (shared-QK) attention and with
   LSH attention of 1, 2 and 4 rounds, each evaluated with full attention and with LSH of 1, 2, 4, 8
   rounds (fresh random rotations at every evaluation forward). The paper: |w| = 511, V = 128,
   d_model = 256, 4 heads, 150K steps; here |w|, V, widths and steps are a few hundred times smaller.
   Every model gets the same recipe (experiments.common.fit: AdamW without weight decay, warm-up over the
   first 10 % of the steps then cosine, clipping at 1.0) and the same number of steps.
2. Approximation error: on the trained LSH-2 model's own shared-QK vectors (and on Gaussian vectors for
   comparison), ||o_LSH - o_full|| / ||o_full|| for n_hashes = 1, 2, 4, 8 (Fig. 4 in spirit).
3. Memory: tracemalloc peak of one loss-and-gradients call of the Reformer LM against depth, reversible
   (eqs. 7-8) and ordinary residual stacks (Table 3's n_l factor), the same model otherwise.
4. Causality: with causal LSH, a future token's value never reaches earlier outputs (tested bit for bit),
   but its shared query-key moves it between buckets and can shift chunk boundaries, changing which
   earlier keys an earlier query sees. Measured: change one token at a random position t and count the
   earlier positions whose logits change (same rotations).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import validate
from ..core.data import IGNORE
from ..core.measure import traced_peak
from ..reformer import model as rf
from ..reformer.lsh import lsh_attention_forward, random_rotations, shared_qk_attention_forward
from .common import ExperimentResult, fit, markdown_table, savefig

NAME = "reformer"
TITLE = "Reformer: duplication task (Table 2 layout), LSH error vs rounds, reversible memory, causal LSH"

TRAIN_ROUNDS = ("full", 1, 2, 4)
MEM_HEADER = ["layers", "reversible", "ordinary", "of which gradients", "reversible - gradients",
              "ordinary - gradients"]
EVAL_ROUNDS = ("full", 8, 4, 2, 1)

SIZES = {
    "quick": dict(half=16, vocab=12, d_model=32, n_heads=2, d_ff=64, bucket_size=8, steps=300, batch=16, lr=1e-2,
                  n_eval=128, seeds=(0,), mem_layers=(1, 2, 4, 8), mem_len=256, err_draws=3, causal_seqs=32),
    "full": dict(half=16, vocab=12, d_model=32, n_heads=2, d_ff=64, bucket_size=8, steps=400, batch=16, lr=1e-2,
                 n_eval=512, seeds=(0, 1, 2), mem_layers=(2, 4, 8, 12, 16), mem_len=256, err_draws=8, causal_seqs=128),
}


def duplication_task(rng, n: int, half: int, vocab: int):
    """(inputs, targets) of 0 w 0 w with |w| = half - 1 (length 2 * half); only the second copy is scored."""
    w = rng.integers(1, vocab, size=(n, half - 1))
    zero = np.zeros((n, 1), dtype=np.int64)
    seq = np.concatenate([zero, w, zero, w], axis=1)                       # (n, 2 half)
    inputs, targets = seq[:, :-1], seq[:, 1:].copy()
    targets[:, :half] = IGNORE                                             # score w's second copy only
    return inputs, targets


def _config(cfg, trained_with, **kw):
    attention = "full" if trained_with == "full" else "lsh"
    n_hashes = 1 if trained_with == "full" else trained_with
    return rf.ReformerConfig(vocab_size=cfg["vocab"], d_model=cfg["d_model"], n_layers=1, n_heads=cfg["n_heads"],
                             d_ff=cfg["d_ff"], max_len=2 * cfg["half"], attention=attention, n_hashes=n_hashes,
                             bucket_size=cfg["bucket_size"], ff_chunk=64, **kw)


def accuracy(params, config, inputs, targets, rng, eval_with) -> float:
    """Greedy accuracy on the scored (second-copy) positions with full attention or LSH of k rounds."""
    attention = "full" if eval_with == "full" else "lsh"
    n_hashes = None if eval_with == "full" else eval_with
    logits, _ = rf.forward(params, config, inputs, rng=rng, attention=attention, n_hashes=n_hashes)
    mask = targets != IGNORE
    return float(np.mean(np.argmax(logits, -1)[mask] == targets[mask]))


def train_model(cfg, trained_with, seed, progress):
    rng = np.random.default_rng(seed)
    config = _config(cfg, trained_with)
    params = rf.init_params(config, rng)
    steps = cfg["steps"]

    def next_batch(r, step):
        return duplication_task(r, cfg["batch"], cfg["half"], cfg["vocab"])

    def loss_and_grads(p, batch, r):
        return rf.loss_and_grads(p, config, *batch, rng=r)

    hist = fit(loss_and_grads, params, next_batch, steps=steps, lr=cfg["lr"], rng=rng, weight_decay=0.0,
               warmup_steps=steps // 10, clip_norm=1.0, progress=progress,
               desc=f"reformer {trained_with} (seed {seed})")
    return config, params, hist


def attention_inputs(params, config, tokens):
    """The first layer's shared-QK vectors and values (B, H, T, d_h), as its attention core sees them."""
    from ..core.layers import layer_norm_forward

    h = params["tok_emb"][tokens] + params["pos_emb"][:tokens.shape[1]]
    x, _ = layer_norm_forward(h, params["blocks.0.attn.ln.weight"], params["blocks.0.attn.ln.bias"], config.ln_eps)
    b, t, d = x.shape
    split = [(x @ params[f"blocks.0.attn.{w}"]).reshape(b, t, config.n_heads, -1).transpose(0, 2, 1, 3)
             for w in ("wqk", "wv")]
    return split[0], split[1]


def approximation_error(qk, v, bucket_size, rounds, draws, rng):
    """Mean over rotation draws of ||o_LSH - o_full|| / ||o_full|| (causal) for each number of rounds."""
    full, _ = shared_qk_attention_forward(qk, v, causal=True)
    n_buckets = rf.n_buckets_for(rf.ReformerConfig(vocab_size=2, bucket_size=bucket_size), qk.shape[2])
    errs = {}
    for k in rounds:
        e = []
        for _ in range(draws):
            rot = random_rotations(rng, qk.shape[-1], k, n_buckets)
            out, _ = lsh_attention_forward(qk, v, rot, bucket_size=bucket_size, causal=True)
            e.append(np.linalg.norm(out - full) / np.linalg.norm(full))
        errs[k] = float(np.mean(e))
    return errs


def memory_vs_depth(cfg, layers, rng):
    """Peak traced bytes of one loss_and_grads call (B = 1, T = mem_len) for reversible and ordinary stacks,
    and the bytes of the returned parameter gradients (part of the peak, linear in depth for both)."""
    out = {True: [], False: [], "grads": []}
    t = cfg["mem_len"]
    tokens = rng.integers(0, 16, size=(1, t))
    for n_layers in layers:
        for rev in (True, False):
            config = rf.ReformerConfig(vocab_size=16, d_model=64, n_layers=n_layers, n_heads=4, d_ff=256, max_len=t,
                                       n_hashes=2, bucket_size=32, reversible=rev, ff_chunk=64)
            params = rf.init_params(config, rng)
            rot = rf.draw_rotations(config, t, rng)
            out[rev].append(traced_peak(lambda: rf.loss_and_grads(params, config, tokens, tokens, rotations=rot))[0])
        out["grads"].append(sum(a.nbytes for a in params.values()))
    return out


def reconstruction_error(cfg, n_layers, rng) -> dict[str, float]:
    """Max |x - x_rec| after running the Reformer LM's reversible stack forward (eq. 7) and back (eq. 8),
    in float64 and float32 (same weights, rotations and input)."""
    from ..reformer.reversible import reversible_forward, reversible_inverse

    t = cfg["mem_len"]
    config = rf.ReformerConfig(vocab_size=16, d_model=64, n_layers=n_layers, n_heads=4, d_ff=256, max_len=t,
                               n_hashes=2, bucket_size=32, ff_chunk=64)
    params, rot = rf.init_params(config, rng, std=0.1), rf.draw_rotations(config, t, rng)
    h = rng.standard_normal((1, t, 64))
    out = {}
    for dt in (np.float64, np.float32):
        blocks = rf.blocks_for({k: v.astype(dt) for k, v in params.items()}, config, attention="lsh",
                               rotations=[r.astype(dt) for r in rot])
        x = h.astype(dt)
        (y1, y2), _ = reversible_forward(x, x, blocks)
        r1, r2 = reversible_inverse(y1, y2, blocks)
        out[np.dtype(dt).name] = float(max(np.max(np.abs(r1 - x)), np.max(np.abs(r2 - x))))
    return out


def causal_leak(params, config, inputs, rng, attention="lsh"):
    """Change one token at a random position t per sequence (same rotations); return (fraction of
    sequences with any earlier logit changed, fraction of earlier positions changed). Both forwards see
    one sequence (the same shapes, so BLAS rounds identically): with full attention this gives 0."""
    rot = rf.draw_rotations(config, inputs.shape[1], rng)
    any_changed, changed, total = 0, 0, 0
    for i in range(len(inputs)):
        t = int(rng.integers(1, inputs.shape[1]))
        x = inputs[i:i + 1].copy()
        base, _ = rf.forward(params, config, x, rotations=rot, attention=attention)
        x[0, t] = (x[0, t] + int(rng.integers(1, config.vocab_size))) % config.vocab_size
        out, _ = rf.forward(params, config, x, rotations=rot, attention=attention)
        diff = np.any(out[0, :t] != base[0, :t], axis=-1)
        any_changed += bool(diff.any())
        changed += int(diff.sum())
        total += t
    return any_changed / len(inputs), changed / max(total, 1)


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/reformer"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    t0 = time.perf_counter()
    eval_x, eval_y = duplication_task(np.random.default_rng(10_000), cfg["n_eval"], cfg["half"], cfg["vocab"])

    acc = {(tr, ev): [] for tr in TRAIN_ROUNDS for ev in EVAL_ROUNDS}
    curves, models = {}, {}
    for seed in cfg["seeds"]:
        for tr in TRAIN_ROUNDS:
            config, params, hist = train_model(cfg, tr, seed, progress)
            curves.setdefault(tr, []).append(hist.losses)
            models.setdefault(tr, (config, params))
            for ev in EVAL_ROUNDS:
                acc[(tr, ev)].append(accuracy(params, config, eval_x, eval_y, np.random.default_rng(seed + 77), ev))
    train_seconds = time.perf_counter() - t0

    # approximation error of LSH vs full attention on the LSH-2 model's vectors, and on Gaussian vectors
    config2, params2 = models[2]
    qk, v = attention_inputs(params2, config2, eval_x[:16])
    rounds = (1, 2, 4, 8)
    err_model = approximation_error(qk, v, cfg["bucket_size"], rounds, cfg["err_draws"], rng)
    g_qk, g_v = rng.standard_normal(qk.shape), rng.standard_normal(v.shape)
    err_gauss = approximation_error(g_qk, g_v, cfg["bucket_size"], rounds, cfg["err_draws"], rng)
    mem = memory_vs_depth(cfg, cfg["mem_layers"], rng)
    leak_any, leak_frac = causal_leak(params2, config2, eval_x[:cfg["causal_seqs"]], rng)
    ctrl_any, _ = causal_leak(params2, config2, eval_x[:cfg["causal_seqs"]], rng, attention="full")
    recon = reconstruction_error(cfg, max(cfg["mem_layers"]), rng)

    # --- figures
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"full": "k", 1: "C0", 2: "C1", 4: "C2"}
    for tr in TRAIN_ROUNDS:
        ls = np.mean(curves[tr], axis=0)
        smooth = np.convolve(ls, np.ones(10) / 10, mode="valid")
        axes[0].plot(smooth, color=colors[tr], label="full attention" if tr == "full" else f"LSH-{tr}")
    axes[0].set(xlabel="training step", ylabel="train loss on the second copy (nats, 10-step mean)",
                title="duplication task 0w0w, training")
    axes[0].legend()
    table = np.array([[np.mean(acc[(tr, ev)]) for ev in EVAL_ROUNDS] for tr in TRAIN_ROUNDS])
    im = axes[1].imshow(100 * table, vmin=0, vmax=100, cmap="viridis")
    for i in range(len(TRAIN_ROUNDS)):
        for j in range(len(EVAL_ROUNDS)):
            axes[1].text(j, i, f"{100 * table[i, j]:.1f}", ha="center", va="center",
                         color="w" if table[i, j] < 0.6 else "k")
    axes[1].set_xticks(range(len(EVAL_ROUNDS)), ["full" if e == "full" else f"LSH-{e}" for e in EVAL_ROUNDS])
    axes[1].set_yticks(range(len(TRAIN_ROUNDS)), ["full" if t == "full" else f"LSH-{t}" for t in TRAIN_ROUNDS])
    axes[1].set(xlabel="evaluated with", ylabel="trained with", title="accuracy on the second copy (%)")
    fig.colorbar(im, ax=axes[1], label="accuracy (%)")
    fig.tight_layout()
    fig1 = savefig(fig, out_dir, "reformer_duplication.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot(rounds, [err_model[k] for k in rounds], "o-", color="C1", label="trained LSH-2 model's vectors")
    axes[0].plot(rounds, [err_gauss[k] for k in rounds], "s--", color="C7", label="Gaussian vectors")
    axes[0].set_xscale("log", base=2)
    axes[0].set(xlabel="hash rounds n_hashes", ylabel="||o_LSH - o_full|| / ||o_full||",
                title=f"LSH vs full shared-QK attention (T={eval_x.shape[1]}, causal)")
    axes[0].legend()
    mb = 2 ** 20
    axes[1].plot(cfg["mem_layers"], np.array(mem[True]) / mb, "o-", color="C1", label="reversible (eqs. 7-8)")
    axes[1].plot(cfg["mem_layers"], np.array(mem[False]) / mb, "s-", color="C0", label="ordinary residual stack")
    axes[1].plot(cfg["mem_layers"], np.array(mem["grads"]) / mb, ":", color="C7", label="parameter gradients alone")
    axes[1].set(xlabel="layers", ylabel="peak traced memory of loss+grads (MB)",
                title=f"Reformer LM, T={cfg['mem_len']}, d=64, LSH-2")
    axes[1].legend()
    fig.tight_layout()
    fig2 = savefig(fig, out_dir, "reformer_lsh_memory.png")

    def cell(tr, ev):
        a = 100 * np.array(acc[(tr, ev)])
        return f"{a.mean():.1f}" + (f" ± {a.std():.1f}" if len(a) > 1 else "")

    header = ["trained \\ evaluated"] + ["full" if e == "full" else f"LSH-{e}" for e in EVAL_ROUNDS]
    rows = [["full" if t == "full" else f"LSH-{t}"] + [cell(t, e) for e in EVAL_ROUNDS] for t in TRAIN_ROUNDS]
    err_rows = [[k, err_model[k], err_gauss[k]] for k in rounds]
    mem_rows = [[n, mem[True][i] / mb, mem[False][i] / mb, mem["grads"][i] / mb, (mem[True][i] - mem["grads"][i]) / mb,
                 (mem[False][i] - mem["grads"][i]) / mb] for i, n in enumerate(cfg["mem_layers"])]
    summary = (
        f"Duplication task, |w| = {cfg['half'] - 1}, V = {cfg['vocab']}, length {2 * cfg['half']}, 1 layer, "
        f"d_model {cfg['d_model']}, {cfg['n_heads']} heads, bucket_size {cfg['bucket_size']}, {cfg['steps']} steps, "
        f"seeds {list(cfg['seeds'])}; accuracy (%) on the second copy, {cfg['n_eval']} held-out sequences "
        f"(mean ± std over seeds):\n\n{markdown_table(header, rows)}\n\n"
        f"LSH approximation error vs rounds (causal):\n\n"
        f"{markdown_table(['n_hashes', 'trained model vectors', 'Gaussian vectors'], err_rows)}\n\n"
        f"Peak traced memory (MB) of loss+grads vs depth:\n\n"
        f"{markdown_table(MEM_HEADER, mem_rows)}\n\n"
        f"Input reconstruction error of the {max(cfg['mem_layers'])}-layer reversible stack (eq. 8, max abs): "
        f"float64 {recon['float64']:.2g}, float32 {recon['float32']:.2g}.\n\n"
        f"Causal LSH, one token changed at a random position t (same rotations): earlier logits changed in "
        f"{100 * leak_any:.1f}% of sequences, {100 * leak_frac:.2f}% of earlier positions (control, the same model "
        f"with full causal attention: {100 * ctrl_any:.1f}% of sequences).")
    metrics = {f"acc_{tr}_eval_{ev}": float(np.mean(acc[(tr, ev)])) for tr in TRAIN_ROUNDS for ev in EVAL_ROUNDS}
    metrics.update({f"err_model_{k}": err_model[k] for k in rounds})
    metrics.update({f"err_gauss_{k}": err_gauss[k] for k in rounds})
    metrics.update({f"mem_rev_{n}": float(mem[True][i]) for i, n in enumerate(cfg["mem_layers"])})
    metrics.update({f"mem_std_{n}": float(mem[False][i]) for i, n in enumerate(cfg["mem_layers"])})
    metrics.update({f"mem_grads_{n}": float(mem["grads"][i]) for i, n in enumerate(cfg["mem_layers"])})
    metrics.update(recon_err_float64=recon["float64"], recon_err_float32=recon["float32"])
    metrics.update(causal_leak_sequences=leak_any, causal_leak_positions=leak_frac, causal_leak_full_control=ctrl_any,
                   train_seconds=train_seconds,
                   seconds=time.perf_counter() - t0)
    return ExperimentResult(NAME, TITLE, summary, [fig1, fig2], metrics)
