"""exercise list | start | check: every registered pair is an exercise, the library's own backward passes its
exercise, stubs are complete and never overwrite, unusable files get a message instead of a traceback, and the
kernel exercises (FA-2 forward loop, selective scan recurrence) pass when filled in and fail when not."""

import io

import pytest

from scratch_transformers.__main__ import main
from scratch_transformers.core.registry import all_ops
from scratch_transformers.exercises import Attempt, catalog, check, find
from scratch_transformers.exercises.kernels import KERNELS, stub_text


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_list_covers_every_registered_pair(capsys):
    code, out = run(["exercise", "list"], capsys)
    assert code == 0
    ops = all_ops()
    assert len(catalog()) == len(ops)
    for op in ops:
        assert f"  {op.name} " in out, op.name
    for name in KERNELS:
        assert name in out
    assert "derivations/core.md#linear" in out          # the section that derives linear_backward
    assert find("mamba.selective_scan(plain)").derivation.anchor == "derivations/mamba.md#adjoint"   # {#adjoint}
    assert "core (" in out and "reformer (" in out       # grouped by method


@pytest.mark.parametrize("ex", catalog(), ids=lambda ex: ex.name)
def test_library_backward_passes_its_own_exercise(ex):
    buf = io.StringIO()
    ok = check(Attempt(ex, ex.backward), hard=False, entries=2, out=buf)
    assert ok, buf.getvalue()


def test_library_backward_passes_the_hard_cases_of_core_ops():
    for name in ("core.linear", "core.layer_norm", "core.causal_conv1d", "core.softmax_masked",
                 "attention_reference", "core.cross_entropy_mean"):
        ex = find(name)
        buf = io.StringIO()
        assert check(Attempt(ex, ex.backward), hard=True, entries=4, out=buf), buf.getvalue()
        assert buf.getvalue().count("[pass]") >= 4          # sample + 2 seeds + hard/mask cases


def test_start_writes_a_stub_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out = run(["exercise", "start", "core.layer_norm"], capsys)
    assert code == 0
    path = tmp_path / "exercise_core_layer_norm.py"
    text = path.read_text()
    assert "def layer_norm_backward(dy, cache" in text                 # the library's signature
    assert "x_hat" in text and "rstd" in text and "(2, 3, 6)" in text   # cache fields, sample shapes
    assert "derivations/core.md#layer-norm" in text                   # the derivation section
    assert "import layer_norm_forward" in text                         # the forward, re-exported
    assert "raise NotImplementedError" in text
    compile(text, str(path), "exec")
    code, out = run(["exercise", "start", "core.layer_norm"], capsys)
    assert code == 2 and "not overwriting" in out
    assert path.read_text() == text
    code, out = run(["exercise", "check", str(path)], capsys)
    assert code == 1 and "NotImplementedError" in out and "Traceback" not in out


def test_a_filled_stub_passes_with_exit_status_0(tmp_path, capsys):
    path = tmp_path / "ln.py"
    assert run(["exercise", "start", "core.layer_norm", "--out", str(path)], capsys)[0] == 0
    text = path.read_text().replace(
        "    raise NotImplementedError('layer_norm_backward: your code here')",
        "    x_hat, rstd, weight = cache\n"
        "    axes = tuple(range(dy.ndim - 1))\n"
        "    g = dy * weight\n"
        "    dx = rstd * (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True))\n"
        "    return dx, (dy * x_hat).sum(axes), dy.sum(axes)")
    path.write_text(text)
    code, out = run(["exercise", "check", str(path)], capsys)
    assert code == 0, out
    assert "odd sizes" in out and "length 1" in out and "PASS" in out


def test_unknown_exercise_fails_with_suggestions(capsys):
    code, out = run(["exercise", "start", "layer_nor"], capsys)
    assert code == 2 and "core.layer_norm" in out


BAD_FILES = {
    "syntax": ("EXERCISE = 'core.linear'\ndef linear_backward(dy, cache)\n    return 1\n", "syntax error", 2),
    "import": ("import no_such_module_here\nEXERCISE = 'core.linear'\n", "ModuleNotFoundError", 2),
    "signature": ("EXERCISE = 'core.linear'\ndef linear_backward(dy):\n    return dy\n", "wrong signature", 2),
    "missing": ("EXERCISE = 'core.linear'\ndef linear_bwd(dy, cache):\n    return dy\n", "defines no function", 2),
    "no_name": ("def linear_backward(dy, cache):\n    return dy\n", "EXERCISE", 2),
    "count": ("EXERCISE = 'core.linear'\ndef linear_backward(dy, cache):\n"
              "    x, w, _ = cache\n    return dy @ w.T, x.reshape(-1, 4).T @ dy.reshape(-1, 5)\n",
              "expected 3 values", 1),
    "shape": ("EXERCISE = 'core.linear'\ndef linear_backward(dy, cache):\n"
              "    x, w, _ = cache\n    return dy @ w.T, w, dy.sum(0)\n",
              "result[2]: expected shape (5,), got shape (3, 5) (the gradient of 'b')", 1),
    "raises": ("EXERCISE = 'core.linear'\ndef linear_backward(dy, cache):\n    x, w, _ = cache\n"
               "    return dy @ w, 0, 0\n", "line 4 of your file", 1),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unusable_files_get_a_message_not_a_traceback(kind, tmp_path, capsys):
    text, message, status = BAD_FILES[kind]
    path = tmp_path / f"{kind}.py"
    path.write_text(text)
    code, out = run(["exercise", "check", str(path)], capsys)
    assert code == status, out
    assert message in out, out
    assert "Traceback" not in out


FLASH_STEP = """m_new = np.maximum(m, s.max(axis=1))
shift = np.where(np.isfinite(m_new), m_new, 0.0)
p = np.exp(s - shift[:, None])
alpha = np.exp(m - shift)
l = alpha * l + p.sum(axis=1)
acc = alpha[:, None] * acc + p @ vj
m = m_new"""
FLASH_FINAL = """seen = l > 0
safe = np.where(seen, l, 1.0)
out[b, h, r0:r0 + br] = np.where(seen[:, None], acc / safe[:, None], 0.0)
lse[b, h, r0:r0 + br] = np.where(seen, m + np.log(safe), -np.inf)"""
SCAN_STEP = """a_bar = np.exp(dt[:, t, :, None] * A)
h = a_bar * h + (dt[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
y[:, t] = np.einsum("bdn,bn->bd", h, C[:, t])
if D is not None:
    y[:, t] += D * u[:, t]"""


def _indent(code, n):
    return "\n".join(" " * n + ln for ln in code.splitlines())


def _filled(name, step, final=None):
    text = stub_text(name, "x.py")
    lines = text.splitlines()
    out = []
    for ln in lines:
        if "raise NotImplementedError" in ln:
            n = len(ln) - len(ln.lstrip())
            code = step if ("9-10" in ln or "recurrence" in ln) else final
            out.append(_indent(code, n))
        else:
            out.append(ln)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name,step,final", [("flash_forward", FLASH_STEP, FLASH_FINAL),
                                             ("selective_scan_forward", SCAN_STEP, None)])
def test_kernel_exercises_pass_when_filled_and_fail_when_not(name, step, final, tmp_path, capsys):
    stub = tmp_path / "stub.py"
    assert run(["exercise", "start", name, "--out", str(stub)], capsys)[0] == 0
    code, out = run(["exercise", "check", str(stub)], capsys)
    assert code == 1 and "NotImplementedError" in out
    good = tmp_path / "good.py"
    good.write_text(_filled(name, step, final))
    code, out = run(["exercise", "check", str(good)], capsys)
    assert code == 0, out
    assert "length 1" in out and "FAIL" not in out


def test_kernel_mistakes_are_caught(tmp_path, capsys):
    no_rescale = tmp_path / "flash_bug.py"        # forgets to rescale the accumulator by exp(m_old - m_new)
    no_rescale.write_text(_filled("flash_forward", FLASH_STEP.replace("alpha[:, None] * acc", "acc"), FLASH_FINAL))
    code, out = run(["exercise", "check", str(no_rescale)], capsys)
    assert code == 1
    assert "[pass] length 1" in out               # one key block: nothing to rescale
    assert "[FAIL] sample inputs" in out and "diagnosis" in out
    no_skip = tmp_path / "scan_bug.py"            # forgets the skip connection D u
    no_skip.write_text(_filled("selective_scan_forward", SCAN_STEP.replace("+= D * u[:, t]", "+= 0.0")))
    code, out = run(["exercise", "check", str(no_skip)], capsys)
    assert code == 1
    assert "[pass] sample inputs" in out           # no D in the sample
    assert "[FAIL] skip D, gate z, delta_bias, softplus, h0" in out


@pytest.mark.parametrize("ex", catalog(), ids=lambda ex: ex.name)
def test_every_stub_imports_and_has_the_library_signature(ex, tmp_path):
    import inspect

    from scratch_transformers.exercises.stub import render

    text = render(ex, "f.py")
    space = {}
    exec(compile(text, ex.name, "exec"), space)
    fn = space[ex.backward.__name__]
    assert list(inspect.signature(fn).parameters) == list(inspect.signature(ex.backward).parameters)
    assert space["EXERCISE"] == ex.name
    if ex.forward is not None:
        assert space[ex.forward.__name__] is ex.forward          # the library forward, re-exported
    with pytest.raises(NotImplementedError):
        fn(*[None] * len([p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]))


def test_a_learners_own_forward_is_used(tmp_path, capsys):
    path = tmp_path / "own.py"
    path.write_text("""import numpy as np
EXERCISE = 'core.linear'

def linear_forward(x, w, b=None):
    y = x @ w + (0 if b is None else b)
    return y, (x, w, b is not None)

def linear_backward(dy, cache):
    x, w, has_b = cache
    rows = tuple(range(dy.ndim - 1))
    return dy @ w.T, x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1]), dy.sum(rows) if has_b else None
""")
    code, out = run(["exercise", "check", str(path)], capsys)
    assert code == 0, out
    path.write_text(path.read_text().replace("y = x @ w +", "y = 2 * x @ w +"))   # forward wrong: said so
    code, out = run(["exercise", "check", str(path)], capsys)
    assert code == 1 and "your forward's output differs" in out


def test_scan_hard_cases_run_and_pass_with_the_library():
    ex = find("mamba.selective_scan(plain)")
    buf = io.StringIO()
    assert check(Attempt(ex, ex.backward), hard=True, entries=3, out=buf), buf.getvalue()
    assert "[pass] length 1" in buf.getvalue() and "[pass] odd sizes" in buf.getvalue()
