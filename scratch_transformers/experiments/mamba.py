"""Mamba's synthetic tasks at laptop scale (Gu & Dao 2023, Sec. 4.1, Tables 1 and 2 / 11, Fig. 2).

1. Selective copying (Sec. 4.1.1, Table 1): data tokens scattered among noise tokens must be reproduced in
   order at the marker tokens. Compared: Mamba (S6: dt, B, C computed from the input), the same model with
   time-invariant dt, B, C (an S4-like LTI ablation, ``MambaConfig(selective=False)``), and the baseline
   transformer (``models.transformer``, RoPE). The paper's claim: LTI models cannot select by content
   (Table 1: S4 18-57 %, S6 97-99.8 %).
2. Induction heads (Sec. 4.1.2, Table 2/11): associative recall, trained at one length and tested at up to
   16x that length. The paper's claim: Mamba extrapolates perfectly (to 4000x); attention with absolute or
   rotary positions collapses beyond about 2x.

Every model is trained with AdamW on freshly drawn batches (as in the paper, data regenerated every step) and
evaluated on fixed held-out sets drawn from a separate generator. Every model gets the same tuning procedure
(``experiments.protocol``): its own learning-rate sweep over one grid, a budget check that doubles its steps while
its training-length accuracy still improves, then three seeds at the chosen settings, reported as mean, standard
deviation and range. The quick size uses the (rate, steps) that this procedure chose when run whole at the quick size
(``CHOSEN``); the full size runs the procedure itself. Numbers are what the run measured.

The LTI ablation is weaker than the paper's S4 baseline: one B and one C (N numbers each) shared by all channels,
real S4D-Real A and no HiPPO initialisation, where S4 has a B and a C per channel (complex, HiPPO-initialised).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import data, validate
from ..mamba import model as mm
from ..models import transformer as tf
from .common import ExperimentResult, fit, markdown_table, savefig
from .protocol import Trial, fixed, fmt_spread, spread, tune

NAME = "mamba"
TITLE = "Mamba: selective copying (S6 vs LTI vs attention) and induction-head length extrapolation"

SIZES = {
    "quick": dict(copy_region=16, copy_tokens=2, copy_vocab=6, copy_steps=300,
                  ind_len=16, ind_vocab=8, ind_steps=500, test_mults=(1, 2, 4, 8, 16),
                  d_model=32, d_state=8, batch=16, n_val=128, models=("s6", "lti", "attention")),
    "full": dict(copy_region=32, copy_tokens=4, copy_vocab=8, copy_steps=1500,
                 ind_len=32, ind_vocab=16, ind_steps=3000, test_mults=(1, 2, 4, 8, 16),
                 d_model=32, d_state=16, batch=32, n_val=256, models=("s6", "lti", "attention")),
}
# The tuning procedure's settings (experiments.protocol), the same for every model and task.
LR_GRID = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)
MAX_DOUBLINGS = {"quick": 1, "full": 2}
# (learning rate, steps, how) recorded from the whole procedure run at the quick size (sweep at the SIZES steps,
# one budget doubling, seed-0 held-out accuracy % at the training length; 2026-12-05, the code of this commit), so that
# the tour runs only the three seeds at the chosen settings. None: run the whole procedure (the full size does).
CHOSEN = {
    "quick": {
        ("copy", "s6"): (1e-2, 300, "sweep 0.001: 77, 0.003: 100, 0.01: 100 (tie: lower loss); x2 steps: 100"),
        ("copy", "lti"): (3e-3, 600, "sweep 0.001: 63, 0.003: 86, 0.01: 77; x2 steps: 100; still improving at the "
                                     "cap"),
        ("copy", "attention"): (1e-3, 600, "sweep 0.001: 82, 0.003: 82, 0.01: 73 (tie: lower loss); x2 steps: 98; "
                                           "still improving at the cap"),
        ("induction", "s6"): (1e-2, 500, "sweep 0.001: 94, 0.003: 100, 0.01: 100 (tie: lower loss); x2 steps: 100"),
        ("induction", "lti"): (1e-2, 500, "sweep 0.001: 42, 0.003: 87, 0.01: 100; x2 steps: 100"),
        ("induction", "attention"): (1e-3, 1000, "sweep 0.001: 31, 0.003: 22, 0.01: 16; x2 steps: 88; still "
                                                 "improving at the cap"),
    },
    "full": None,
}

LABELS = {"s6": "Mamba (S6, selective)", "lti": "Mamba LTI (time-invariant dt, B, C)",
          "attention": "Transformer (RoPE)"}


class _Model:
    """A name, a parameter dict, loss_and_grads and logits for one of the compared architectures."""

    def __init__(self, kind, vocab, cfg, max_len, rng):
        self.kind = kind
        if kind in ("s6", "lti"):
            self.config = mm.MambaConfig(vocab_size=vocab, d_model=cfg["d_model"], n_layers=2, d_state=cfg["d_state"],
                                         selective=(kind == "s6"))
            self.params = mm.init_params(self.config, rng, dtype=np.float32)
        else:
            self.config = tf.TransformerConfig(vocab_size=vocab, d_model=cfg["d_model"], n_layers=2, n_heads=4,
                                               max_len=max_len, positions="rope")
            self.params = tf.init_params(self.config, rng, dtype=np.float32)

    @property
    def n_params(self):
        return int(sum(v.size for v in self.params.values()))

    def loss_and_grads(self, params, inputs, targets):
        lib = mm if self.kind in ("s6", "lti") else tf
        return lib.loss_and_grads(params, self.config, inputs, targets)

    def logits(self, inputs):
        lib = mm if self.kind in ("s6", "lti") else tf
        return lib.forward(self.params, self.config, inputs)[0]


def _accuracy(model, task, max_batch_tokens=1 << 16, attn_budget=1 << 21):
    """Greedy accuracy over scored positions, in batches small enough for the attention matrix."""
    n, T = task.inputs.shape
    bs = max(1, min(n, max_batch_tokens // T, attn_budget // (T * T) if model.kind == "attention" else n))
    preds = []
    for s in range(0, n, bs):
        preds.append(np.argmax(model.logits(task.inputs[s:s + bs]), axis=-1))
    return data.masked_accuracy(np.concatenate(preds), task.targets)


def _train(model, make_batch, val, cfg, steps, rng, progress, desc, lr):

    def next_batch(r, step):
        t = make_batch(r, cfg["batch"])
        return t.inputs, t.targets

    def lg(p, batch, r):
        return model.loss_and_grads(p, *batch)

    def eval_fn(p):
        return {"val_acc": _accuracy(model, val)}

    hist = fit(lg, model.params, next_batch, steps=steps, lr=lr, rng=rng, warmup_steps=min(50, steps // 10),
               eval_fn=eval_fn, eval_every=max(steps // 10, 1), progress=progress, desc=desc)
    return hist, hist.wall_time



TASKS = ("copy", "induction")


def _procedure(train_one, size, task, kind, steps):
    """The same procedure for every (task, model): a recorded choice at this size, or protocol.tune.
    Returns (Tuned, how it was chosen)."""
    chosen = CHOSEN.get(size)
    if chosen is None:
        tuned = tune(train_one, lr_grid=LR_GRID, steps=steps, seeds=SEEDS, max_doublings=MAX_DOUBLINGS[size])
        how = ("sweep " + ", ".join(f"{t.lr:g}: {100 * t.score:.0f}" for t in tuned.sweep)
               + ("; x2 steps: " + ", ".join(f"{100 * t.score:.0f}" for t in tuned.budget) if tuned.budget else "")
               + ("; still improving at the cap" if tuned.still_improving else ""))
        return tuned, how
    lr, n, how = chosen[(task, kind)]
    return fixed(train_one, lr=lr, steps=n, seeds=SEEDS), "recorded " + how


def _late_gain(trial) -> float:
    """Held-out accuracy gained over the last 30% of a run's steps (from its eval curve): near 0 when the
    training-length accuracy has stopped improving within the budget."""
    steps = np.array(trial.payload["eval_steps"])
    acc = np.array(trial.payload["eval_acc"])
    before = acc[steps <= 0.7 * steps[-1]]
    return float(acc[-1] - (before[-1] if before.size else acc[0]))


def _curve(runs):
    """(steps, mean, min, max) of the held-out accuracy curves of the seeds (same eval steps)."""
    steps = np.array(runs[0].payload["eval_steps"])
    acc = np.array([r.payload["eval_acc"] for r in runs]) * 100
    return steps, acc.mean(axis=0), acc.min(axis=0), acc.max(axis=0)


def run(size="quick", rng=None, out_dir=Path("out"), progress=True) -> ExperimentResult:
    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    out_dir = Path(out_dir)
    cfg = SIZES[size]
    val_rng = np.random.default_rng(rng.integers(2 ** 63))           # held-out sets: a separate stream
    base_seed = int(rng.integers(2 ** 31))                            # every run: data and init from its own seed
    L0 = cfg["ind_len"]
    lengths = [L0 * m for m in cfg["test_mults"]]

    def copy_batch(r, n):
        return data.selective_copy_task(r, n, length=cfg["copy_region"], n_tokens=cfg["copy_tokens"],
                                        vocab=cfg["copy_vocab"])

    def ind_batch(r, n):
        return data.induction_task(r, n, length=L0, vocab=cfg["ind_vocab"])

    copy_val = copy_batch(val_rng, cfg["n_val"])
    ind_vals = {L: data.induction_task(val_rng, cfg["n_val"], length=L, vocab=cfg["ind_vocab"]) for L in lengths}
    setup = {"copy": (copy_batch, {copy_val.inputs.shape[1]: copy_val}, copy_val.vocab_size, cfg["copy_steps"]),
             "induction": (ind_batch, ind_vals, cfg["ind_vocab"], cfg["ind_steps"])}

    results, hows = {}, {}                                            # (task, kind) -> Tuned, how chosen
    for ti, task in enumerate(TASKS):
        make_batch, vals, vocab, steps = setup[task]
        train_len = min(vals)
        for ki, kind in enumerate(cfg["models"]):
            def train_one(lr, n_steps, seed, task=task, kind=kind, ti=ti, ki=ki):
                r = np.random.default_rng([base_seed, ti, ki, seed])
                model = _Model(kind, vocab, cfg, max(vals), r)
                hist, sec = _train(model, make_batch, vals[train_len], cfg, n_steps, r, progress,
                                   f"mamba {task} {kind} lr={lr:g} seed={seed}", lr)
                accs = {n: (hist.evals[-1][1]["val_acc"] if n == train_len else _accuracy(model, vals[n]))
                        for n in sorted(vals)}
                return Trial(lr, n_steps, seed, accs[train_len], float(np.mean(hist.losses[-20:])),
                             dict(accs=accs, eval_steps=[s for s, _ in hist.evals],
                                  eval_acc=[m["val_acc"] for _, m in hist.evals], seconds=sec,
                                  n_params=model.n_params))
            results[(task, kind)], hows[(task, kind)] = _procedure(train_one, size, task, kind, steps)

    # ---- metrics and tables ------------------------------------------------------------------
    metrics = {}
    rows_copy, rows_ind = [], []
    for (task, kind), tuned in results.items():
        runs = tuned.runs
        metrics[f"params_{kind}"] = float(runs[0].payload["n_params"])
        metrics[f"lr_{task}_{kind}"] = tuned.lr
        metrics[f"steps_{task}_{kind}"] = float(tuned.steps)
        for n in runs[0].payload["accs"]:
            accs = [r.payload["accs"][n] for r in runs]
            key = f"copy_acc_{kind}" if task == "copy" else f"induction_acc_{kind}_L{n}"
            s = spread(accs)
            metrics[key], metrics[key + "_std"], metrics[key + "_min"] = s["mean"], s["std"], s["min"]
        how = hows[(task, kind)]
        sec = np.mean([r.payload["seconds"] for r in runs])
        late = np.mean([_late_gain(r) for r in runs])
        metrics[f"late_gain_{task}_{kind}"] = late
        head = [LABELS[kind], runs[0].payload["n_params"], f"{tuned.lr:g}", tuned.steps, how, f"{100 * late:+.1f}"]
        if task == "copy":
            rows_copy.append(head + [fmt_spread([r.score for r in runs], 100), f"{sec:.1f}"])
        else:
            rows_ind.append(head + [fmt_spread([r.payload["accs"][n] for r in runs], 100) for n in lengths]
                            + [f"{sec:.1f}"])

    # ---- figure: mean over seeds, shaded range --------------------------------------------------
    import matplotlib.pyplot as plt

    colours = {"s6": "C0", "lti": "C1", "attention": "C2"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.0))
    for ax, task, chance in ((axes[0], "copy", 100 / (cfg["copy_vocab"] - 2)),
                             (axes[1], "induction", 100 / (cfg["ind_vocab"] - 1))):
        for kind in cfg["models"]:
            st, mean, lo, hi = _curve(results[(task, kind)].runs)
            tuned = results[(task, kind)]
            ax.plot(st, mean, marker="o", ms=3, color=colours[kind],
                    label=f"{LABELS[kind]} (lr {tuned.lr:g})")
            ax.fill_between(st, lo, hi, color=colours[kind], alpha=0.2)
        ax.axhline(chance, color="gray", ls=":", lw=1, label="chance")
        ax.set(xlabel="training step", ylabel="held-out accuracy (%)", ylim=(0, 102))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)   # below: no data hidden
    axes[0].set_title(f"Selective copying (region {cfg['copy_region']}, {cfg['copy_tokens']} tokens)", fontsize=10)
    axes[1].set_title(f"Induction heads: training (length {L0})", fontsize=10)
    for kind in cfg["models"]:
        runs = results[("induction", kind)].runs
        acc = np.array([[r.payload["accs"][n] for n in lengths] for r in runs]) * 100
        mean = acc.mean(axis=0)
        axes[2].errorbar(lengths, mean, yerr=[mean - acc.min(axis=0), acc.max(axis=0) - mean], marker="o",
                         capsize=3, color=colours[kind], label=LABELS[kind])
    axes[2].axvline(L0, color="k", ls="--", lw=1, label="training length")
    axes[2].axhline(100 / (cfg["ind_vocab"] - 1), color="gray", ls=":", lw=1, label="chance")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(lengths)
    axes[2].set_xticklabels([str(n) for n in lengths])
    axes[2].set(title="Induction heads: test length", xlabel="sequence length (tokens)",
                ylabel="accuracy (%)", ylim=(0, 102))
    axes[2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(f"mean of {len(SEEDS)} seeds; shaded / bars: min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig_path = savefig(fig, out_dir, "mamba_synthetic.png")

    # ---- summary -----------------------------------------------------------------------------
    common_head = ["model", "params", "lr", "steps", "how chosen (seed-0 accuracy %)",
                   "gain in the last 30% of steps (points)"]
    copy_table = markdown_table(common_head + [f"held-out accuracy %, {len(SEEDS)} seeds: mean ± sd (range)",
                                               "train s / run"], rows_copy)
    ind_table = markdown_table(common_head + [f"L={L}" + (" (train)" if L == L0 else f" ({L // L0}x)")
                                              for L in lengths] + ["train s / run"], rows_ind)
    chosen_how = ("the rates and steps recorded from the whole procedure run at this size (`CHOSEN`: the seed-0 run "
                  "at the chosen settings is the one the procedure made)"
                  if CHOSEN.get(size) is not None else "chosen in this run")
    summary = (
        f"Every model: the same procedure (`experiments.protocol`): a learning-rate sweep over "
        f"{', '.join(f'{x:g}' for x in LR_GRID)} (seed 0, best held-out accuracy at the training length), then its "
        f"steps doubled while that accuracy improves by more than 2 points (at most {MAX_DOUBLINGS[size]} "
        f"doubling(s)), then seeds {', '.join(map(str, SEEDS))} at the chosen settings; {chosen_how}. Each run draws "
        f"its data and initialisation from its own seed; the held-out sets are shared.\n\n"
        f"**Selective copying** (region {cfg['copy_region']}, {cfg['copy_tokens']} data tokens, vocab "
        f"{cfg['copy_vocab']}; 2 layers, d_model {cfg['d_model']}, N {cfg['d_state']}; batch {cfg['batch']}; token "
        f"accuracy at the marker positions of {cfg['n_val']} held-out sequences; chance = "
        f"{100 / (cfg['copy_vocab'] - 2):.1f} %):\n\n{copy_table}\n\n"
        f"**Induction heads** (vocab {cfg['ind_vocab']}, trained at length {L0}; accuracy (%) of the final prediction "
        f"on {cfg['n_val']} held-out sequences per length, mean ± sd (range) over the seeds; chance = "
        f"{100 / (cfg['ind_vocab'] - 1):.1f} %):\n\n{ind_table}\n\n"
        "The last-30% column is a plateau check within the budget: near 0 means the training-length accuracy had "
        "stopped improving (a model still at chance may yet learn later, which only the budget doubling tests). "
        "Caveats: the paper trains far longer (selective copying: 400K steps at length 4096; induction heads: length "
        "256, epochs of 8192 steps), so a model that has not learned a task here is not evidence against the paper. "
        "The LTI row is weaker than the paper's S4: one B and one C shared by all channels (S4 has one per channel, "
        "complex and HiPPO-initialised).\n"
    )
    return ExperimentResult(name=NAME, title=TITLE, summary=summary, figures=[fig_path], metrics=metrics)
