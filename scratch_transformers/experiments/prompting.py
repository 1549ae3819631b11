"""Prompt learning: few-shot classification with PET, iPET and soft prompt tuning against a supervised
head, on a masked LM pretrained here (Schick & Schütze, arXiv 2001.07676, Table 1's layout; Lester et
al., arXiv 2104.08691, for prompt tuning).

What it measures. A small encoder (``models.encoder``) is pretrained as a masked LM on generated
reviews, some followed by cue sentences ("all in all , it was great ."); ratings are never written in
that text. Then, for |T| labelled reviews (balanced) and seeds s, every method starts from the same
pretrained weights:

- supervised: a new [CLS] head, the whole encoder fine-tuned with cross-entropy;
- PET: one model per pattern (3 PVPs), fine-tuned with (1 - alpha) L_CE + alpha L_MLM, alpha = 1e-4;
  ensemble weighted by each pattern's accuracy on T before training; soft labels on D at T = 2;
  a [CLS] classifier distilled on them (§3.3);
- iPET: k = ceil(log_5(1000 / |T|)) generations (§3.4), accuracy after each;
- prompt tuning: a soft prompt before pattern 1, the LM frozen, label-word init;
- zero-shot (|T| = 0): each pattern's accuracy with the untrained-for-the-task MLM, and zero-shot iPET.

Each fine-tuning kind has its own learning rate, chosen by the same sweep (``LR_CANDIDATES``) on a
validation split at |T| = 50 (``size="full"`` runs the sweep; ``"quick"`` uses the fixed rates of
``TUNED_LR``, 3e-3 for every fine-tuning kind and 0.1 for the soft prompt, and says so in its report). Differences from the paper: a 2-layer, d = 32 encoder pretrained
for a minute on a 150-word grammar instead of RoBERTa-large; 3 patterns with one verbaliser; far fewer
steps; the classes are latent ratings of the grammar, not Yelp stars.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import validate
from ..prompting import corpus, ipet, pet
from . import prompting_runs as R
from .common import ExperimentResult, markdown_table, savefig
from .protocol import Trial, spread, tune

NAME = "prompting"
TITLE = "Prompt learning: PET, iPET and soft prompt tuning vs a supervised head (few-shot)"

SIZES = {
    "quick": dict(d_model=32, n_layers=2, max_len=32, pretrain_n=20000, pretrain_steps=2000, pretrain_lr=3e-3,
                  batch=32, train_sizes=(10, 1000), seeds=2, n_unlabelled=300, n_test=300, ft_steps=40,
                  min_epochs=1, ft_batch=8, distill_steps=40, ipet_sizes=(10,), zero_shot_ipet=False, n_prompt=4,
                  prompt_inits=("labels",), sweep=False),
    "full": dict(d_model=32, n_layers=2, max_len=32, pretrain_n=20000, pretrain_steps=4000, pretrain_lr=3e-3,
                 batch=32, train_sizes=(10, 50, 100, 1000), seeds=3, n_unlabelled=1000, n_test=600,
                 ft_steps=150, min_epochs=3, ft_batch=8, distill_steps=150, ipet_sizes=(10, 50, 100),
                 zero_shot_ipet=True, n_prompt=8, prompt_inits=("labels", "vocab", "uniform", "normal"), sweep=True),
}
LR_CANDIDATES = (1e-3, 3e-3, 1e-2)
PROMPT_LR_CANDIDATES = (3e-2, 1e-1, 3e-1)
TUNED_LR = {"supervised": 3e-3, "pet": 3e-3, "distill": 3e-3, "prompt": 1e-1}
METHODS = ("supervised", "PET", "iPET", "prompt tuning")
COLORS = {"supervised": "C0", "PET": "C1", "iPET": "C2", "prompt tuning": "C3", "zero-shot": "C7"}


def fine_tune_steps(cfg, n_train: int) -> int:
    """The same budget for every method at a given |T|: ``ft_steps``, or ``min_epochs`` passes over T
    when that is more (so the supervised head is not starved at |T| = 1000)."""
    return max(cfg["ft_steps"], -(-cfg["min_epochs"] * n_train // cfg["ft_batch"]))


def _sweep(setup, cfg, rng):
    """The same small procedure for every kind: the candidate with the best accuracy on a validation
    split (drawn like T, disjoint from the test set) at |T| = 50, one seed."""
    task = corpus.make_task(rng, setup.tok, n_train=51, n_unlabelled=cfg["n_unlabelled"], n_test=300)
    kw = dict(steps=cfg["ft_steps"], batch=cfg["ft_batch"])

    def sup(lr, r):
        return R.classifier_accuracy(setup, R.train_supervised(setup, task.train, r, lr=lr, **kw), task.test)

    def pvp(lr, r):
        p = R.train_pvp(setup, setup.pvps[0], task.train, task.unlabelled, r, lr=lr, **kw)
        return R.accuracy(R.scores_of(setup, p, setup.pvps[0], task.test), task.test.labels)

    def prompt(lr, r):
        return R.run_prompt_tuning(setup, task.train, task.test, r, lr=lr, n_prompt=cfg["n_prompt"],
                                   init="labels", **kw)
    def best(run_fn, grid):       # experiments.protocol's sweep (one seed, no budget doubling); score = accuracy
        return tune(lambda lr, steps, seed: Trial(lr, steps, seed, run_fn(lr, np.random.default_rng(seed)), 0.0),
                    lr_grid=grid, steps=cfg["ft_steps"], seeds=(101,), max_doublings=0).lr
    lrs = {"supervised": best(sup, LR_CANDIDATES), "pet": best(pvp, LR_CANDIDATES),
           "prompt": best(prompt, PROMPT_LR_CANDIDATES)}
    lrs["distill"] = lrs["supervised"]     # the distilled classifier is the supervised architecture
    return lrs


def _one_cell(setup, cfg, lrs, n_train, rng):
    """Every method at one |T| and one seed: test accuracies and iPET's per-generation accuracies."""
    task = corpus.make_task(rng, setup.tok, n_train=n_train, n_unlabelled=cfg["n_unlabelled"], n_test=cfg["n_test"])
    kw = dict(steps=fine_tune_steps(cfg, n_train), batch=cfg["ft_batch"])
    out = {"supervised": R.classifier_accuracy(
        setup, R.train_supervised(setup, task.train, rng, lr=lrs["supervised"], **kw), task.test)}
    first = R.run_pet(setup, task.train, task.unlabelled, task.test, rng, lr=lrs["pet"], **kw)
    out["pvp_test_acc"] = first.test_acc

    def distilled(result):
        soft = pet.soft_labels(pet.ensemble_scores(result.d_scores, result.weights), temperature=2.0)
        clf = R.distill(setup, task.unlabelled, soft, rng, steps=cfg["distill_steps"], lr=lrs["distill"],
                        batch=2 * cfg["ft_batch"])
        return R.classifier_accuracy(setup, clf, task.test)
    out["PET"] = distilled(first)
    k = ipet.n_generations(n_train)
    if n_train in cfg["ipet_sizes"] and k > 0:
        last, gens = R.run_ipet(setup, task.train, task.unlabelled, task.test, rng, first=first, generations=k,
                                lr=lrs["pet"], **kw)
        out["iPET"], out["ipet_generations"] = distilled(last), gens
    elif k == 0:
        out["iPET"] = out["PET"]                               # k = 0 generations: iPET is PET (|T| >= 1000)
    for init in cfg["prompt_inits"]:
        key = "prompt tuning" if init == "labels" else f"prompt tuning ({init} init)"
        out[key] = R.run_prompt_tuning(setup, task.train, task.test, rng, lr=lrs["prompt"], n_prompt=cfg["n_prompt"],
                                       init=init, **kw)
    return out


def _zero_shot(setup, cfg, rng):
    task = corpus.make_task(rng, setup.tok, n_train=0, n_unlabelled=cfg["n_unlabelled"], n_test=cfg["n_test"])
    accs = [R.accuracy(R.scores_of(setup, setup.params, p, task.test), task.test.labels) for p in setup.pvps]
    out = {"pvp": accs}
    if cfg["zero_shot_ipet"]:
        last, gens = R.run_ipet(setup, task.train, task.unlabelled, task.test, rng, first=None, generations=3,
                                lr=TUNED_LR["pet"], steps=cfg["ft_steps"], batch=cfg["ft_batch"])
        out["ipet_generations"] = gens
    return out


def _mean_std(values):
    s = spread(values)                      # sample standard deviation, as every experiment reports it
    return s["mean"], s["std"]


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/prompting"),
        progress: bool = True, cfg_override: dict | None = None) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = {**SIZES[size], **(cfg_override or {})}
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    # the pretraining is cached beside the figures; full size reruns it (its cache key differs only if the
    # configuration does, so "full" uses cache_dir=None)
    setup, pre_hist, cached = R.make_setup(cfg, np.random.default_rng(1234), out_dir if size == "quick" else None,
                                           progress)
    t_pre = time.perf_counter() - t0
    lrs = _sweep(setup, cfg, np.random.default_rng(99)) if cfg["sweep"] else dict(TUNED_LR)
    seeds = [int(s) for s in rng.integers(0, 2**31, size=cfg["seeds"])]
    zero = [_zero_shot(setup, cfg, np.random.default_rng(s)) for s in seeds]
    cells = {n: [_one_cell(setup, cfg, lrs, n, np.random.default_rng(s)) for s in seeds] for n in cfg["train_sizes"]}
    seconds = time.perf_counter() - t0

    # --- table laid out like PET's Table 1 ---------------------------------------------------------
    def cell(n, key):
        vals = [c[key] for c in cells[n] if key in c]
        if not vals:
            return "–"
        m, s = _mean_std(vals)
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    zs_avg = _mean_std([np.mean(z["pvp"]) for z in zero])
    zs_max = _mean_std([np.max(z["pvp"]) for z in zero])
    rows = [["0", "–", f"avg {100 * zs_avg[0]:.1f}, max {100 * zs_max[0]:.1f} (unsupervised)",
             (lambda g: f"{100 * g[0]:.1f} ± {100 * g[1]:.1f}")(_mean_std([z["ipet_generations"][-1] for z in zero]))
             if cfg["zero_shot_ipet"] else "–", "–"]]
    rows += [[str(n), cell(n, "supervised"), cell(n, "PET"), cell(n, "iPET"), cell(n, "prompt tuning")]
             for n in cfg["train_sizes"]]
    table = markdown_table(["|T|", "supervised", "PET", "iPET", "prompt tuning"], rows)
    extra_inits = sorted({k for n in cfg["train_sizes"] for c in cells[n] for k in c if k.startswith("prompt tuning (")})
    init_rows = [[k] + [cell(n, k) for n in cfg["train_sizes"]] for k in ["prompt tuning"] + extra_inits]
    init_table = markdown_table(["soft prompt init"] + [f"|T|={n}" for n in cfg["train_sizes"]], init_rows)

    # --- figures -----------------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    sizes = list(cfg["train_sizes"])
    for i, m in enumerate(METHODS):
        ms = [_mean_std([c[m] for c in cells[n]]) if all(m in c for c in cells[n]) else (np.nan, np.nan)
              for n in sizes]
        x = np.array(sizes) * (1 + 0.04 * (i - 1.5))                    # small offsets: error bars apart
        ax.errorbar(x, [100 * a for a, _ in ms], yerr=[100 * s for _, s in ms], marker="o", capsize=3,
                    color=COLORS[m], label=m)
    ax.axhline(100 * zs_avg[0], color=COLORS["zero-shot"], ls="--", lw=1, label="zero-shot PVP (avg)")
    ax.axhline(100 / 3, color="k", ls=":", lw=1, label="chance (3 classes)")
    ax.set_xscale("log")
    ax.set(xlabel="|T| (labelled training examples, log scale)", ylabel="test accuracy (%)",
           title=f"few-shot accuracy, mean ± std over {cfg['seeds']} seeds")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    for n in sizes:
        gens = [c["ipet_generations"] for c in cells[n] if "ipet_generations" in c]
        if gens:
            g = np.mean(gens, axis=0)
            ax.plot(range(len(g)), 100 * g, "o-", label=f"|T| = {n}")
    if cfg["zero_shot_ipet"]:
        g = np.mean([z["ipet_generations"] for z in zero], axis=0)
        ax.plot(range(len(g)), 100 * g, "s--", label="|T| = 0 (zero-shot iPET)")
    ax.axhline(100 / 3, color="k", ls=":", lw=1, label="chance (3 classes)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set(xlabel="iPET generation (0 = PET's models)", ylabel="mean test accuracy of the PVP models (%)",
           title="iPET: accuracy per generation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig_path = savefig(fig, out_dir, "prompting_few_shot.png")

    gs = corpus.grammar_size()
    summary = (
        f"{table}\n\nTest accuracy (%) on {cfg['n_test']} reviews, 3 balanced classes (chance 33.3), mean ± std over "
        f"{cfg['seeds']} seeds. Learning rates {lrs} ({'chosen by the sweep on a validation split' if cfg['sweep'] else 'fixed, not swept at this size'}"
        f"). Masked LM: d={cfg['d_model']}, {cfg['n_layers']} layers, {cfg['pretrain_steps']} MLM steps on "
        f"{cfg['pretrain_n']} generated reviews ({'loaded from cache' if cached else f'{t_pre:.0f} s'}; final MLM loss "
        f"{float(np.mean(pre_hist[-50:])) if len(pre_hist) else float('nan'):.3f} nats); grammar of "
        f"{gs['vocabulary']} words, {gs['adjectives_per_class']} adjectives per class; ratings never appear in the "
        f"pretraining text.\n\nSoft prompt initialisation ({cfg['n_prompt']} prompt vectors):\n\n{init_table}\n\n"
        f"Zero-shot accuracy of each pattern: "
        + ", ".join(f"{p.name}: {100 * np.mean([z['pvp'][i] for z in zero]):.1f}" for i, p in enumerate(setup.pvps))
        + f". Total {seconds:.0f} s."
    )
    metrics = {"seconds": seconds, "zero_shot_avg": zs_avg[0], "zero_shot_max": zs_max[0]}
    for n in sizes:
        for m in METHODS:
            vals = [c[m] for c in cells[n] if m in c]
            if vals:
                metrics[f"{m}@{n}"] = float(np.mean(vals))
    return ExperimentResult(NAME, TITLE, summary, [fig_path], metrics)
