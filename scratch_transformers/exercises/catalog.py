"""The catalogue of exercises: one per registered forward/backward pair (``core.registry.all_ops``).

An exercise names the library backward the learner rewrites (the entry's first ``covers`` name, else the
``*backward`` function the entry's backward calls), its forward (same module, ``backward`` -> ``forward``), a
difficulty (lines of code of the library backward, docstring and blank lines left out) and the derivation
section that explains it (the ``derivations/*.md`` heading above the first mention of the backward's
qualified name; else the method's file).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..core.registry import Op, all_ops

DERIVATIONS = Path(__file__).resolve().parent.parent.parent / "derivations"
# method -> derivation file, where the names differ
METHOD_FILES = {"attention": ("flashattention.md", "core.md", "transformer.md"), "positional": ("positions.md",),
                "models": ("transformer.md",), "encoder": ("transformer.md",), "rope": ("positions.md",)}


@dataclass(frozen=True)
class Derivation:
    path: str        # relative to the repository, e.g. derivations/core.md
    heading: str     # the section's title, "" for a whole file
    text: str        # the section's text (heading line excluded)

    @property
    def anchor(self) -> str:
        explicit = re.search(r"\{#([\w-]+)\}", self.heading)
        slug = explicit.group(1) if explicit else _heading_slug(self.heading)
        return f"{self.path}#{slug}" if self.heading else self.path


@dataclass(frozen=True)
class Exercise:
    name: str                 # the registry's op name, e.g. core.linear
    method: str               # the group in `exercise list`
    op: Op
    backward: Callable        # the library backward the learner rewrites
    backward_name: str        # its qualified name
    forward: Callable | None  # the library forward of the same pair (None if it has no *_forward twin)
    forward_name: str

    @property
    def slug(self) -> str:
        return slug(self.name)

    @property
    def difficulty(self) -> int:
        return code_lines(self.backward)

    @property
    def level(self) -> str:
        n = self.difficulty
        return "easy" if n <= 12 else "medium" if n <= 40 else "hard"

    @property
    def derivation(self) -> Derivation | None:
        return find_derivation(self.backward_name, self.method)


def slug(name: str) -> str:
    """A file- and shell-friendly form of an op name: rope[half,rot=6] -> rope_half_rot_6."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_")


def resolve(qualified: str):
    """The object named by a dotted path (module prefix imported, the rest by getattr), or None."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def _library_backward(op: Op):
    for name in op.covers:
        fn = resolve(name)
        if inspect.isfunction(fn):
            return fn, name
    fn = op.backward
    # a wrapper (lambda, closure) around a library backward: the *backward function it calls
    refs = [fn.__globals__.get(n) for n in getattr(getattr(fn, "__code__", None), "co_names", ())]
    refs += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_ok(c)]
    for obj in refs:
        if inspect.isfunction(obj) and obj.__name__.endswith("backward") and not obj.__name__.startswith("_"):
            return obj, qualname(obj)
    return fn, qualname(fn)


def _cell_ok(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _library_forward(backward: Callable):
    name = backward.__name__
    if "backward" not in name:
        return None, ""
    fwd_name = name.replace("backward", "forward")
    module = importlib.import_module(backward.__module__)
    fn = getattr(module, fwd_name, None)
    return (fn, f"{backward.__module__}.{fwd_name}") if callable(fn) else (None, "")


def method_of(op: Op, backward_name: str) -> str:
    if "." in op.name.split("[")[0].split("(")[0]:
        return op.name.split(".")[0]
    parts = backward_name.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "scratch_transformers" else "other"


def code_lines(fn) -> int:
    """Lines of the function's source without its docstring, comments-only lines and blank lines."""
    try:
        lines = inspect.getsource(fn).splitlines()
    except (OSError, TypeError):
        return 0
    doc = inspect.getdoc(fn) or ""
    src = "\n".join(lines)
    if doc:
        m = re.search(r'("""|\'\'\')(.*?)\1', src, re.S)
        if m:
            src = src[:m.start()] + src[m.end():]
    return sum(1 for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#"))


@lru_cache(maxsize=None)
def _derivation_files() -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not DERIVATIONS.is_dir():
        return ()
    return tuple((f"derivations/{p.name}", tuple(p.read_text(encoding="utf-8").splitlines()))
                 for p in sorted(DERIVATIONS.glob("*.md")) if p.name != "README.md")


def _section(lines: tuple[str, ...], at: int) -> tuple[str, str]:
    """The heading above line ``at`` and that section's text (up to the next heading of the same or higher level)."""
    start = next((i for i in range(at, -1, -1) if lines[i].startswith("#")), None)
    if start is None:
        return "", "\n".join(lines[:40])
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return lines[start].lstrip("#").strip(), "\n".join(lines[start + 1:end]).strip()


def _heading_slug(line: str) -> str:
    text = re.sub(r"\{#[\w-]+\}", "", line.lstrip("#")).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).strip().replace(" ", "-")


def _by_anchor(files, doc: str) -> Derivation | None:
    """The section a docstring points at (``core.md#layer-norm``, ``derivations/mamba.md#adjoint``)."""
    for file, anchor in re.findall(r"(\w+\.md)#([\w-]+)", doc):
        for path, lines in files:
            if not path.endswith("/" + file):
                continue
            heads = [i for i, ln in enumerate(lines) if ln.startswith("#")]
            rules = (lambda i: f"{{#{anchor}}}" in lines[i], lambda i: _heading_slug(lines[i]) == anchor,
                     lambda i: _heading_slug(lines[i]).startswith(anchor),
                     lambda i: set(anchor.split("-")) <= set(_heading_slug(lines[i]).split("-")))
            for rule in rules:
                hit = next((i for i in heads if rule(i)), None)
                if hit is not None:
                    heading, text = _section(lines, hit)
                    return Derivation(path, heading, text)
    return None


@lru_cache(maxsize=None)
def find_derivation(backward_name: str, method: str) -> Derivation | None:
    files = _derivation_files()
    fn = resolve(backward_name)
    found = _by_anchor(files, inspect.getdoc(fn) or "") if fn is not None else None
    if found is not None:
        return found
    short = backward_name.rsplit(".", 1)[-1]
    needles = (backward_name, ".".join(backward_name.split(".")[-3:]) if short == "backward" else short)
    # a mention in the body first; the "equation -> function" table only as a last resort
    for in_table in (False, True):
        for needle in needles:
            for path, lines in files:
                hits = [i for i, ln in enumerate(lines) if needle in ln
                        and ("function" in _section(lines, i)[0].lower()) == in_table]
                if hits:
                    heading, text = _section(lines, hits[0])
                    if in_table:   # the table row: the equation this function implements
                        text = "\n".join(lines[i] for i in hits)
                    return Derivation(path, heading, text)
    wanted = METHOD_FILES.get(method, ()) + (f"{method}.md",)
    for path, lines in files:
        if path.rsplit("/", 1)[-1] in wanted:
            return Derivation(path, "", "\n".join(lines[:30]))
    return None


@lru_cache(maxsize=1)
def _catalog_cached() -> tuple[Exercise, ...]:
    out = []
    for op in all_ops():
        bwd, bname = _library_backward(op)
        fwd, fname = _library_forward(bwd)
        out.append(Exercise(op.name, method_of(op, bname), op, bwd, bname, fwd, fname))
    return tuple(out)


def catalog() -> list[Exercise]:
    """Every registered pair as an exercise, in registry order."""
    return list(_catalog_cached())


def find(name: str) -> Exercise | None:
    """The exercise whose op name or slug is ``name``."""
    for ex in catalog():
        if name in (ex.name, ex.slug):
            return ex
    return None
