"""Data: synthetic sequence tasks drawn from an rng, and a byte-level corpus that needs no download.

Every task returns a :class:`TaskData` for next-token training of a causal model: ``inputs[b, t]``
is the token the model reads at position t and ``targets[b, t]`` the token it must predict there,
or ``IGNORE = -100`` where nothing is scored (the ``ignore_index`` of
``core.layers.cross_entropy_forward``). ``vocab`` is always the *total* vocabulary size,
special tokens included, so ``TaskData.vocab_size == vocab``; special tokens take the top ids.

Tasks (sizes are arguments; the comments give the defaults' spirit):

* :func:`copy_task` — ``x_1..x_L SEP x_1..x_L``; only the second copy is scored.
* :func:`selective_copy_task` — Mamba §3.1 / App. E.1 "Selective Copying" (the layout of the
  reference generator ``torch_copying_data(L, M, A, variable=True)`` of the S4/Mamba code):
  ``n_tokens`` data tokens at random sorted positions of a region of ``length`` tokens that is
  otherwise the noise token 0, followed by ``n_tokens`` marker tokens; at the k-th marker the
  model must output the k-th data token.
* :func:`induction_task` — Mamba §4.1.2 / App. E.1 "Induction Heads" (associative recall,
  "Harry Potter ... Harry -> Potter"): a random sequence contains the special token once,
  followed by a value token; the sequence ends with the special token again and the model must
  output the value that followed it the first time.

Corpus: :func:`load_stdlib_corpus` reads a fixed, sorted list of the running interpreter's own
standard-library source files as bytes (vocab 256), reports which were read and the sha256 of
the concatenation, and splits it into train (first 90%) and validation (last 10%).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from typing import NamedTuple

import numpy as np

from . import validate

__all__ = [
    "IGNORE", "TaskData", "copy_task", "selective_copy_task", "induction_task", "split_task",
    "masked_accuracy", "Corpus", "STDLIB_FILES", "load_stdlib_corpus", "random_windows",
    "unigram_entropy",
]

IGNORE = -100


class TaskData(NamedTuple):
    """A synthetic task: ``n`` sequences of length ``T`` for next-token training."""

    inputs: np.ndarray     # (n, T) int64, token ids in [0, vocab_size)
    targets: np.ndarray    # (n, T) int64, token id to predict at each position, IGNORE if unscored
    vocab_size: int        # total vocabulary, special tokens included
    name: str = ""

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch of ``batch`` rows drawn uniformly with replacement: (inputs, targets)."""
        rng = validate.rng(rng)
        batch = validate.positive_int(batch, "batch")
        idx = rng.integers(0, self.inputs.shape[0], size=batch)
        return self.inputs[idx], self.targets[idx]


def _check_common(rng, n):
    return validate.rng(rng), validate.positive_int(n, "n")


def copy_task(rng: np.random.Generator, n: int, *, length: int, vocab: int) -> TaskData:
    """Plain copying: ``s = x_1..x_L, SEP, x_1..x_L`` with x_i uniform in [0, vocab-1), SEP = vocab-1.

    inputs = s[:-1], targets = s[1:] (shape (n, 2L)); only the predictions of the second copy
    (positions L .. 2L-1, i.e. reading SEP, x_1, ..., x_{L-1}) are scored. A model that has learned
    the task predicts x_{i+1} at input position L+i by attending back L positions.
    """
    rng, n = _check_common(rng, n)
    length = validate.positive_int(length, "length")
    vocab = validate.integer(vocab, "vocab", low=2)
    sep = vocab - 1
    x = rng.integers(0, sep, size=(n, length))                          # (n, L)
    s = np.concatenate([x, np.full((n, 1), sep), x], axis=1)            # (n, 2L+1)
    inputs = s[:, :-1].astype(np.int64)                                 # (n, 2L)
    targets = s[:, 1:].astype(np.int64)                                 # (n, 2L)
    targets[:, :length] = IGNORE                                        # first copy: unpredictable
    return TaskData(inputs, targets, vocab, "copy")


def selective_copy_task(rng: np.random.Generator, n: int, *, length: int, n_tokens: int,
                        vocab: int) -> TaskData:
    """Selective copying (Mamba §3.1, Fig. 2; App. E.1).

    Token ids: 0 = noise, 1 .. vocab-2 = data, vocab-1 = marker. Each row is a region of
    ``length`` positions holding ``n_tokens`` data tokens at uniformly random distinct positions
    (kept in order) and noise elsewhere, then ``n_tokens`` markers: total T = length + n_tokens.
    The target at the k-th marker is the k-th data token of the region; nothing else is scored.
    (The paper's setting: region 4096, 16 data tokens, vocab 16 including the noise token.)
    """
    rng, n = _check_common(rng, n)
    length = validate.positive_int(length, "length")
    n_tokens = validate.integer(n_tokens, "n_tokens", low=1, high=length)
    vocab = validate.integer(vocab, "vocab", low=3)
    marker = vocab - 1
    data = rng.integers(1, marker, size=(n, n_tokens))                  # (n, M) data tokens
    # M distinct positions in the region, sorted: argsort of uniform keys = a random permutation
    pos = np.sort(np.argsort(rng.random((n, length)), axis=1)[:, :n_tokens], axis=1)  # (n, M)
    region = np.zeros((n, length), dtype=np.int64)                      # (n, length) noise
    np.put_along_axis(region, pos, data, axis=1)
    inputs = np.concatenate([region, np.full((n, n_tokens), marker, dtype=np.int64)], axis=1)
    targets = np.full_like(inputs, IGNORE)                              # (n, length + M)
    targets[:, length:] = data
    return TaskData(inputs, targets, vocab, "selective_copy")


def induction_task(rng: np.random.Generator, n: int, *, length: int, vocab: int) -> TaskData:
    """Induction heads / associative recall (Mamba §4.1.2; App. E.1).

    Token ids: 0 .. vocab-2 ordinary, S = vocab-1 the special ("trigger") token. Each row of
    ``length`` tokens is uniform over the ordinary tokens, except: S at one position p drawn
    uniformly from [0, length-3], the value token at p+1 (ordinary, uniform), and S again at the
    last position. The single scored target is at the last position: the value at p+1.
    One scored token per sequence makes this a slow task to learn (the paper trains for epochs
    of 8192 steps): a 2-layer d_model 64 transformer at length 32, vocab 16, batch 64, AdamW 3e-3
    reached only 11% validation accuracy (chance 1/15) after 1500 steps in our measurement.
    """
    rng, n = _check_common(rng, n)
    length = validate.integer(length, "length", low=3)
    vocab = validate.integer(vocab, "vocab", low=2)
    special = vocab - 1
    inputs = rng.integers(0, special, size=(n, length)).astype(np.int64)  # (n, T) ordinary tokens
    p = rng.integers(0, length - 2, size=n)                              # (n,) trigger position
    rows = np.arange(n)
    inputs[rows, p] = special
    inputs[:, -1] = special
    targets = np.full_like(inputs, IGNORE)
    targets[:, -1] = inputs[rows, p + 1]                                 # the value after the trigger
    return TaskData(inputs, targets, vocab, "induction")


def split_task(task: TaskData, n_val: int) -> tuple[TaskData, TaskData]:
    """Split into (train, val): the last ``n_val`` rows are validation.

    Training rows identical (inputs and targets) to any validation row are dropped, so the two
    splits share no example even when a small task repeats sequences by chance.
    """
    if not isinstance(task, TaskData):
        validate.fail("task", "a TaskData", type(task).__name__)
    n = task.inputs.shape[0]
    n_val = validate.integer(n_val, "n_val", low=1, high=n - 1)
    rows = np.concatenate([task.inputs, task.targets], axis=1)
    val_rows = {r.tobytes() for r in rows[n - n_val:]}
    keep = np.array([rows[i].tobytes() not in val_rows for i in range(n - n_val)], dtype=bool)
    if not keep.any():
        validate.fail("task", "a task with training rows not repeated in validation",
                      f"all {n - n_val} training rows repeated in the last {n_val}")
    train = TaskData(task.inputs[: n - n_val][keep], task.targets[: n - n_val][keep],
                     task.vocab_size, task.name)
    val = TaskData(task.inputs[n - n_val:], task.targets[n - n_val:], task.vocab_size, task.name)
    return train, val


def masked_accuracy(predictions: np.ndarray, targets: np.ndarray, ignore_index: int = IGNORE) -> float:
    """Fraction of scored positions (targets != ignore_index) where predictions == targets.

    predictions: int (...) (e.g. ``logits.argmax(-1)``), targets: int of the same shape.
    Returns nan when nothing is scored.
    """
    predictions = validate.int_array(predictions, "predictions")
    targets = validate.int_array(targets, "targets", shape=predictions.shape)
    scored = targets != ignore_index
    if not scored.any():
        return float("nan")
    return float(np.mean(predictions[scored] == targets[scored]))


# ---------------------------------------------------------------------------------------------
# The standard-library corpus
# ---------------------------------------------------------------------------------------------

#: Files read by :func:`load_stdlib_corpus`, relative to ``sysconfig.get_paths()["stdlib"]``,
#: sorted. All exist as plain source files in CPython 3.10-3.13 (about 1.9 MB in 3.11).
STDLIB_FILES: tuple[str, ...] = tuple(sorted([
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py",
    "email/message.py", "enum.py", "fnmatch.py", "fractions.py", "functools.py", "gettext.py",
    "glob.py", "gzip.py", "heapq.py", "html/parser.py", "http/client.py", "inspect.py",
    "ipaddress.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
    "logging/__init__.py", "numbers.py", "operator.py", "optparse.py", "os.py", "posixpath.py",
    "pprint.py", "queue.py", "random.py", "shlex.py", "shutil.py", "statistics.py", "string.py",
    "subprocess.py", "tempfile.py", "textwrap.py", "threading.py", "tokenize.py", "typing.py",
    "urllib/parse.py", "uuid.py", "weakref.py",
]))


class Corpus(NamedTuple):
    """A byte corpus (vocab 256) split into train and validation."""

    train: np.ndarray      # (N_train,) uint8
    val: np.ndarray        # (N_val,) uint8
    sha256: str            # hex digest of the bytes read (train + val, in file order)
    files: list            # files actually read, relative to root, in order
    root: str = ""         # the stdlib directory they were read from
    missing: tuple = ()    # files of STDLIB_FILES not found under root


@functools.lru_cache(maxsize=4)
def _read_files(root: str, files: tuple[str, ...]) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    chunks, read, missing = [], [], []
    for rel in files:
        path = os.path.join(root, *rel.split("/"))
        if os.path.isfile(path):
            with open(path, "rb") as f:
                chunks.append(f.read())
            read.append(rel)
        else:
            missing.append(rel)
    return b"".join(chunks), tuple(read), tuple(missing)


def load_stdlib_corpus(*, val_fraction: float = 0.1, root: str | None = None,
                       files: tuple[str, ...] | None = None) -> Corpus:
    """The interpreter's own standard-library sources as a byte corpus.

    Reads :data:`STDLIB_FILES` (or ``files``) from ``root`` (default: this interpreter's
    ``sysconfig.get_paths()["stdlib"]``) in order, skipping missing ones (reported in
    ``Corpus.missing``), concatenates the bytes and splits: the last ``val_fraction`` of the bytes
    is validation. Files are source text, mostly ASCII; the model sees raw bytes (vocab 256).
    """
    val_fraction = validate.real(val_fraction, "val_fraction", low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    if not isinstance(root, (str, os.PathLike)):
        validate.fail("root", "a directory path", type(root).__name__)
    root = os.fspath(root)
    files = STDLIB_FILES if files is None else tuple(files)
    if not files or not all(isinstance(f, str) for f in files):
        validate.fail("files", "a non-empty sequence of relative paths", repr(files))
    blob, read, missing = _read_files(root, files)
    if len(blob) < 2:
        validate.fail("root", "a directory containing the corpus files", f"{root!r} ({len(read)} files read)")
    data = np.frombuffer(blob, dtype=np.uint8)
    n_val = max(1, int(round(len(data) * val_fraction)))
    n_val = min(n_val, len(data) - 1)
    return Corpus(train=data[:-n_val].copy(), val=data[-n_val:].copy(),
                  sha256=hashlib.sha256(blob).hexdigest(), files=list(read), root=root,
                  missing=missing)


def random_windows(data: np.ndarray, rng: np.random.Generator, batch: int,
                   seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` random windows for language modelling: (inputs, targets), each (batch, seq_len) int64.

    A start s is uniform in [0, len(data) - seq_len - 1]; inputs = data[s : s+seq_len],
    targets = data[s+1 : s+seq_len+1] (the next byte at every position).
    """
    data = validate.int_array(data, "data", ndim=1)
    rng = validate.rng(rng)
    batch = validate.positive_int(batch, "batch")
    seq_len = validate.positive_int(seq_len, "seq_len")
    if data.shape[0] < seq_len + 1:
        validate.fail("data", f"at least seq_len + 1 = {seq_len + 1} tokens", data.shape[0])
    starts = rng.integers(0, data.shape[0] - seq_len, size=batch)       # (batch,)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]             # (batch, seq_len + 1)
    window = data[idx].astype(np.int64)
    return window[:, :-1], window[:, 1:]


def unigram_entropy(data: np.ndarray) -> float:
    """Entropy of the empirical token distribution, H = -sum_c p_c log p_c, in nats per token.

    The cross-entropy of the best context-free (unigram) model of ``data``: a language model
    that uses context must go below it.
    """
    data = validate.int_array(data, "data", ndim=1, low=0)
    if data.size == 0:
        validate.fail("data", "a non-empty array", "an empty array")
    counts = np.bincount(data)
    p = counts[counts > 0] / data.size
    return float(-np.sum(p * np.log(p)))
