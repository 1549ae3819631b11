"""Exercises: every registered forward/backward pair as a gradient-checking exercise, from the command line.

    python -m scratch_transformers exercise list              every pair, by method, difficulty, derivation
    python -m scratch_transformers exercise start NAME        a stub file: signature, cache fields, equations
    python -m scratch_transformers exercise check FILE        per input gradient: pass/fail, errors, diagnosis

The list is ``core.registry.all_ops()``: an entry added to any ``checks/*.py`` is an exercise with no further
step. Modules: ``catalog`` (names, difficulty, derivation sections), ``stub`` (start), ``checker`` (check),
``hard_cases`` (input sets), ``diagnose`` (what a wrong gradient looks like), ``patching`` (the learner's
function in the library's place), ``kernels`` (the FA-2 forward and selective-scan loops), ``cli``.
"""

from .catalog import Exercise, catalog, find
from .checker import Attempt, check, check_file

__all__ = ["Attempt", "Exercise", "catalog", "check", "check_file", "find"]
