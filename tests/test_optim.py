"""LaProp against a float64 NumPy transcription, the WSD schedule, parameter groups and the
derived hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax.model import ModelConfig, abstract_params
from dlmjax.optim import (
    MATRIX,
    OTHER,
    derive_hparams,
    make_optimizer,
    param_groups,
    scale_by_laprop,
    wsd_schedule,
)


def _np_wsd(k, total, warmup, cooldown_fraction):
    cooldown = round(cooldown_fraction * total)
    s = min(1.0, (k + 1) / warmup) if warmup else 1.0
    if cooldown and k >= total - cooldown:
        s = min(s, 1.0 - np.sqrt((k - (total - cooldown)) / cooldown))
    return s


def _np_optimizer(params, grads_seq, *, lr, d, n_layers, total, warmup, cooldown, b1, b2, wd,
                  matrix):
    """Float64 transcription of docs/science.md: LaProp with β̃(k) = 1 − (1 − β)/(1 − β^k)."""
    eps = 1e-8 / (d * n_layers)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    history = []
    for step, grads in enumerate(grads_seq):
        k = step + 1
        bt1 = 1.0 - (1.0 - b1) / (1.0 - b1**k)
        bt2 = 1.0 - (1.0 - b2) / (1.0 - b2**k)
        s = _np_wsd(step, total, warmup, cooldown)
        for name in p:
            g = np.asarray(grads[name], np.float64)
            v[name] = bt2 * v[name] + (1.0 - bt2) * g**2
            m[name] = bt1 * m[name] + (1.0 - bt1) * g / (np.sqrt(v[name]) + eps)
            group_lr = lr / d if matrix[name] else 0.02 * lr
            decay = wd * p[name] if matrix[name] else 0.0
            p[name] = p[name] - group_lr * s * (m[name] + decay)
        history.append({name: x.copy() for name, x in p.items()})
    return history


def test_make_optimizer_matches_numpy_float64_for_20_steps():
    rng = np.random.default_rng(0)
    shapes = {"q_kernel": (8, 4), "up_kernel": (4, 6), "embedding": (5, 8), "attn_norm": (8,),
              "sink_key": (2, 4)}
    matrix = {name: name.endswith("_kernel") for name in shapes}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    # Gradients of very different scales per leaf and step (LaProp should be scale-free).
    grads_seq = [{k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32)
                  for k, s in shapes.items()} for _ in range(20)]
    kw = dict(lr=0.3, d=64, n_layers=4, total=20, warmup=5, cooldown=0.25, b1=0.9, b2=0.99,
              wd=0.1)
    opt = make_optimizer(lr=kw["lr"], d_model=kw["d"], num_layers=kw["n_layers"],
                         total_steps=kw["total"], warmup_steps=kw["warmup"],
                         cooldown_fraction=kw["cooldown"], batch_size=64, weight_decay=kw["wd"])

    @jax.jit
    def step(p, state, g):
        updates, state = opt.update(g, state, p)
        return jax.tree.map(jnp.add, p, updates), state

    p = jax.tree.map(jnp.asarray, params)
    state = opt.init(p)
    expected = _np_optimizer(params, grads_seq, matrix=matrix, **kw)
    for grads, ref in zip(grads_seq, expected):
        p, state = step(p, state, grads)
        for name in shapes:
            np.testing.assert_allclose(p[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_laprop_first_steps_closed_form():
    """Step 1: ν = g², m = g/(|g| + ε), the sign of g; step 2 with g₂ = g₁: unchanged."""
    g = jnp.array([3.0, -0.5, 1e-3])
    opt = scale_by_laprop(b1=0.9, b2=0.99, eps=0.0)
    state = opt.init(g)
    u1, state = opt.update(g, state)
    np.testing.assert_allclose(u1, [1.0, -1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(state.nu, g**2, rtol=1e-6)
    u2, state = opt.update(g, state)
    np.testing.assert_allclose(u2, [1.0, -1.0, 1.0], rtol=1e-6)
    assert state.mu.dtype == state.nu.dtype == jnp.float32


def test_wsd_schedule_exact_values():
    s = wsd_schedule(total_steps=1000, warmup_steps=100, cooldown_fraction=0.2)
    assert float(s(0)) == pytest.approx(0.01, abs=1e-7)
    assert float(s(49)) == pytest.approx(0.5, abs=1e-7)
    assert float(s(99)) == 1.0  # warm-up end
    assert float(s(500)) == 1.0  # mid
    assert float(s(800)) == 1.0  # cooldown start
    assert float(s(900)) == pytest.approx(1.0 - np.sqrt(0.5), abs=1e-7)
    assert float(s(999)) == pytest.approx(1.0 - np.sqrt(199 / 200), abs=1e-7)  # last step
    flat = wsd_schedule(total_steps=10, warmup_steps=0)
    assert [float(flat(k)) for k in (0, 9)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="cooldown_fraction"):
        wsd_schedule(total_steps=10, cooldown_fraction=1.5)


def test_param_groups_on_the_model():
    cfg = ModelConfig(vocab_size=32, num_layers=2, d_model=64)
    labels = param_groups(abstract_params(cfg))
    flat = {"/".join(k.key for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
    matrices = {k for k, v in flat.items() if v == MATRIX}
    assert matrices == {"layers/attn/q_kernel", "layers/attn/k_kernel", "layers/attn/v_kernel",
                        "layers/attn/o_kernel", "layers/mlp/up_kernel", "layers/mlp/down_kernel"}
    for name in ("embedding", "unembedding", "final_norm", "layers/attn/sink_key",
                 "layers/mlp/up_bias", "layers/attn/q_norm"):
        assert flat[name] == OTHER


def test_derived_hyperparameters():
    hp = derive_hparams(lr=0.3, d_model=512, num_layers=8, total_steps=100, batch_size=64)
    assert hp.lr_matrix == pytest.approx(0.3 / 512) and hp.lr_other == pytest.approx(0.006)
    assert hp.eps == pytest.approx(1e-8 / 4096) and (hp.b1, hp.b2) == (0.9, 0.99)
    assert derive_hparams(lr=0.3, d_model=512, num_layers=8, total_steps=100,
                          batch_size=256).b2 == 0.98
    assert derive_hparams(lr=0.3, d_model=512, num_layers=8, total_steps=100, batch_size=512,
                          b2=0.95).b2 == 0.95
    with pytest.raises(ValueError, match="lr"):
        derive_hparams(lr=0.0, d_model=512, num_layers=8, total_steps=100, batch_size=64)


def test_clipping_enters_the_second_moment():
    """A clipped gradient spike inflates ν less, so the next (small) step moves further."""
    g1 = {"embedding": jnp.array([30.0, -40.0])}  # global norm 50
    g2 = {"embedding": jnp.array([0.3, 0.4])}  # global norm 0.5: not clipped

    def second_update(clip_norm):
        opt = make_optimizer(lr=1.0, d_model=1, num_layers=1, total_steps=10, warmup_steps=0,
                             batch_size=1, b1=0.0, clip_norm=clip_norm)
        state = opt.init(g1)
        _, state = opt.update(g1, state)
        return opt.update(g2, state)[0]["embedding"]

    bt2 = 1.0 - 0.01 / (1.0 - 0.99**2)
    for clip, g1_seen in ((0.0, np.array([30.0, -40.0])), (1.0, np.array([0.6, -0.8]))):
        nu = bt2 * g1_seen**2 + (1.0 - bt2) * np.array([0.3, 0.4]) ** 2
        expected = -0.02 * np.array([0.3, 0.4]) / (np.sqrt(nu) + 1e-8)
        np.testing.assert_allclose(second_update(clip), expected, rtol=1e-5)
