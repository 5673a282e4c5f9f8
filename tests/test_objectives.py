"""Noising a batch (prompt conditioning) and the two training objectives against direct forms."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dlmjax import config as config_lib
from dlmjax import model as model_lib
from dlmjax import objectives
from dlmjax.diffusion import elbo
from experiments import base


def _run(objective="diffusion", prompt_fraction=0.2):
    c = base.get_config()
    c.objective = objective
    c.model.vocab_size, c.model.num_layers, c.model.d_model, c.model.seq_len = 50, 2, 64, 24
    c.model.dtype, c.model.remat = "float32", "none"
    c.noise.type, c.noise.prompt_fraction, c.noise.chunk_size = "balanced", prompt_fraction, 7
    c.train.batch_size, c.train.steps = 8, 10
    return config_lib.derive(c, num_devices=8)


def test_prompt_prefix_lengths_follow_the_arccos_law():
    clean = np.asarray(objectives.prompt_clean_mask(jax.random.key(0), 20000, 100, 0.2))
    lengths = clean.sum(axis=1)
    assert np.all(clean == (np.arange(100)[None] < lengths[:, None]))  # prefixes only
    has_prompt = lengths > 0
    assert abs(has_prompt.mean() - 0.2) < 0.01
    # f = arccos(1 − 2r)/π has CDF (1 − cos πf)/2; lengths are ⌊100 f⌋.
    f = lengths[has_prompt] / 100 + 0.005
    ks = stats.kstest(f, lambda v: (1 - np.cos(np.pi * np.clip(v, 0, 1))) / 2)
    assert ks.pvalue > 1e-3


def test_prompt_attention_mask_rule():
    clean = jnp.array([[True, True, False, False]])
    attn = np.asarray(objectives.prompt_attention_mask(clean))[0]
    noisy = ~np.asarray(clean[0])
    expected = noisy[:, None] >= noisy[None, :]
    np.testing.assert_array_equal(attn, expected)
    assert not attn[0, 2] and attn[2, 0]  # clean queries never see noisy keys


def test_diffusion_loss_equals_token_losses_on_full_logits():
    run = _run()
    params = model_lib.init_params(jax.random.key(1), run.model)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                          params)  # a non-zero head
    x = jax.random.randint(jax.random.key(3), (8, 24), 4, 50)
    key = jax.random.key(4)
    total, stats_ = objectives.diffusion_loss(params, x, key, run=run)
    z, lam, mask = objectives.noise_batch(key, x, run)
    logits = model_lib.apply(params, z, mask, cfg=run.model)
    loss, el = elbo.token_losses(logits, z, x, lam, mask_id=3, shift=run.shift)
    np.testing.assert_allclose(float(total), float(loss.sum()), rtol=1e-5)
    np.testing.assert_allclose(float(stats_["elbo_all_sum"]), float(el.sum()), rtol=1e-5)
    # The ELBO rows: one λ for the whole row and no clean prompt.
    lam_np = np.asarray(lam)
    rows = np.all(lam_np == lam_np[:, :1], axis=1) & np.all(np.isfinite(lam_np), axis=1)
    np.testing.assert_allclose(float(stats_["elbo_sum"]), float(np.asarray(el)[rows].sum()),
                               rtol=1e-5)
    assert float(stats_["elbo_tokens"]) == rows.sum() * x.shape[1]
    assert float(stats_["tokens"]) == float(np.isfinite(np.asarray(lam)).sum())
    assert np.all(np.asarray(z)[np.isinf(np.asarray(lam))] == np.asarray(x)[np.isinf(lam)])


def test_autoregressive_loss_is_next_token_cross_entropy():
    run = _run("autoregressive", prompt_fraction=0.0)
    assert run.model.causal
    params = model_lib.init_params(jax.random.key(1), run.model)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                          params)
    x = jax.random.randint(jax.random.key(3), (8, 24), 4, 50)
    total, stats_ = objectives.autoregressive_loss(params, x, None, run=run)
    logits = np.asarray(model_lib.apply(params, x, cfg=run.model), np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.asarray(x)[:, 1:]
    expected = -np.take_along_axis(log_p[:, :-1], target[..., None], -1).sum()
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(stats_["tokens"]) == 8 * 23
