"""MatMul-free LM (arXiv 2406.02528) against the baseline transformer at matched parameter counts, byte-level LM on
the Python standard library's sources; then what the ternary weights buy at inference.

Models (2 layers, d = 64, ~133k parameters each, context 64):
  * ``mmf``         MatMul-free LM: MLGRU + GLU blocks, every dense layer a ternary BitLinear (straight-through).
  * ``mmf-float``   the same network with float layers (isolates the cost of ternary weights / int8 activations).
  * ``transformer`` models/transformer.py (learned positions, 4 heads, d_ff = 4d): MLGRU + GLU has 12 d^2 weights
                    per block like attention + MLP, so the counts match up to the positional table and norms.

Same recipe for all (``common.fit``: AdamW, warm-up + cosine, clipping 1.0; the same batches) and the same tuning
procedure (``experiments.protocol``): size full runs ``protocol.tune`` (learning-rate sweep {1e-3, 3e-3, 1e-2, 3e-2},
budget check, 3 seeds); size quick uses ``protocol.fixed`` at the rates a sweep over the same grid picked at the quick
size (80 steps, 2 seeds each; table in derivations/matmulfree.md): 1e-2 for both MatMul-free models, 3e-3 for the
transformer. The paper trains ternary models with larger learning rates (§3.4: 4e-3 to 1.5e-3 vs 3e-4 for
Transformer++) and finds the gap to Transformer++ narrowing with scale (Fig. 3). At 133k parameters and a few
hundred steps the recurrent models are ahead of the transformer here (results in derivations/matmulfree.md); that
is not the paper's scaling comparison.

Inference: weight bytes (float32 vs packed 2-bit / base-3 ternary) and tokens/s of greedy generation, batch 1,
for the trained model (packed add/subtract kernel vs a float32 GEMV on the same dequantised weights vs the
transformer's KV-cache decoding) and for a wider random-weight model (d = 1024, 1 layer), where the weights no
longer fit in L2 and the 16x fewer bytes matter (the paper measures random-weight models beyond 2.7B too, Fig. 4d).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import data, validate
from ..core.layers import cross_entropy_forward
from ..matmulfree import model as mmf
from ..models import transformer as tf
from . import protocol
from .common import ExperimentResult, fit, markdown_table, mean_loss, savefig

NAME = "matmulfree"
MEASURES_TIME = True        # reports wall-clock tokens/s: the tour runs it alone (experiments.runner)
TITLE = "MatMul-free LM vs transformer at matched parameters; packed ternary inference"

MODELS = ("mmf", "mmf-float", "transformer")
SIZES = {
    # lrs: quick uses the sweep's choice at the quick size (module docstring); seeds: runs per model at that lr
    "quick": dict(d=64, layers=2, ctx=64, batch=8, steps=80, sweep=None, seeds=1, eval_windows=32,
                  lrs={"mmf": 1e-2, "mmf-float": 1e-2, "transformer": 3e-3}, gen_tokens=12, wide_d=1024),
    "full": dict(d=64, layers=2, ctx=64, batch=8, steps=600, sweep=(1e-3, 3e-3, 1e-2, 3e-2), seeds=3, eval_windows=128,
                 lrs=None, gen_tokens=48, wide_d=1024),
}


def warm_up():
    """The ternary kernels as ``inference_table`` calls them (both packings; one token at a time, small enough for the
    serial build), compiled or loaded before anything is timed (experiments.warmup)."""
    from ..matmulfree.ternary_kernel import pack_ternary, ternary_matmul_int

    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, size=(1, 10), dtype=np.int8)
    for fmt in ("2bit", "base3"):
        ternary_matmul_int(x, pack_ternary(rng.integers(-1, 2, size=(10, 3)).astype(np.int8), fmt))


def make_model(name, cfg, rng, dtype=np.float64):
    """(config, params, loss_and_grads(params, x, y), val_loss(params, x, y)) of one of MODELS."""
    if name == "transformer":
        config = tf.TransformerConfig(vocab_size=256, d_model=cfg["d"], n_layers=cfg["layers"], n_heads=4,
                                      max_len=cfg["ctx"], positions="learned")
        params = tf.init_params(config, rng, dtype)
        return (config, params, lambda p, x, y: tf.loss_and_grads(p, config, x, y),
                lambda p, x, y: mean_loss(p, config, x, y))
    config = mmf.MatMulFreeConfig(vocab_size=256, d_model=cfg["d"], n_layers=cfg["layers"],
                                  quantize=name == "mmf")
    params = mmf.init_params(config, rng, dtype=dtype)

    def val_loss(p, x, y):
        total = 0.0
        for s in range(0, len(x), 32):
            logits, _ = mmf.forward(p, config, x[s:s + 32])
            total += float(cross_entropy_forward(logits, y[s:s + 32], reduction="sum")[0])
        return total / y.size

    return config, params, lambda p, x, y: mmf.loss_and_grads(p, config, x, y), val_loss


def train_one(name, cfg, lr, seed, corpus, val, progress, steps=None):
    """Train one model with the experiments' one recipe (common.fit: AdamW, warm-up + cosine, clipping 1.0); its
    initialisation and batches come from ``seed`` alone. Returns (config, params, History, final val loss, seconds)."""
    steps = cfg["steps"] if steps is None else steps
    rng = np.random.default_rng(seed)
    config, params, lg, val_loss = make_model(name, cfg, rng)
    batch_rng = np.random.default_rng(1000 + seed)                       # the same batches for every model
    batches = [data.random_windows(corpus.train, batch_rng, cfg["batch"], cfg["ctx"]) for _ in range(steps)]
    t0 = time.perf_counter()
    hist = fit(lambda p, b, r: lg(p, *b), params, lambda r, s: batches[s], steps=steps, lr=lr, rng=rng,
               weight_decay=0.01, clip_norm=1.0, eval_fn=lambda p: {"val_loss": val_loss(p, *val)},
               eval_every=max(steps // 5, 1), progress=progress, desc=f"{name} lr={lr:g} seed={seed}")
    seconds = time.perf_counter() - t0
    return config, params, hist, hist.evals[-1][1]["val_loss"], seconds


def tuned_runs(name, cfg, seed0, corpus, val, progress) -> protocol.Tuned:
    """The tuning procedure every model gets (experiments.protocol): at size full the learning-rate sweep, budget
    check and seeds of ``protocol.tune``; at size quick ``protocol.fixed`` at the rate that sweep chose at that size.
    Each Trial's payload["run"] is train_one's result; score = -validation loss."""
    def trial(lr, steps, seed):
        run = train_one(name, cfg, lr, seed, corpus, val, progress, steps)
        return protocol.Trial(lr, steps, seed, -run[3], float(run[2].losses[-1]), {"run": run})

    seeds = tuple(seed0 + s for s in range(cfg["seeds"]))
    if cfg["sweep"] is None:
        return protocol.fixed(trial, lr=cfg["lrs"][name], steps=cfg["steps"], seeds=seeds)
    return protocol.tune(trial, lr_grid=cfg["sweep"], steps=cfg["steps"], seeds=seeds)


def tokens_per_second(fn, n_tokens) -> float:
    fn()                                                                  # warm-up (numba compile, caches)
    t0 = time.perf_counter()
    fn()
    return n_tokens / (time.perf_counter() - t0)


def inference_table(mmf_config, mmf_params, tf_config, tf_params, cfg, rng):
    """Weight bytes and greedy tokens/s (batch 1) of the trained models and of a wide random-weight MMF model."""
    prompt = np.frombuffer(b"def ", dtype=np.uint8).astype(np.int64)[None, :]
    n = cfg["gen_tokens"]
    rows, metrics = [], {}
    tf_bytes = 4 * sum(v.size for v in tf_params.values())
    tps = tokens_per_second(lambda: tf.generate(tf_params, tf_config, prompt, n, greedy=True), n + prompt.shape[1])
    rows.append(["transformer (trained)", "float32", tf_bytes, 1.0, tps])
    metrics.update(bytes_transformer=tf_bytes, tok_s_transformer=tps)
    wide_cfg = mmf.MatMulFreeConfig(vocab_size=256, d_model=cfg["wide_d"], n_layers=1)
    wide_params = mmf.init_params(wide_cfg, rng, dtype=np.float32)
    for key, label, config, params in (("mmf", "mmf (trained)", mmf_config, mmf_params),
                                       ("wide", f"mmf d={cfg['wide_d']} (random)", wide_cfg, wide_params)):
        params32 = {k: v.astype(np.float32) for k, v in params.items()}
        dense_bytes = mmf.weight_bytes(params32, config)
        for fmt in ("dense", "2bit", "base3"):
            packed = mmf.pack_model(params32, config, fmt)
            nbytes = mmf.weight_bytes(params32, config, packed)
            tps = tokens_per_second(lambda: mmf.generate(params32, config, prompt, n, greedy=True, packed=packed),
                                    n + prompt.shape[1])
            rows.append([label, "float32 GEMV" if fmt == "dense" else f"packed {fmt}", nbytes, dense_bytes / nbytes, tps])
            metrics[f"bytes_{key}_{fmt}"] = nbytes
            metrics[f"tok_s_{key}_{fmt}"] = tps
    return rows, metrics


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/matmulfree"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    corpus = data.load_stdlib_corpus()
    val = data.random_windows(corpus.val, np.random.default_rng(1234), cfg["eval_windows"], cfg["ctx"])
    seed0 = int(rng.integers(1 << 30))
    tuned = {name: tuned_runs(name, cfg, seed0, corpus, val, progress) for name in MODELS}   # the same procedure
    lrs = {name: t.lr for name, t in tuned.items()}
    runs = {name: [trial.payload["run"] for trial in t.runs] for name, t in tuned.items()}
    sweep_rows = [[name] + [-trial.score for trial in t.sweep] + [t.lr, t.steps] for name, t in tuned.items() if t.sweep]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = {"mmf": "C0", "mmf-float": "C2", "transformer": "C3"}
    for name in MODELS:
        for i, (_, _, hist, _, _) in enumerate(runs[name]):
            w = max(len(hist.losses) // 20, 1)
            sm = np.convolve(hist.losses, np.ones(w) / w, mode="valid")
            axes[0].plot(np.arange(len(sm)) + w - 1, sm, color=colors[name], lw=0.8, alpha=0.9 if i == 0 else 0.4,
                         label=f"{name} train (lr {lrs[name]:g})" if i == 0 else None)
            es, ev = zip(*[(s, e["val_loss"]) for s, e in hist.evals])
            axes[0].plot(es, ev, "o--", color=colors[name], ms=3, lw=0.8, label=f"{name} validation" if i == 0 else None)
    axes[0].set(title=f"stdlib bytes, context {cfg['ctx']}, {cfg['seeds']} seed(s)", xlabel="step",
                ylabel="cross-entropy (nats per byte)")
    axes[0].legend(fontsize=7)

    mmf_config, mmf_params = runs["mmf"][0][0], runs["mmf"][0][1]
    tf_config, tf_params = runs["transformer"][0][0], runs["transformer"][0][1]
    inf_rows, inf_metrics = inference_table(mmf_config, mmf_params, tf_config, tf_params, cfg, rng)
    labels = [f"{r[0]}\n{r[1]}" for r in inf_rows]
    ax = axes[1]
    bar_colors = ["C3"] + ["C0", "C1", "C4"] * 2
    ax.barh(range(len(inf_rows)), [r[4] for r in inf_rows], color=bar_colors[:len(inf_rows)])
    ax.set_yticks(range(len(inf_rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for i, r in enumerate(inf_rows):
        ax.text(r[4], i, f" {r[2] / 2**20:.2f} MB", va="center", fontsize=7)
    ax.set(title="greedy generation, batch 1 (labels: weight MB)", xlabel="tokens per second (log scale)")
    fig.tight_layout()
    fig_path = savefig(fig, out_dir, "matmulfree.png")

    metrics, rows = {}, []
    for name in MODELS:
        vals = np.array([r[3] for r in runs[name]])
        secs = np.mean([r[4] for r in runs[name]])
        n_params = sum(v.size for v in runs[name][0][1].values())
        metrics.update({f"val_loss_{name}": float(vals.mean()), f"val_loss_std_{name}": float(vals.std()),
                        f"params_{name}": float(n_params), f"train_seconds_{name}": float(secs)})
        rows.append([name, n_params, lrs[name], f"{vals.mean():.4f} ± {vals.std():.4f}" if len(vals) > 1
                     else f"{vals.mean():.4f}", secs])
    metrics.update({k: float(v) for k, v in inf_metrics.items()})
    metrics["unigram_entropy"] = data.unigram_entropy(corpus.train)
    summary = markdown_table(["model", "params", "lr", f"val loss (nats/byte, {cfg['seeds']} seed(s))",
                              "train seconds"], rows)
    if sweep_rows:
        summary += "\n\nLearning-rate sweep (seed 0, val loss):\n\n" + markdown_table(
            ["model"] + [f"lr {lr:g}" for lr in cfg["sweep"]] + ["chosen lr", "chosen steps"], sweep_rows)
    summary += "\n\nInference (greedy, batch 1):\n\n" + markdown_table(
        ["model", "weights", "weight bytes", "x smaller than float32", "tokens/s"], inf_rows)
    summary += (f"\n\n{cfg['steps']} steps of {cfg['batch']} x {cfg['ctx']} bytes; unigram entropy "
                f"{metrics['unigram_entropy']:.3f} nats/byte.")
    return ExperimentResult(NAME, TITLE, summary, [fig_path], metrics)
