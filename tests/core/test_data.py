"""Synthetic tasks checked by independent per-row loops; corpus, windows, entropy."""

import hashlib
import math
import os
import sysconfig

import numpy as np
import pytest

from scratch_transformers.core.data import (
    IGNORE, STDLIB_FILES, copy_task, induction_task, load_stdlib_corpus, masked_accuracy,
    random_windows, selective_copy_task, split_task, unigram_entropy,
)


def test_copy_task_targets_by_rebuilding_each_sequence(rng):
    L, V = 7, 5
    t = copy_task(rng, 50, length=L, vocab=V)
    assert t.inputs.shape == t.targets.shape == (50, 2 * L)
    assert t.inputs.dtype == t.targets.dtype == np.int64 and t.vocab_size == V
    for x, y in zip(t.inputs, t.targets):
        first = list(x[:L])
        assert max(first) < V - 1 and x[L] == V - 1                   # data tokens, then the separator
        full = first + [V - 1] + first                                 # the sequence the model reads/writes
        for i in range(2 * L):
            assert y[i] == (full[i + 1] if i >= L else IGNORE)
            assert x[i] == full[i]


def test_selective_copy_targets_are_the_data_tokens_in_order(rng):
    length, M, V = 30, 4, 8
    t = selective_copy_task(rng, 40, length=length, n_tokens=M, vocab=V)
    assert t.inputs.shape == (40, length + M)
    positions_seen = set()
    for x, y in zip(t.inputs, t.targets):
        region = x[:length]
        data = [int(v) for v in region if v != 0]                      # noise is 0, data tokens are >= 1
        assert len(data) == M and all(1 <= v <= V - 2 for v in data)
        assert list(x[length:]) == [V - 1] * M                         # markers
        assert list(y[length:]) == data
        assert all(v == IGNORE for v in y[:length])
        positions_seen.update(np.flatnonzero(region).tolist())
    assert len(positions_seen) > length // 2                          # positions really vary


def test_induction_target_is_value_after_the_trigger(rng):
    T, V = 12, 6
    t = induction_task(rng, 60, length=T, vocab=V)
    S = V - 1
    for x, y in zip(t.inputs, t.targets):
        trig = [i for i in range(T) if x[i] == S]
        assert len(trig) == 2 and trig[1] == T - 1 and trig[0] <= T - 3
        assert y[T - 1] == x[trig[0] + 1] and x[trig[0] + 1] != S
        assert all(v == IGNORE for v in y[:-1])


def test_tasks_reproducible_by_seed_and_vary_across_seeds():
    for make in (lambda r: copy_task(r, 8, length=5, vocab=10),
                 lambda r: selective_copy_task(r, 8, length=20, n_tokens=3, vocab=10),
                 lambda r: induction_task(r, 8, length=10, vocab=10)):
        a, b = make(np.random.default_rng(7)), make(np.random.default_rng(7))
        c = make(np.random.default_rng(8))
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.targets, b.targets)
        assert not np.array_equal(a.inputs, c.inputs)


def test_split_is_disjoint_even_with_duplicates(rng):
    t = induction_task(rng, 400, length=5, vocab=4)        # 81 possible rows: many repeats
    train, val = split_task(t, 50)
    assert len(val.inputs) == 50 and 0 < len(train.inputs) < 350
    val_rows = {np.concatenate([x, y]).tobytes() for x, y in zip(val.inputs, val.targets)}
    assert all(np.concatenate([x, y]).tobytes() not in val_rows for x, y in zip(train.inputs, train.targets))
    big = copy_task(rng, 100, length=16, vocab=16)
    tr, va = split_task(big, 20)
    assert len(tr.inputs) == 80
    np.testing.assert_array_equal(va.inputs, big.inputs[80:])


def test_sample_draws_rows(rng):
    t = copy_task(rng, 10, length=3, vocab=4)
    x, y = t.sample(np.random.default_rng(0), 6)
    rows = {r.tobytes() for r in t.inputs}
    assert x.shape == (6, 6) and all(r.tobytes() in rows for r in x)


def test_masked_accuracy():
    y = np.array([[IGNORE, 1, 2], [3, IGNORE, 4]])
    p = np.array([[9, 1, 0], [3, 9, 4]])
    assert masked_accuracy(p, y) == pytest.approx(3 / 4)
    assert math.isnan(masked_accuracy(p, np.full_like(y, IGNORE)))


@pytest.mark.parametrize("call, match", [
    (lambda r: copy_task(r, 0, length=3, vocab=4), "n: expected"),
    (lambda r: copy_task(r, 2, length=3, vocab=1), "vocab: expected"),
    (lambda r: copy_task(np.random, 2, length=3, vocab=4), "rng: expected"),
    (lambda r: selective_copy_task(r, 2, length=3, n_tokens=4, vocab=8), "n_tokens: expected"),
    (lambda r: selective_copy_task(r, 2, length=3, n_tokens=2, vocab=2), "vocab: expected"),
    (lambda r: induction_task(r, 2, length=2, vocab=8), "length: expected"),
    (lambda r: induction_task(r, 2, length=2.5, vocab=8), "length: expected"),
    (lambda r: split_task(copy_task(r, 4, length=2, vocab=3), 4), "n_val: expected"),
    (lambda r: split_task((1, 2), 1), "task: expected"),
    (lambda r: split_task(induction_task(r, 50, length=3, vocab=3), 40), "task: expected a task with training rows"),
    (lambda r: random_windows(np.zeros(5, np.uint8), r, 2, 5), "data: expected at least"),
    (lambda r: random_windows(np.zeros(50, np.float32), r, 2, 5), "data: expected an integer array"),
    (lambda r: random_windows(np.zeros(50, np.uint8), r, 0, 5), "batch: expected"),
    (lambda r: unigram_entropy(np.zeros((2, 2), np.uint8)), "data: expected 1-d"),
    (lambda r: unigram_entropy(np.array([], np.int64)), "data: expected a non-empty"),
    (lambda r: load_stdlib_corpus(val_fraction=1.0), "val_fraction: expected"),
    (lambda r: load_stdlib_corpus(root="/nonexistent-dir"), "root: expected"),
])
def test_bad_inputs_raise(call, match, rng):
    with pytest.raises(ValueError, match=match):
        call(rng)


def test_stdlib_corpus_matches_files_on_disk():
    c = load_stdlib_corpus()
    root = sysconfig.get_paths()["stdlib"]
    assert list(STDLIB_FILES) == sorted(STDLIB_FILES)
    assert len(c.files) >= 40 and len(c.files) + len(c.missing) == len(STDLIB_FILES)
    blob = b"".join(open(os.path.join(root, f), "rb").read() for f in c.files)
    assert c.sha256 == hashlib.sha256(blob).hexdigest()
    assert c.train.dtype == c.val.dtype == np.uint8
    assert 1_000_000 <= c.train.size + c.val.size <= 3_000_000
    assert bytes(c.train) + bytes(c.val) == blob                       # train then val, nothing lost
    assert abs(c.val.size / len(blob) - 0.1) < 1e-3
    assert load_stdlib_corpus().sha256 == c.sha256                     # fixed file list: same bytes


def test_random_windows_are_shifted_slices(rng):
    data = rng.permutation(200).astype(np.uint8)[:100]       # distinct bytes: a window's start is findable
    x, y = random_windows(data, rng, 16, 9)
    assert x.shape == y.shape == (16, 9) and x.dtype == y.dtype == np.int64
    for a, b in zip(x, y):
        start = int(np.flatnonzero(data == a[0])[0])
        np.testing.assert_array_equal(a, data[start:start + 9])
        np.testing.assert_array_equal(b, data[start + 1:start + 10])
    ends = set()
    for _ in range(200):                                               # the last window is reachable
        xx, yy = random_windows(np.arange(12, dtype=np.uint8), rng, 4, 10)
        ends.update(yy[:, -1].tolist())
    assert ends == {10, 11}


def test_unigram_entropy_closed_forms():
    assert unigram_entropy(np.zeros(10, np.uint8)) == 0.0
    assert unigram_entropy(np.arange(256, dtype=np.uint8)) == pytest.approx(math.log(256), rel=1e-14)
    d = np.array([0, 0, 0, 1], np.uint8)
    assert unigram_entropy(d) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-14)
