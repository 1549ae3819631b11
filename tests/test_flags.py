"""Bool options reject anything but True/False (issue 17: delta_softplus='no' and training='y' were
taken as truthy). Every public function of the package with a bool default is found by signature;
passing "no", 1 or None for the option must raise a ValueError naming it. CALLS holds an otherwise
valid call for the functions listed by issue 17 and the core; every other one is probed with None
for its required arguments, so it must check its bool options first (``validate.flag``)."""

import importlib
import inspect

import numpy as np
import pytest

from scratch_transformers.core.registry import package_modules

P = "scratch_transformers."


def _m(name):
    return importlib.import_module(P + name)


def _qkv():
    q = np.zeros((1, 1, 2, 2))
    return q, q.copy(), q.copy()


def _transformer():
    T = _m("models.transformer")
    cfg = T.TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_ff=8, max_len=4)
    return T, cfg, T.init_params(cfg, np.random.default_rng(0))


def _mamba():
    M = _m("mamba.model")
    cfg = M.MambaConfig(vocab_size=5, d_model=4, n_layers=1, d_state=2, expand=2, d_conv=2, dt_rank=1)
    return M, cfg, M.init_params(cfg, np.random.default_rng(0))


def _scan(v):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((1, 3, 2))
    return _m("mamba.scan").selective_scan_forward(u, np.abs(u), -np.ones((2, 2)), rng.standard_normal((1, 3, 2)),
                                                   rng.standard_normal((1, 3, 2)), delta_softplus=v)


def _train(**kw):
    from scratch_transformers.core.optim import SGD
    kw = {"progress": False, **kw}
    return _m("core.train").train(lambda p, b, r: (0.0, {"w": np.zeros(2)}), {"w": np.ones(2)}, SGD(lr=0.1),
                                  lambda r, s: None, steps=1, rng=np.random.default_rng(0), **kw)


def _mha(v):
    M = _m("attention.multihead")
    return M.mha_forward(np.zeros((1, 2, 4)), M.init_mha(np.random.default_rng(0), 4, 2), n_heads=2, causal=v)


def _generate(kind, v):
    mod, cfg, params = _transformer() if kind == "transformer" else _mamba()
    return mod.generate(params, cfg, np.zeros((1, 1), np.int64), 1, rng=np.random.default_rng(0), greedy=v)


CALLS = {
    "attention.flash.flash_attention_forward": {"causal": lambda v: _m("attention.flash").flash_attention_forward(
        *_qkv(), causal=v)},
    "attention.flash_options.flash_options": {"causal": lambda v: _m("attention.flash_options").flash_options(
        *_qkv(), causal=v)},
    "attention.io_model.flash_hbm_accesses": {"causal": lambda v: _m("attention.io_model").flash_hbm_accesses(
        8, 2, block_q=2, block_k=2, causal=v)},
    "attention.io_model.simulate_flash_io": {"causal": lambda v: _m("attention.io_model").simulate_flash_io(
        np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), block_q=1, block_k=1, causal=v)},
    "attention.multihead.init_mha": {"bias": lambda v: _m("attention.multihead").init_mha(
        np.random.default_rng(0), 4, 2, bias=v)},
    "attention.multihead.mha_forward": {"causal": _mha},
    "attention.reference.attention_forward": {"causal": lambda v: _m("attention.reference").attention_forward(
        *_qkv(), causal=v)},
    "attention.reference.visible_mask": {"causal": lambda v: _m("attention.reference").visible_mask(2, 2, causal=v)},
    "core.layers.dropout_forward": {"training": lambda v: _m("core.layers").dropout_forward(
        np.zeros(3), 0.5, np.random.default_rng(0), training=v)},
    "core.train.train": {"resume": lambda v: _train(resume=v, checkpoint_path="/nonexistent/ckpt.npz"),
                         "progress": lambda v: _train(progress=v),
                         "stop_on_nonfinite": lambda v: _train(stop_on_nonfinite=v)},
    "lora.lora_scale": {"rslora": lambda v: _m("lora").lora_scale(8, 4, rslora=v)},
    "lora.lora_linear_forward": {"training": lambda v: _m("lora").lora_linear_forward(
        np.zeros((1, 3)), np.zeros((3, 2)), None, np.zeros((3, 1)), np.zeros((1, 2)), scale=1.0, training=v)},
    "mamba.block.init_mamba_block": {"selective": lambda v: _m("mamba.block").init_mamba_block(
        np.random.default_rng(0), 4, selective=v)},
    "mamba.model.generate": {"greedy": lambda v: _generate("mamba", v)},
    "mamba.scan.selective_scan_forward": {"delta_softplus": _scan},
    "mamba.scan.selective_scan_step": {"delta_softplus": lambda v: _m("mamba.scan").selective_scan_step(
        np.zeros((1, 2, 2)), np.zeros((1, 2)), np.ones((1, 2)), -np.ones((2, 2)), np.zeros((1, 2)),
        np.zeros((1, 2)), delta_softplus=v)},
    "models.transformer.forward": {"training": lambda v: (lambda T, cfg, p: T.forward(
        p, cfg, np.zeros((1, 2), np.int64), training=v))(*_transformer())},
    "models.transformer.sample_logits": {"greedy": lambda v: _m("models.transformer").sample_logits(
        np.zeros((1, 3)), np.random.default_rng(0), greedy=v)},
    "models.transformer.generate": {"greedy": lambda v: _generate("transformer", v)},
    "positional.alibi.alibi_bias": {"causal": lambda v: _m("positional.alibi").alibi_bias(2, 3, 3, causal=v)},
    "positional.scaling.alibi_interpolation_factor": {"dynamic": lambda v: _m("positional.scaling")
                                                      .alibi_interpolation_factor(8, 16, dynamic=v)},
    "positional.scaling.interpolate_alibi_slopes": {"dynamic": lambda v: _m("positional.scaling")
                                                    .interpolate_alibi_slopes(np.ones(2), 8, 16, dynamic=v)},
    "core.validate.array": {"float_dtype": lambda v: _m("core.validate").array(np.zeros(2), "x", float_dtype=v),
                            "finite": lambda v: _m("core.validate").array(np.zeros(2), "x", finite=v)},
    "core.validate.real": {"low_open": lambda v: _m("core.validate").real(1.0, "x", low=0.0, low_open=v),
                           "high_open": lambda v: _m("core.validate").real(1.0, "x", high=2.0, high_open=v)},
}


def _bool_options():
    """(qualified function name without the package prefix, option) for every public bool default."""
    found = []
    for name in package_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != name:
                continue
            for p in inspect.signature(obj).parameters.values():
                if isinstance(p.default, (bool, np.bool_)):
                    found.append((f"{name}.{attr}"[len(P):], p.name))
    return sorted(found)


def _probe(func, option):
    """Call ``func`` with None for every required argument and "no" for ``option``: a function that
    checks its bool options first (``validate.flag`` before anything else) raises naming it."""
    mod, _, name = func.rpartition(".")
    fn = getattr(_m(mod), name)
    sig = inspect.signature(fn)
    args = [None for p in sig.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kwargs = {p.name: None for p in sig.parameters.values() if p.default is p.empty and p.kind == p.KEYWORD_ONLY}
    def call(v):
        out = fn(*args, **{**kwargs, option: v})
        return next(out) if inspect.isgenerator(out) else out   # a generator runs its checks when started
    return call


LISTED = {(f, o) for f, opts in CALLS.items() for o in opts}
PROBED = [(f, o) for f, o in _bool_options() if (f, o) not in LISTED]   # every other bool option found
for _f, _o in PROBED:
    CALLS.setdefault(_f, {})[_o] = _probe(_f, _o)


def test_bool_options_are_found():
    assert len(_bool_options()) >= 40                        # the discovery itself works


CASES = [pytest.param(f, o, id=f"{f}:{o}") for f, opts in CALLS.items() for o in opts]


@pytest.mark.parametrize("func,option", CASES)
@pytest.mark.parametrize("bad", ["no", 1, None])
def test_non_bool_option_is_rejected(func, option, bad):
    with pytest.raises(ValueError, match=rf"{option}: expected True or False|{option}: expected a bool"):
        CALLS[func][option](bad)


@pytest.mark.parametrize("func,option", [c for c in CASES if tuple(c.values) in LISTED])
def test_the_call_is_valid_with_a_bool(func, option):
    """The listed call is otherwise valid, so the rejection above is about the option (no other error)."""
    for good in (False, np.bool_(False)):
        try:
            CALLS[func][option](good)
        except ValueError as err:                             # a bool must never be refused as a bool
            assert f"{option}:" not in str(err), str(err)
            raise
