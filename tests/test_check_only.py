"""`check --only` that matches no op fails instead of reporting success after checking nothing (issue 17)."""

from scratch_transformers.__main__ import main


def test_check_only_without_a_match_fails_and_says_why(capsys):
    assert main(["check", "--only", "NOMATCH_no_such_op"]) == 2
    err = capsys.readouterr().err
    assert "NOMATCH_no_such_op" in err and "no registered op" in err and "list" in err


def test_check_only_with_a_match_still_runs(capsys):
    assert main(["check", "--only", "core.sigmoid"]) == 0
    out = capsys.readouterr().out
    assert "core.sigmoid" in out and "1 passed, 0 failed" in out
