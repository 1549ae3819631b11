"""Train short, test long: how position schemes behave past the training length (ALiBi Fig. 1, at laptop scale).

Byte-level language models of the stdlib sources are trained at a short context L and evaluated with
non-overlapping windows of L, 2L, ..., 8L bytes (every window's tokens all scored, as in the ALiBi
paper's Fig. 1, so the same validation bytes are scored at every length). Methods:

- sinusoidal (Vaswani §3.5), learned absolute positions (only up to its table, L), RoPE, ALiBi: trained;
- RoPE + PI without fine-tuning (positions divided by s = l'/L at each evaluation length);
- RoPE + PI after a short fine-tune at ``ft_scale`` x L with s = ft_scale (2306.15595), evaluated with
  that fixed s at every length;
- RoPE + NTK-aware base b' = b s^(r/(r-2)) with s = l'/L at each length, no fine-tune (dynamic NTK);
- ALiBi + interpolated slopes (2310.13017, dynamic: slopes x L/l' when l' > L), no fine-tune.

Also reported: the loss on the tokens at positions >= L only (the part that needs extrapolation; the
all-tokens average also rewards a longer context merely for shrinking the share of "early" tokens,
ALiBi Appendix B), and the base-scaling-law arithmetic (2310.05209) for the model's head dimension.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..core import data, validate
from ..core.functional import log_softmax
from ..models import transformer as tf
from ..positional import scaling
from ..positional.rope import rope_inv_freq
from .common import ExperimentResult, fit, markdown_table, savefig

NAME = "positions"
TITLE = "Positions: train short, test long (sinusoidal, learned, RoPE, PI, NTK, ALiBi)"

SIZES = {
    # dtype of the parameters: float32 at the quick size (half the time per step of float64)
    "quick": dict(L=32, d_model=64, n_layers=2, n_heads=4, steps=200, batch=16, lr=3e-3,
                  ft_scale=4, ft_steps=60, mults=(1, 2, 4, 8), eval_tokens=4096, dtype="float32"),
    "full": dict(L=64, d_model=64, n_layers=2, n_heads=4, steps=1000, batch=16, lr=3e-3,
                 ft_scale=4, ft_steps=200, mults=(1, 1.5, 2, 3, 4, 6, 8), eval_tokens=12288, dtype="float64"),
}

SINUSOIDAL_TOK_STD = 1 / np.sqrt(2)        # RMS of the sinusoidal table's entries
TRAINED = ("sinusoidal", "learned", "rope", "alibi")
# 2310.05209: a small and a large base, fine-tuned at L, and the control: the same fine-tune at the original base
# 1e4 (what the fine-tune alone does, without a change of base)
BASES_FT = (500.0, 1e4, 1e6)
LONG = "alibi trained at 8L"             # the reference ALiBi's claim is about: the same model trained at the long length
CURVES = ("sinusoidal", "learned", "rope", "rope+PI (no FT)", "rope+PI (FT)", "rope+NTK (no FT)",
          "rope base 500 (FT)", "rope base 10000 (FT)", "rope base 1e+06 (FT)", "alibi", "alibi+PI slopes (no FT)",
          LONG)
# one marker / line style per curve, and one colour per curve (tab20 has 20 distinct ones; C0..C9 would repeat)
METHOD_MARKERS = {"sinusoidal": ("o", "-"), "learned": ("s", "-"), "rope": ("^", "-"), "rope+PI (no FT)": ("v", ":"),
                  "rope+PI (FT)": ("D", "-"), "rope+NTK (no FT)": ("P", "--"), "rope base 500 (FT)": ("<", "-."),
                  "rope base 10000 (FT)": ("d", "-."), "rope base 1e+06 (FT)": (">", "-."), "alibi": ("o", "-"),
                  "alibi+PI slopes (no FT)": ("x", "--"), LONG: ("*", "-")}
METHOD_COLOURS = ["#1f77b4", "#7f7f7f", "#ff7f0e", "#bcbd22", "#d62728", "#8c564b", "#9467bd", "#000000",
                  "#17becf", "#2ca02c", "#e377c2", "#98df8a"]


def _config(cfg, positions: str, max_len: int) -> tf.TransformerConfig:
    return tf.TransformerConfig(vocab_size=256, d_model=cfg["d_model"], n_layers=cfg["n_layers"],
                                n_heads=cfg["n_heads"], max_len=max_len, positions=positions)


def _train(config, params, corpus, cfg, rng, *, seq_len, steps, batch, lr, desc, progress):
    return fit(lambda p, b, r: tf.loss_and_grads(p, config, *b), params,
               lambda r, step: data.random_windows(corpus.train, r, batch, seq_len),
               steps=steps, lr=lr, rng=rng, weight_decay=0.01, warmup_steps=max(steps // 10, 1),
               progress=progress, desc=desc)


def eval_at_length(params, config, val: np.ndarray, length: int, n_tokens: int, train_len: int):
    """Mean next-byte loss (nats) over non-overlapping windows of ``length`` covering ``n_tokens``
    validation bytes: (all tokens, tokens at positions >= train_len or nan when length <= train_len)."""
    n_win = max(1, n_tokens // length)
    starts = np.arange(n_win) * length
    idx = starts[:, None] + np.arange(length + 1)[None, :]               # (n_win, length + 1)
    windows = val[idx].astype(np.int64)
    per_batch = max(1, int(2_000_000 // (length * length)))             # bound the (B, H, N, N) scores
    nll = np.empty((n_win, length))
    for s in range(0, n_win, per_batch):
        x, y = windows[s:s + per_batch, :-1], windows[s:s + per_batch, 1:]
        logits, _ = tf.forward(params, config, x)                        # (b, length, 256)
        logp = log_softmax(logits.astype(np.float64), axis=-1)
        nll[s:s + per_batch] = -np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    tail = float(np.mean(nll[:, train_len:])) if length > train_len else float("nan")
    return float(np.mean(nll)), tail


def curve_config(method: str, base_configs: dict, cfg: dict, length: int) -> tf.TransformerConfig:
    """The model config used to evaluate ``method`` at ``length`` (the per-length scaling rules)."""
    L = cfg["L"]
    s = max(1.0, length / L)
    head_dim = cfg["d_model"] // cfg["n_heads"]
    if method in base_configs:                                            # trained / fine-tuned as is
        return base_configs[method]
    if method == "rope+PI (no FT)":                                      # PI eq. 4 with s = l'/L
        return dataclasses.replace(base_configs["rope"], rope_scale=s)
    if method == "rope+PI (FT)":                                         # fixed s of the fine-tune
        return dataclasses.replace(base_configs["rope"], rope_scale=float(cfg["ft_scale"]))
    if method == "rope+NTK (no FT)":                                     # YaRN eq. 16 with s = l'/L
        base = base_configs["rope"].rope_base
        return dataclasses.replace(base_configs["rope"], rope_base=scaling.ntk_aware_base(base, s, head_dim))
    if method == "alibi+PI slopes (no FT)":                              # 2310.13017, dynamic
        return dataclasses.replace(base_configs["alibi"],
                                   alibi_scale=scaling.alibi_interpolation_factor(L, length, dynamic=True))
    raise ValueError(f"method: expected one of {CURVES}, got {method!r}")


def rope_decay_bound(distances, dim: int = 128, base: float = 10000.0) -> np.ndarray:
    """RoFormer §3.4.3, eq. (36)-(37): the relative upper bound (1/(d/2)) sum_{j=1}^{d/2} |S_j| of the
    score at distance r, S_j = sum_{k<j} e^{i r theta_k}; it decays (with oscillations) as r grows."""
    theta = rope_inv_freq(dim, base)                                      # (d/2,)
    phases = np.exp(1j * np.multiply.outer(np.asarray(distances, np.float64), theta))   # (R, d/2)
    partial = np.cumsum(phases, axis=1)                                   # S_1 .. S_{d/2}
    return np.mean(np.abs(partial), axis=1)


def scaling_law_rows(head_dim: int, train_len: int, tune_lens, base: float = 10000.0) -> list[list]:
    """2310.05209 arithmetic for this model: d_extra (13), beta_0 (16a), bound (16b/c) for some bases."""
    d_extra = scaling.critical_dimension(head_dim, train_len, base)
    rows = [["d_extra (eq. 13)", f"{d_extra} of {head_dim} (pairs with a full period within {train_len})"]]
    for tune_len in tune_lens:
        beta0 = scaling.critical_base(train_len, tune_len, base)
        rows.append([f"critical base beta_0, T_tune={tune_len} (16a)", f"{beta0:.4g}"])
        bounds = ", ".join(f"{beta:g}: {scaling.extrapolation_bound(beta, head_dim, train_len, tune_len, base):.0f}"
                           for beta in (500.0, base, 1e5, 1e6, 1e8))
        rows.append([f"bound by base, T_tune={tune_len} (16b/c)", bounds])
        b1, b2, b3 = scaling.small_base_thresholds(tune_len)
        rows.append([f"small-base thresholds beta_1..3, T_tune={tune_len} (16d)", f"{b1:.0f}, {b2:.0f}, {b3:.0f}"])
    return rows


def plot_curves(loss: dict, tail: dict, lengths: list, L: int, cfg: dict, out_dir, bounds: dict | None = None) -> Path:
    """ALiBi Fig. 1 style: validation loss vs evaluation length, one curve per method; left all tokens,
    right only the tokens at positions >= L. loss/tail: {method: {length: value}}; bounds: {method: the
    2310.05209 extrapolation bound in tokens}, drawn in the method's colour where it lies past L."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {m: (METHOD_COLOURS[i], mk, ls) for i, (m, (mk, ls)) in enumerate(METHOD_MARKERS.items())}
    for ax, values, title in ((axes[0], loss, "all tokens of each window"),
                              (axes[1], tail, f"only tokens at positions >= L = {L}")):
        for method in CURVES:
            xs = [n for n in lengths if n in values.get(method, {}) and np.isfinite(values[method][n])]
            if not xs:
                continue
            c, mk, ls = styles[method]
            ax.plot(xs, [values[method][n] for n in xs], ls, color=c, marker=mk, label=method, lw=1.3, ms=5)
        ax.axvline(L, color="k", lw=0.8, ls=":", label=f"training length L = {L}")
        for method, bound in (bounds or {}).items():
            if L < bound <= max(lengths) and method in styles:
                ax.axvline(bound, color=styles[method][0], lw=0.8, ls="--",
                           label=f"predicted bound of {method}: {bound:.0f} (2310.05209 eq. 16b)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.set(title=title, xlabel="evaluation length (bytes)", ylabel="validation loss (nats/byte)")
    every = [v for vals in (loss, tail) for m in vals for v in vals[m].values() if np.isfinite(v)]
    for ax in axes:                                                      # clip only runaway blow-ups
        ax.set_ylim(min(every) - 0.05, min(max(every), min(every) + 2.5) + 0.05)
    handles, labels = axes[0].get_legend_handles_labels()           # every method is in the left panel
    fig.suptitle(f"Byte LMs trained at L={L} ({cfg['steps']} steps, d={cfg['d_model']}, {cfg['n_layers']} layers), "
                 f"evaluated at " + ", ".join(f"{n / L:g}x" for n in lengths), fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    return savefig(fig, out_dir, "positions_extrapolation.png")


def run(size: str = "quick", rng: np.random.Generator | None = None, out_dir: Path = Path("out/positions"),
        progress: bool = True) -> ExperimentResult:
    import matplotlib.pyplot as plt

    validate.option(size, "size", SIZES)
    rng = validate.rng(rng if rng is not None else np.random.default_rng(0))
    cfg = SIZES[size]
    L = cfg["L"]
    dtype = np.dtype(cfg.get("dtype", "float64"))
    head_dim = cfg["d_model"] // cfg["n_heads"]
    lengths = [int(round(m * L)) for m in cfg["mults"]]
    corpus = data.load_stdlib_corpus()
    t0 = time.perf_counter()

    # ---- train the four base models at length L, from the same data stream seed --------------------
    base_configs, params, seconds = {}, {}, {}
    data_seed = int(rng.integers(2**31))
    for method in TRAINED:
        max_len = L if method == "learned" else max(lengths)
        config = _config(cfg, method, max_len)
        p = tf.init_params(config, np.random.default_rng(int(rng.integers(2**31))), dtype=dtype)
        if method == "sinusoidal":
            # Vaswani §3.4 multiplies the embeddings by sqrt(d_model) so that they are not drowned by the
            # table (entries of RMS 1/sqrt(2)); the baseline model has no such factor, so the token
            # embedding starts at the table's RMS instead of 0.02 (at 0.02 the model stayed above the
            # unigram entropy after the quick run's 200 steps).
            p["tok_emb"] *= SINUSOIDAL_TOK_STD / tf.INIT_STD
        ts = time.perf_counter()
        _train(config, p, corpus, cfg, np.random.default_rng(data_seed), seq_len=L, steps=cfg["steps"],
               batch=cfg["batch"], lr=cfg["lr"], desc=f"positions {method}", progress=progress)
        seconds[method] = time.perf_counter() - ts
        base_configs[method], params[method] = config, p

    # ---- the reference for ALiBi's claim: ALiBi trained at the longest evaluation length, same steps and
    # the same number of tokens per step (batch divided by the length ratio) --------------------------------
    Lmax = max(lengths)
    base_configs[LONG] = _config(cfg, "alibi", Lmax)
    params[LONG] = tf.init_params(base_configs[LONG], np.random.default_rng(int(rng.integers(2**31))),
                                  dtype=dtype)
    ts = time.perf_counter()
    _train(base_configs[LONG], params[LONG], corpus, cfg, np.random.default_rng(data_seed), seq_len=Lmax,
           steps=cfg["steps"], batch=max(1, cfg["batch"] * L // Lmax), lr=cfg["lr"], desc=f"positions {LONG}",
           progress=progress)
    seconds[LONG] = time.perf_counter() - ts

    # ---- PI: fine-tune a copy of the RoPE model at ft_scale * L with rope_scale = ft_scale ------------
    s_ft = cfg["ft_scale"]
    ft_config = dataclasses.replace(base_configs["rope"], rope_scale=float(s_ft))
    ft_params = {k: v.copy() for k, v in params["rope"].items()}
    ts = time.perf_counter()
    _train(ft_config, ft_params, corpus, cfg, np.random.default_rng(data_seed + 1), seq_len=s_ft * L,
           steps=cfg["ft_steps"], batch=max(1, cfg["batch"] // s_ft), lr=cfg["lr"] / 3,
           desc="positions rope+PI fine-tune", progress=progress)
    seconds["rope+PI (FT)"] = time.perf_counter() - ts
    # ---- base scaling (2310.05209): fine-tune copies of the RoPE model at L with a new base ------------
    for beta in BASES_FT:
        name = f"rope base {beta:g} (FT)"
        base_configs[name] = dataclasses.replace(base_configs["rope"], rope_base=beta)
        params[name] = {k: v.copy() for k, v in params["rope"].items()}
        ts = time.perf_counter()
        _train(base_configs[name], params[name], corpus, cfg, np.random.default_rng(data_seed + 2), seq_len=L,
               steps=cfg["ft_steps"], batch=cfg["batch"], lr=cfg["lr"] / 3, desc=f"positions {name}",
               progress=progress)
        seconds[name] = time.perf_counter() - ts
    curve_params = {m: params[m] for m in params}
    curve_params.update({"rope+PI (no FT)": params["rope"], "rope+PI (FT)": ft_params,
                         "rope+NTK (no FT)": params["rope"], "alibi+PI slopes (no FT)": params["alibi"]})

    # ---- evaluate every curve at every length on the same validation bytes ----------------------------
    # the base-scaled models are also evaluated past their predicted bound (2310.05209 eq. 16b/c, T_tune = L) when
    # the grid stops before it: at the first multiple of L at least 1.25 x the bound
    bounds = {f"rope base {beta:g} (FT)": scaling.extrapolation_bound(beta, head_dim, L, L) for beta in BASES_FT}
    extra = {m: [n for n in [L * int(np.ceil(1.25 * b / L))] if n > Lmax] for m, b in bounds.items()}
    all_lengths = sorted(set(lengths) | {n for ns in extra.values() for n in ns})
    n_tokens = max(cfg["eval_tokens"], max(all_lengths))
    loss = {m: {} for m in CURVES}
    tail = {m: {} for m in CURVES}
    for method in CURVES:
        for n in lengths + extra.get(method, []):
            if method == "learned" and n > L:                             # no table rows beyond L
                continue
            loss[method][n], tail[method][n] = eval_at_length(
                curve_params[method], curve_config(method, base_configs, cfg, n), corpus.val, n, n_tokens, L)
    total = time.perf_counter() - t0

    # ---- figure: ALiBi Fig. 1 style, loss vs evaluation length --------------------------------------
    fig_path = plot_curves(loss, tail, all_lengths, L, cfg, out_dir, bounds)

    # ---- RoFormer Fig. 2 (long-term decay) and the base changes used above, no training -------------
    fig2, ax = plt.subplots(figsize=(6, 3.4))
    r = np.arange(0, 8 * L + 1)
    for b, label in ((10000.0, "d=128, base 1e4 (RoFormer Fig. 2)"), (500.0, "d=128, base 500"),
                     (1e6, "d=128, base 1e6")):
        ax.plot(r, rope_decay_bound(r, 128, b), lw=1, label=label)
    ax.plot(r, rope_decay_bound(r, head_dim, 10000.0), lw=1, label=f"d={head_dim} (this model), base 1e4")
    ax.axvline(L, color="k", lw=0.8, ls=":", label=f"training length L = {L} of the experiment's models")
    ax.set(xlabel="relative distance |m - n| (tokens)", ylabel="relative upper bound",
           title="RoPE long-term decay (eq. 37)")
    ax.legend(fontsize=7)
    fig2.tight_layout()
    decay_path = savefig(fig2, out_dir, "positions_rope_decay.png")

    # ---- table, metrics, plain statements ---------------------------------------------------------
    def fmt(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"
    header = ["method"] + [f"{n} ({n / L:g}x)" for n in all_lengths]
    rows = [[m] + [fmt(loss[m].get(n)) for n in all_lengths] for m in CURVES]
    rows_tail = [[m] + [fmt(tail[m].get(n)) for n in all_lengths if n > L] for m in CURVES if m != "learned"]
    metrics = {f"loss_{m}_{n / L:g}x": v for m in CURVES for n, v in loss[m].items()}
    metrics.update({f"tail_{m}_{n / L:g}x": v for m in CURVES for n, v in tail[m].items() if np.isfinite(v)})
    metrics["seconds"] = total

    def delta(m, n):
        return loss[m][n] - loss[m][L]
    facts = []
    for m in ("sinusoidal", "rope", "alibi"):
        facts.append(f"- **{m}**: loss at {Lmax / L:g}x minus loss at 1x = {delta(m, Lmax):+.3f} nats/byte "
                     f"(at 2x: {delta(m, 2 * L):+.3f}).")
    best_long = min((loss[m][Lmax], m) for m in CURVES if Lmax in loss[m])
    facts.append(f"- Best at {Lmax / L:g}x: **{best_long[1]}** ({best_long[0]:.3f}).")
    n4 = s_ft * L
    if n4 in loss["rope"]:
        facts.append(f"- At {s_ft}x ({n4} bytes): RoPE extrapolating {loss['rope'][n4]:.3f}, PI without fine-tune "
                     f"{loss['rope+PI (no FT)'][n4]:.3f}, PI after {cfg['ft_steps']} fine-tune steps "
                     f"{loss['rope+PI (FT)'][n4]:.3f}, NTK-aware base without fine-tune {loss['rope+NTK (no FT)'][n4]:.3f}; "
                     f"RoPE at 1x {loss['rope'][L]:.3f}.")
    facts.append(f"- ALiBi with interpolated slopes vs plain ALiBi at {Lmax / L:g}x: "
                 f"{loss['alibi+PI slopes (no FT)'][Lmax]:.3f} vs {loss['alibi'][Lmax]:.3f}.")
    gap = loss["alibi"][Lmax] - loss[LONG][Lmax]
    facts.append(f"- ALiBi's claim (Press et al., §1 and Fig. 1: trained short, it extrapolates to longer inputs, "
                 f"approaching models trained at the longer length): at {Lmax / L:g}x, ALiBi trained at L = {L} "
                 f"{loss['alibi'][Lmax]:.3f} vs {LONG} ({Lmax} bytes, same steps and tokens per step) "
                 f"{loss[LONG][Lmax]:.3f}: " + (f"the long-trained model is better by {gap:.3f} nats/byte" if gap > 0 else
                                             f"ALiBi trained at L is as good or better (by {-gap:.3f}; with the same "
                                             f"steps the long-trained model saw {Lmax // L}x fewer windows)") + "; "
                 f"on the tokens at positions >= L, {tail['alibi'][Lmax]:.3f} vs {tail[LONG][Lmax]:.3f}.")
    for beta in BASES_FT:
        m = f"rope base {beta:g} (FT)"
        bound = bounds[m]
        inside = [n for n in sorted(loss[m]) if n <= bound]
        past = [n for n in sorted(loss[m]) if n > bound]
        text = (f"- {m}: 2310.05209 bound (16b/c, T_tune = L) {bound:.0f} bytes; loss "
                + ", ".join(f"{n}: {loss[m][n]:.3f}" for n in sorted(loss[m])) + ".")
        if bound <= L and past:                                          # the law: no extrapolation at all
            text += (f" The bound is the training length itself (no extrapolation predicted); the loss rises by "
                     f"{loss[m][past[0]] - loss[m][L]:+.3f} at {past[0]} bytes and {loss[m][past[-1]] - loss[m][L]:+.3f} "
                     f"at {past[-1]}.")
        elif inside and past:
            rise_in = max(loss[m][n] for n in inside) - loss[m][L]
            rise_past = loss[m][past[0]] - loss[m][L]
            verdict = ("it rises past the bound and not before it, as the law predicts" if rise_in < 0.05 <= rise_past
                       else "it rises before the bound" if rise_in >= 0.05 else
                       "it does not rise past the bound either: this run cannot locate the bound")
            text += (f" Within the bound the loss rises by at most {rise_in:+.3f} over 1x, at {past[0]} bytes (past "
                     f"it) by {rise_past:+.3f}: {verdict}.")
        elif not past:
            text += " Not evaluated past the bound."
        facts.append(text)
    ctrl = "rope base 10000 (FT)"
    facts.append(f"- Control: the same {cfg['ft_steps']} fine-tune steps at the original base 1e4 give "
                 f"{loss[ctrl][Lmax]:.3f} at {Lmax / L:g}x (RoPE without them {loss['rope'][Lmax]:.3f}, base 1e6 "
                 f"fine-tuned {loss['rope base 1e+06 (FT)'][Lmax]:.3f}): what the base change adds beyond the extra "
                 f"steps is the difference to this row.")
    facts.append(f"- Learned positions at 1x: {loss['learned'][L]:.3f} (no table rows past L).")
    law = markdown_table(["quantity (2310.05209, head dim %d, T_train=%d)" % (head_dim, L), "value"],
                         scaling_law_rows(head_dim, L, (L, s_ft * L)))
    summary = (
        f"Byte-level LMs on the stdlib corpus, trained at L = {L} for {cfg['steps']} steps "
        f"(batch {cfg['batch']}, d_model {cfg['d_model']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, "
        f"{dtype.name} parameters); "
        f"validation loss (nats/byte) with non-overlapping windows over the same {n_tokens} validation bytes. "
        f"PI fine-tune: {cfg['ft_steps']} steps at {s_ft * L} bytes with s = {s_ft}.\n\n"
        f"{markdown_table(header, rows)}\n\nOnly tokens at positions >= L (what needs extrapolation):\n\n"
        f"{markdown_table(header[:1] + header[2:], rows_tail)}\n\nWhat was measured:\n" + "\n".join(facts) +
        f"\n\nBase-scaling-law arithmetic for this model:\n\n{law}\n\n"
        f"Training seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + f"; total {total:.1f} s."
    )
    return ExperimentResult(NAME, TITLE, summary, [fig_path, decay_path], metrics)
