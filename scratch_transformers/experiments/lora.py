"""LoRA rank sweep: adapt a byte-level LM pretrained on Python *code* to English *documentation prose*.

Setup. The baseline transformer (``models.transformer``) is pretrained on the stdlib source corpus
(``core.data.load_stdlib_corpus``: 50 modules of Python code). It is then adapted to the help texts of
the Python documentation shipped in the stdlib (``pydoc_data/topics.py``, a dict of ~700 kB of English
prose with code snippets; we take the strings, not the Python file around them). Why this target: the
paper adapts a pretrained LM to a downstream distribution that shares its tokenizer and much of its
structure but differs in content (GPT-3 -> WikiSQL / MNLI); code -> prose about the same language is that
shift at byte level, it is large enough that the base model's loss on the target is clearly improvable,
and both texts come with the interpreter (no download).

Compared, with the same steps, batches, optimizer (AdamW) and schedule: no adaptation; LoRA on W_q and
W_v of every layer (the paper's default, Table 5) with r in {1, 2, 4, 8, 16, 64} at a fixed alpha (as
§4.1: alpha is set once, not tuned per r); training the output head only; full fine-tuning. Learning
rates: one per family, chosen once on a dev slice of the training prose (see ``LR`` below).
Then eq. (4)'s subspace similarity between the r = 8 and r = 64 adapters of W_q and W_v (§7.2, Fig. 3).
Caveat printed with the figure: at d_model = 64, r = 64 is full rank, and the random-subspace baseline
max(i, j)/64 is not negligible as it is at GPT-3's 12,288.
"""

from __future__ import annotations

import ast
import io
import os
import sysconfig
import time
from pathlib import Path

import numpy as np

from .. import lora
from ..core import data, validate
from ..models import transformer as tf
from .common import ExperimentResult, fit, markdown_table, mean_loss, savefig

NAME = "lora"
TITLE = "LoRA: adapting a code LM to documentation prose, rank sweep vs full and head-only fine-tuning"

RANKS = (1, 2, 4, 8, 16, 64)
EVAL_BATCH = 32                      # validation windows per forward in mean_loss
ALL_LINEAR = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w1", "mlp.w2")
SIZES = {
    # ctx x batch bytes per step; pretraining and adaptation steps; validation windows; ranks also run with rsLoRA
    # dtype of the parameters: float32 at the quick size (half the time per step of float64)
    "quick": dict(d_model=64, n_layers=2, ctx=32, batch=16, pretrain_steps=400, adapt_steps=100,
                  n_val=32, alpha=8.0, rslora_ranks=(), all_linear_ranks=(8,), dtype="float32"),
    "full": dict(d_model=64, n_layers=2, ctx=64, batch=16, pretrain_steps=1000, adapt_steps=200,
                 n_val=128, alpha=8.0, rslora_ranks=(8, 64), all_linear_ranks=(1, 8), dtype="float64"),
}
# Adaptation learning rates, one per family, chosen once (not per rank, not on the validation text) by a
# probe at the full size: 150 steps from a 1000-step base, loss on a dev slice cut from the *training* prose
# (last 40 kB). Grid and dev losses (nats/byte): LoRA W_q,W_v r=8: 3e-3 2.069, 1e-2 2.020, 3e-2 1.993;
# LoRA all-linear r=8: 3e-3 1.947, 1e-2 1.886, 3e-2 1.875; head only: 3e-3 1.954, 1e-2 1.928, 3e-2 1.920;
# full: 1e-3 1.825, 3e-3 1.735, 1e-2 1.751. LoRA's and the head's optima sit at the grid's upper edge.
LR = {"pretrain": 3e-3, "lora": 3e-2, "full": 3e-3, "head": 3e-2}


def load_prose(val_fraction: float = 0.1):
    """The stdlib's documentation help texts (pydoc_data.topics.topics) as bytes: (train, val) uint8.

    Read with ast.literal_eval (no import, no code execution); topics joined in sorted key order, the
    last val_fraction of the bytes is validation.
    """
    path = os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data", "topics.py")
    if not os.path.isfile(path):
        validate.fail("pydoc_data/topics.py", "a file in the stdlib directory", path)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    topics = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
    if not isinstance(topics, dict):
        validate.fail("pydoc_data/topics.py", "a 'topics = {...}' dict literal", "none")
    blob = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    arr = np.frombuffer(blob, dtype=np.uint8)
    n_val = int(len(arr) * val_fraction)
    return arr[:-n_val].copy(), arr[-n_val:].copy()


def head_keys(params: dict) -> list[str]:
    """The output projection (and its bias): the parameters a head-only fine-tune trains."""
    keys = [k for k in params if k.split(".")[0] in ("head", "lm_head", "unembed")]
    if not keys:
        validate.fail("params", "an output head ('head.*')", sorted(params)[:6])
    return keys


def _fit(trainable, base, config, next_batch, steps, lr, rng, linears=None, desc="", progress=True):
    """Train ``trainable`` (a dict of arrays, updated in place) with base's other weights frozen.
    next_batch(rng, step) -> (inputs, targets)."""
    lg = lora.adapter_loss_and_grads(tf.loss_and_grads, base, linears)
    return fit(lambda p, batch, r: lg(p, config, *batch), trainable, next_batch, steps=steps, lr=lr, rng=rng,
               warmup_steps=min(20, steps // 5), progress=progress, desc=desc)


def _what_this_size_shows(results: dict, none: float) -> str:
    """Whether this run shows what the full run shows (derivations/lora.md: every LoRA rank beats no adaptation,
    the W_q, W_v ranks saturate by r ~ 8, full fine-tuning is best), said plainly either way."""
    lora_vals = {r: results[f"LoRA r={r}"]["val"] for r in RANKS}
    worse = [r for r, v in lora_vals.items() if v >= none]
    full = results["full fine-tuning"]["val"]
    parts = []
    if worse:
        parts.append(f"**This run does not show LoRA's benefit:** LoRA r = {', '.join(map(str, worse))} "
                     f"{'is' if len(worse) == 1 else 'are'} no better than no adaptation ({none:.3f}); at this size "
                     "the adaptation is too short for the low-rank update to help.")
    else:
        parts.append(f"Every LoRA rank improves on no adaptation ({none:.3f} -> "
                     f"{min(lora_vals.values()):.3f}-{max(lora_vals.values()):.3f}), as in the full run.")
    gain8 = none - lora_vals[8]
    gain64 = none - lora_vals[64]
    if gain8 > 0 and gain64 > 0:
        parts.append(f"r = 8 reaches {100 * gain8 / gain64:.0f}% of r = 64's improvement "
                     f"(full run: 92%, saturating by r ~ 8).")
    parts.append("Full fine-tuning is the best row, as in the full run." if full <= min(r["val"] for r in
                 results.values()) else "Full fine-tuning is not the best row here, unlike the full run.")
    return " ".join(parts)


def _file_bytes(arrays: dict) -> int:
    """Size in bytes of the .npz that np.savez writes for ``arrays`` (built in memory)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getbuffer().nbytes


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/lora"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    out_dir = Path(out_dir)
    t_start = time.perf_counter()

    # 1. pretrain on code -----------------------------------------------------------------------
    code = data.load_stdlib_corpus()
    prose_train, prose_val = load_prose()
    ctx, bs = cfg["ctx"], cfg["batch"]
    config = tf.TransformerConfig(vocab_size=256, d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=4,
                                  max_len=ctx, positions="learned")
    dtype = np.dtype(cfg.get("dtype", "float64"))
    base = tf.init_params(config, rng, dtype=dtype)
    steps = cfg["pretrain_steps"]
    _fit(base, {}, config, lambda r, step: data.random_windows(code.train, r, bs, ctx), steps, LR["pretrain"], rng, desc="lora: pretrain on code", progress=progress)
    code_vx, code_vy = data.random_windows(code.val, np.random.default_rng(7), cfg["n_val"], ctx)
    val_x, val_y = data.random_windows(prose_val, np.random.default_rng(8), cfg["n_val"], ctx)
    base_code_loss = mean_loss(base, config, code_vx, code_vy, batch=EVAL_BATCH)
    base_prose_loss = mean_loss(base, config, val_x, val_y, batch=EVAL_BATCH)

    # 2. adapt to prose: every method sees the same batches ----------------------------------------
    n_steps = cfg["adapt_steps"]
    batches = [data.random_windows(prose_train, rng, bs, ctx) for _ in range(n_steps)]

    def same_batches(r, step):
        return batches[step]

    rows, results, adapters_by_r = [], {}, {}

    def record(label, n_train, hist, val_loss, seconds):
        results[label] = dict(params=n_train, val=val_loss, curve=list(hist.losses), seconds=seconds)
        rows.append([label, n_train, f"{100 * n_train / n_total:.2f}%", val_loss, seconds])

    n_total = lora.n_params(base)
    variants = ([("lora", r) for r in RANKS] + [("rslora", r) for r in cfg["rslora_ranks"]]
                + [("all", r) for r in cfg["all_linear_ranks"]])
    for kind, r in variants:
        lcfg = lora.LoRAConfig(r=r, alpha=cfg["alpha"], rslora=(kind == "rslora"),
                               targets=ALL_LINEAR if kind == "all" else lora.DEFAULT_TARGETS)
        adapters = lora.init_adapters(base, lcfg, rng)
        initial = {k: v.copy() for k, v in adapters.items()}
        linears = lora.make_linears(base, adapters, lcfg)
        t0 = time.perf_counter()
        hist = _fit(adapters, base, config, same_batches, n_steps, LR["lora"], rng, linears,
                    desc=f"lora: {kind} r={r}", progress=progress)
        label = {"lora": "LoRA", "rslora": "rsLoRA", "all": "LoRA all-linear"}[kind] + f" r={r}"
        val = mean_loss({**base, **adapters}, config, val_x, val_y, linears=linears, batch=EVAL_BATCH)
        record(label, lora.n_params(adapters), hist, val, time.perf_counter() - t0)
        if kind == "lora":
            adapters_by_r[r] = (lcfg, adapters, linears, initial)

    for label, keys, lr in (("head only", head_keys(base), LR["head"]), ("full fine-tuning", list(base), LR["full"])):
        trainable = {k: base[k].copy() for k in keys}
        t0 = time.perf_counter()
        hist = _fit(trainable, base, config, same_batches, n_steps, lr, rng, desc=f"lora: {label}", progress=progress)
        val = mean_loss({**base, **trainable}, config, val_x, val_y, batch=EVAL_BATCH)
        record(label, lora.n_params(trainable), hist, val, time.perf_counter() - t0)

    # 3. merge check, file sizes -------------------------------------------------------------------
    lcfg8, ad8, lin8, _ = adapters_by_r[8]
    logits_unmerged, _ = tf.forward({**base, **ad8}, config, val_x[:4], linears=lin8)
    logits_merged, _ = tf.forward(lora.merge_adapters(base, ad8, lcfg8), config, val_x[:4])
    merge_err = float(np.max(np.abs(logits_merged - logits_unmerged)))
    adapter_path = lora.save_adapters(out_dir / "adapter_r8.npz", ad8, lcfg8)
    adapter_bytes = os.path.getsize(adapter_path)
    base_bytes = _file_bytes(base)

    # 4. subspace similarity between r=8 and r=64 (eq. 4) ------------------------------------------
    layer = cfg["n_layers"] - 1
    phis, phis_init, moved = {}, {}, {}
    for proj in ("wq", "wv"):
        key = f"blocks.{layer}.attn.{proj}.lora_A"
        phis[proj] = lora.subspace_similarity(adapters_by_r[8][1][key], adapters_by_r[64][1][key])
        phis_init[proj] = lora.subspace_similarity(adapters_by_r[8][3][key], adapters_by_r[64][3][key])
        moved[proj] = [np.linalg.norm(adapters_by_r[r][1][key] - adapters_by_r[r][3][key])
                       / np.linalg.norm(adapters_by_r[r][3][key]) for r in (8, 64)]
        # energy of the learned change A - A_0 in its top-2 singular directions: a low-rank update of A
        sv = {r: np.linalg.svd(adapters_by_r[r][1][key] - adapters_by_r[r][3][key], compute_uv=False) for r in (8, 64)}
        moved[proj] += [float(np.sum(sv[r][:2] ** 2) / np.sum(sv[r] ** 2)) for r in (8, 64)]
    d = cfg["d_model"]
    # Where do the shared directions come from? dA = x_d^T dh (derivation, step 3) lies in the row space
    # of the adapter's input x, so compare A with the top principal (uncentred) directions of that input,
    # captured on validation text (W_q and W_v of a pre-LN block see the same normalised input).
    captured = {}

    class _Capture(lora.LoRALinear):
        def forward(self, x, params):
            captured[self.name] = x.reshape(-1, x.shape[-1])
            return super().forward(x, params)

    lcfg64, ad64 = adapters_by_r[64][0], adapters_by_r[64][1]
    cap = {n: _Capture(n, scale=lcfg64.scale, bias=lora.bias_name(n, base)) for n in lora.adapted_names(ad64)}
    tf.forward({**base, **ad64}, config, val_x[:32], linears=cap)
    x_dirs = np.linalg.svd(captured[f"blocks.{layer}.attn.wq"].T, full_matrices=False)[0]    # (d, d)
    phis_input = {proj: lora.subspace_similarity(adapters_by_r[8][1][f"blocks.{layer}.attn.{proj}.lora_A"],
                                                 x_dirs) for proj in ("wq", "wv")}
    # ... and with the left-singular directions of the full fine-tuning gradient dW0 = x^T dY at the base
    # model (mean over the first 8 adaptation batches): B starts at 0 and moves along s (xA)^T dY, after which
    # dA = s x^T dY B^T = s dW0 B^T is drawn towards dW0's dominant column space, whatever r is.
    g_sum = {}
    for batch in batches[:8]:
        _, g = tf.loss_and_grads(base, config, *batch)
        for proj in ("wq", "wv"):
            key = f"blocks.{layer}.attn.{proj}"
            g_sum[proj] = g_sum.get(proj, 0.0) + g[key]
    phis_grad = {proj: lora.subspace_similarity(adapters_by_r[8][1][f"blocks.{layer}.attn.{proj}.lora_A"],
                                                np.linalg.svd(g_sum[proj], full_matrices=False)[0])
                 for proj in ("wq", "wv")}

    # 5. figures -------------------------------------------------------------------------------------
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    # rank labels: LoRA above its points, rsLoRA below (it shares LoRA's parameter counts), all-linear to the right
    offsets = {"LoRA": (0, 7, "center", "bottom"), "rsLoRA": (0, -8, "center", "top"),
               "LoRA all-linear": (7, 0, "left", "center")}
    for kind, marker, colour in (("LoRA", "o-", "C0"), ("rsLoRA", "s--", "C1"), ("LoRA all-linear", "D:", "C2")):
        ranks = [r for r in RANKS if f"{kind} r={r}" in results]
        pts = [(results[f"{kind} r={r}"]["params"], results[f"{kind} r={r}"]["val"]) for r in ranks]
        if pts:
            where = "attn + MLP" if "all" in kind else "W_q, W_v"
            ax.plot(*zip(*pts), marker, color=colour, label=f"{kind} ({where}), r = " + ", ".join(map(str, ranks)))
            dx, dy, ha, va = offsets[kind]
            for (p, v), r in zip(pts, ranks):
                ax.annotate(f"r={r}", (p, v), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7,
                            color=colour)
    for label, m, colour in (("head only", "^", "C3"), ("full fine-tuning", "*", "C4")):
        ax.plot(results[label]["params"], results[label]["val"], m, color=colour, ms=11, label=label)
    ax.axhline(base_prose_loss, color="k", ls=":", lw=1, label=f"no adaptation ({base_prose_loss:.3f})")
    ax.margins(x=0.08, y=0.1)                                       # room for the rank labels
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="validation loss on prose (nats/byte)",
           title=f"adaptation after {n_steps} steps (base: {n_total:,} params)")
    ax.legend(fontsize=7)
    ax = axes[1]
    w = max(1, n_steps // 10)
    blues = plt.get_cmap("Blues")                                  # LoRA (C0's family): darker = larger r
    colours = {f"LoRA r={r}": blues(0.35 + 0.65 * i / max(len(RANKS) - 1, 1)) for i, r in enumerate(RANKS)}
    colours.update({"head only": "C3", "full fine-tuning": "C4"})     # as in the left panel
    for label in [f"LoRA r={r}" for r in RANKS] + ["head only", "full fine-tuning"]:
        curve = np.convolve(results[label]["curve"], np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, n_steps + 1), curve, lw=0.9, color=colours[label], label=label)
    ax.set(xlabel="adaptation step", ylabel=f"train loss, mean of last {w} steps (nats/byte)",
           title="training curves (same batches for all)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig_sweep = savefig(fig, out_dir, "lora_rank_sweep.png")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw=dict(width_ratios=[1, 1.2, 1.1]))
    for ax, proj in zip(axes[:2], ("wq", "wv")):
        im = ax.imshow(phis[proj], aspect="auto", vmin=0, vmax=1, cmap="viridis", origin="lower",
                       extent=(0.5, 64.5, 0.5, 8.5))
        ax.set(title=f"phi(A_r=8, A_r=64, i, j), layer {layer} W_{proj[1]}", xlabel="j (r = 64 directions)",
               ylabel="i (r = 8 directions)")
    fig.colorbar(im, ax=axes[1], label="phi")
    ax = axes[2]
    j = np.arange(1, 65)
    for proj, c in (("wq", "C0"), ("wv", "C1")):
        ax.plot(j, phis[proj][0], c, label=f"phi(1, j): A_r=8 vs A_r=64, W_{proj[1]}")
        ax.plot(j, phis_grad[proj][0], c + ":", label=f"phi(1, j): A_r=8 vs full-FT gradient dW0, W_{proj[1]}")
    ax.plot(j, j / d, "k--", lw=1, label="random subspaces: j / d_model")
    ax.set(xlabel="j", ylabel="phi", title="top direction of r=8 inside top-j of r=64", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig_sim = savefig(fig, out_dir, "lora_subspace_similarity.png")

    # 6. summary ------------------------------------------------------------------------------------
    table = markdown_table(["method", "trainable params", "of base", "val loss (nats/byte)", "seconds"],
                           [["no adaptation", 0, "0%", base_prose_loss, 0.0]] + rows)
    best_lora = min((results[f"LoRA r={r}"]["val"], r) for r in RANKS)
    phi_q, phi_v = phis["wq"], phis["wv"]
    summary = (
        f"Base model ({n_total:,} params, d_model {d}, {cfg['n_layers']} layers) pretrained {steps} steps on "
        f"stdlib code: val loss {base_code_loss:.3f} nats/byte on code, {base_prose_loss:.3f} on documentation "
        f"prose (the target). Adaptation: {n_steps} steps, batch {bs} x {ctx} bytes, AdamW, warmup-cosine, "
        f"lr {LR['lora']:g} (LoRA, alpha = {cfg['alpha']:g}: s = alpha/r, rsLoRA alpha/sqrt(r)), "
        f"{LR['head']:g} (head), {LR['full']:g} (full): one per family, picked once from a 3-point grid on a dev "
        f"slice of the training prose (LoRA at r=8, then shared by all r as §4.1's alpha/r intends); same batches "
        f"for all.\n\n{table}\n\n"
        f"Best LoRA rank: r={best_lora[1]} ({best_lora[0]:.3f}); full fine-tuning "
        f"{results['full fine-tuning']['val']:.3f}; head only {results['head only']['val']:.3f}.\n\n"
        f"{_what_this_size_shows(results, base_prose_loss)}\n\n"
        f"Merged r=8 model vs unmerged adapters: max |logit difference| {merge_err:.2e}. "
        f"Adapter file (r=8, W_q+W_v, {dtype} npz incl. config): {adapter_bytes:,} bytes vs "
        f"{base_bytes:,} bytes for the base weights ({base_bytes / adapter_bytes:.0f}x smaller).\n\n"
        f"Subspace similarity (eq. 4, layer {layer}): phi(1, 1) = {phi_q[0, 0]:.3f} (W_q), {phi_v[0, 0]:.3f} (W_v); "
        f"mean phi(i, j) over i <= 8, j <= 8: {phi_q[:, :8].mean():.3f} (W_q), {phi_v[:, :8].mean():.3f} (W_v), "
        f"random-subspace baseline max(i, j)/{d} averaged over the same block: "
        f"{np.mean(np.maximum.outer(np.arange(1, 9), np.arange(1, 9))) / d:.3f} (the same two adapters at their "
        f"random init: {phis_init['wq'][:, :8].mean():.3f} W_q, {phis_init['wv'][:, :8].mean():.3f} W_v). "
        f"Training moved A by ||A - A_0||_F / ||A_0||_F = {moved['wq'][0]:.2f} (r=8) / {moved['wq'][1]:.2f} (r=64) "
        f"for W_q, {moved['wv'][0]:.2f} / {moved['wv'][1]:.2f} for W_v; the top-2 singular directions of A - A_0 hold "
        f"{100 * moved['wq'][2]:.0f}% / {100 * moved['wq'][3]:.0f}% (W_q, r=8 / r=64) and {100 * moved['wv'][2]:.0f}% / "
        f"{100 * moved['wv'][3]:.0f}% (W_v) of its energy. The same r=8 adapters against the top-8 principal directions of their input (validation text): "
        f"mean phi over i, j <= 8 {phis_input['wq'][:, :8].mean():.3f} (W_q), {phis_input['wv'][:, :8].mean():.3f} "
        f"(W_v); phi(1, 1) {phis_input['wq'][0, 0]:.3f} / {phis_input['wv'][0, 0]:.3f}. Against the top-8 left-singular "
        f"directions of the full fine-tuning gradient dW0 at the base model (first 8 batches): mean "
        f"{phis_grad['wq'][:, :8].mean():.3f} (W_q), {phis_grad['wv'][:, :8].mean():.3f} (W_v); phi(1, 1) "
        f"{phis_grad['wq'][0, 0]:.3f} / {phis_grad['wv'][0, 0]:.3f}. Note r = 64 = d_model is full "
        f"rank here, so phi(i, 64) = 1 by construction.\n\nTotal time {time.perf_counter() - t_start:.0f} s."
    )
    metrics = {"base_prose_loss": base_prose_loss, "base_code_loss": base_code_loss,
               "full_ft_loss": results["full fine-tuning"]["val"], "head_only_loss": results["head only"]["val"],
               "merge_max_abs_err": merge_err, "adapter_bytes": float(adapter_bytes), "base_bytes": float(base_bytes),
               "phi11_wq": float(phi_q[0, 0]), "phi11_wv": float(phi_v[0, 0]),
               "phi8_mean_wq": float(phi_q[:, :8].mean()), "phi8_mean_wv": float(phi_v[:, :8].mean()),
               "phi8_mean_input_wq": float(phis_input["wq"][:, :8].mean()),
               "phi8_mean_input_wv": float(phis_input["wv"][:, :8].mean()),
               "phi8_mean_grad_wq": float(phis_grad["wq"][:, :8].mean()),
               "phi8_mean_grad_wv": float(phis_grad["wv"][:, :8].mean())}
    for r in RANKS:
        metrics[f"lora_r{r}_loss"] = results[f"LoRA r={r}"]["val"]
        metrics[f"lora_r{r}_params"] = float(results[f"LoRA r={r}"]["params"])
    return ExperimentResult(NAME, TITLE, summary, [fig_sweep, fig_sim], metrics)
