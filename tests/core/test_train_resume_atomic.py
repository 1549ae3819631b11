"""A resume that fails changes nothing (issue 17: a missing or mis-shaped optimizer state raised after the
caller's params had been overwritten from the checkpoint and the rng advanced to its state)."""

import numpy as np
import pytest

from scratch_transformers.core.optim import SGD, AdamW
from scratch_transformers.core.train import train


def _loss_and_grads(params, batch, rng):
    noise = rng.standard_normal(params["w"].shape)
    return float(np.sum(params["w"] ** 2)), {"w": 2 * params["w"] + 0.01 * noise, "b": np.ones_like(params["b"])}


def _params():
    return {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3)}


def _train(params, optimizer, rng, path, steps, resume=False):
    return train(_loss_and_grads, params, optimizer, lambda r, s: None, steps=steps, rng=rng,
                 checkpoint_path=path, resume=resume, progress=False)


def _checkpoint(tmp_path, steps=3):
    path = tmp_path / "ck.npz"
    _train(_params(), AdamW(lr=0.1), np.random.default_rng(1), path, steps)
    return path


def _edit(path, fn):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    fn(arrays)
    np.savez(path, **arrays)


def _plain(state):
    """A bit-generator state with arrays as lists (MT19937 keeps its key in an array)."""
    if isinstance(state, dict):
        return {k: _plain(v) for k, v in state.items()}
    return state.tolist() if isinstance(state, np.ndarray) else state


def _assert_untouched(params, optimizer, rng, before):
    p0, opt0, rng0 = before
    for k in p0:
        np.testing.assert_array_equal(params[k], p0[k])
    assert _plain(rng.bit_generator.state) == _plain(rng0)
    st = optimizer.state_dict()
    assert sorted(st) == sorted(opt0)
    for k in st:
        np.testing.assert_array_equal(st[k], opt0[k])


def _resume_fails(path, optimizer=None, rng=None, steps=6, match=None):
    params = _params()
    optimizer = AdamW(lr=0.1) if optimizer is None else optimizer
    rng = np.random.default_rng(7) if rng is None else rng
    before = ({k: v.copy() for k, v in params.items()}, optimizer.state_dict(), rng.bit_generator.state)
    with pytest.raises(ValueError, match=match):
        _train(params, optimizer, rng, path, steps, resume=True)
    _assert_untouched(params, optimizer, rng, before)


def test_missing_optimizer_state_changes_nothing(tmp_path):
    path = _checkpoint(tmp_path)
    _edit(path, lambda a: a.pop("optim/exp_avg_sq/w"))
    _resume_fails(path, match="optim")


def test_misshaped_optimizer_state_changes_nothing(tmp_path):
    path = _checkpoint(tmp_path)
    _edit(path, lambda a: a.update({"optim/exp_avg/w": np.zeros((3, 2))}))
    _resume_fails(path, match="exp_avg/w")


def test_optimizer_of_another_kind_changes_nothing(tmp_path):
    _resume_fails(_checkpoint(tmp_path), optimizer=SGD(lr=0.1), match="AdamW|SGD|type")


def test_checkpoint_past_the_requested_steps_changes_nothing(tmp_path):
    _resume_fails(_checkpoint(tmp_path, steps=5), steps=4, match="steps")


def test_rng_of_another_bit_generator_changes_nothing(tmp_path):
    rng = np.random.Generator(np.random.MT19937(3))
    _resume_fails(_checkpoint(tmp_path), rng=rng, match="rng")


def test_a_good_resume_still_restores_everything(tmp_path):
    path = _checkpoint(tmp_path, steps=3)
    params, rng = _params(), np.random.default_rng(7)
    hist = _train(params, AdamW(lr=0.1), rng, path, 6, resume=True)
    straight = _params()
    _train(straight, AdamW(lr=0.1), np.random.default_rng(1), tmp_path / "other.npz", 6)
    for k in params:
        np.testing.assert_array_equal(params[k], straight[k])
    assert hist.steps[-1] == 6

