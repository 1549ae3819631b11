"""The command line: help lists what exists, check runs the registry, unknown names fail clearly."""

import subprocess
import sys

import pytest

from scratch_transformers.__main__ import available_benchmarks, available_experiments, main
from scratch_transformers.experiments import TOUR


def test_help_lists_experiments_and_benchmarks():
    out = subprocess.run([sys.executable, "-m", "scratch_transformers", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("tour", "check", "experiment", "bench"):
        assert word in out.stdout
    for name in available_experiments():
        assert name in out.stdout


def test_every_tour_experiment_exists():
    assert available_experiments() == TOUR


def test_benchmarks_named_by_the_issues_exist():
    assert {"attention", "scan"} <= set(available_benchmarks())


def test_check_runs_a_subset_and_reports(capsys):
    assert main(["check", "--only", "softmax"]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "pass" in out and " 0 failed" in out


def test_unknown_names_fail_with_the_list(capsys):
    assert main(["experiment", "no_such_thing"]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["bench", "no_such_thing"]) == 2


def test_bad_size_is_rejected():
    with pytest.raises(SystemExit):
        main(["experiment", "baseline", "--size", "huge"])
