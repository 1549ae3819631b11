"""``atomic_write``: the one way the package writes a file (checkpoints, adapters, figures, reports).

The data go to a temporary file in the destination's folder, are flushed and fsync'ed, and the
temporary file is moved over the destination with ``os.replace`` (atomic on POSIX and Windows when
both are on one file system, which the shared folder guarantees). A reader therefore sees either
the old file or the complete new one, never a half-written file; on any failure, including an
exception raised by the caller's writer or a KeyboardInterrupt, the temporary file is removed and
the destination is left as it was.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file. That file is
hidden and named after its destination and writer, ``.<name>.<pid>.<random>.tmp``, so it is never
mistaken for the file itself, and the next write of the same file removes it once its writer
process is gone (a live writer's file is left alone): orphans do not accumulate.

    atomic_write("report.md", "# title\\n")                        # str is written as UTF-8
    atomic_write("ck.npz", lambda f: np.savez(f, w=w))            # a writer gets a binary file object
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from . import validate

__all__ = ["atomic_write"]

Writer = Callable[[object], object]


def atomic_write(path, data_or_writer: Union[bytes, str, Writer], mode: int = 0o644) -> Path:
    """Write ``data_or_writer`` to ``path`` atomically and return the path.

    data_or_writer: ``bytes`` (or bytearray / memoryview), a ``str`` (encoded as UTF-8), or a
    callable ``writer(f)`` that writes to the binary file object ``f`` (e.g. ``np.savez(f, ...)``,
    ``fig.savefig(f, format="png")``). mode: permission bits of the written file (``os.chmod``).
    Missing parent folders are created.
    """
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        validate.fail("path", "a str or os.PathLike file path", type(path).__name__)
    path = Path(os.fspath(path))
    if path.name in ("", ".", ".."):
        validate.fail("path", "a path naming a file", str(path))
    if isinstance(data_or_writer, str):
        data_or_writer = data_or_writer.encode("utf-8")
    if not (isinstance(data_or_writer, (bytes, bytearray, memoryview)) or callable(data_or_writer)):
        validate.fail("data_or_writer", "bytes, str or a callable writer(binary_file)", type(data_or_writer).__name__)
    mode = validate.integer(mode, "mode", low=0, high=0o7777)

    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(path.parent)
    return path


def _remove_orphans(path: Path) -> None:
    """Remove ``.<name>.<pid>.<random>.tmp`` files of ``path`` whose writer process no longer exists
    (left by a process killed mid-write). Other files, and temporary files of live writers, stay."""
    if os.name != "posix":                     # os.kill(pid, 0) probes a process only on POSIX
        return
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid, _, rest = name[len(prefix):-len(".tmp")].partition(".")
        if not (pid.isdigit() and rest) or _process_exists(int(pid)):
            continue
        try:
            os.unlink(path.parent / name)
        except OSError:                        # removed meanwhile, or not ours to remove
            pass


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                            # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the OS allows opening a folder (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
