"""LoRA: the adapter pair, its init, merge/unmerge, subspace similarity, adapter files, and (when the
model is available) adapting a transformer by weight name."""

import os

import numpy as np
import pytest

from scratch_transformers import lora
from scratch_transformers.core.gradcheck import gradcheck
from scratch_transformers.lora import (LoRAConfig, init_lora, lora_linear_backward, lora_linear_forward,
                                       lora_scale, merge, unmerge)


def _layer(rng, d_in=6, d_out=5, r=3, lead=(2, 4), random_b=True, dtype=np.float64):
    x = rng.standard_normal((*lead, d_in)).astype(dtype)
    w0 = rng.standard_normal((d_in, d_out)).astype(dtype)
    b0 = rng.standard_normal(d_out).astype(dtype)
    a, b = init_lora(rng, d_in, d_out, r, dtype=dtype)
    if random_b:
        b = rng.standard_normal((r, d_out)).astype(dtype)
    return x, w0, b0, a, b


# ---------------------------------------------------------------------------------------------- pair

@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
def test_gradcheck_lora_linear(rng, with_bias, dropout):
    x, w0, b0, a, b = _layer(rng)
    mask = rng.random(x.shape) >= 0.25 if dropout else None

    def fwd(x, a, b):
        return lora_linear_forward(x, w0, b0 if with_bias else None, a, b, scale=1.7,
                                   dropout_p=0.25 if dropout else 0.0, dropout_mask=mask)

    res = gradcheck(fwd, lora_linear_backward, {"x": x, "a": a, "b": b}, tol=1e-7, rng=rng)
    res.assert_ok()


def test_forward_matches_the_unbatched_paper_formula(rng):
    """Row by row, h = W0 x + b0 + s B A x in the paper's column layout (W0 = w0^T, A = a^T, B = b^T)."""
    x, w0, b0, a, b = _layer(rng)
    s = 0.6
    y, _ = lora_linear_forward(x, w0, b0, a, b, scale=s)
    W0, A, B = w0.T, a.T, b.T
    for idx in np.ndindex(x.shape[:-1]):
        col = x[idx]
        np.testing.assert_allclose(y[idx], W0 @ col + b0 + s * (B @ (A @ col)), rtol=1e-13, atol=1e-13)


def test_at_init_output_is_exactly_the_base_layer_and_dA_is_zero(rng):
    x, w0, b0, _, _ = _layer(rng)
    a, b = init_lora(rng, 6, 5, 3)
    assert not np.any(b)
    y, cache = lora_linear_forward(x, w0, b0, a, b, scale=2.0)
    np.testing.assert_array_equal(y, x @ w0 + b0)
    dy = rng.standard_normal(y.shape)
    dx, da, db = lora_linear_backward(dy, cache)
    assert np.all(da == 0.0)                     # B = 0 blocks A's gradient on step 0
    assert np.linalg.norm(db) > 0.1              # ... while B's is s (xA)^T dy != 0
    np.testing.assert_allclose(dx, dy @ w0.T, rtol=0, atol=0)


def test_backward_is_pure(rng):
    x, w0, b0, a, b = _layer(rng)
    _, cache = lora_linear_forward(x, w0, b0, a, b, scale=0.5)
    dy = rng.standard_normal((2, 4, 5))
    for g1, g2 in zip(lora_linear_backward(dy, cache), lora_linear_backward(dy, cache)):
        np.testing.assert_array_equal(g1, g2)


def test_dropout_only_on_the_lora_branch_and_off_in_eval(rng):
    x, w0, b0, a, b = _layer(rng, lead=(50, 20))
    y_eval, c = lora_linear_forward(x, w0, b0, a, b, scale=1.0, dropout_p=0.5, rng=rng, training=False)
    y_plain, _ = lora_linear_forward(x, w0, b0, a, b, scale=1.0)
    np.testing.assert_array_equal(y_eval, y_plain)
    assert c.keep is None
    y_tr, c = lora_linear_forward(x, w0, b0, a, b, scale=1.0, dropout_p=0.5, rng=rng, training=True)
    assert 0.45 < c.keep.mean() < 0.55
    keep = c.keep.reshape(x.shape)
    ref = x @ w0 + b0 + ((x * keep / 0.5) @ a) @ b        # base path sees undropped x
    np.testing.assert_allclose(y_tr, ref, rtol=1e-12, atol=1e-12)


def test_float32_in_float32_out(rng):
    x, w0, b0, a, b = _layer(rng, dtype=np.float32)
    y, cache = lora_linear_forward(x, w0, b0, a, b, scale=0.5)
    assert y.dtype == np.float32
    grads = lora_linear_backward(np.ones_like(y), cache)
    assert all(g.dtype == np.float32 for g in grads)
    x64, w64, b64, a64, bb64 = (t.astype(np.float64) for t in (x, w0, b0, a, b))
    y64, _ = lora_linear_forward(x64, w64, b64, a64, bb64, scale=0.5)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)


def test_scales():
    assert lora_scale(16, 4) == 4.0
    assert lora_scale(16, 4, rslora=True) == 8.0
    assert LoRAConfig(r=64).scale == 1.0                       # alpha defaults to r
    assert LoRAConfig(r=64, alpha=64, rslora=True).scale == 8.0   # rsLoRA 2312.03732: alpha / sqrt(r), 64 / 8


def test_init_distributions(rng):
    d_in = 400
    a, b = init_lora(rng, d_in, 30, 50)
    assert a.shape == (d_in, 50) and b.shape == (50, 30) and not np.any(b)
    assert np.max(np.abs(a)) <= 1 / np.sqrt(d_in)
    np.testing.assert_allclose(a.var(), 1 / (3 * d_in), rtol=0.05)    # U(-c, c): var c^2/3
    a, _ = init_lora(rng, d_in, 30, 50, init="gaussian")
    np.testing.assert_allclose(a.std(), 1 / 50, rtol=0.05)


# ---------------------------------------------------------------------------------------------- merge

def test_merged_equals_unmerged_and_unmerge_restores(rng):
    x, w0, b0, a, b = _layer(rng, d_in=32, d_out=24, r=4, lead=(3, 7))
    b = b * 0.1
    s = lora_scale(8, 4)
    y, _ = lora_linear_forward(x, w0, b0, a, b, scale=s)
    w = merge(w0, a, b, s)
    np.testing.assert_allclose(x @ w + b0, y, rtol=0, atol=1e-12)
    w0_back = unmerge(w, a, b, s)
    assert np.linalg.norm(w0_back - w0) / np.linalg.norm(w0) <= 1e-15
    assert np.max(np.abs(w0_back - w0) / np.abs(w0)) < 1e-13
    assert not np.shares_memory(w, w0)


# ---------------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_value_error(rng):
    x, w0, b0, a, b = _layer(rng)
    bad = [
        dict(x=x[..., :5]),                               # wrong d_in
        dict(w0=w0.astype(np.float32)),                   # mixed dtypes
        dict(x=np.ones((2, 6), dtype=np.int64)),          # integer x
        dict(b0=b0[:3]),
        dict(a=a[:4]),
        dict(b=b[:, :4]),
        dict(b=b[:2]),                                    # rank mismatch
        dict(a=np.zeros((6, 0)), b=np.zeros((0, 5))),     # r = 0
    ]
    for kw in bad:
        args = dict(x=x, w0=w0, b0=b0, a=a, b=b)
        args.update(kw)
        with pytest.raises(ValueError):
            lora_linear_forward(args["x"], args["w0"], args["b0"], args["a"], args["b"], scale=1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        lora_linear_forward(x, w0, b0, a, b, scale=1.0, dropout_p=1.0)
    with pytest.raises(ValueError, match="rng"):
        lora_linear_forward(x, w0, b0, a, b, scale=1.0, dropout_p=0.1)
    with pytest.raises(ValueError, match="scale"):
        lora_linear_forward(x, w0, b0, a, b, scale=float("nan"))
    _, cache = lora_linear_forward(x, w0, b0, a, b, scale=1.0)
    with pytest.raises(ValueError, match="dy"):
        lora_linear_backward(np.ones((2, 4, 4)), cache)
    with pytest.raises(ValueError, match="init"):
        init_lora(rng, 4, 4, 2, init="orthogonal")
    with pytest.raises(ValueError, match="r"):
        init_lora(rng, 4, 4, 0)
    with pytest.raises(ValueError, match="rng"):
        init_lora(0, 4, 4, 2)
    with pytest.raises(ValueError):
        merge(w0, a[:, :2], b, 1.0)
    with pytest.raises(ValueError, match="r"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets="attn.wq")
    with pytest.raises(ValueError, match="init"):
        LoRAConfig(init="pissa")


# ---------------------------------------------------------------------------------------------- similarity

def test_subspace_similarity_properties(rng):
    a8 = rng.standard_normal((40, 8))
    phi = lora.subspace_similarity(a8, a8)
    np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-12)           # same subspace, same order
    # a64 whose column space contains a8's: the overlap with all of a8's directions is complete
    a64 = np.concatenate([a8 @ rng.standard_normal((8, 8)), rng.standard_normal((40, 24))], axis=1)
    phi = lora.subspace_similarity(a8, a64)
    assert phi.shape == (8, 32)
    np.testing.assert_allclose(phi[7, 31], 1.0, atol=1e-12)
    assert np.all(phi >= -1e-12) and np.all(phi <= 1 + 1e-12)
    # one entry against a direct evaluation of eq. (4)
    u1 = np.linalg.svd(a8)[0][:, :3]
    u2 = np.linalg.svd(a64)[0][:, :5]
    np.testing.assert_allclose(phi[2, 4], np.sum((u1.T @ u2) ** 2) / 3, rtol=1e-12)


def test_subspace_similarity_random_baseline(rng):
    """Independent random subspaces: E[phi(i, j)] = max(i, j) / d (LoRA §7.2, eq. 4)."""
    d = 30
    phis = np.mean([lora.subspace_similarity(rng.standard_normal((d, 4)), rng.standard_normal((d, 6)))
                    for _ in range(300)], axis=0)
    i, j = np.meshgrid(np.arange(1, 5), np.arange(1, 7), indexing="ij")
    np.testing.assert_allclose(phis, np.maximum(i, j) / d, rtol=0.15)


# ---------------------------------------------------------------------------------------------- files

def _toy_params(rng):
    p = {}
    for l in range(2):
        for n in ("wq", "wk", "wv", "wo"):
            p[f"blocks.{l}.attn.{n}"] = rng.standard_normal((16, 16))
            p[f"blocks.{l}.attn.b{n[1]}"] = rng.standard_normal(16)
        p[f"blocks.{l}.mlp.w1"] = rng.standard_normal((16, 64))
    p["embed"] = rng.standard_normal((50, 16))
    return p


def test_find_targets_default_is_wq_wv_of_every_layer(rng):
    p = _toy_params(rng)
    assert lora.find_targets(p) == ["blocks.0.attn.wq", "blocks.0.attn.wv", "blocks.1.attn.wq", "blocks.1.attn.wv"]
    assert lora.find_targets(p, ("blocks.1.attn.w?",)) == [f"blocks.1.attn.w{c}" for c in "koqv"]
    assert lora.bias_name("blocks.0.attn.wq", p) == "blocks.0.attn.bq"
    with pytest.raises(ValueError, match="targets"):
        lora.find_targets(p, ("attn.wz",))
    with pytest.raises(ValueError, match="2-d"):
        lora.find_targets(p, ("attn.bq",))


def test_save_load_roundtrip_and_apply(rng, tmp_path):
    p = _toy_params(rng)
    cfg = LoRAConfig(r=2, alpha=4.0, rslora=True)
    ad = lora.init_adapters(p, cfg, rng)
    ad = {k: v + rng.standard_normal(v.shape) for k, v in ad.items()}      # pretend-trained
    assert lora.n_params(ad) == 4 * 2 * (16 + 16)                           # r (d_in + d_out) per matrix
    path = lora.save_adapters(tmp_path / "sub" / "adapter.npz", ad, cfg)
    assert sorted(os.listdir(path.parent)) == ["adapter.npz"]              # no temp file left behind
    with np.load(path, allow_pickle=False) as f:
        assert sorted(k for k in f.files if k != "__lora_config__") == sorted(ad)
    ad2, cfg2 = lora.load_adapters(path)
    assert cfg2 == cfg
    for k in ad:
        np.testing.assert_array_equal(ad2[k], ad[k])
    merged = lora.apply_adapters(p, ad2, cfg2)
    w = p["blocks.1.attn.wv"] + cfg.scale * ad["blocks.1.attn.wv.lora_A"] @ ad["blocks.1.attn.wv.lora_B"]
    np.testing.assert_allclose(merged["blocks.1.attn.wv"], w, rtol=1e-14, atol=1e-14)
    assert merged["blocks.0.attn.wk"] is p["blocks.0.attn.wk"]
    back = lora.unmerge_adapters(merged, ad2, cfg2)
    for k in p:
        np.testing.assert_allclose(back[k], p[k], rtol=0, atol=1e-14)
    bad = dict(ad2)
    bad["blocks.0.attn.wq.lora_A"] = bad["blocks.0.attn.wq.lora_A"][:, :1]
    with pytest.raises(ValueError):
        lora.apply_adapters(p, bad, cfg2)
    with pytest.raises(ValueError, match="lora_B"):
        lora.apply_adapters(p, {"blocks.0.attn.wq.lora_A": ad["blocks.0.attn.wq.lora_A"]}, cfg2)
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="path"):
        lora.load_adapters(tmp_path / "plain.npz")


# ---------------------------------------------------------------------------------------------- model

def _model(rng, n_layers=2, d=16, vocab=11, T=7):
    from scratch_transformers.models import transformer as tf

    config = tf.TransformerConfig(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=2, max_len=T)
    params = tf.init_params(config, rng)
    x = rng.integers(0, vocab, size=(3, T))
    y = rng.integers(0, vocab, size=(3, T))
    return tf, config, params, x, y


def _trained_adapters(params, cfg, rng):
    """Adapters with b != 0 (as after some training), so every gradient path is exercised."""
    ad = lora.init_adapters(params, cfg, rng)
    return {k: (v + 0.3 * rng.standard_normal(v.shape) if k.endswith("lora_B") else v) for k, v in ad.items()}


def test_adapted_model_at_init_equals_base_exactly(rng):
    tf, config, params, x, _ = _model(rng)
    cfg = LoRAConfig(r=4, alpha=16.0)
    ad = lora.init_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg)
    assert sorted(lin) == ["blocks.0.attn.wq", "blocks.0.attn.wv", "blocks.1.attn.wq", "blocks.1.attn.wv"]
    base_logits, _ = tf.forward(params, config, x)
    lora_logits, _ = tf.forward({**params, **ad}, config, x, linears=lin)
    np.testing.assert_array_equal(lora_logits, base_logits)


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_grads_equal_merged_weight_grads(rng, rslora):
    """dA = s dW B^T and dB = s A^T dW, dW the plain model's gradient at W = W0 + s A B (1e-12)."""
    tf, config, params, x, y = _model(rng)
    cfg = LoRAConfig(r=3, alpha=5.0, rslora=rslora, targets=("attn.wq", "attn.wv", "blocks.1.attn.wo"))
    ad = _trained_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg)
    loss_a, grads_a = lora.adapter_loss_and_grads(tf.loss_and_grads, params, lin)(ad, config, x, y)
    assert sorted(grads_a) == sorted(ad)
    merged = lora.merge_adapters(params, ad, cfg)
    loss_m, grads_m = tf.loss_and_grads(merged, config, x, y)
    np.testing.assert_allclose(loss_a, loss_m, rtol=1e-12)
    s = cfg.scale
    for name in lora.adapted_names(ad):
        ka, kb = lora.adapter_keys(name)
        dw = grads_m[name]
        np.testing.assert_allclose(grads_a[ka], s * dw @ ad[kb].T, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads_a[kb], s * ad[ka].T @ dw, rtol=1e-12, atol=1e-12)
    # the other parameters' gradients are those of the merged model too
    _, full_grads = tf.loss_and_grads({**params, **ad}, config, x, y, linears=lin)
    frozen = set(lin) | {lora.bias_name(n, params) for n in lin}
    for k in params:
        if k in frozen:
            assert k not in full_grads                       # frozen W0, b0: no gradient formed
        else:
            np.testing.assert_allclose(full_grads[k], grads_m[k], rtol=1e-10, atol=1e-12)


def test_adapted_model_gradcheck(rng):
    """Central differences of the whole adapted model's loss w.r.t. one adapter pair (float64)."""
    tf, config, params, x, y = _model(rng, n_layers=1, d=8, T=4)
    cfg = LoRAConfig(r=2)
    ad = _trained_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg)
    ka, kb = lora.adapter_keys("blocks.0.attn.wv")

    def fwd(a, b):
        loss, grads = tf.loss_and_grads({**params, **ad, ka: a, kb: b}, config, x, y, linears=lin)
        return np.array(loss), grads

    res = gradcheck(fwd, lambda dl, grads: {"a": float(dl) * grads[ka], "b": float(dl) * grads[kb]},
                    {"a": ad[ka].copy(), "b": ad[kb].copy()}, tol=1e-6, rng=rng)
    res.assert_ok()


def test_training_adapters_leaves_the_base_untouched(rng):
    from scratch_transformers.core import optim, train

    tf, config, params, x, y = _model(rng)
    frozen = {k: v.copy() for k, v in params.items()}
    cfg = LoRAConfig(r=2, alpha=4.0)
    ad = lora.init_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg)
    lg = lora.adapter_loss_and_grads(tf.loss_and_grads, params, lin)
    opt = optim.AdamW(lr=3e-2, weight_decay=0.0)
    hist = train.train(lambda p, batch, r: lg(p, config, *batch), ad, opt, lambda r, step: (x, y),
                       steps=40, rng=rng, progress=False)
    assert hist.losses[-1] < hist.losses[0] - 0.1
    for k in params:
        np.testing.assert_array_equal(params[k], frozen[k])
    moments = [k.split("/", 1)[1] for k in opt.state_dict() if k.startswith("exp_avg/")]
    assert sorted(moments) == sorted(ad)                              # optimizer state for adapters only


def test_counts_and_files_with_a_base_checkpoint(rng, tmp_path, capsys):
    from scratch_transformers.core import optim, train

    tf, config, params, x, _ = _model(rng, n_layers=2, d=32, vocab=50)
    cfg = LoRAConfig(r=4)
    ad = _trained_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg)
    n_lora, n_base = lora.n_params(ad), lora.n_params(params)
    assert n_lora == 2 * 2 * cfg.r * (32 + 32)                        # L layers x {W_q, W_v} x r (d_in + d_out)
    ckpt = tmp_path / "base.npz"
    train.save_checkpoint(ckpt, params, optim.AdamW(), 0, rng, train.History())
    apath = lora.save_adapters(tmp_path / "adapter.npz", ad, cfg)
    a_bytes, b_bytes = apath.stat().st_size, ckpt.stat().st_size
    print(f"trainable {n_lora} of {n_base} params ({100 * n_lora / n_base:.2f}%); "
          f"adapter file {a_bytes} B vs base checkpoint {b_bytes} B")
    assert "trainable" in capsys.readouterr().out
    assert a_bytes < b_bytes / 4
    base = train.load_checkpoint(ckpt).params
    ad2, cfg2 = lora.load_adapters(apath)
    merged = lora.apply_adapters(base, ad2, cfg2)
    want, _ = tf.forward({**params, **ad}, config, x, linears=lin)
    got, _ = tf.forward(merged, config, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="adapters"):
        lora.apply_adapters({k: v for k, v in base.items() if k != "blocks.1.attn.wv"}, ad2, cfg2)
    with pytest.raises(ValueError, match="linears"):                   # adapters without their linears
        lora.adapter_loss_and_grads(tf.loss_and_grads, params, None)(ad, config, x, x)
    with pytest.raises(ValueError, match="model_loss_and_grads"):
        lora.adapter_loss_and_grads(None, params, lin)


def test_lora_linear_dropout_in_a_model(rng):
    tf, config, params, x, _ = _model(rng)
    cfg = LoRAConfig(r=2, dropout=0.5)
    ad = _trained_adapters(params, cfg, rng)
    lin = lora.make_linears(params, ad, cfg, rng=rng)
    p = {**params, **ad}
    train_a, _ = tf.forward(p, config, x, linears=lin)
    train_b, _ = tf.forward(p, config, x, linears=lin)
    assert np.max(np.abs(train_a - train_b)) > 1e-6                  # fresh masks each call
    for l in lin.values():
        l.training = False
    eval_logits, _ = tf.forward(p, config, x, linears=lin)
    merged, _ = tf.forward(lora.merge_adapters(params, ad, cfg), config, x)
    np.testing.assert_allclose(eval_logits, merged, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rng"):
        lora.make_linears(params, ad, cfg)


# ---------------------------------------------------------------------------------------------- experiment

@pytest.mark.slow
def test_experiment_runs_end_to_end_at_toy_size(rng, tmp_path, monkeypatch):
    from scratch_transformers.experiments import lora as exp

    tiny = dict(exp.SIZES["quick"], ctx=16, batch=2, pretrain_steps=3, adapt_steps=2, n_val=2,
                rslora_ranks=(8,), all_linear_ranks=(1,), dtype="float64")     # merge exactness needs float64
    monkeypatch.setitem(exp.SIZES, "quick", tiny)
    res = exp.run("quick", rng=rng, out_dir=tmp_path, progress=False)
    assert res.name == exp.NAME == "lora"
    assert all(p.is_file() for p in res.figures) and len(res.figures) == 2
    assert res.metrics["merge_max_abs_err"] < 1e-10
    assert res.metrics["adapter_bytes"] < res.metrics["base_bytes"] / 10
    for r in exp.RANKS:
        assert np.isfinite(res.metrics[f"lora_r{r}_loss"])
        assert res.metrics[f"lora_r{r}_params"] == 2 * 2 * r * (64 + 64)    # 2 layers x {W_q, W_v}
    assert "| LoRA r=64 |" in res.summary and "rsLoRA r=8" in res.summary
    with pytest.raises(ValueError, match="size"):
        exp.run("medium", rng=rng, out_dir=tmp_path)
