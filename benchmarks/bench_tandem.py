"""Benchmark: greedy decoding with M_L alone vs speculative decoding (standalone drafter of M_S's size) vs
SPEED with the Tandem M_S (arXiv 2402.08644 §3.1; Leviathan et al. 2211.17192), same run, same prompts.

    python -m scratch_transformers bench tandem [--gammas 2 3 4 6] [--prompts 8] [--new 64] [--repeats 3]

The models are trained first on the stdlib bytes (experiments.tandem.train_models at the size below,
a few minutes): M_L is wide enough (d = 256, 6 layers, float64) that one call costs about the same for 1 or
gamma + 1 tokens, as on accelerators; the drafters are 2-layer, d = 32. Every method decodes every prompt
greedily; the outputs must be identical to M_L's (checked). Times are per round (each round runs every method
on every prompt in turn, core.measure.interleaved_seconds) and a speed-up is the median per-round ratio.
Predicted speed-up: Leviathan Thm 3.8, (1 - a^(g+1)) / ((1 - a)(g c + 1)), with a the measured acceptance rate
and c the measured time of one drafter step / one M_L step. Use OPENBLAS_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scratch_transformers.core import data
from scratch_transformers.core.measure import interleaved_seconds, median_ratio, median_seconds
from scratch_transformers.experiments.tandem import train_models
from scratch_transformers.models import transformer as tf
from scratch_transformers.models.speed import LargeDecoder, TandemDrafter, TransformerDecoder, speed_decode
from scratch_transformers.tandem.speculative import expected_tokens_per_call, predicted_speedup, speculative_decode

SIZE = dict(ctx=32, batch=8, d_large=256, layers_large=6, d_small=32, layers_small=2, steps_large=150,
            steps_small=300, steps_tandem=100, steps_distil=50, gamma_train=2, prompt_len=24, n_new=64, lr=2e-3)


def step_cost(m, prompt):
    """Seconds of one M_L step, one standalone drafter step and one Tandem drafter step (1 token, cached)."""
    big = TransformerDecoder(m["large"], m["lcfg"])
    small = TransformerDecoder(m["control"], m["scfg"])
    large = LargeDecoder(m["large"], m["lcfg"], m["tcfg"].ml_layers)
    tandem = TandemDrafter(m["tandem"], m["tcfg"], large)
    big.extend(prompt, 1)
    small.extend(prompt, 1)
    large.extend(prompt[:-1], 1)
    tandem.extend(prompt, 1)

    def one(dec):
        dec.extend(prompt[-1:], 1)
        dec.rollback(dec.length - 1)
    return {name: median_seconds(lambda d=d: one(d), 21) for name, d in
            (("M_L", big), ("M_S drafter", small), ("Tandem drafter", tandem))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench tandem", description=__doc__.split("\n")[0])
    ap.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 6])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(SIZE, n_new=args.new)
    corpus = data.load_stdlib_corpus()
    t0 = time.perf_counter()
    m = train_models(cfg, np.random.default_rng(args.seed), corpus, progress=False)
    print(f"trained M_L (d={cfg['d_large']}, {cfg['layers_large']} layers), M_S and Tandem M_S "
          f"(d={cfg['d_small']}, {cfg['layers_small']} layers) in {time.perf_counter() - t0:.0f} s")
    starts = np.random.default_rng(7).integers(0, len(corpus.val) - cfg["prompt_len"], size=args.prompts)
    prompts = [corpus.val[s:s + cfg["prompt_len"]].astype(np.int64) for s in starts]
    lp, lcfg = m["large"], m["lcfg"]
    want = [tf.generate(lp, lcfg, p[None], args.new, greedy=True)[0] for p in prompts]
    stats: dict = {}

    def method(name, g):
        def run():
            out_stats = []
            for p, w in zip(prompts, want):
                if name == "SPEED":
                    out, st = speed_decode(lp, lcfg, m["tandem"], m["tcfg"], p, args.new, gamma=g, greedy=True)
                else:
                    out, st = speculative_decode(TransformerDecoder(lp, lcfg), TransformerDecoder(m["control"], m["scfg"]),
                                                 p, args.new, gamma=g, greedy=True)
                if not np.array_equal(out, w):
                    raise AssertionError(f"{name} gamma={g}: output differs from M_L's greedy decoding")
                out_stats.append(st)
            stats[(name, g)] = out_stats
        return run

    fns = {("M_L alone", 0): lambda: [tf.generate(lp, lcfg, p[None], args.new, greedy=True) for p in prompts]}
    for g in args.gammas:
        fns[("speculative", g)] = method("speculative", g)
        fns[("SPEED", g)] = method("SPEED", g)
    times = interleaved_seconds(fns, args.repeats)
    cost = step_cost(m, prompts[0])
    n_tok = args.new * len(prompts)
    base = times[("M_L alone", 0)]
    print(f"\n{len(prompts)} prompts x {args.new} new bytes, greedy, float64; {args.repeats} interleaved rounds; "
          f"outputs identical to M_L alone: yes (checked every round)")
    print(f"step cost: M_L {cost['M_L'] * 1e3:.2f} ms, M_S drafter {cost['M_S drafter'] * 1e3:.2f} ms "
          f"(c = {cost['M_S drafter'] / cost['M_L']:.3f}), Tandem drafter {cost['Tandem drafter'] * 1e3:.2f} ms "
          f"(c = {cost['Tandem drafter'] / cost['M_L']:.3f})")
    print("\ntok/call: new tokens per M_L call (SPEED counts its prefill call); eq. (1): Leviathan's expected tokens"
          " per call from the measured acceptance; predicted: Thm 3.8 speed-up")
    print(f"\n{'method':<14}{'gamma':>6}{'tok/s':>9}{'accept':>9}{'tok/call':>10}{'eq. (1)':>9}{'speed-up':>10}"
          f"{'predicted':>11}")
    print(f"{'M_L alone':<14}{'-':>6}{n_tok / np.median(base):>9.1f}{'-':>9}{1.0:>10.2f}{'-':>9}{1.0:>10.2f}{'-':>11}")
    best = {}
    for (name, g), ts in times.items():
        if name == "M_L alone":
            continue
        st = stats[(name, g)]
        acc = sum(s.accepted for s in st) / max(sum(s.tested for s in st), 1)
        calls = sum(s.target_calls for s in st)
        c = cost["Tandem drafter" if name == "SPEED" else "M_S drafter"] / cost["M_L"]
        speed = median_ratio(base, ts)
        print(f"{name:<14}{g:>6}{n_tok / np.median(ts):>9.1f}{acc:>9.3f}{n_tok / calls:>10.2f}"
              f"{expected_tokens_per_call(min(acc, 1.0), g):>9.2f}{speed:>10.2f}"
              f"{predicted_speedup(min(acc, 1.0), g, c):>11.2f}")
        if speed > best.get(name, (0, 0, 0))[0]:
            best[name] = (speed, g, acc)
    print("\nbest gamma per method (speed-up over M_L alone, acceptance): "
          + "; ".join(f"{k} gamma={v[1]}: {v[0]:.2f}x, acceptance {v[2]:.3f}" for k, v in best.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
