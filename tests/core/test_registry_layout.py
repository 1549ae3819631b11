"""Where the registry's entries live: the checks package only, never a library module; and the coverage
walk finds a public ``*_backward`` that no entry covers."""

import sys
import types

from scratch_transformers.core.registry import (CHECKS_PACKAGE, all_ops, check_modules, package_modules,
                                                public_backward_functions)


def test_entries_come_from_the_checks_package_only():
    mods = check_modules()
    assert mods and all(m.startswith(CHECKS_PACKAGE + ".") for m in mods)
    assert not any(m.startswith(CHECKS_PACKAGE) for m in package_modules())
    assert len(all_ops()) == sum(len(sys.modules[m].GRADCHECKS) for m in mods if hasattr(sys.modules[m], "GRADCHECKS"))


def test_no_library_module_holds_fixtures():
    import importlib
    holders = [m for m in package_modules() if hasattr(importlib.import_module(m), "GRADCHECKS")]
    assert holders == [], f"GRADCHECKS belong in scratch_transformers/checks/, found in {holders}"


def test_an_uncovered_backward_is_found(monkeypatch):
    fake = types.ModuleType("scratch_transformers_fake_op")
    exec("def thing_backward(dy, cache):\n    return dy\n\ndef _helper_backward(dy, cache):\n    return dy\n",
         fake.__dict__)
    fake.thing_backward.__module__ = fake._helper_backward.__module__ = fake.__name__
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    found = public_backward_functions([fake.__name__])
    assert found == ["scratch_transformers_fake_op.thing_backward"]
    covered = {c for op in all_ops() for c in op.covers}
    assert [f for f in found if f not in covered] == found
