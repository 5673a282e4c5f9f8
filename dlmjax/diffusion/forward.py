"""Forward noising z ~ q_λ(·|x) = α·δ_x + (1 − α)·π_λ."""

import jax
import jax.numpy as jnp

from dlmjax.diffusion.schedule import alpha, uniform_fraction


def sample_from_pi(key, log_snr_BxL, *, vocab_size, mask_id, shift, scale=1.0):
    """Draws from π_λ: a uniform ordinary token with probability σ(aλ + b), else the mask."""
    key_kind, key_tok = jax.random.split(key)
    s_BxL = uniform_fraction(log_snr_BxL, shift=shift, scale=scale)
    is_uniform_BxL = jax.random.uniform(key_kind, log_snr_BxL.shape) < s_BxL
    # Uniform over the V − 1 ordinary ids: draw in [0, V − 1) and step over the mask id.
    r_BxL = jax.random.randint(key_tok, log_snr_BxL.shape, 0, vocab_size - 1)
    ordinary_BxL = r_BxL + (r_BxL >= mask_id)
    return jnp.where(is_uniform_BxL, ordinary_BxL, mask_id).astype(jnp.int32)


def sample_zt(key, x_BxL, log_snr_BxL, *, vocab_size, mask_id, shift, scale=1.0):
    """z_BxL ~ q_λ(·|x): keep x with probability α(λ), else draw from π_λ.

    λ = +inf marks a clean (conditioning) token, which is always kept.
    """
    key_keep, key_pi = jax.random.split(key)
    log_snr_BxL = jnp.broadcast_to(log_snr_BxL, x_BxL.shape).astype(jnp.float32)
    keep_BxL = jax.random.uniform(key_keep, x_BxL.shape) < alpha(log_snr_BxL)
    noise_BxL = sample_from_pi(key_pi, log_snr_BxL, vocab_size=vocab_size, mask_id=mask_id,
                               shift=shift, scale=scale)
    return jnp.where(keep_BxL, x_BxL, noise_BxL).astype(jnp.int32)
