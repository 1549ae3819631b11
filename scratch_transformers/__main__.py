"""Command line: ``python -m scratch_transformers {tour, check, experiment, bench, list}``.

    tour                      every method's quick experiment; figures + report.md in --out
    check                     gradient check of every registered forward/backward pair (float64)
    experiment NAME           one experiment (--size quick|full)
    bench NAME [ARGS...]      one benchmark from benchmarks/bench_NAME.py (ratios measured in one run)
    list                      what exists: experiments, benchmarks, registered ops
    exercise list|start|check write a backward yourself and check it (scratch_transformers.exercises)
"""

from __future__ import annotations

import os
import sys

# Training here multiplies small matrices (e.g. 2048 x 64 by 64 x 256), where BLAS threads cost more
# than they gain, and far more on a busy machine (a training step measured 6x slower with 2 threads
# under load). Training commands run BLAS single-threaded unless the user set it; the numba kernels
# keep their own threads. ``bench`` keeps the default so the NumPy baseline gets its best setting.
if len(sys.argv) > 1 and sys.argv[1] in ("tour", "experiment", "check"):
    for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import importlib
import importlib.util
import time
from pathlib import Path

import numpy as np

from .core.io import atomic_write
from .experiments import TOUR

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def available_experiments() -> list[str]:
    """Experiments in tour order whose module exists."""
    return [n for n in TOUR if importlib.util.find_spec(f"scratch_transformers.experiments.{n}") is not None]


def available_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def available_benchmarks() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem[len("bench_"):] for p in BENCH_DIR.glob("bench_*.py"))


def writable_folder(out_dir: Path) -> str | None:
    """None if ``out_dir`` exists or can be created and a file can be written in it, else the reason.
    Checked before anything is trained, so a bad --out fails in a second, not after the whole tour."""
    import tempfile

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def prepare(out_dir: Path, names=None) -> float | None:
    """The checks and warm-up every training command does first: the output folder must be writable
    (returns None after printing why not), then every numba kernel is compiled or loaded (returns seconds)."""
    from .experiments.warmup import warm_up

    problem = writable_folder(out_dir)
    if problem is not None:
        print(f"error: --out {out_dir}: cannot write there ({problem}); nothing was run", file=sys.stderr)
        return None
    from .experiments.warmup import stages

    if not stages(available_experiments() if names is None else names):
        return 0.0
    print("Preparing the numba kernels: the first run compiles them (about 1-2 minutes on 2 cores, once; the "
          "machine code is cached on disk), later runs only load them (a few seconds). This is timed apart: "
          "no reported training time includes it.", flush=True)
    seconds = warm_up(names)
    print(f"numba kernels ready in {seconds:.1f} s", flush=True)
    return seconds


def write_report(results, out_dir: Path, size: str, seed: int, elapsed: dict, failures: dict,
                 warm_seconds: float | None = None) -> Path:
    """report.md: the summary table, then each experiment's summary with its figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# scratch_transformers tour (size={size}, seed={seed})", "",
             "| experiment | seconds | status |", "|---|---|---|"]
    if warm_seconds is not None:
        lines.append(f"| (numba kernels: compiled on a first run, loaded afterwards) | {warm_seconds:.1f} | ok |")
    for name in elapsed:
        status = "FAILED: " + failures[name].splitlines()[-1] if name in failures else "ok"
        lines.append(f"| {name} | {elapsed[name]:.1f} | {status} |")
    for res in results:
        lines += ["", f"## {res.title}", "", res.summary.strip(), ""]
        for fig in res.figures:
            rel = Path(fig).resolve().relative_to(out_dir.resolve()) if Path(fig).resolve().is_relative_to(out_dir.resolve()) else fig
            lines.append(f"![{Path(fig).stem}]({rel})")
    return atomic_write(out_dir / "report.md", "\n".join(lines) + "\n")


def cmd_tour(args) -> int:
    from tqdm.auto import tqdm

    from .experiments.runner import measures_time, run_all

    names = available_experiments()
    missing = [n for n in TOUR if n not in names]
    if missing:
        print(f"note: experiments not present in this build: {', '.join(missing)}")
    if args.jobs < 1:
        print(f"error: --jobs: expected an integer >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    warm = prepare(Path(args.out), names)
    if warm is None:
        return 2
    modules = {n: f"scratch_transformers.experiments.{n}" for n in names}
    timed = [n for n in names if measures_time(modules[n])]
    if args.jobs > 1:
        print(f"\nRunning {', '.join(n for n in names if n not in timed)} {args.jobs} at a time in worker processes "
              f"(one thread each; their per-step progress bars are off), then {', '.join(timed)} one at a time, "
              "alone, because they report wall-clock speed. Each summary is printed when its experiment ends.",
              flush=True)
    bar = tqdm(total=len(names), desc="tour", unit="experiment", disable=args.jobs == 1)

    def on_done(o):
        text = (o.result.summary.strip() if o.error is None else o.error)
        bar.write(f"\n=== {o.name} ({o.wall:.1f} s, {o.where}) ===\n{text}")
        bar.update(1)

    def on_tick(running):
        bar.set_postfix_str("running: " + (", ".join(running) or "-"), refresh=False)
        bar.refresh()

    outcomes = run_all(modules, args.size, args.seed, args.out, jobs=args.jobs, on_done=on_done, on_tick=on_tick)
    bar.close()
    results = [o.result for o in outcomes.values() if o.error is None]
    failures = {n: o.error for n, o in outcomes.items() if o.error is not None}
    elapsed = {n: o.wall for n, o in outcomes.items()}
    report = write_report(results, Path(args.out), args.size, args.seed, elapsed, failures, warm)
    print("\n=== summary ===")
    print(f"{'':<12} {'wall':>9} {'CPU':>9}   (CPU: all threads of the experiment's process; on a shared machine "
          "the wall time also counts waiting for a core)")
    print(f"{'numba':<12} {warm:7.1f} s {'':>9}   compiled on a first run, loaded from the cache afterwards")
    for name, o in outcomes.items():
        print(f"{name:<12} {o.wall:7.1f} s {o.cpu:7.1f} s   {'FAILED' if name in failures else 'ok'} ({o.where})")
    print(f"tour         {time.perf_counter() - args.t_start:7.1f} s wall, start to end"
          f" (experiments alone: {sum(o.wall for o in outcomes.values() if o.where == 'alone'):.1f} s)"
          f"\nreport: {report}")
    return 1 if failures else 0


def cmd_experiment(args) -> int:
    if args.name not in available_experiments():
        print(f"unknown experiment {args.name!r}; available: {', '.join(available_experiments())}", file=sys.stderr)
        return 2
    if prepare(Path(args.out), [args.name]) is None:
        return 2
    from .experiments.runner import run_one

    outcome = run_one(args.name, f"scratch_transformers.experiments.{args.name}", args.size, args.seed, args.out,
                      progress=True)
    if outcome.error is not None:
        print(outcome.error, file=sys.stderr)
        return 1
    print(outcome.result.summary.strip())
    for fig in outcome.result.figures:
        print(f"figure: {fig}")
    return 0


def cmd_check(args) -> int:
    from .core.registry import all_ops

    ops = [op for op in all_ops() if args.only is None or args.only in op.name]
    if not ops:   # checking nothing must not look like success
        print(f"--only {args.only!r}: no registered op name contains it (`python -m scratch_transformers list` "
              "shows them)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    print(f"{'op':<40} {'max rel err':>12} {'tol':>8}  result")
    n_fail = 0
    for op in ops:
        res = op.run(rng)
        ok = res.passed
        n_fail += not ok
        print(f"{op.name:<40} {res.max_rel_error:12.2e} {res.tol:8.0e}  {'pass' if ok else 'FAIL'}", flush=True)
        if not ok:
            print(str(res))
    print(f"{len(ops) - n_fail} passed, {n_fail} failed")
    return 1 if n_fail else 0


def cmd_bench(args) -> int:
    if args.name not in available_benchmarks():
        where = f" in {BENCH_DIR}" if BENCH_DIR.is_dir() else f" ({BENCH_DIR} not found: benchmarks need a source checkout)"
        print(f"unknown benchmark {args.name!r}{where}; available: {', '.join(available_benchmarks())}", file=sys.stderr)
        return 2
    path = BENCH_DIR / f"bench_{args.name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{args.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(args.args)
    return int(result or 0)


def cmd_list(args) -> int:
    from .core.registry import all_ops

    print("experiments:", ", ".join(available_experiments()))
    print("benchmarks: ", ", ".join(available_benchmarks()) or "(none found)")
    print("registered forward/backward pairs:")
    for op in all_ops():
        print(f"  {op.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    exps = ", ".join(available_experiments()) or "(none)"
    benches = ", ".join(available_benchmarks()) or "(none)"
    parser = argparse.ArgumentParser(
        prog="python -m scratch_transformers",
        description="From-scratch NumPy reference implementations of recent transformer methods.",
        epilog=f"experiments: {exps}\nbenchmarks: {benches}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("out"), help="folder for figures and report.md (default: out)")
    common.add_argument("--seed", type=int, default=0, help="seed of the numpy Generator (default: 0)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tour", parents=[common], help="every method's quick experiment, figures and report.md")
    p.add_argument("--size", choices=("quick", "full"), default="quick")
    p.add_argument("--jobs", type=int, default=available_cores(),
                   help="experiments run at a time in worker processes, one thread each; those that report "
                        "wall-clock speed always run alone afterwards (default: the cores this process may use)")
    p.set_defaults(func=cmd_tour)

    p = sub.add_parser("check", parents=[common], help="gradient check of every registered forward/backward pair")
    p.add_argument("--only", default=None, help="only ops whose name contains this text")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("experiment", parents=[common], help=f"one experiment: {exps}")
    p.add_argument("name")
    p.add_argument("--size", choices=("quick", "full"), default="quick")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("bench", help=f"one benchmark: {benches}")
    p.add_argument("name")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark's main()")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("list", help="list experiments, benchmarks and registered ops")
    p.set_defaults(func=cmd_list)

    from .exercises.cli import add_parser as add_exercise_parser

    add_exercise_parser(sub)
    return parser


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.t_start = t_start
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
