"""Training objectives as loss factories: noising a clean batch and the per-token losses.

`diffusion_loss` and `autoregressive_loss` take (params, x_BxL, key) and return the summed
training loss with per-batch statistics; the train step only differentiates and accumulates.
"""

import functools

import jax
import jax.numpy as jnp

from dlmjax import model as model_lib
from dlmjax.config import MASK_ID, Run
from dlmjax.diffusion import elbo, forward, schedule


def prompt_clean_mask(key, batch_size, seq_len, prompt_fraction):
    """clean_BxL: a clean prefix of length ⌊f·L⌋, f = arccos(1 − 2r)/π, for a share of rows."""
    key_rows, key_len = jax.random.split(key)
    has_prompt_B = jax.random.bernoulli(key_rows, prompt_fraction, (batch_size,))
    r_B = jax.random.uniform(key_len, (batch_size,))
    prefix_B = jnp.floor(jnp.arccos(1.0 - 2.0 * r_B) / jnp.pi * seq_len).astype(jnp.int32)
    prefix_B = jnp.where(has_prompt_B, prefix_B, 0)
    return jnp.arange(seq_len)[None, :] < prefix_B[:, None]


def prompt_attention_mask(clean_BxL):
    """attn[q, k] = noisy[q] ≥ noisy[k]: clean queries never see noisy keys (cacheable prompt)."""
    noisy_BxL = ~clean_BxL
    return noisy_BxL[:, :, None] >= noisy_BxL[:, None, :]


def noise_batch(key, x_BxL, run: Run):
    """(z_BxL, log_snr_BxL, attn_mask: a NoisyMask or None) for a clean batch (DESIGN.md §1)."""
    noise = run.config.noise
    batch_size, seq_len = x_BxL.shape
    key_lam, key_prompt, key_z = jax.random.split(key, 3)
    log_snr_BxL = schedule.sample_log_snr(key_lam, batch_size, seq_len,
                                          per_token_fraction=noise.per_token_fraction)
    attn_mask = None
    if noise.prompt_fraction > 0:
        clean_BxL = prompt_clean_mask(key_prompt, batch_size, seq_len, noise.prompt_fraction)
        log_snr_BxL = jnp.where(clean_BxL, jnp.inf, log_snr_BxL)
        # Structured (batch-shardable, never [B, L, L]); equal to prompt_attention_mask(clean).
        attn_mask = model_lib.NoisyMask(~clean_BxL, ~clean_BxL)
    z_BxL = forward.sample_zt(key_z, x_BxL, log_snr_BxL, vocab_size=run.model.vocab_size,
                              mask_id=MASK_ID, shift=run.shift, scale=noise.scale)
    return z_BxL, log_snr_BxL, attn_mask


def diffusion_loss(params, x_BxL, key, *, run: Run):
    """(Σ loss, stats): stats hold Σ loss, Σ ELBO and the number of noised tokens."""
    z_BxL, log_snr_BxL, attn_mask = noise_batch(key, x_BxL, run)
    h_BxLxD = model_lib.apply(params, z_BxL, attn_mask, cfg=run.model, return_hidden=True)
    loss_BxL, elbo_BxL = elbo.token_losses_from_hidden(
        h_BxLxD, model_lib.head_kernel(params), z_BxL, x_BxL, log_snr_BxL, mask_id=MASK_ID,
        shift=run.shift, scale=run.config.noise.scale,
        logit_multiplier=run.model.logit_multiplier, chunk_size=run.config.noise.chunk_size,
        batch_shards=run.data_parallel)
    stats = {"loss_sum": loss_BxL.sum(), "elbo_sum": elbo_BxL.sum(),
             "tokens": jnp.isfinite(log_snr_BxL).sum().astype(jnp.float32)}
    return stats["loss_sum"], stats


def _next_token_nll(logits_BxCxV, target_BxC, valid_BxC):
    log_p_BxCxV = jax.nn.log_softmax(logits_BxCxV)
    nll_BxC = -jnp.take_along_axis(log_p_BxCxV, target_BxC[..., None], -1)[..., 0]
    return jnp.where(valid_BxC, nll_BxC, 0.0)


def autoregressive_loss(params, x_BxL, key, *, run: Run):
    """Next-token cross-entropy with causal attention (the study's autoregressive baseline)."""
    del key
    h_BxLxD = model_lib.apply(params, x_BxL, cfg=run.model, return_hidden=True)
    target_BxL = jnp.roll(x_BxL, -1, axis=1)
    valid_BxL = jnp.broadcast_to(jnp.arange(x_BxL.shape[1]) < x_BxL.shape[1] - 1, x_BxL.shape)
    nll_BxL = elbo.map_token_chunks(
        _next_token_nll, h_BxLxD, model_lib.head_kernel(params), (target_BxL, valid_BxL),
        (0, False), logit_multiplier=run.model.logit_multiplier,
        chunk_size=run.config.noise.chunk_size, batch_shards=run.data_parallel)
    stats = {"loss_sum": nll_BxL.sum(), "elbo_sum": nll_BxL.sum(),
             "tokens": valid_BxL.sum().astype(jnp.float32)}
    return stats["loss_sum"], stats


def loss_fn_for(run: Run):
    fn = diffusion_loss if run.config.objective == "diffusion" else autoregressive_loss
    return functools.partial(fn, run=run)
