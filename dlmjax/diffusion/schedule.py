"""Hybrid noise in log-SNR λ: signal level α(λ), mixing distribution π_λ and λ sampling.

π_λ = σ(aλ + b)·u + (1 − σ(aλ + b))·e_mask, with u uniform over the N = V − 1 ordinary tokens.
Everything is written with log-sigmoids so that the shifts ±1000 (pure masking / pure uniform)
give exact zeros and finite logs instead of NaN.
"""

import jax
import jax.numpy as jnp

# Shift b of the mixing logit aλ + b per noise type (docs/science.md).
NOISE_SHIFTS = {
    "masked": -1000.0,
    "low_uniform": -2.0,
    "balanced": 0.0,
    "high_uniform": 2.0,
    "uniform": 1000.0,
}

# Training and evaluation range of λ; t ~ U[σ(−9), σ(9)] with λ = logit(1 − t) covers it.
LOG_SNR_MIN = -9.0
LOG_SNR_MAX = 9.0


def noise_shift(noise_type: str) -> float:
    if noise_type not in NOISE_SHIFTS:
        raise ValueError(
            f"unknown noise type {noise_type!r}; expected one of {sorted(NOISE_SHIFTS)}")
    return NOISE_SHIFTS[noise_type]


def alpha(log_snr):
    """Probability of keeping the clean token, α = σ(λ)."""
    return jax.nn.sigmoid(log_snr)


def log_alpha(log_snr):
    return jax.nn.log_sigmoid(log_snr)


def log_one_minus_alpha(log_snr):
    return jax.nn.log_sigmoid(-log_snr)


def uniform_fraction(log_snr, *, shift, scale=1.0):
    """s = σ(aλ + b): the share of π_λ spread uniformly over ordinary tokens (the rest is mask)."""
    return jax.nn.sigmoid(scale * log_snr + shift)


def mask_fraction(log_snr, *, shift, scale=1.0):
    """1 − s = σ(−(aλ + b)), computed directly so it keeps full precision where s ≈ 1."""
    return jax.nn.sigmoid(-(scale * log_snr + shift))


def log_noise_masses(log_snr, *, vocab_size, shift, scale=1.0):
    """(log c_u, log c_m): log of (1 − α)·π_λ on one ordinary token and on the mask token.

    Finite even where the mass itself underflows to zero (c_u for masked noise, c_m for uniform).
    """
    num_ordinary = vocab_size - 1
    mix = scale * log_snr + shift
    log_noise = log_one_minus_alpha(log_snr)
    log_c_u = log_noise + jax.nn.log_sigmoid(mix) - jnp.log(num_ordinary)
    log_c_m = log_noise + jax.nn.log_sigmoid(-mix)
    return log_c_u, log_c_m


def pi_at(ids, log_snr, *, vocab_size, mask_id, shift, scale=1.0):
    """π_λ(ids): mixing probability of each given token id."""
    s = uniform_fraction(log_snr, shift=shift, scale=scale)
    return jnp.where(ids == mask_id, mask_fraction(log_snr, shift=shift, scale=scale),
                     s / (vocab_size - 1))


def pi_derivative_at(ids, log_snr, *, vocab_size, mask_id, shift, scale=1.0):
    """dπ_λ/dλ at the given ids: a·σ'(aλ + b)·(u − e_mask)."""
    s = uniform_fraction(log_snr, shift=shift, scale=scale)
    ds = scale * s * mask_fraction(log_snr, shift=shift, scale=scale)
    return jnp.where(ids == mask_id, -ds, ds / (vocab_size - 1))


def log_snr_density(log_snr):
    """p(λ) = σ(λ)σ(−λ): the density of λ = logit(1 − t) for uniform t (unnormalised on [−9, 9])."""
    return jax.nn.sigmoid(log_snr) * jax.nn.sigmoid(-log_snr)


def sample_log_snr(key, batch_size, seq_len, *, per_token_fraction=0.0,
                   log_snr_min=LOG_SNR_MIN, log_snr_max=LOG_SNR_MAX):
    """λ_BxL: one λ per sequence, or one per token for a `per_token_fraction` of the sequences."""
    key_seq, key_tok, key_choice = jax.random.split(key, 3)
    t_min, t_max = jax.nn.sigmoid(-log_snr_max), jax.nn.sigmoid(-log_snr_min)

    def draw(k, shape):
        t = jax.random.uniform(k, shape, minval=t_min, maxval=t_max)
        return jnp.log1p(-t) - jnp.log(t)  # logit(1 − t)

    per_seq_Bx1 = draw(key_seq, (batch_size, 1))
    per_tok_BxL = draw(key_tok, (batch_size, seq_len))
    use_tok_Bx1 = jax.random.bernoulli(key_choice, per_token_fraction, (batch_size, 1))
    return jnp.where(use_tok_Bx1, per_tok_BxL, per_seq_Bx1)
