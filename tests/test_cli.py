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


@pytest.mark.parametrize("where", ["a_file", "a_file/sub"])
def test_unwritable_out_fails_before_training(tmp_path, monkeypatch, capsys, where):
    """tour/experiment with an --out that cannot be written stop at once (exit 2), before any kernel
    is compiled or any experiment trained. (Root ignores permission bits, so the folder is under a file.)"""
    import scratch_transformers.experiments.runner as runner
    import scratch_transformers.experiments.warmup as warmup

    (tmp_path / "a_file").write_text("not a folder")

    def must_not_run(*a, **k):
        raise AssertionError("ran although --out is not writable")
    monkeypatch.setattr(runner, "run_one", must_not_run)
    monkeypatch.setattr(runner, "run_all", must_not_run)
    monkeypatch.setattr(warmup, "warm_up", must_not_run)
    assert main(["tour", "--out", str(tmp_path / where)]) == 2
    assert "cannot write there" in capsys.readouterr().err
    assert main(["experiment", "baseline", "--out", str(tmp_path / where)]) == 2


def test_writable_folder_is_created_and_leaves_nothing(tmp_path):
    from scratch_transformers.__main__ import writable_folder

    out = tmp_path / "new" / "out"
    assert writable_folder(out) is None
    assert out.is_dir() and list(out.iterdir()) == []


def test_figures_are_written_readable_like_report(tmp_path):
    """savefig goes through a private temp file (mkstemp: 0600); the figure ends 0666 minus the umask."""
    import os

    import matplotlib.pyplot as plt

    from scratch_transformers.experiments.common import savefig

    umask = os.umask(0o022)
    try:
        fig, ax = plt.subplots()
        path = savefig(fig, tmp_path, "f.png")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]           # no temp file left
