"""visible_mask validates what it is given (issue 17: an integer padding mask was inverted bitwise,
~1 = -2 and ~0 = -1 are both truthy, so padded keys stayed visible)."""

import numpy as np
import pytest

from scratch_transformers.attention.reference import visible_mask


def test_integer_padding_mask_is_rejected():
    with pytest.raises(ValueError, match="key_padding_mask: expected a boolean array"):
        visible_mask(2, 3, causal=False, key_padding_mask=np.array([[0, 0, 1]]))


def test_bool_padding_mask_hides_padded_keys():
    vis = visible_mask(2, 3, causal=False, key_padding_mask=np.array([[False, False, True], [True, False, False]]))
    assert vis.shape == (2, 1, 2, 3) and vis.dtype == bool
    np.testing.assert_array_equal(vis[:, 0, 0], [[True, True, False], [False, True, True]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_q=2, n_k=3, causal=False, key_padding_mask=np.zeros((1, 4), bool)), "key_padding_mask: expected shape"),
    (dict(n_q=0, n_k=3, causal=False), "n_q"),
    (dict(n_q=2, n_k=2.0, causal=False), "n_k"),
    (dict(n_q=2, n_k=3, causal=True, causal_alignment="top"), "causal_alignment"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visible_mask(**kwargs)


@pytest.mark.parametrize("alignment,shift", [("top_left", 0), ("bottom_right", 2)])
def test_causal_alignments(alignment, shift):
    vis = visible_mask(3, 5, causal=True, causal_alignment=alignment)[0, 0]
    i, j = np.indices((3, 5))
    np.testing.assert_array_equal(vis, j <= i + shift)
