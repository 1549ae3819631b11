"""``python -m scratch_transformers exercise list | start NAME [--out FILE] | check FILE``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.io import atomic_write
from .catalog import catalog, find, slug
from .checker import check_file
from .kernels import KERNELS, difficulty, stub_text
from .stub import Exists, start


def cmd_list(args, out=None) -> int:
    out = out or sys.stdout
    exercises = catalog()
    groups: dict[str, list] = {}
    for ex in exercises:
        groups.setdefault(ex.method, []).append(ex)
    print(f"{len(exercises)} backward exercises (one per registered forward/backward pair) and {len(KERNELS)} kernel "
          "exercises.\nStart one: python -m scratch_transformers exercise start NAME; check it: ... exercise check FILE.\n"
          "difficulty: lines of code of the library's backward (docstring, comments and blank lines left out)", file=out)
    width = max(len(ex.name) for ex in exercises)
    for method, items in groups.items():
        print(f"\n{method} ({len(items)})", file=out)
        for ex in items:
            deriv = ex.derivation
            where = deriv.anchor if deriv else "(no derivation found)"
            print(f"  {ex.name:<{width}}  {ex.difficulty:>4} lines {ex.level:<6}  {where}", file=out)
            print(f"  {'':<{width}}  writes {ex.backward_name}", file=out)
    print(f"\nkernels ({len(KERNELS)}): the numba kernels' loops in plain Python", file=out)
    for k in KERNELS.values():
        print(f"  {k.name:<{width}}  {difficulty(k.name):>4} lines to fill  checked against {k.reference_name}", file=out)
        print(f"  {'':<{width}}  mirrors {k.library}", file=out)
    return 0


def cmd_start(args, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    name = args.name
    if name in KERNELS:
        path = Path(args.out) if args.out else Path(f"exercise_{name}.py")
        if path.exists():
            print(f"error: {path} exists; not overwriting it (remove it or pass --out OTHER.py)", file=err)
            return 2
        atomic_write(path, stub_text(name, str(path)))
    else:
        ex = find(name)
        if ex is None:
            close = [e.name for e in catalog() if name.lower() in e.name.lower() or slug(name) in e.slug]
            hint = f"; did you mean: {', '.join(close[:8])}" if close else ""
            print(f"error: no exercise {name!r}{hint} (`python -m scratch_transformers exercise list` shows them)",
                  file=err)
            return 2
        try:
            path = start(ex, args.out)
        except Exists as e:
            print(f"error: {e}", file=err)
            return 2
    print(f"wrote {path}: fill in the function, then run\n    python -m scratch_transformers exercise check {path}",
          file=out)
    return 0


def cmd_check(args, out=None) -> int:
    out = out or sys.stdout
    return check_file(Path(args.file), name=args.name, hard=not args.quick, out=out)


def add_parser(sub) -> None:
    """The ``exercise`` subcommand and its three actions, on the CLI's subparsers."""
    p = sub.add_parser("exercise", help="write a backward (or a kernel's loop) yourself and check it: list | start | check")
    acts = p.add_subparsers(dest="action", required=True)
    a = acts.add_parser("list", help="every exercise, grouped by method, with difficulty and derivation section")
    a.set_defaults(func=cmd_list)
    a = acts.add_parser("start", help="write the stub file of one exercise (never overwrites)")
    a.add_argument("name", help="an exercise name from `exercise list`")
    a.add_argument("--out", default=None, help="file to write (default: exercise_<name>.py)")
    a.set_defaults(func=cmd_start)
    a = acts.add_parser("check", help="check your file: per input gradient pass/fail, errors, diagnosis")
    a.add_argument("file")
    a.add_argument("--name", default=None, help="the exercise (default: the file's EXERCISE = '...')")
    a.add_argument("--quick", action="store_true", help="only the registry's sample inputs (no hard cases)")
    a.set_defaults(func=cmd_check)
