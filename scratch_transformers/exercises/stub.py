"""``exercise start NAME``: the file a learner fills in.

The stub has the library backward's name and signature, a docstring with the library's own docstring, what the
backward receives (the cache's fields with the shape comments of its NamedTuple and the shapes seen on the
registry's sample inputs) and must return, the derivation section that explains it, and a body that raises
NotImplementedError. It imports the library forward so the learner can run it. It never overwrites a file.
"""

from __future__ import annotations

import copy
import inspect
import re
import textwrap
from pathlib import Path

import numpy as np

from ..core.io import atomic_write
from .catalog import Exercise
from .hard_cases import SAMPLE_SEED
from .patching import Recorder, describe, substituted

MAX_DERIVATION_LINES = 60


def field_comments(cls) -> dict[str, str]:
    """{field: shape comment} from a NamedTuple's source (``q: np.ndarray  # (B, H, Nq, d)``)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def sample_call(ex: Exercise):
    """(args, kwargs, result) of the first call of the library backward on the sample inputs (or None)."""
    op = ex.op
    rec = Recorder(ex.backward, keep=1)
    rng = np.random.default_rng(SAMPLE_SEED)
    inputs = op.make_inputs(rng)
    with substituted([(ex.backward, rec)], closures_of=(op.backward,)):
        y, cache = op.forward(**copy.deepcopy(inputs))
        ys = y if isinstance(y, (tuple, list)) else (y,)
        dy = tuple(None if a is None else (rng.standard_normal(np.shape(a)) if np.ndim(a) else 1.0) for a in ys)
        (rec if op.backward is ex.backward else op.backward)(dy if isinstance(y, (tuple, list)) else dy[0], cache)
    return rec.calls[0] if rec.calls else None


def describe_argument(name: str, value) -> list[str]:
    """Lines describing one argument; a NamedTuple cache gets one line per field."""
    if hasattr(value, "_fields"):
        comments = field_comments(type(value))
        lines = [f"{name}: {type(value).__name__} (a NamedTuple) with fields"]
        width = max(len(f) for f in value._fields) if value._fields else 0
        for f in value._fields:
            v = getattr(value, f)
            shown = describe(v, 1) if not hasattr(v, "_fields") else f"{type(v).__name__} (NamedTuple)"
            note = f"  # {comments[f]}" if f in comments else ""
            lines.append(f"    {f:<{width}}  sample: {shown}{note}")
        return lines
    return [f"{name}: {describe(value)}"]


def render(ex: Exercise, file_label: str) -> str:
    """The text of the stub file."""
    fn = ex.backward
    sig = inspect.signature(fn)
    call = sample_call(ex)
    parts = [inspect.getdoc(fn) or f"The backward of {ex.forward_name or ex.name}.", ""]
    if call is not None:
        args, kwargs, result = call
        bound = sig.bind_partial(*args, **kwargs)
        parts.append("What you receive (shapes as on the registry's sample inputs; other sizes are checked too):")
        for name, value in bound.arguments.items():
            parts += ["  " + ln for ln in describe_argument(name, value)]
        parts += ["", "What you return (the library returns this structure; keep it):", f"  {describe(result)}", ""]
    deriv = ex.derivation
    if deriv is not None:
        text = deriv.text.splitlines()
        cut = text[:MAX_DERIVATION_LINES] + (["[... continued in the file]"] if len(text) > MAX_DERIVATION_LINES else [])
        parts += [f"Derivation: {deriv.anchor}" + (f'  ("{deriv.heading}")' if deriv.heading else ""), ""]
        parts += ["  " + ln if ln else "" for ln in cut]
    doc = "\n".join(parts).replace('"""', "'''").replace("\\", "\\\\")
    fwd_import = ""
    if ex.forward is not None:
        fwd_import = (f"from {ex.forward.__module__} import {ex.forward.__name__}  # noqa: F401  "
                      "the library forward, re-exported: run it to get a cache\n")
    header = [f"Exercise {ex.name}: write {ex.backward_name}.", "",
              f"Difficulty: {ex.difficulty} lines of code in the library ({ex.level}).",
              f"Derivation: {deriv.anchor if deriv else '(none found)'}",
              f"Forward: {ex.forward_name or '(the registry entry ' + repr(ex.name) + ')'}"
              + ("; defining your own forward of that name here makes the check use yours." if ex.forward else ""),
              "", "Check it (exit status 0 when every input gradient passes):",
              f"    python -m scratch_transformers exercise check {file_label}"]
    body = textwrap.indent(doc, "    ")
    return (f'"""{chr(10).join(header)}\n"""\n\nfrom __future__ import annotations\n\nimport numpy as np\n\n'
            f"{fwd_import}\nEXERCISE = {ex.name!r}\n\n\n"
            f"def {fn.__name__}{sig}:\n    \"\"\"{body.strip()}\n    \"\"\"\n"
            f"    raise NotImplementedError({(fn.__name__ + ': your code here')!r})\n")


class Exists(Exception):
    pass


def start(ex: Exercise, out: Path | None = None) -> Path:
    """Write the stub to ``out`` (default ``exercise_<slug>.py``); never overwrites (raises Exists)."""
    path = Path(out) if out is not None else Path(f"exercise_{ex.slug.replace('.', '_')}.py")
    if path.exists():
        raise Exists(f"{path} exists; not overwriting it (remove it or pass --out OTHER.py)")
    text = render(ex, str(path))
    atomic_write(path, text)
    return path
