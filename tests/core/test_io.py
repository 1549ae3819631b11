"""core.io.atomic_write: complete file or the old one, never a leftover temporary file."""

import os
import stat

import numpy as np
import pytest

from scratch_transformers.core.io import atomic_write


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_bytes_and_str(tmp_path):
    p = atomic_write(tmp_path / "a.bin", b"\x00\x01\xff")
    assert p == tmp_path / "a.bin" and p.read_bytes() == b"\x00\x01\xff"
    atomic_write(tmp_path / "b.md", "ünïcode\n")
    assert (tmp_path / "b.md").read_bytes() == "ünïcode\n".encode("utf-8")
    assert _listing(tmp_path) == ["a.bin", "b.md"]


def test_writer_gets_a_binary_file_and_npz_round_trips(tmp_path):
    w = np.arange(6.0).reshape(2, 3)
    atomic_write(str(tmp_path / "w.npz"), lambda f: np.savez(f, w=w))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["w"], w)


def test_replaces_existing_file_and_creates_parents(tmp_path):
    p = tmp_path / "sub" / "dir" / "f.txt"
    atomic_write(p, "old")
    atomic_write(p, "new")
    assert p.read_text() == "new"
    assert _listing(p.parent) == ["f.txt"]


def test_mode_is_applied(tmp_path):
    p = atomic_write(tmp_path / "m.txt", "x", mode=0o600)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    p = atomic_write(tmp_path / "d.txt", "x")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failing_writer_leaves_old_file_and_no_temporary(tmp_path, exc):
    p = tmp_path / "keep.txt"
    atomic_write(p, "old contents")

    def writer(f):
        f.write(b"half of the new")
        raise exc("writer failed")

    with pytest.raises(exc):
        atomic_write(p, writer)
    assert p.read_text() == "old contents"
    assert _listing(tmp_path) == ["keep.txt"]


def test_failing_writer_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "new.txt", lambda f: 1 / 0)
    assert _listing(tmp_path) == []


def test_failed_replace_removes_temporary(tmp_path):
    target = tmp_path / "is_a_dir"
    target.mkdir()
    (target / "inside").write_text("x")   # os.replace of a file over a non-empty folder fails
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert _listing(tmp_path) == ["is_a_dir"]


@pytest.mark.parametrize("path, data, mode, arg", [
    (None, b"x", 0o644, "path"),
    (b"bytes-path", b"x", 0o644, "path"),
    ("ok.txt", 3.5, 0o644, "data_or_writer"),
    ("ok.txt", ["not", "bytes"], 0o644, "data_or_writer"),
    ("ok.txt", b"x", -1, "mode"),
    ("ok.txt", b"x", "644", "mode"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, path, data, mode, arg):
    if isinstance(path, str):
        path = tmp_path / path
    with pytest.raises(ValueError, match=f"^{arg}: expected"):
        atomic_write(path, data, mode=mode)
    assert _listing(tmp_path) == []
