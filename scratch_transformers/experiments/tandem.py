"""Tandem Transformers (arXiv 2402.08644) and SPEED on the stdlib byte corpus.

Trains M_L (the baseline transformer, several layers) and a narrow 2-layer M_S, then, with M_L frozen,
the Tandem M_S initialised from M_S (the paper's Gecko init, §4) with Tandem-CE and then Tandem-Distil
(lambda = 0.5). Control: M_S alone trained for the same extra steps (so any gain is from M_L's rows, not
from steps). Reports validation loss, agreement with M_L's argmax and TV distance to M_L (Table 1's
columns), then greedy speculative decoding with M_S as a standalone drafter vs SPEED with the Tandem M_S,
against M_L alone: acceptance rate, tokens per M_L call and wall-clock speed-up versus block length gamma
(Table 2's setting, at toy scale, on CPU).

Training: every model trains through experiments.common.fit (AdamW, weight decay 0.01, warm-up over
min(30, steps // 5 + 1) steps then cosine, clipping at 1.0) on random windows of the training bytes. The
adaptive-block-length router is the exception: a small full-batch fit of fixed features at a constant learning
rate (plain AdamW steps, no schedule, no clipping, no sampled batches), which ``fit``'s warm-up + cosine cannot
express, so it keeps its own loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import data, optim, validate
from ..models import transformer as tf
from ..models.speed import TransformerDecoder, large_forward, speed_decode
from ..tandem import losses as tandem_losses
from ..tandem import model as tandem_model
from ..tandem import router as tandem_router
from ..tandem.speculative import predicted_speedup, speculative_decode
from .common import ExperimentResult, fit, markdown_table, savefig

NAME = "tandem"
MEASURES_TIME = True        # reports wall-clock speed-ups: the tour runs it alone (experiments.runner)
TITLE = "Tandem Transformers + SPEED: a small model attending to a large one's representations"

SIZES = {
    "quick": dict(ctx=32, batch=8, d_large=64, layers_large=4, d_small=32, layers_small=2, steps_large=200,
                  steps_small=200, steps_tandem=60, steps_distil=30, gamma_train=2, gammas=(1, 2, 4, 6),
                  n_prompts=3, prompt_len=16, n_new=32, lr=3e-3),
    "full": dict(ctx=96, batch=32, d_large=128, layers_large=6, d_small=32, layers_small=2, steps_large=1500,
                 steps_small=800, steps_tandem=400, steps_distil=200, gamma_train=2, gammas=(1, 2, 3, 4, 6, 8),
                 n_prompts=20, prompt_len=32, n_new=64, lr=2e-3),
}


def train_on_windows(loss_fn, params, corpus, cfg, steps, rng, desc, progress):
    """experiments.common.fit (AdamW with weight decay 0.01, clipping at 1.0) on random windows of the training
    bytes, warm-up over min(30, steps // 5 + 1) steps (this experiment's choice since before ``fit``, kept so its
    numbers do not move) then cosine. loss_fn(params, x, y) -> (loss, grads). Returns ``params`` (trained in place)."""
    fit(lambda p, batch, r: loss_fn(p, *batch), params,
        lambda r, s: data.random_windows(corpus.train, r, cfg["batch"], cfg["ctx"]), steps=steps, lr=cfg["lr"],
        rng=rng, weight_decay=0.01, warmup_steps=min(30, steps // 5 + 1), clip_norm=1.0, progress=progress, desc=desc)
    return params


def train_models(cfg, rng, corpus, progress=True):
    """M_L, M_S alone (+ the control continued for the Tandem steps), Tandem-CE and Tandem-Distil M_S."""
    ctx = cfg["ctx"]
    lcfg = tf.TransformerConfig(vocab_size=256, d_model=cfg["d_large"], n_layers=cfg["layers_large"], n_heads=4,
                                max_len=max(ctx, cfg["prompt_len"] + cfg["n_new"]))
    scfg = tf.TransformerConfig(vocab_size=256, d_model=cfg["d_small"], n_layers=cfg["layers_small"], n_heads=4,
                                max_len=lcfg.max_len)
    tcfg = tandem_model.TandemConfig(vocab_size=256, d_model=cfg["d_small"], n_layers=cfg["layers_small"], n_heads=4,
                                     d_large=cfg["d_large"], large_layers=cfg["layers_large"],
                                     gamma=cfg["gamma_train"], max_len=lcfg.max_len)
    lp = train_on_windows(lambda p, x, y: tf.loss_and_grads(p, lcfg, x, y), tf.init_params(lcfg, rng), corpus,
                          cfg, cfg["steps_large"], rng, "tandem M_L", progress)
    sp = train_on_windows(lambda p, x, y: tf.loss_and_grads(p, scfg, x, y), tf.init_params(scfg, rng), corpus,
                          cfg, cfg["steps_small"], rng, "tandem M_S", progress)
    extra = cfg["steps_tandem"] + cfg["steps_distil"]
    control = train_on_windows(lambda p, x, y: tf.loss_and_grads(p, scfg, x, y), {k: v.copy() for k, v in sp.items()},
                               corpus, cfg, extra, rng, "M_S continued", progress)

    def tandem_loss(lam):
        def loss(p, x, y):
            ml_logits, states = large_forward(lp, lcfg, x, tcfg.ml_layers)
            return tandem_losses.loss_and_grads(p, tcfg, x, y, states, ml_logits, distil_weight=lam)
        return loss

    tp = train_on_windows(tandem_loss(0.0), tandem_model.init_params(tcfg, rng, small_params=sp), corpus, cfg,
                          cfg["steps_tandem"], rng, "Tandem-CE", progress)
    tp_ce = {k: v.copy() for k, v in tp.items()}
    tp = train_on_windows(tandem_loss(0.5), tp, corpus, cfg, cfg["steps_distil"], rng, "Tandem-Distil", progress)
    return dict(lcfg=lcfg, scfg=scfg, tcfg=tcfg, large=lp, small=sp, control=control, tandem_ce=tp_ce, tandem=tp)


def train_router(m, corpus, cfg, rng, steps=300):
    """The adaptive-block-length router (§3.1) on teacher-forced training windows: features of the Tandem
    M_S's distributions, target TV(M_S, M_L) at the same position."""
    from ..core.functional import softmax

    x, _ = data.random_windows(corpus.train, rng, 32, cfg["ctx"])
    ml_logits, states = large_forward(m["large"], m["lcfg"], x, m["tcfg"].ml_layers)
    z, _ = tandem_model.forward(m["tandem"], m["tcfg"], x, states)
    feats = tandem_router.router_features(z, m["tandem"]["tok_emb"]).reshape(-1, 1 + 4 + 4 * cfg["d_small"])
    tv = (0.5 * np.abs(softmax(z) - softmax(ml_logits)).sum(-1)).reshape(-1)
    params = tandem_router.init_router(feats.shape[1], 32, rng)
    opt = optim.AdamW(lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        _, g = tandem_router.router_loss_and_grads(params, feats, tv)
        opt.step(params, g)
    return params


def next_token_metrics(m, val_x, val_y):
    """Validation loss, accuracy, agreement with M_L's argmax and mean TV distance to M_L, per model."""
    from ..core.functional import softmax
    from ..core.layers import cross_entropy_forward

    ml_logits, states = large_forward(m["large"], m["lcfg"], val_x, m["tcfg"].ml_layers)
    logits = {"M_L": ml_logits,
              "M_S alone": tf.forward(m["control"], m["scfg"], val_x)[0],
              "Tandem-CE M_S": tandem_model.forward(m["tandem_ce"], m["tcfg"], val_x, states)[0],
              "Tandem-Distil M_S": tandem_model.forward(m["tandem"], m["tcfg"], val_x, states)[0]}
    p_l, a_l = softmax(ml_logits), np.argmax(ml_logits, -1)
    out = {}
    for name, z in logits.items():
        out[name] = dict(loss=float(cross_entropy_forward(z, val_y)[0]), acc=float(np.mean(np.argmax(z, -1) == val_y)),
                         agree=float(np.mean(np.argmax(z, -1) == a_l)),
                         tv=float(np.mean(0.5 * np.abs(softmax(z) - p_l).sum(-1))))
    return out


def decoding_runs(m, prompts, n_new, gammas, stop=None, gamma_max=8):
    """Greedy M_L alone vs speculative (M_S drafter) vs SPEED (Tandem M_S), same prompts, same output.
    Speed-ups are ratios of CPU seconds (process_time; BLAS single-threaded under the CLI)."""
    lp, lcfg = m["large"], m["lcfg"]
    t0 = time.process_time()                      # CPU time: robust to other jobs on a shared machine
    want = [tf.generate(lp, lcfg, p[None], n_new, greedy=True)[0] for p in prompts]
    t_large = time.process_time() - t0
    rows = []
    runs = [(g, method) for g in gammas for method in ("speculative, M_S drafter", "SPEED, Tandem M_S")]
    if stop is not None:
        runs.append((gamma_max, "SPEED, adaptive gamma"))
    for g, method in runs:
        t0, stats, same = time.process_time(), [], True
        for p, w in zip(prompts, want):
            if method.startswith("SPEED"):
                out, st = speed_decode(lp, lcfg, m["tandem"], m["tcfg"], p, n_new, gamma=g, greedy=True,
                                       stop_drafting=stop if method.endswith("adaptive gamma") else None)
            else:
                out, st = speculative_decode(TransformerDecoder(lp, lcfg), TransformerDecoder(m["control"], m["scfg"]),
                                             p, n_new, gamma=g, greedy=True)
            same &= bool(np.array_equal(out, w))
            stats.append(st)
        sec = time.process_time() - t0
        acc = sum(s.accepted for s in stats) / max(sum(s.tested for s in stats), 1)
        calls = sum(s.target_calls for s in stats)
        rows.append(dict(gamma=g, method=method, acceptance=acc, tokens_per_call=n_new * len(prompts) / calls,
                         drafts_per_call=sum(s.drafted for s in stats) / calls,
                         speedup=t_large / sec, identical=same, seconds=sec))
    return t_large, rows


def cost_ratio(m, prompt):
    """c = time of one drafter step / one M_L step (Leviathan Def. 3.7), measured on one prompt."""
    big, small = TransformerDecoder(m["large"], m["lcfg"]), TransformerDecoder(m["control"], m["scfg"])
    big.extend(prompt, 1)
    small.extend(prompt, 1)
    one = prompt[-1:]

    def step(dec):
        for _ in range(5):
            dec.extend(one, 1)
            dec.rollback(dec.length - 1)

    def cpu(fn):
        t0 = time.process_time()
        fn()
        return time.process_time() - t0
    return float(np.median([cpu(lambda: step(small)) / cpu(lambda: step(big)) for _ in range(5)]))


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/tandem"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    t_start = time.perf_counter()
    corpus = data.load_stdlib_corpus()
    m = train_models(cfg, rng, corpus, progress)
    val_x, val_y = data.random_windows(corpus.val, np.random.default_rng(1234), 64, cfg["ctx"])
    metrics = next_token_metrics(m, val_x, val_y)
    starts = np.random.default_rng(7).integers(0, len(corpus.val) - cfg["prompt_len"], size=cfg["n_prompts"])
    prompts = [corpus.val[s:s + cfg["prompt_len"]].astype(np.int64) for s in starts]
    router = train_router(m, corpus, cfg, rng)
    stop = tandem_router.make_stop_rule(router, m["tandem"]["tok_emb"], tau=0.8)
    t_large, rows = decoding_runs(m, prompts, cfg["n_new"], cfg["gammas"], stop, gamma_max=8)
    c = cost_ratio(m, prompts[0])
    for r in rows:
        r["predicted"] = (float("nan") if r["method"].endswith("adaptive gamma")
                          else predicted_speedup(min(r["acceptance"], 1.0), r["gamma"], c))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(metrics)
    axes[0].bar(range(len(names)), [metrics[n]["loss"] for n in names], color=[f"C{i}" for i in range(len(names))])
    axes[0].set_xticks(range(len(names)), [n.replace(" M_S", "\nM_S") for n in names], fontsize=8)
    axes[0].set(ylabel="validation loss (nats / byte)", title="next-byte loss (M_S alone trained as long)")
    lo = min(metrics[n]["loss"] for n in names)
    axes[0].set_ylim(lo * 0.9, max(metrics[n]["loss"] for n in names) * 1.03)
    for k, method in enumerate(("speculative, M_S drafter", "SPEED, Tandem M_S")):
        rs = [r for r in rows if r["method"] == method]
        gs = [r["gamma"] for r in rs]
        axes[1].plot(gs, [r["acceptance"] for r in rs], "o-", color=f"C{k + 1}", label=method)
        axes[2].plot(gs, [r["speedup"] for r in rs], "o-", color=f"C{k + 1}", label=f"{method} (measured)")
        axes[2].plot(gs, [r["predicted"] for r in rs], "--", color=f"C{k + 1}", label=f"{method} (Thm 3.8, c={c:.2f})")
    for r in rows:
        if r["method"].endswith("adaptive gamma"):
            axes[1].plot([r["drafts_per_call"]], [r["acceptance"]], "*", ms=12, color="C3",
                         label=f"SPEED, adaptive gamma (router, gamma_max {r['gamma']}; x = mean drafts)")
            axes[2].plot([r["drafts_per_call"]], [r["speedup"]], "*", ms=12, color="C3", label="SPEED, adaptive gamma")
    axes[1].set(xlabel="block length gamma (drafts per M_L call)", ylabel="acceptance rate (greedy)",
                title="acceptance vs gamma", ylim=(0, 1.02))
    axes[2].axhline(1.0, color="k", lw=0.8, ls=":", label="M_L alone")
    axes[2].set(xlabel="block length gamma", ylabel="speed-up over M_L alone (x)", title="wall-clock speed-up")
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig_path = savefig(fig, out_dir, "tandem.png")

    t1 = markdown_table(["model", "val loss", "accuracy", "agrees with M_L argmax", "TV to M_L"],
                        [[n, v["loss"], v["acc"], v["agree"], v["tv"]] for n, v in metrics.items()])
    t2 = markdown_table(["gamma (max)", "method", "acceptance", "drafts / M_L call", "tokens / M_L call", "speed-up",
                         "predicted", "identical"],
                        [[r["gamma"], r["method"], r["acceptance"], r["drafts_per_call"], r["tokens_per_call"],
                          r["speedup"], r["predicted"], r["identical"]] for r in rows])
    summary = (f"{t1}\n\nGreedy decoding, {len(prompts)} prompts x {cfg['n_new']} new bytes; M_L alone "
               f"{t_large:.2f} CPU s; M_S drafter / M_L step cost ratio c = {c:.3f}\n\n{t2}\n\n"
               f"(total {time.perf_counter() - t_start:.1f} s)")
    out = {f"loss_{k}": v["loss"] for k, v in metrics.items()}
    out.update({f"agree_{k}": v["agree"] for k, v in metrics.items()})
    for r in rows:
        if r["method"].endswith("adaptive gamma"):
            prefix = "adaptive_"
            out["adaptive_drafts_per_call"] = r["drafts_per_call"]
        else:
            prefix = ("speed_" if r["method"].startswith("SPEED") else "spec_") + f"g{r['gamma']}_"
        for k in ("acceptance", "speedup", "identical"):
            out[prefix + k] = float(r[k])
    out["cost_ratio"] = c
    return ExperimentResult(NAME, TITLE, summary, [fig_path], out)
