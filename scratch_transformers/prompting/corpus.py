"""A generated review corpus with natural cloze cues, its word-level tokenizer, and a 3-class task.

No pretrained model can be downloaded here, so the library pretrains its own masked LM on text in which
the downstream task's knowledge can be learned without labels, the way RoBERTa learned that "it was
great" follows praise (Schick & Schütze, arXiv 2001.07676, §1 and §4.1's Yelp patterns).

The grammar. A review has a latent rating c in {0: negative, 1: mixed, 2: positive}. It says three
things about the place ("the soup was bland . the waiter seemed friendly ..."). Each adjective comes from
the lexicon of class c with probability ``p_on_topic`` (0.8) and from another class's lexicon otherwise,
so a single word is weak evidence and the label is the majority. In the *pretraining* text a review is
followed with probability ``p_cue`` (0.8) by a cue sentence whose word depends on c: "all in all , it
was great .", "just terrible !", "in summary , the place is okay ." The cue words are drawn from three small per-class sets (``CUE_WORDS``), the
label words of the verbaliser being the most frequent ones. The latent rating itself is never written
anywhere: a model pretrained on this text sees words, never labels.

The task. Reviews *without* cue sentences, labelled by c, split into a labelled train set T, an unlabelled
set D and a test set. Every split is drawn from its own rng stream, so the pretraining text, D and the
test set are disjoint samples from the same grammar.

Glossary (PET §3 symbols): x = a review's word ids; the pattern P(x) (``prompting.pet``) adds a cue
sentence with [MASK] in the cue slot; the verbaliser v maps c to a label word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ..core import validate

SPECIALS = ("[PAD]", "[MASK]", "[UNK]", "[CLS]", "[SEP]")
PAD, MASK, UNK, CLS, SEP = range(len(SPECIALS))
LABEL_NAMES = ("negative", "mixed", "positive")

ADJECTIVES = (
    # class 0: negative (each lexicon also holds its class's cue words: "the soup was terrible")
    ("terrible", "bad", "poor", "bland", "rude", "awful", "dirty", "stale", "cold", "greasy", "slow", "noisy", "overpriced",
     "soggy", "burnt", "dreadful", "careless", "cramped", "sour", "gloomy", "sloppy", "tasteless", "dull"),
    # class 1: mixed / middling
    ("okay", "alright", "fine", "ordinary", "average", "plain", "standard", "typical", "simple", "acceptable", "passable", "modest",
     "uneven", "predictable", "forgettable", "so-so", "unremarkable", "middling", "moderate", "basic",
     "adequate", "mediocre", "fair"),
    # class 2: positive
    ("great", "good", "amazing", "delicious", "friendly", "excellent", "lovely", "superb", "fresh", "wonderful", "perfect", "tasty",
     "charming", "cozy", "fantastic", "attentive", "generous", "elegant", "crispy", "warm", "spotless",
     "delightful", "brilliant"),
)
NOUNS = ("food", "soup", "pasta", "pizza", "bread", "coffee", "dessert", "service", "waiter", "staff",
         "room", "table", "music", "menu", "wine", "salad", "steak", "fish", "kitchen", "view")
VERBS = ("was", "seemed", "felt", "looked", "tasted")
NEUTRAL = (
    ("we", "came", "on", "a", "{day}", "."),
    ("i", "ordered", "the", "{noun}", "."),
    ("we", "sat", "near", "the", "{place}", "."),
    ("it", "was", "our", "{nth}", "visit", "."),
)
FILL = {"day": ("monday", "tuesday", "friday", "saturday", "sunday"),
        "noun": NOUNS, "place": ("window", "door", "bar", "garden", "stairs"),
        "nth": ("first", "second", "third", "last")}
# Cue sentences of the pretraining text: a slot for a word of CUE_WORDS[c]; the first word of each
# class is the most frequent one and is the verbaliser's label word (PET §3.1's v(l)).
CUE_WORDS = (("terrible", "bad", "poor"), ("okay", "alright", "fine"), ("great", "good", "amazing"))
CUE_WORD_PROBS = (0.6, 0.25, 0.15)
CUES = (
    (("all", "in", "all", ",", "it", "was", "{cue}", "."), "after"),
    (("just", "{cue}", "!"), "after"),
    (("in", "summary", ",", "the", "place", "is", "{cue}", "."), "after"),
)
LABEL_WORDS = tuple(words[0] for words in CUE_WORDS)


def _vocabulary() -> tuple[str, ...]:
    words = set()
    for lex in ADJECTIVES:
        words.update(lex)
    words.update(NOUNS, VERBS, ("the", "and", "but", ".", ",", "!"))
    for tmpl in NEUTRAL:
        words.update(w for w in tmpl if not w.startswith("{"))
    for fill in FILL.values():
        words.update(fill)
    for tmpl, _ in CUES:
        words.update(w for w in tmpl if not w.startswith("{"))
    for cue in CUE_WORDS:
        words.update(cue)
    return SPECIALS + tuple(sorted(words))


@dataclass(frozen=True)
class Tokenizer:
    """Word-level tokenizer over the grammar's closed vocabulary; unknown words map to [UNK]."""

    words: tuple[str, ...]

    @classmethod
    def build(cls) -> "Tokenizer":
        return cls(_vocabulary())

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, text) -> np.ndarray:
        """Word ids (int64) of a string (split on spaces) or a sequence of words."""
        tokens = text.split() if isinstance(text, str) else list(text)
        index = self.index
        return np.array([index.get(w, UNK) for w in tokens], dtype=np.int64)

    def decode(self, ids) -> str:
        ids = validate.int_array(ids, "ids", ndim=1, low=0, high=self.vocab_size)
        return " ".join(self.words[i] for i in ids if i != PAD)

    def id(self, word: str) -> int:
        """The id of one word (ValueError if it is not in the vocabulary)."""
        index = self.index
        if word not in index:
            validate.fail("word", "a word of the vocabulary", repr(word))
        return index[word]


def _sample_template(rng: np.random.Generator, template: Sequence[str], cue: str | None = None) -> list[str]:
    out = []
    for w in template:
        if w == "{cue}":
            out.append(cue)
        elif w.startswith("{"):
            choices = FILL[w[1:-1]]
            out.append(choices[rng.integers(len(choices))])
        else:
            out.append(w)
    return out


def sample_review(rng: np.random.Generator, label: int, *, p_on_topic: float = 0.8, n_claims: int = 3,
                  p_neutral: float = 0.0) -> list[str]:
    """The words of one review with latent rating ``label`` (no cue sentence): ``n_claims`` claims, and
    with probability ``p_neutral`` a neutral sentence first."""
    words: list[str] = []
    if rng.random() < p_neutral:
        words += _sample_template(rng, NEUTRAL[rng.integers(len(NEUTRAL))])
    for i in range(n_claims):
        c = label if rng.random() < p_on_topic else int((label + rng.integers(1, 3)) % 3)
        lex = ADJECTIVES[c]
        claim = ["the", NOUNS[rng.integers(len(NOUNS))], VERBS[rng.integers(len(VERBS))],
                 lex[rng.integers(len(lex))]]
        if i and rng.random() < 0.5:
            words += ["and" if c == label else "but"] + claim
        else:
            words += (["."] if i else []) + claim
    return words + ["."]


def sample_cue(rng: np.random.Generator, label: int) -> tuple[list[str], str]:
    """A cue sentence for rating ``label`` and where it goes ('before' or 'after' the review)."""
    template, where = CUES[rng.integers(len(CUES))]
    cue = CUE_WORDS[label][rng.choice(len(CUE_WORD_PROBS), p=CUE_WORD_PROBS)]
    return _sample_template(rng, template, cue), where


class LabelledSet(NamedTuple):
    """Padded reviews: ids (n, max_len) int64 with PAD after the end, lengths (n,), labels (n,) (-1: unlabelled)."""

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def subset(self, idx) -> "LabelledSet":
        return LabelledSet(self.ids[idx], self.lengths[idx], self.labels[idx])

    def __len__(self) -> int:
        return len(self.labels)


def _pad(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(seqs), max_len), PAD, dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:max_len]
        ids[i, :len(s)] = s
        lengths[i] = len(s)
    return ids, lengths


class TaskSplits(NamedTuple):
    """The few-shot task: labelled train T, unlabelled D (labels kept only for diagnostics), test."""

    train: LabelledSet
    unlabelled: LabelledSet
    test: LabelledSet


def _reviews(rng, tok, n, max_len, p_on_topic, balanced=False):
    if balanced:     # n // 3 per label, the remainder to distinct random labels (PET App. C: |T| / C per label)
        counts = np.full(3, n // 3)
        counts[rng.choice(3, size=n % 3, replace=False)] += 1
        labels = np.repeat(np.arange(3), counts)
        labels = labels[rng.permutation(len(labels))]
    else:
        labels = rng.integers(0, 3, size=n)
    seqs = [tok.encode(sample_review(rng, int(c), p_on_topic=p_on_topic)) for c in labels]
    ids, lengths = _pad(seqs, max_len)
    return LabelledSet(ids, lengths, labels.astype(np.int64))


def make_task(rng: np.random.Generator, tokenizer: Tokenizer, *, n_train: int, n_unlabelled: int,
              n_test: int, max_len: int = 40, p_on_topic: float = 0.8) -> TaskSplits:
    """Train / unlabelled / test splits. The train set is as label-balanced as n_train allows (PET's T has
    |T|/C examples per label, App. C); the other splits draw labels uniformly."""
    validate.rng(rng)
    n_train = validate.integer(n_train, "n_train", low=0)
    n_unlabelled = validate.integer(n_unlabelled, "n_unlabelled", low=0)
    n_test = validate.positive_int(n_test, "n_test")
    max_len = validate.integer(max_len, "max_len", low=8)
    p_on_topic = validate.real(p_on_topic, "p_on_topic", low=1 / 3, high=1.0)
    r_train, r_unl, r_test = rng.spawn(3)
    train = _reviews(r_train, tokenizer, n_train, max_len, p_on_topic, balanced=True)
    return TaskSplits(train, _reviews(r_unl, tokenizer, n_unlabelled, max_len, p_on_topic),
                      _reviews(r_test, tokenizer, n_test, max_len, p_on_topic))


def pretraining_corpus(rng: np.random.Generator, tokenizer: Tokenizer, n: int, *, max_len: int = 48,
                       p_cue: float = 0.8, p_on_topic: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unlabelled reviews, a fraction ``p_cue`` with a cue sentence: ids (n, max_len), lengths (n,).
    The latent ratings are drawn and discarded: they never leave this function."""
    validate.rng(rng)
    n = validate.positive_int(n, "n")
    max_len = validate.integer(max_len, "max_len", low=8)
    p_cue = validate.real(p_cue, "p_cue", low=0.0, high=1.0)
    seqs = []
    for _ in range(n):
        label = int(rng.integers(3))
        words = sample_review(rng, label, p_on_topic=p_on_topic)
        if rng.random() < p_cue:
            cue, where = sample_cue(rng, label)
            words = cue + words if where == "before" else words + cue
        seqs.append(tokenizer.encode(words))
    return _pad(seqs, max_len)


def grammar_size() -> dict[str, int]:
    """Sizes worth stating in a report: vocabulary, lexicons, templates."""
    return {"vocabulary": len(_vocabulary()), "adjectives_per_class": len(ADJECTIVES[0]), "nouns": len(NOUNS),
            "verbs": len(VERBS), "neutral_templates": len(NEUTRAL), "cue_templates": len(CUES),
            "cue_words_per_class": len(CUE_WORDS[0])}
