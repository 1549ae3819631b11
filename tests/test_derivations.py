"""Every qualified name a derivation mentions must import, so the links from derivations/ to the
code cannot rot; and every derivation file is listed in the index."""

import importlib
import re
from pathlib import Path

import pytest

DERIV = Path(__file__).resolve().parent.parent / "derivations"
NAME = re.compile(r"`(scratch_transformers(?:\.\w+)+)`")
FILES = sorted(p for p in DERIV.glob("*.md") if p.name != "README.md")


def resolve(qualname: str):
    """Import the longest module prefix, then getattr the rest."""
    parts = qualname.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the module exists but one of its own imports is broken
                raise
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(qualname)


def test_there_are_derivations():
    assert (DERIV / "README.md").is_file()
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_qualified_name_imports(path):
    names = sorted(set(NAME.findall(path.read_text())))
    assert names, f"{path.name} links no function by qualified name"
    broken = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            broken.append(f"{name}: {exc}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_listed_in_index(path):
    assert f"({path.name})" in (DERIV / "README.md").read_text(), f"derivations/README.md does not link {path.name}"
