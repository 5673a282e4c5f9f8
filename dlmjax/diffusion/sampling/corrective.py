"""Steps that send decoded tokens back to noise: entropy-bound decoding and ReMDM-style remasking.

Remasking (ReMDM). A step from λ_t to λ_s first takes the exact posterior step to a cleaner level
λ_s' with α_s' = α_s / (1 − σ), then applies the forward process from λ_s' back to λ_s: keep the
token with probability α_s/α_s' = 1 − σ, else draw from the residual noise

  r(z) = (β_s·π_s(z) − (1 − σ)·β_s'·π_s'(z)) / σ     (a mix of the mask and uniform ids).

If x̂ is exact, z_s' has the marginal q_s'(·|x) and so z_s has q_s(·|x): the marginals of the noise
process are kept for any σ in [0, 1 − α_s], for every noise type (r ≥ 0 whenever scale a ≤ 1, the
condition the ancestral step needs too). Under masked noise this is ReMDM's kernel, decoded tokens
remasked with probability σ; ReMDM's bound σ ≤ (1 − α_s)/α_t is slightly wider than ours, which is
what the hybrid construction allows. σ = 0 is the ancestral step. The schedules of σ:

- "cap": σ = min(η, σ_max); "rescale": σ = η·σ_max (σ_max = 1 − α_s);
- "loop": the λ schedule runs from t = 1 to t_on, holds α(t_on) (remasking with σ = min(η, σ_max))
  while t runs from t_on to t_off, then runs from t_on to 0 while t runs from t_off to 0.

Entropy-bound decoding. Each step sorts the not yet committed positions by the entropy of x̂ and
commits the lowest-entropy ones while their summed entropy stays within the bound (at least
`tokens_per_step`); the others are renoised per the noise process: a token x₀ from x̂ kept with
probability α_s, else a draw from π_s. The last step (λ_s = +inf) leaves no noise.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dlmjax.diffusion.forward import sample_zt
from dlmjax.diffusion.sampling.draws import (
    _argmax,
    _draw,
    _entropy,
    _make_xhat,
    _precision,
    _uniform_from_bits,
)
from dlmjax.diffusion.sampling.steps import T_END, T_START, _log_snr_at, ancestral_step
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN

REMASK_SCHEDULES = ("cap", "rescale", "loop")


def remask_time(step, num_steps, schedule, t_on, t_off):
    """t of the λ schedule after `step` steps: the identity, or ReMDM's "loop" time warp."""
    t = T_START + (T_END - T_START) * step / num_steps
    if schedule != "loop":
        return t
    return jnp.where(t > t_on, t, jnp.where(t > t_off, t_on, t * t_on / t_off))


def remask_log_snr(step, num_steps, *, schedule, remask_schedule, t_on, t_off):
    """λ after `step` steps for the remasking sampler (+inf once step >= num_steps)."""
    t = remask_time(step, num_steps, remask_schedule, t_on, t_off)
    # _log_snr_at maps step/num_steps to t linearly; invert that map to feed it our t.
    fraction = (t - T_START) / (T_END - T_START)
    log_snr = _log_snr_at(fraction, 1.0, schedule, LOG_SNR_MIN, LOG_SNR_MAX, jnp)
    return jnp.where(step >= num_steps, np.inf, log_snr)


def remask_sigma(step, num_steps, log_snr_s, *, remask_schedule, eta, t_on, t_off):
    """σ of the step that ends at λ_s, clipped to [0, 1 − α_s]."""
    sigma_max = jax.nn.sigmoid(-log_snr_s)
    if remask_schedule == "cap":
        sigma = jnp.minimum(eta, sigma_max)
    elif remask_schedule == "rescale":
        sigma = eta * sigma_max
    else:
        t_next = T_START + (T_END - T_START) * (step + 1) / num_steps
        in_loop = (t_next <= t_on) & (t_next > t_off)
        sigma = jnp.where(in_loop, jnp.minimum(eta, sigma_max), 0.0)
    return jnp.clip(sigma, 0.0, sigma_max)


def remask_step(key, z_BxL, logits_BxLxV, log_snr_t, log_snr_s, sigma, *, mask_id, shift,
                scale=1.0, temperature=1.0, top_k=None, top_p=None, float64=False,
                update_BxL=None):
    """Posterior step λ_t → λ_s' then the forward process λ_s' → λ_s (module docstring)."""
    vocab_size = logits_BxLxV.shape[-1]
    key_step, key_renoise, key_kind, key_id = jax.random.split(key, 4)
    sigma = jnp.asarray(sigma, jnp.float32)
    log_snr_s = jnp.asarray(log_snr_s, jnp.float32)
    log_alpha_mid = jnp.minimum(jax.nn.log_sigmoid(log_snr_s) - jnp.log1p(-sigma), 0.0)
    log_snr_mid = jnp.where(log_alpha_mid >= 0.0, np.inf,
                            log_alpha_mid - jnp.log(-jnp.expm1(log_alpha_mid)))
    z_mid_BxL = ancestral_step(key_step, z_BxL, logits_BxLxV, log_snr_t, log_snr_mid,
                               mask_id=mask_id, shift=shift, scale=scale, temperature=temperature,
                               top_k=top_k, top_p=top_p, float64=float64, update_BxL=update_BxL)

    def uniform_noise(log_snr):  # β·σ(aλ + b): the uniform part of the noise at λ
        return jnp.where(jnp.isinf(log_snr), 0.0,
                         jax.nn.sigmoid(-log_snr) * jax.nn.sigmoid(scale * log_snr + shift))

    uniform_share = (uniform_noise(log_snr_s) - (1.0 - sigma) * uniform_noise(log_snr_mid))
    uniform_share = jnp.clip(uniform_share / jnp.maximum(sigma, 1e-30), 0.0, 1.0)
    renoise_BxL = jax.random.uniform(key_renoise, z_BxL.shape) < sigma
    r_BxL = jax.random.randint(key_id, z_BxL.shape, 0, vocab_size - 1)
    ordinary_BxL = r_BxL + (r_BxL >= mask_id)
    noise_BxL = jnp.where(jax.random.uniform(key_kind, z_BxL.shape) < uniform_share,
                          ordinary_BxL, mask_id)
    if update_BxL is not None:
        renoise_BxL &= update_BxL
    return jnp.where(renoise_BxL, noise_BxL, z_mid_BxL).astype(jnp.int32)


def entropy_bound_step(key, z_BxL, logits_BxLxV, committed_BxL, log_snr_s, *, bound,
                       tokens_per_step, mask_id, shift, scale=1.0, temperature=0.0, top_k=None,
                       top_p=None, float64=False, update_BxL=None):
    """Commit the lowest-entropy positions within `bound` nats, renoise the rest to λ_s.

    Returns (z_new_BxL, committed_BxL). Entropy is that of the tempered x̂ (x̂ itself when greedy);
    temperature 0 writes the arg-max, otherwise a draw from the tempered x̂.
    """
    vocab_size = logits_BxLxV.shape[-1]
    batch_size, seq_len = z_BxL.shape
    key_bits, key_tie, key_noise = jax.random.split(key, 3)
    bits_2xBxL = jax.random.bits(key_bits, (2, *z_BxL.shape), jnp.uint32)
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=mask_id, temperature=temperature or 1.0,
                          top_k=top_k, top_p=top_p, dtype=dtype, seq_len=seq_len)
        entropy_BxL = _entropy(xhat).astype(jnp.float32)
        if temperature == 0:
            new_BxL = _argmax(xhat)
        else:
            new_BxL = _draw(xhat, _uniform_from_bits(bits_2xBxL, dtype))
    candidate_BxL = ~committed_BxL
    if update_BxL is not None:
        candidate_BxL &= update_BxL
    jitter_BxL = 1e-6 * jax.random.uniform(key_tie, z_BxL.shape)  # random order among ties
    key_BxL = jnp.where(candidate_BxL, entropy_BxL * (1.0 + jitter_BxL) + jitter_BxL, np.inf)
    order_BxL = jnp.argsort(key_BxL, axis=-1)
    sorted_entropy_BxL = jnp.take_along_axis(jnp.where(candidate_BxL, entropy_BxL, np.inf),
                                             order_BxL, axis=-1)
    rank_L = jnp.arange(seq_len)
    accept_sorted_BxL = (jnp.cumsum(sorted_entropy_BxL, axis=-1) <= bound) | \
        (rank_L < tokens_per_step)
    accept_sorted_BxL &= jnp.isfinite(sorted_entropy_BxL)  # only candidates
    accepted_BxL = jnp.zeros(z_BxL.shape, bool).at[
        jnp.arange(batch_size)[:, None], order_BxL].set(accept_sorted_BxL)
    noised_BxL = sample_zt(key_noise, new_BxL, jnp.full(z_BxL.shape, log_snr_s, jnp.float32),
                           vocab_size=vocab_size, mask_id=mask_id, shift=shift, scale=scale)
    rest_BxL = candidate_BxL & ~accepted_BxL
    z_new_BxL = jnp.where(accepted_BxL, new_BxL, jnp.where(rest_BxL, noised_BxL, z_BxL))
    return z_new_BxL.astype(jnp.int32), committed_BxL | accepted_BxL
