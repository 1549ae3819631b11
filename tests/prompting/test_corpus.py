"""The generated review corpus: tokenizer, balanced few-shot splits, disjoint streams, cue sentences."""

import numpy as np
import pytest

from scratch_transformers.prompting import corpus


@pytest.fixture(scope="module")
def tok():
    return corpus.Tokenizer.build()


def test_tokenizer_round_trip_and_specials(tok):
    text = "the soup was bland . all in all , it was terrible ."
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("zzz")[0] == corpus.UNK
    assert tok.words[: len(corpus.SPECIALS)] == corpus.SPECIALS
    for w in corpus.LABEL_WORDS:               # single-token label words
        assert len(tok.encode(w)) == 1 and tok.encode(w)[0] >= len(corpus.SPECIALS)


@pytest.mark.parametrize("n", [10, 50, 100, 7])
def test_train_split_is_as_balanced_as_possible(n, tok, rng):
    task = corpus.make_task(rng, tok, n_train=n, n_unlabelled=5, n_test=5)
    counts = np.bincount(task.train.labels, minlength=3)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_splits_come_from_separate_streams_and_are_reproducible(tok):
    a = corpus.make_task(np.random.default_rng(3), tok, n_train=9, n_unlabelled=20, n_test=20)
    b = corpus.make_task(np.random.default_rng(3), tok, n_train=9, n_unlabelled=20, n_test=20)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert not np.array_equal(a.unlabelled.ids[:9], a.train.ids)


def test_task_reviews_have_no_cue_sentence_and_pretraining_text_has_them(tok, rng):
    cue_marks = {tok.id("summary"), tok.id("just")}
    task = corpus.make_task(rng, tok, n_train=30, n_unlabelled=200, n_test=10)
    assert not np.isin(task.unlabelled.ids, list(cue_marks)).any()
    ids, lengths = corpus.pretraining_corpus(rng, tok, 500, p_cue=0.8)
    has_cue = np.array([("all in all" in tok.decode(r)) or np.isin(r, list(cue_marks)).any() for r in ids])
    assert 0.7 < has_cue.mean() < 0.9
    assert np.all(lengths <= ids.shape[1]) and np.all(ids[np.arange(500), lengths - 1] != corpus.PAD)


def test_cue_word_follows_the_latent_rating(tok, rng):
    for label in range(3):
        words = [corpus.sample_cue(rng, label)[0] for _ in range(200)]
        found = [w for cue in words for w in cue if any(w in c for c in corpus.CUE_WORDS)]
        assert all(w in corpus.CUE_WORDS[label] for w in found)
        assert found.count(corpus.LABEL_WORDS[label]) > 0.45 * len(found)


def test_bad_arguments_are_rejected(tok, rng):
    with pytest.raises(ValueError, match="n_test"):
        corpus.make_task(rng, tok, n_train=3, n_unlabelled=1, n_test=0)
    with pytest.raises(ValueError, match="p_cue"):
        corpus.pretraining_corpus(rng, tok, 5, p_cue=1.5)
    with pytest.raises(ValueError, match="word"):
        tok.id("zzz")
