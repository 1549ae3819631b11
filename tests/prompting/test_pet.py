"""PET's pieces: patterns, label scores, the PET loss (with the auxiliary MLM term), ensemble, distillation, iPET sets."""

import numpy as np
import pytest

from scratch_transformers.core.functional import log_softmax, softmax
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.prompting import corpus, ipet, pet

TOL = 1e-7  # gradient checks: float64 central differences, max relative error


@pytest.fixture(scope="module")
def tok():
    return corpus.Tokenizer.build()


def test_label_scores_equal_a_direct_gather_of_the_mlm_logits(rng):
    logits = rng.standard_normal((4, 11))
    v = np.array([7, 2, 9])
    s = pet.label_scores(logits, v)
    for i in range(4):
        for l, tokid in enumerate(v):
            assert s[i, l] == logits[i, tokid]


def test_q_equals_the_full_vocabulary_distribution_renormalised_over_the_verbaliser(rng):
    logits = rng.standard_normal((5, 13)) * 3
    v = np.array([1, 4, 12])
    q = softmax(pet.label_scores(logits, v), axis=-1)
    p_full = softmax(logits, axis=-1)[:, v]
    np.testing.assert_allclose(q, p_full / p_full.sum(axis=1, keepdims=True), rtol=1e-13)


def test_pet_loss_without_mlm_is_the_mean_cross_entropy_of_q(rng):
    logits = rng.standard_normal((6, 9))
    v, y = np.array([3, 0, 8]), np.array([0, 1, 2, 2, 1, 0])
    loss, _ = pet.pet_loss_forward(logits, y, v, alpha=0.0)
    want = -np.mean([np.log(softmax(logits[i, v])[y[i]]) for i in range(6)])
    assert abs(loss - want) < 1e-13


def test_pet_loss_mixes_ce_and_mlm_with_the_papers_alpha(rng):
    logits, mlm = rng.standard_normal((3, 6)), rng.standard_normal((2, 5, 6))
    v, y = np.array([1, 2, 5]), np.array([2, 0, 1])
    t = np.full((2, 5), pet.IGNORE)
    t[0, 2], t[1, 4] = 4, 0
    alpha = 1e-4
    loss, _ = pet.pet_loss_forward(logits, y, v, mlm, t, alpha=alpha)
    ce, _ = pet.pet_loss_forward(logits, y, v, alpha=0.0)
    lp = log_softmax(mlm, axis=-1)
    mlm_loss = -(lp[0, 2, 4] + lp[1, 4, 0]) / 2
    assert abs(loss - ((1 - alpha) * ce + alpha * mlm_loss)) < 1e-13


def test_pet_loss_gradcheck_with_auxiliary_term(rng):
    def fwd(mask_logits, mlm_logits):
        loss, cache = pet.pet_loss_forward(mask_logits, y, v, mlm_logits, t, alpha=0.25)
        return np.asarray(loss), cache

    v, y = np.array([4, 0, 2, 6]), np.array([3, 0, 1])
    t = np.full((2, 3), pet.IGNORE)
    t[0, 0], t[1, 1], t[1, 2] = 1, 6, 6
    res = gradcheck(fwd, pet.pet_loss_backward,
                    {"mask_logits": rng.standard_normal((3, 8)), "mlm_logits": rng.standard_normal((2, 3, 8))},
                    tol=TOL, rng=rng)
    assert res.passed, str(res)


def test_pet_loss_gradient_is_zero_outside_the_verbaliser_columns(rng):
    v = np.array([1, 3])
    _, cache = pet.pet_loss_forward(rng.standard_normal((4, 6)), np.array([0, 1, 1, 0]), v, alpha=0.0)
    dmask, dmlm = pet.pet_loss_backward(1.0, cache)
    assert dmlm is None
    other = np.setdiff1d(np.arange(6), v)
    assert np.all(dmask[:, other] == 0)
    np.testing.assert_allclose(dmask.sum(axis=1), 0.0, atol=1e-15)   # softmax gradient rows sum to 0


def test_scores_shifted_by_a_per_example_constant_leave_q_and_soft_labels_unchanged(rng):
    s = rng.standard_normal((3, 5, 4))
    shifted = s + rng.standard_normal((3, 5, 1)) * 10
    for a, b in zip(s, shifted):
        np.testing.assert_allclose(softmax(a, -1), softmax(b, -1), rtol=1e-12)
    w = np.array([0.5, 0.9, 0.7])
    np.testing.assert_allclose(pet.soft_labels(pet.ensemble_scores(s, w)),
                               pet.soft_labels(pet.ensemble_scores(shifted, w)), rtol=1e-11)


def test_ensemble_is_the_weighted_mean_and_soft_labels_sum_to_one(rng):
    s = rng.standard_normal((3, 7, 4))
    w = np.array([0.2, 0.5, 0.3])
    e = pet.ensemble_scores(s, w)
    np.testing.assert_allclose(e, (0.2 * s[0] + 0.5 * s[1] + 0.3 * s[2]) / 1.0, rtol=1e-13)
    np.testing.assert_allclose(pet.ensemble_scores(s), s.mean(axis=0), rtol=1e-13)
    q = pet.soft_labels(e, temperature=2.0)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(q, softmax(e / 2.0, axis=-1), rtol=1e-14)


def test_distillation_loss_is_t_squared_kl_and_its_gradcheck(rng):
    z = rng.standard_normal((5, 3))
    q = softmax(rng.standard_normal((5, 3)), -1)
    loss, _ = pet.distillation_loss_forward(z, q, temperature=2.0)
    p = softmax(z / 2.0, -1)
    assert abs(loss - 4.0 * np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1))) < 1e-13

    def fwd(student_logits):
        l, c = pet.distillation_loss_forward(student_logits, q, temperature=2.0)
        return np.asarray(l), c
    res = gradcheck(fwd, pet.distillation_loss_backward, {"student_logits": z}, tol=TOL, rng=rng)
    assert res.passed, str(res)


def test_distillation_loss_with_one_hot_targets_has_no_nan(rng):
    q = np.eye(3)[[0, 2, 1]]
    loss, cache = pet.distillation_loss_forward(rng.standard_normal((3, 3)), q)
    assert np.isfinite(loss) and np.all(np.isfinite(pet.distillation_loss_backward(1.0, cache)))


@pytest.mark.parametrize("bad, match", [
    (dict(labels=np.array([0, 3])), "labels"),
    (dict(verbaliser=np.array([0, 9])), "verbaliser"),
    (dict(alpha=0.5), "alpha"),
    (dict(mask_logits=np.zeros((2, 6), dtype=np.int64)), "mask_logits"),
])
def test_pet_loss_rejects_bad_inputs(bad, match):
    args = dict(mask_logits=np.zeros((2, 6)), labels=np.array([0, 2]), verbaliser=np.array([1, 2, 3]), alpha=0.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        pet.pet_loss_forward(args["mask_logits"], args["labels"], args["verbaliser"], alpha=args["alpha"])


def test_backwards_reject_a_foreign_cache(rng):
    _, dcache = pet.distillation_loss_forward(rng.standard_normal((2, 3)), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="cache"):
        pet.pet_loss_backward(1.0, dcache)
    _, pcache = pet.pet_loss_forward(rng.standard_normal((2, 4)), np.array([0, 1]), np.array([0, 1]), alpha=0.0)
    with pytest.raises(ValueError, match="cache"):
        pet.distillation_loss_backward(1.0, pcache)


def test_nan_logits_propagate_to_the_loss(rng):
    logits = rng.standard_normal((2, 5))
    logits[1, 3] = np.nan
    loss, _ = pet.pet_loss_forward(logits, np.array([0, 1]), np.array([3, 4]), alpha=0.0)
    assert np.isnan(loss)


def test_apply_pattern_places_one_mask_and_truncates_x_before_the_pattern(tok):
    data = corpus.LabelledSet(np.array([tok.encode("the soup was bland and the waiter was rude .")]),
                              np.array([10]), np.array([0]))
    pvp = pet.make_pvp("after", "{x} all in all , it was [MASK] .", corpus.LABEL_WORDS, tok)
    out = pet.apply_pattern(data, pvp, tok, max_len=40)
    assert out.ids[0, 0] == corpus.CLS and out.ids[0, out.mask_pos[0]] == corpus.MASK
    assert tok.decode(out.ids[0]) == "[CLS] the soup was bland and the waiter was rude . all in all , it was [MASK] ."
    short = pet.apply_pattern(data, pvp, tok, max_len=14)        # 1 + 8 pattern tokens: x cut to 5 words
    assert np.sum(short.ids[0] == corpus.MASK) == 1
    assert tok.decode(short.ids[0]) == "[CLS] the soup was bland and all in all , it was [MASK] ."
    before = pet.make_pvp("before", "just [MASK] ! {x}", corpus.LABEL_WORDS, tok)
    assert pet.apply_pattern(data, before, tok, 40).mask_pos[0] == 2


def test_make_pvp_rejects_bad_patterns_and_verbalisers(tok):
    with pytest.raises(ValueError, match="template"):
        pet.make_pvp("x", "{x} it was .", corpus.LABEL_WORDS, tok)
    with pytest.raises(ValueError, match="label_words"):
        pet.make_pvp("x", "{x} it was [MASK] .", ("great", "great", "okay"), tok)
    with pytest.raises(ValueError, match="word"):
        pet.make_pvp("x", "{x} it was [MASK] .", ("great", "zzz", "okay"), tok)


def test_ipet_generation_count_and_label_counts():
    assert [ipet.n_generations(t) for t in (10, 50, 100, 1000)] == [3, 2, 2, 0]
    labels = np.array([0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(ipet.label_counts(labels, 3, 1), [10, 5, 15])
    np.testing.assert_array_equal(ipet.label_counts(labels, 3, 2), [50, 25, 75])
    np.testing.assert_array_equal(ipet.label_counts(np.array([], dtype=np.int64), 3, 1), [3, 3, 3])


def test_ipet_teachers_exclude_the_student_and_enlarged_set_has_the_right_counts(rng, tok):
    for student in range(4):
        t = ipet.choose_teachers(rng, 9, student)
        assert student not in t and len(t) == 2 and len(set(t)) == 2
    splits = corpus.make_task(rng, tok, n_train=6, n_unlabelled=60, n_test=3)
    probs = softmax(rng.standard_normal((60, 3)) * 2, -1)
    counts = ipet.label_counts(splits.train.labels, 3, 1)
    big = ipet.enlarge_training_set(rng, splits.train, splits.unlabelled, probs, counts)
    np.testing.assert_array_equal(np.bincount(big.labels, minlength=3), counts)
    np.testing.assert_array_equal(big.ids[:6], splits.train.ids)     # T itself is kept
    extra_rows = big.ids[6:]
    argmax = np.argmax(probs, 1)
    for row, label in zip(extra_rows, big.labels[6:]):       # each added example carries the ensemble's argmax
        i = int(np.flatnonzero(np.all(splits.unlabelled.ids == row, axis=1))[0])
        assert argmax[i] == label or np.sum(argmax == label) == 0
