"""Training objectives as loss factories: noising a clean batch and the per-token losses.

`diffusion_loss` and `autoregressive_loss` take (params, x_BxL, key) and return the summed
training loss with per-batch statistics; the train step only differentiates and accumulates.

Only rows noised with one λ per sequence and no clean prompt give an ELBO (a bound on
−log p(x)): a token's weight assumes its whole context sits at its own λ. Such rows feed
`elbo_sum`/`elbo_tokens` (the logged `elbo`); every row feeds `elbo_all_sum`/`tokens` (logged
as `elbo_all_rows`, a training diagnostic, not a likelihood). See docs/science.md.
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


STAT_KEYS = ("loss_sum", "elbo_sum", "elbo_tokens", "elbo_all_sum", "tokens")


def noise_batch(key, x_BxL, run: Run, *, elbo_only=False):
    """(z_BxL, log_snr_BxL, attn_mask: a NoisyMask or None) for a clean batch, per docs/science.md.

    elbo_only: every row gets one λ and no prompt (held-out ELBO), whatever the config says.
    """
    z_BxL, log_snr_BxL, attn_mask, _ = noise_batch_with_rows(key, x_BxL, run, elbo_only=elbo_only)
    return z_BxL, log_snr_BxL, attn_mask


def noise_batch_with_rows(key, x_BxL, run: Run, *, elbo_only=False):
    """noise_batch plus elbo_row_B: the rows with one λ per sequence and no clean prompt."""
    noise = run.config.noise
    batch_size, seq_len = x_BxL.shape
    per_token = 0.0 if elbo_only else noise.per_token_fraction
    prompt = 0.0 if elbo_only else noise.prompt_fraction
    key_lam, key_prompt, key_z = jax.random.split(key, 3)
    log_snr_BxL = schedule.sample_log_snr(key_lam, batch_size, seq_len,
                                          per_token_fraction=per_token)
    # A row drew one λ iff all its λ are equal (per-token draws tie with probability 0).
    elbo_row_B = jnp.all(log_snr_BxL == log_snr_BxL[:, :1], axis=1)
    attn_mask = None
    if prompt > 0:
        clean_BxL = prompt_clean_mask(key_prompt, batch_size, seq_len, prompt)
        log_snr_BxL = jnp.where(clean_BxL, jnp.inf, log_snr_BxL)
        # Structured (batch-shardable, never [B, L, L]); equal to prompt_attention_mask(clean).
        attn_mask = model_lib.NoisyMask(~clean_BxL, ~clean_BxL)
        elbo_row_B &= ~clean_BxL[:, 0]
    z_BxL = forward.sample_zt(key_z, x_BxL, log_snr_BxL, vocab_size=run.model.vocab_size,
                              mask_id=MASK_ID, shift=run.shift, scale=noise.scale)
    return z_BxL, log_snr_BxL, attn_mask, elbo_row_B


def _diffusion_stats(loss_BxL, elbo_BxL, log_snr_BxL, elbo_row_B):
    noised_BxL = jnp.isfinite(log_snr_BxL)
    elbo_rows_BxL = noised_BxL & elbo_row_B[:, None]
    return {"loss_sum": loss_BxL.sum(),
            "elbo_sum": jnp.where(elbo_rows_BxL, elbo_BxL, 0.0).sum(),
            "elbo_tokens": elbo_rows_BxL.sum().astype(jnp.float32),
            "elbo_all_sum": elbo_BxL.sum(),
            "tokens": noised_BxL.sum().astype(jnp.float32)}


def diffusion_loss(params, x_BxL, key, *, run: Run, logits_fn=None, elbo_only=False):
    """(Σ loss, stats) with stats as in STAT_KEYS (see the module doc for the ELBO rows).

    logits_fn(params, z_BxL, attn_mask) → logits_BxLxV replaces the transformer (exact oracles
    in tests); by default the fused chunked head computes the losses without [B, L, V] logits.
    """
    z_BxL, log_snr_BxL, attn_mask, elbo_row_B = noise_batch_with_rows(key, x_BxL, run,
                                                                      elbo_only=elbo_only)
    kwargs = dict(mask_id=MASK_ID, shift=run.shift, scale=run.config.noise.scale)
    if logits_fn is None:
        h_BxLxD = model_lib.apply(params, z_BxL, attn_mask, cfg=run.model, return_hidden=True)
        loss_BxL, elbo_BxL = elbo.token_losses_from_hidden(
            h_BxLxD, model_lib.head_kernel(params), z_BxL, x_BxL, log_snr_BxL,
            logit_multiplier=run.model.logit_multiplier, chunk_size=run.config.noise.chunk_size,
            batch_shards=run.data_parallel, **kwargs)
    else:
        loss_BxL, elbo_BxL = elbo.token_losses(logits_fn(params, z_BxL, attn_mask), z_BxL, x_BxL,
                                               log_snr_BxL, **kwargs)
    stats = _diffusion_stats(loss_BxL, elbo_BxL, log_snr_BxL, elbo_row_B)
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
    tokens = valid_BxL.sum().astype(jnp.float32)
    stats = {"loss_sum": nll_BxL.sum(), "elbo_sum": nll_BxL.sum(), "elbo_tokens": tokens,
             "elbo_all_sum": nll_BxL.sum(), "tokens": tokens}
    return stats["loss_sum"], stats


def loss_fn_for(run: Run, *, logits_fn=None):
    """(params, x_BxL, key) → (Σ loss, stats) of the run's objective."""
    if run.config.objective == "diffusion":
        return functools.partial(diffusion_loss, run=run, logits_fn=logits_fn)
    return functools.partial(autoregressive_loss, run=run)


def elbo_fn_for(run: Run, *, logits_fn=None):
    """Like loss_fn_for, but every row is an ELBO row (one λ per sequence, no prompt)."""
    if run.config.objective == "diffusion":
        return functools.partial(diffusion_loss, run=run, logits_fn=logits_fn, elbo_only=True)
    return functools.partial(autoregressive_loss, run=run)
