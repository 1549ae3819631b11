"""Linformer (arXiv 2006.04768) on the stdlib bytes: is self-attention low rank, and what does projecting
keys and values to k slots cost in masked-LM quality and buy in time?

1. Spectrum (the paper's §3, Figure 1): a bidirectional encoder (models/encoder.py) is trained with
   full attention as a masked LM (BERT masking) on windows of n bytes. On held-out windows, every
   context-mapping matrix P (per layer, head and sequence) is decomposed, and the normalised cumulative
   singular values c(t) are averaged (linformer.cumulative_singular_values). Baselines: the same model
   at initialisation, and row-softmax matrices of i.i.d. N(0, 1) scores.
2. Masked-LM training with Linformer attention (headwise sharing, E, F initialised as the JL projection of
   Lemma 1) at k in KS against full attention at the same n: validation loss curves (the shape of the
   paper's Figure 3a) and the time of one training step, every model with the same recipe, data order,
   steps and learning rate (no per-model tuning).

The paper trains RoBERTa-size models on 3300M words at n = 512; this is a 2-layer byte-level model
trained for minutes, so only the shapes can be compared.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import data, validate
from ..core.measure import interleaved_seconds
from ..linformer import cumulative_singular_values
from ..models import encoder as enc
from .common import ExperimentResult, fit, markdown_table, savefig

NAME = "linformer"
MEASURES_TIME = True        # reports wall-clock seconds vs n: the tour runs it alone (experiments.runner)
TITLE = "Linformer: the spectrum of attention, and masked-LM training with k projected slots"

VOCAB, MASK_ID = 257, 256                 # the 256 byte values and [MASK]
SIZES = {
    # n: sequence length; steps per model; seeds: training runs per model (spread reported when > 1)
    "quick": dict(n=128, d_model=32, n_layers=2, n_heads=4, batch=8, steps=120, lr=1e-2, ks=(16, 32, 64, 128),
                  seeds=1, eval_every=30, val_rows=24, spectrum_rows=8, top=(16, 32, 64, 128)),
    "full": dict(n=256, d_model=64, n_layers=2, n_heads=4, batch=8, steps=400, lr=5e-3, ks=(16, 32, 64, 128),
                 seeds=3, eval_every=40, val_rows=64, spectrum_rows=16, top=(16, 64, 128)),
}


def model_config(cfg, k=None) -> enc.EncoderConfig:
    """Full attention (k None) or Linformer with k slots, headwise sharing; otherwise identical. RoPE
    positions: with learned absolute positions the attention of this small model stayed near uniform
    (trivially rank 1) for the first few hundred steps; with RoPE it is structured after ~100."""
    return enc.EncoderConfig(vocab_size=VOCAB, mask_id=MASK_ID, d_model=cfg["d_model"], n_layers=cfg["n_layers"],
                             n_heads=cfg["n_heads"], max_len=cfg["n"], positions="rope", proj_k=k, sharing="headwise",
                             attention="reference" if k is None else "linformer")


def masked_windows(corpus_bytes, rng, rows, n):
    """Random n-byte windows and their BERT corruption (inputs, targets)."""
    x, _ = data.random_windows(corpus_bytes, rng, rows, n)
    return enc.mask_tokens(x, rng, vocab_size=VOCAB, mask_id=MASK_ID)


def train_model(config, cfg, corpus, val, seed, progress=True, desc="mlm"):
    """The one recipe for every model (experiments.common.fit: AdamW, warmup-cosine, clipping 1.0); batches
    from the seed's rng."""
    params = enc.init_params(config, np.random.default_rng([seed, 0]))
    init = {k: v.copy() for k, v in params.items()}
    steps, lr = cfg["steps"], cfg["lr"]

    def next_batch(r, step):
        return masked_windows(corpus.train, r, cfg["batch"], cfg["n"])

    def loss_and_grads(p, batch, r):
        return enc.mlm_loss_and_grads(p, config, *batch)

    def eval_fn(p):
        return {"val_loss": enc.mlm_loss(p, config, *val)}

    hist = fit(loss_and_grads, params, next_batch, steps=steps, lr=lr, rng=np.random.default_rng([seed, 1]),
               weight_decay=0.01, warmup_steps=max(steps // 10, 1), clip_norm=1.0, eval_fn=eval_fn,
               eval_every=cfg["eval_every"], progress=progress, desc=desc)
    return params, init, hist


def attention_matrices(params, config, inputs, with_values=False):
    """P of every layer: a list of (B, H, n, n) arrays from the reference core's cache (with_values: also
    the values V W^V, (B, H, n, d_h) each)."""
    _, cache = enc.forward(params, config, inputs, return_hidden=True)
    ps = [block.attn.core.p for block in cache.blocks]
    return (ps, [block.attn.core.v for block in cache.blocks]) if with_values else ps


def jl_vs_svd(p, v, ks, rng, draws=8):
    """Theorem 1's construction against the truncated SVD: mean relative error ||P~ V - P V|| / ||P V|| of
    P~ = P R^T R with R (k, n) ~ N(0, 1/k) (eqs. 16, 19; ``draws`` draws of R) and of the best rank-k P (eq. 6).
    p: (M, n, n), v: (M, n, d). Returns two lists over ks."""
    pv = p @ v                                                                 # (M, n, d)
    norm = np.linalg.norm(pv, axis=(-2, -1))
    u, sig, vt = np.linalg.svd(p)
    jl, svd = [], []
    for k in ks:
        errs = []
        for _ in range(draws):
            r = rng.standard_normal((k, p.shape[-1])) / np.sqrt(k)
            errs.append(np.linalg.norm((p @ r.T) @ (r @ v) - pv, axis=(-2, -1)) / norm)
        jl.append(float(np.mean(errs)))
        low = (u[..., :k] * sig[..., None, :k]) @ (vt[..., :k, :] @ v)         # rank-k P times V
        svd.append(float(np.mean(np.linalg.norm(low - pv, axis=(-2, -1)) / norm)))
    return jl, svd


def spectrum_analysis(params, init, config, inputs, rng):
    """Mean c(t) per layer (L, n), c(n/4) per (layer, head), the two baselines' mean c(t), and the JL / SVD
    errors (over every layer's P) at k = 8 .. n."""
    per_layer, heat = [], []
    ps, vs = attention_matrices(params, config, inputs, with_values=True)
    n = inputs.shape[1]
    ks = [k for k in (8, 16, 32, 64, 128, 256) if k <= n]
    errors = (ks, *jl_vs_svd(np.concatenate([p.reshape(-1, n, n) for p in ps]),
                             np.concatenate([v.reshape(-1, n, v.shape[-1]) for v in vs]), ks, rng))
    for p in ps:
        c = cumulative_singular_values(p)                                         # (B, H, n)
        per_layer.append(c.mean(axis=(0, 1)))
        heat.append(c[..., p.shape[-1] // 4 - 1].mean(axis=0))                   # (H,) at t = n/4
    c_init = np.mean([cumulative_singular_values(p).mean(axis=(0, 1))
                      for p in attention_matrices(init, config, inputs)], axis=0)
    scores = rng.standard_normal((8, n, n))
    rand = np.exp(scores - scores.max(axis=-1, keepdims=True))
    c_rand = cumulative_singular_values(rand / rand.sum(axis=-1, keepdims=True)).mean(axis=0)
    return np.array(per_layer), np.array(heat), c_init, c_rand, errors


def step_times(configs, params, batch, repeats=3) -> dict[str, float]:
    """Median seconds of one mlm_loss_and_grads per model, the models timed in turn within each round."""
    fns = {name: (lambda c=c, p=params[name]: enc.mlm_loss_and_grads(p, c, *batch)) for name, c in configs.items()}
    for f in fns.values():
        f()
    return {name: float(np.median(t)) for name, t in interleaved_seconds(fns, repeats).items()}


def _figures(cfg, spec, curves, times, h_uni, out_dir):
    import matplotlib.pyplot as plt

    per_layer, heat, c_init, c_rand, (ks, jl, svd) = spec
    n = cfg["n"]
    t = np.arange(1, n + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9), gridspec_kw={"width_ratios": [1.5, 1, 1.1]})
    for i, c in enumerate(per_layer):
        axes[0].plot(t, c, color=f"C{i}", label=f"trained, layer {i + 1}")
    axes[0].plot(t, c_init, color="0.4", ls="--", label="same model at initialisation")
    axes[0].plot(t, c_rand, color="0.7", ls=":", label="softmax of N(0, 1) scores")
    axes[0].axvline(n // 4, color="k", lw=0.6)
    axes[0].set(xlabel="singular value index t", ylabel="normalised cumulative singular value c(t)",
                title=f"attention matrices P, n = {n} (cf. Fig. 1 left)", ylim=(0, 1.02))
    axes[0].legend(fontsize=8, loc="lower right")
    im = axes[1].imshow(heat, vmin=min(0.5, heat.min()), vmax=1.0, cmap="viridis", aspect="auto")
    axes[1].set(xlabel="head", ylabel="layer", title=f"c(t) at t = n/4 = {n // 4} (cf. Fig. 1 right)",
                xticks=range(heat.shape[1]), xticklabels=range(1, heat.shape[1] + 1),
                yticks=range(heat.shape[0]), yticklabels=range(1, heat.shape[0] + 1))
    fig.colorbar(im, ax=axes[1], label="c(n/4)")
    axes[2].loglog(ks, jl, "o-", color="C3", label="P R^T R (JL, eq. 16), R ~ N(0, 1/k)")
    part = [i for i, k in enumerate(ks) if k < n]                              # rank n is exact (error ~1e-15)
    axes[2].loglog([ks[i] for i in part], [svd[i] for i in part], "s-", color="C4",
                   label="best rank k < n (truncated SVD, eq. 6)")
    axes[2].loglog(ks, jl[0] * np.sqrt(ks[0] / np.asarray(ks)), color="0.6", ls=":", label="~ 1/sqrt(k)")
    axes[2].set(xlabel="k (projected dimension / rank)", ylabel="relative error of P V",
                title="Theorem 1: approximating P V")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    f1 = savefig(fig, out_dir, "linformer_spectrum.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    names = list(curves)
    for i, name in enumerate(names):
        steps, mean, sd = curves[name]
        axes[0].plot(steps, mean, "o-", ms=3, color=f"C{i}", label=name)
        if np.any(sd > 0):
            axes[0].fill_between(steps, mean - sd, mean + sd, color=f"C{i}", alpha=0.2)
    axes[0].axhline(h_uni, color="k", ls="--", lw=1, label=f"unigram entropy {h_uni:.2f} (no context)")
    axes[0].set(xlabel="training step", ylabel="validation MLM loss (nats per masked byte)",
                title=f"masked LM, n = {n} (cf. Fig. 3a)")
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)   # below the curves
    axes[1].bar(range(len(names)), [1e3 * times[k] for k in names], color=[f"C{i}" for i in range(len(names))])
    axes[1].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes[1].set(ylabel="ms per training step (fwd + bwd)", title=f"time per step, batch {cfg['batch']}")
    fig.tight_layout()
    return [f1, savefig(fig, out_dir, "linformer_mlm.png")]


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/linformer"),
        progress: bool = True) -> ExperimentResult:
    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    corpus = data.load_stdlib_corpus()
    val = masked_windows(corpus.val, np.random.default_rng(1234), cfg["val_rows"], cfg["n"])     # fixed for every model
    base_seed = int(rng.integers(0, 2 ** 31))
    configs = {"full attention": model_config(cfg)}
    configs.update({f"Linformer k={k}": model_config(cfg, k) for k in cfg["ks"]})
    t0 = time.perf_counter()
    curves, finals, last_params = {}, {}, {}
    for name, config in configs.items():
        runs = []
        for s in range(cfg["seeds"]):
            params, init, hist = train_model(config, cfg, corpus, val, base_seed + s, progress, desc=name)
            runs.append(hist)
            if s == 0:
                last_params[name] = params
                if name == "full attention":
                    spec = spectrum_analysis(params, init, config, val[0][:cfg["spectrum_rows"]], rng)
        steps = np.array([st for st, _ in runs[0].evals])
        losses = np.array([[e["val_loss"] for _, e in h.evals] for h in runs])          # (seeds, evals)
        curves[name] = (steps, losses.mean(axis=0), losses.std(axis=0))
        finals[name] = losses[:, -1]
    train_seconds = time.perf_counter() - t0
    timing_batch = masked_windows(corpus.train, np.random.default_rng(7), cfg["batch"], cfg["n"])
    times = step_times(configs, last_params, timing_batch)
    h_uni = data.unigram_entropy(corpus.train)
    figures = _figures(cfg, spec, curves, times, h_uni, out_dir)

    per_layer, heat, c_init, c_rand, (ks, jl, svd) = spec
    n = cfg["n"]
    tops = [t for t in cfg["top"] if t <= n]
    metrics = {}
    rows = []
    for i, c in enumerate(per_layer):
        rows.append([f"layer {i + 1} (trained)"] + [float(c[t - 1]) for t in tops])
        for t in tops:
            metrics[f"spectrum_top{t}_layer{i + 1}"] = float(c[t - 1])
    rows.append(["initialisation (mean of layers)"] + [float(c_init[t - 1]) for t in tops])
    rows.append(["softmax of N(0, 1) scores"] + [float(c_rand[t - 1]) for t in tops])
    spec_table = markdown_table(["P of"] + [f"top {t} of {n}" for t in tops], rows)
    jl_table = markdown_table(["k"] + [str(k) for k in ks], [["P R^T R V (JL)"] + jl, ["rank-k SVD of P, times V"] + svd])
    for k, a, b in zip(ks, jl, svd):
        metrics[f"jl_error_k{k}"], metrics[f"svd_error_k{k}"] = a, b
    full_loss = finals["full attention"]
    mlm_rows = []
    for name in configs:
        f = finals[name]
        metrics[f"val_loss_{name}"] = float(f.mean())
        metrics[f"ms_per_step_{name}"] = 1e3 * times[name]
        spread = f" ± {f.std():.3f}" if len(f) > 1 else ""
        mlm_rows.append([name, f"{f.mean():.3f}{spread}", f"{f.mean() - full_loss.mean():+.3f}",
                         f"{1e3 * times[name]:.1f}", f"{times['full attention'] / times[name]:.2f}x"])
    mlm_table = markdown_table(["model", "final val loss (nats/byte)", "vs full", "ms / step", "speed-up"], mlm_rows)
    seeds = f"mean ± sd over {cfg['seeds']} seeds" if cfg["seeds"] > 1 else "one seed (no spread: use --size full)"
    summary = (
        f"**Spectrum** of the attention matrices of the full-attention encoder after {cfg['steps']} steps "
        f"(n = {n}, {cfg['n_layers']} layers x {cfg['n_heads']} heads, {cfg['spectrum_rows']} held-out windows): "
        f"share of the singular-value mass in the top t directions.\n\n{spec_table}\n\n"
        f"Relative error ||P~ V - P V|| / ||P V|| over every layer's P (Theorem 1's random projection, mean of 8 draws, "
        f"against the truncated SVD):\n\n{jl_table}\n\n"
        f"**Masked LM** at n = {n}, {cfg['steps']} steps, batch {cfg['batch']}, lr {cfg['lr']} for every model, "
        f"{seeds}; time per step measured after training, the models in turn (median of 3 rounds).\n\n{mlm_table}\n\n"
        f"Unigram entropy of the bytes (the loss without context): {h_uni:.3f}. "
        f"Training wall time {train_seconds:.1f} s."
    )
    metrics["train_seconds"] = train_seconds
    metrics["unigram_entropy"] = h_uni
    return ExperimentResult(NAME, TITLE, summary, figures, metrics)
