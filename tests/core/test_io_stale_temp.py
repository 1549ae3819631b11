"""A SIGKILL during a save leaves no file that can be confused with the real one, and the next write of
that file removes the orphan (issue 17). The writer process is killed for real, mid-write."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from scratch_transformers.core.io import atomic_write

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

_WRITER = textwrap.dedent("""
    import sys, time
    from scratch_transformers.core.io import atomic_write

    def writer(f):
        f.write(b"half of the new conte")
        f.flush()
        print("ready", flush=True)
        time.sleep(60)                                   # killed here, mid-write

    atomic_write(sys.argv[1], writer)
""")


def _start_writer(path):
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


def _temps(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name != name)


def test_killed_save_leaves_the_old_file_and_a_recognisable_orphan_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ck.npz"
    atomic_write(path, b"old")
    proc = _start_writer(path)
    _kill(proc)
    assert path.read_bytes() == b"old"                   # a reader never sees the half-written file
    orphans = _temps(tmp_path, "ck.npz")
    assert len(orphans) == 1
    assert orphans[0].startswith(".ck.npz.") and orphans[0].endswith(".tmp")   # hidden, named after its file
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert _temps(tmp_path, "ck.npz") == []              # the orphan is gone: nothing accumulates


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    path = tmp_path / "report.md"
    proc = _start_writer(path)
    try:
        live = _temps(tmp_path, "report.md")
        atomic_write(path, "# done\n")
        assert _temps(tmp_path, "report.md") == live     # another process is still writing: not an orphan
    finally:
        _kill(proc)
    atomic_write(path, "# again\n")
    assert _temps(tmp_path, "report.md") == []


def test_other_files_temps_and_lookalikes_are_not_touched(tmp_path):
    path = tmp_path / "a.npz"
    other = tmp_path / "b.npz"
    proc = _start_writer(other)
    _kill(proc)
    keep = [tmp_path / ".a.npz.notes.txt", tmp_path / "a.npz.tmp", tmp_path / ".a.npzx.123.abc.tmp"]
    for p in keep:
        p.write_text("user file")
    before = _temps(tmp_path, "a.npz")
    atomic_write(path, b"x")
    assert _temps(tmp_path, "a.npz") == before           # b.npz's orphan is b's to clean; lookalikes stay
