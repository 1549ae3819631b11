"""Deliberately wrong backwards fail `exercise check` with the right input named and the right diagnosis.

Each learner file below is what a student might write: a sign flipped, a factor of 2, a transposed weight
gradient, a dropped term, a mask ignored, a boundary missed. The check must name the input whose gradient is
wrong, leave the right ones passing, and say what kind of mistake it looks like.
"""

import re

import pytest

from scratch_transformers.exercises.checker import check_file

LIB = {
    "linear": "from scratch_transformers.core.layers import linear_backward as lib\n",
    "softmax": "from scratch_transformers.core.functional import softmax_backward as lib\n",
    "sigmoid": "from scratch_transformers.core.functional import sigmoid_backward as lib\n",
    "conv": "from scratch_transformers.core.layers import causal_conv1d_backward as lib\n",
    "flash": "from scratch_transformers.attention.flash import flash_attention_backward as lib\n",
    "mha": "from scratch_transformers.attention.multihead import mha_backward as lib\n",
    "scan": "from scratch_transformers.mamba.scan import selective_scan_backward as lib\n",
    "shared_qk": "from scratch_transformers.reformer.lsh import shared_qk_attention_backward as lib\n",
    "pet": "from scratch_transformers.prompting.pet import pet_loss_backward as lib\n",
}

# exercise, learner code, wrong input(s), diagnosis (regex), inputs that must pass, hard cases too
CASES = {
    "linear_sign": ("core.linear", LIB["linear"] + """
def linear_backward(dy, cache):
    dx, dw, db = lib(dy, cache)
    return -dx, dw, db
""", ["x"], r"sign flipped", ["w", "b"], False),
    "linear_factor2": ("core.linear", LIB["linear"] + """
def linear_backward(dy, cache):
    dx, dw, db = lib(dy, cache)
    return dx, 2 * dw, db
""", ["w"], r"constant factor x2\b", ["x", "b"], False),
    "linear_transposed": ("core.linear", LIB["linear"] + """
def linear_backward(dy, cache):
    dx, dw, db = lib(dy, cache)
    return dx, dw.T, db
""", ["w"], r"transposed", [], False),
    "mha_transposed_square_weight": ("mha_reference", LIB["mha"] + """
def mha_backward(dy, cache):
    dx, grads = lib(dy, cache)
    grads = dict(grads)
    grads["attn.wq"] = grads["attn.wq"].T
    return dx, grads
""", ["attn.wq"], r"transposed", ["x", "attn.wk", "attn.wv", "attn.wo", "attn.bo"], False),
    "layer_norm_dropped_term": ("core.layer_norm", """
def layer_norm_backward(dy, cache):
    x_hat, rstd, weight = cache
    g = dy * weight
    dx = rstd * (g - g.mean(-1, keepdims=True))            # forgot - x_hat * mean(g * x_hat)
    return dx, (dy * x_hat).sum((0, 1)), dy.sum((0, 1))
""", ["x"], r"term missing", ["weight", "bias"], False),
    "attention_dropped_D": ("attention_reference", """
import numpy as np

def attention_backward(dout, cache):
    p_used = cache.p if cache.z is None else cache.p * cache.z
    dv = p_used.swapaxes(-1, -2) @ dout
    dp = (dout @ cache.v.swapaxes(-1, -2)) * (1 if cache.z is None else cache.z)
    ds = cache.p * dp                                        # forgot the - D_i term
    dq = cache.scale * (ds @ cache.k)
    dk = cache.scale * (ds.swapaxes(-1, -2) @ cache.q)
    dbias = ds.sum(axis=(0, 2))[:, None, :]                  # bias (H, 1, Nk) of the sample
    return dq, dk, dv, dbias
""", ["q", "k", "bias"], r"term missing", ["v"], False),
    "dropout_mask_ignored": ("core.dropout", """
def dropout_backward(dy, cache):
    mask, scale = cache
    return dy * scale                                        # forgot the keep-mask
""", ["x"], r"exactly 0 .*mask", [], False),
    "cross_entropy_ignore_index_ignored": ("core.cross_entropy_mean", """
import numpy as np

def cross_entropy_backward(dloss, cache):
    p, targets, valid, denom = cache
    d = p.copy()
    safe = np.where(valid, targets, 0)
    np.put_along_axis(d, safe[..., None], np.take_along_axis(d, safe[..., None], -1) - 1, -1)
    return d * (float(dloss) / denom)                         # forgot: ignored rows get no gradient
""", ["logits"], r"exactly 0 .*mask", [], False),
    "conv_last_step_missed": ("core.causal_conv1d", LIB["conv"] + """
def causal_conv1d_backward(dy, cache):
    dx, dw, db = lib(dy, cache)
    dx = dx.copy()
    dx[:, -1, :] = 0.0                                       # the loop stopped one step early
    return dx, dw, db
""", ["x"], r"last index of axis 1", ["w", "b"], False),
    "softmax_half": ("core.softmax", LIB["softmax"] + """
def softmax_backward(dy, cache):
    return 0.5 * lib(dy, cache)
""", ["x"], r"constant factor x0\.5", [], False),
    "sigmoid_sign": ("core.sigmoid", LIB["sigmoid"] + """
def sigmoid_backward(dy, cache):
    return -lib(dy, cache)
""", ["x"], r"sign flipped", [], False),
    "flash_sign_dq": ("flash_attention", LIB["flash"] + """
def flash_attention_backward(dout, cache):
    dq, dk, dv, dbias = lib(dout, cache)
    return -dq, dk, dv, dbias
""", ["q"], r"sign flipped", ["k", "v", "bias"], False),
    "scan_half_dA": ("mamba.selective_scan(plain)", LIB["scan"] + """
def selective_scan_backward(dy, cache):
    g = list(lib(dy, cache))
    g[2] = 0.5 * g[2]
    return tuple(g)
""", ["A"], r"constant factor x0\.5", ["u", "delta", "B", "C"], False),
    "shared_qk_sign_dv": ("reformer.shared_qk_attention", LIB["shared_qk"] + """
def shared_qk_attention_backward(dout, cache):
    dqk, dv = lib(dout, cache)
    return dqk, -dv
""", ["v"], r"sign flipped", ["qk"], False),
    "pet_factor2": ("prompting.pet_loss", LIB["pet"] + """
def pet_loss_backward(dloss, cache):
    dmask, dmlm = lib(dloss, cache)
    return 2 * dmask, dmlm
""", ["mask_logits"], r"constant factor x2\b", ["mlm_logits"], False),
    "layer_norm_fixed_width": ("core.layer_norm", """
def layer_norm_backward(dy, cache):
    x_hat, rstd, weight = cache
    g = dy * weight
    mean = lambda a: a.sum(-1, keepdims=True) / 6            # the sample's width, hard-coded
    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    return dx, (dy * x_hat).sum((0, 1)), dy.sum((0, 1))
""", ["x"], r"constant factor|term missing|wrong", ["weight", "bias"], True),
}


def _rows(out):
    """{(case label, input name): (result, following diagnosis)} from the report."""
    rows, label, last = {}, None, None
    for line in out.splitlines():
        m = re.match(r"\[(pass|FAIL)\] (.*)", line)
        if m:
            label = m.group(2)
            continue
        m = re.match(r"  (\S+)\s+\S+\s+\S+\s+(ok|FAIL)\s", line)
        if m and label:
            last = (label, m.group(1))
            rows[last] = [m.group(2), ""]
        elif line.strip().startswith("diagnosis:") and last:
            rows[last][1] = line.strip()
    return rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_backward_is_named_and_diagnosed(case, tmp_path, capsys):
    name, code, wrong, diagnosis, right, hard = CASES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(f"EXERCISE = {name!r}\n" + code)
    status = check_file(path, hard=hard, entries=6)
    out = capsys.readouterr().out
    assert status == 1, out
    assert "Traceback" not in out
    if not right and "transposed" in diagnosis and "(the gradient of" in out:   # a shape error names the input
        assert f"(the gradient of {wrong[0]!r})" in out and re.search(diagnosis, out), out
        return
    rows = _rows(out)
    labels = {label for label, _ in rows}
    failing = {inp for (label, inp), (res, _) in rows.items() if res == "FAIL"}
    assert failing == set(wrong), out
    for inp in wrong:
        diags = [d for (label, i), (res, d) in rows.items() if i == inp and res == "FAIL"]
        assert diags and all(re.search(diagnosis, d) for d in diags), out
    for inp in right:
        assert all(rows[(label, inp)][0] == "ok" for label in labels if (label, inp) in rows), out
    if hard:   # right on the sample, wrong on the other sizes: said so
        assert "[pass] sample inputs" in out and "[FAIL] odd sizes" in out
        assert "right on some inputs, wrong on others" in out
