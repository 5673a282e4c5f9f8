"""Step schedules, the prior, and the ancestral and adaptive steps.

Ancestral step from λ_t to a less noisy λ_s. With q_s = α_s·x̂ + β_s·π_s (the marginal at λ_s for
the predicted x̂) and γ = β_t·π_t − α_{t|s}·β_s·π_s, the posterior

  p(z_s = v | z_t) ∝ q_s(v)·(α_{t|s}·1[v = z_t] + γ(z_t))

is a three-way mixture per position: keep z_t with weight α_{t|s}·q_s(z_t), else (weight γ(z_t))
draw from q_s, i.e. from x̂ with weight γ·α_s or from π_s with weight γ·β_s. Only x̂(z_t) and one
categorical draw from x̂ touch the vocabulary, so a step costs O(B·L·V) and builds no [V, V]
object. γ is computed as β_t·π_t·(1 − e^Δ) with Δ = λ_t − λ_s + log π_s(z) − log π_t(z) ≤ 0 (true
for scale a ≤ 1), which stays exact when λ_s → λ_t and at the shifts ±1000.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlmjax.diffusion.forward import sample_from_pi
from dlmjax.diffusion.sampling.draws import (
    _argmax,
    _draw,
    _log_normalizer,
    _make_xhat,
    _precision,
    _sampling_logit_at,
    _top,
    _uniform_from_bits,
)
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN, pi_at

SCHEDULES = ("cosine", "linear")
# Step schedules run t from T_START to T_END (docs/science.md).
T_START = 0.999
T_END = 0.001


def _log_snr_at(step, num_steps, schedule, log_snr_min, log_snr_max, xp):
    """λ after `step` of `num_steps` steps, +inf once step >= num_steps; xp is numpy or jnp."""
    t = T_START + (T_END - T_START) * step / num_steps
    if schedule == "cosine":
        log_snr = -2.0 * xp.log(xp.tan(0.5 * np.pi * t))  # logit(½ + ½·cos πt) = logit(cos² πt/2)
    else:
        log_snr = xp.log1p(-t) - xp.log(t)  # logit(1 − t)
    log_snr = xp.clip(log_snr, log_snr_min, log_snr_max)
    return xp.where(step >= num_steps, np.inf, log_snr)


def _first_log_snr(schedule):
    """λ_0, the prior's level: the same for every num_steps (−9 for cosine, logit(0.001) linear)."""
    return float(_log_snr_at(0.0, 1, schedule, LOG_SNR_MIN, LOG_SNR_MAX, np))


def step_log_snrs(num_steps, schedule="cosine", *, log_snr_min=LOG_SNR_MIN,
                  log_snr_max=LOG_SNR_MAX):
    """λ_0 … λ_num_steps (float64 NumPy): λ_0 is the prior's level, the last one is +inf.

    t runs linearly from 0.999 to 0.001; α = ½ + ½·cos(πt) ("cosine") or α = 1 − t ("linear", the
    training distribution of λ); λ = logit(α) clipped to [log_snr_min, log_snr_max]. The final step
    goes to λ = +inf instead of λ(t = 0.001), so the last step returns clean tokens.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    steps = np.arange(num_steps + 1, dtype=np.float64)
    return _log_snr_at(steps, num_steps, schedule, log_snr_min, log_snr_max, np)


def sample_prior(key, batch_size, seq_len, *, vocab_size, mask_id, shift, scale=1.0,
                 log_snr=LOG_SNR_MIN):
    """z ~ π_λ at the prior level: all mask (masked), uniform ordinary ids (uniform), or mixed."""
    log_snr_BxL = jnp.full((batch_size, seq_len), log_snr, jnp.float32)
    return sample_from_pi(key, log_snr_BxL, vocab_size=vocab_size, mask_id=mask_id, shift=shift,
                          scale=scale)


def attention_mask(noisy_BxL):
    """attn[b, q, k] = noisy[q] >= noisy[k]: clean queries never attend to noisy keys (training)."""
    return noisy_BxL[:, :, None] >= noisy_BxL[:, None, :]


def posterior_log_weights(z_BxL, log_xhat_z_BxL, log_snr_t, log_snr_s, *, vocab_size, mask_id,
                          shift, scale=1.0):
    """log of the (keep z_t, draw from x̂, draw from π_s) weights of p(z_s | z_t); they sum to 1.

    Computed in the dtype of `log_xhat_z_BxL`; λ_s may be +inf (the final step to clean tokens).
    """
    dtype = log_xhat_z_BxL.dtype
    lam_t = jnp.asarray(log_snr_t, dtype)
    lam_s = jnp.asarray(log_snr_s, dtype)
    shift = jnp.asarray(shift, dtype)
    scale = jnp.asarray(scale, dtype)
    is_mask_BxL = z_BxL == mask_id
    log_num_ordinary = jnp.log(jnp.asarray(vocab_size - 1, dtype))

    def log_pi(lam):
        mix = scale * lam + shift
        return jnp.where(is_mask_BxL, jax.nn.log_sigmoid(-mix),
                         jax.nn.log_sigmoid(mix) - log_num_ordinary)

    log_pi_t_BxL, log_pi_s_BxL = log_pi(lam_t), log_pi(lam_s)
    log_alpha_t, log_alpha_s = jax.nn.log_sigmoid(lam_t), jax.nn.log_sigmoid(lam_s)
    log_beta_t, log_beta_s = jax.nn.log_sigmoid(-lam_t), jax.nn.log_sigmoid(-lam_s)
    # Δ = log[(α_{t|s}·β_s·π_s(z)) / (β_t·π_t(z))]; clipped at 0 against rounding.
    delta_BxL = jnp.minimum((lam_t - lam_s) + log_pi_s_BxL - log_pi_t_BxL, 0.0)
    log_gamma_BxL = log_beta_t + log_pi_t_BxL + jnp.log(-jnp.expm1(delta_BxL))
    # α_{t|s}·q_s(z) = α_t·x̂(z) + α_{t|s}·β_s·π_s(z)
    log_keep_BxL = jnp.logaddexp(log_alpha_t + log_xhat_z_BxL,
                                 log_alpha_t - log_alpha_s + log_beta_s + log_pi_s_BxL)
    log_norm_BxL = jnp.logaddexp(log_keep_BxL, log_gamma_BxL)
    return (log_keep_BxL - log_norm_BxL,
            log_gamma_BxL + log_alpha_s - log_norm_BxL,
            log_gamma_BxL + log_beta_s - log_norm_BxL)


def ancestral_step(key, z_BxL, logits_BxLxV, log_snr_t, log_snr_s, *, mask_id, shift, scale=1.0,
                   temperature=1.0, top_k=None, top_p=None, float64=False, update_BxL=None):
    """One draw z_s ~ p(z_s | z_t), x̂ from `logits_BxLxV`; positions outside `update_BxL` stay.

    Every step takes logits of the last W <= L positions (the others must stay out of
    update_BxL): the cached path passes the positions after the clean prefix only, and the
    random draws, made at the window's shape, are those of the uncached step.
    """
    vocab_size = logits_BxLxV.shape[-1]
    key_bits, key_pi = jax.random.split(key)
    log_snr_s_BxL = jnp.full(z_BxL.shape, log_snr_s, jnp.float32)
    from_pi_BxL = sample_from_pi(key_pi, log_snr_s_BxL, vocab_size=vocab_size, mask_id=mask_id,
                                 shift=shift, scale=scale)
    bits_4xBxL = jax.random.bits(key_bits, (4, *z_BxL.shape), jnp.uint32)
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=mask_id, temperature=temperature, top_k=top_k,
                          top_p=top_p, dtype=dtype, seq_len=z_BxL.shape[-1], need_top=False,
                          positions_BxL=update_BxL)
        log_xhat_z_BxL = _sampling_logit_at(xhat, z_BxL) - _log_normalizer(xhat)
        log_keep_BxL, log_from_xhat_BxL, _ = posterior_log_weights(
            z_BxL, log_xhat_z_BxL, log_snr_t, log_snr_s, vocab_size=vocab_size, mask_id=mask_id,
            shift=shift, scale=scale)
        from_xhat_BxL = _draw(xhat, _uniform_from_bits(bits_4xBxL[2:], dtype))
        u_BxL = _uniform_from_bits(bits_4xBxL[:2], dtype)
        keep_BxL = u_BxL < jnp.exp(log_keep_BxL)
        take_xhat_BxL = u_BxL < jnp.exp(log_keep_BxL) + jnp.exp(log_from_xhat_BxL)
    z_s_BxL = jnp.where(keep_BxL, z_BxL, jnp.where(take_xhat_BxL, from_xhat_BxL, from_pi_BxL))
    if update_BxL is not None:
        z_s_BxL = jnp.where(update_BxL, z_s_BxL, z_BxL)
    return z_s_BxL.astype(jnp.int32)


class _Choice(NamedTuple):
    """What the confidence-ordered steps (adaptive, threshold) decide from one x̂."""

    new_BxL: jax.Array  # the token each position would get
    confidence_BxL: jax.Array  # x̂(new) under the sampling transform (float32)
    candidate_BxL: jax.Array  # positions that may change
    ranked_BxL: jax.Array  # score with a tie-breaking jitter; −inf off the candidates


def _choose(key, z_BxL, logits_BxLxV, *, mask_id, shift, scale, log_snr_min, temperature, top_k,
            top_p, float64, update_BxL):
    """Score π_{λmin}(z)·(max x̂ − x̂(z)) and the token to write, for every position."""
    vocab_size = logits_BxLxV.shape[-1]
    key_bits, key_tie = jax.random.split(key)
    bits_2xBxL = jax.random.bits(key_bits, (2, *z_BxL.shape), jnp.uint32)
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=mask_id, temperature=temperature or 1.0,
                          top_k=top_k, top_p=top_p, dtype=dtype, seq_len=z_BxL.shape[-1])
        log_norm_BxL = _log_normalizer(xhat)
        # max_v x̂_v − x̂(z), with max x̂ = exp(top − log normaliser)
        top_prob_BxL = jnp.exp(_top(xhat) - log_norm_BxL)
        gain_BxL = top_prob_BxL - jnp.exp(_sampling_logit_at(xhat, z_BxL) - log_norm_BxL)
        if temperature == 0:
            new_BxL = _argmax(xhat)
            confidence_BxL = top_prob_BxL
        else:
            new_BxL = _draw(xhat, _uniform_from_bits(bits_2xBxL, dtype))
            confidence_BxL = jnp.exp(_sampling_logit_at(xhat, new_BxL) - log_norm_BxL)
        gain_BxL = gain_BxL.astype(jnp.float32)
        confidence_BxL = confidence_BxL.astype(jnp.float32)
    score_BxL = gain_BxL * pi_at(z_BxL, log_snr_min, vocab_size=vocab_size, mask_id=mask_id,
                                 shift=shift, scale=scale)
    candidate_BxL = score_BxL > 0
    if update_BxL is not None:
        candidate_BxL &= update_BxL
    jitter_BxL = 1.0 + 1e-6 * jax.random.uniform(key_tie, z_BxL.shape)
    ranked_BxL = jnp.where(candidate_BxL, score_BxL * jitter_BxL, -jnp.inf)
    return _Choice(new_BxL, confidence_BxL, candidate_BxL, ranked_BxL)


def _top_ranked(ranked_BxL, candidate_BxL, k):
    """Mask of the k best-ranked candidates per row (fewer when fewer are candidates)."""
    batch_size, seq_len = ranked_BxL.shape
    _, chosen_BxK = lax.top_k(ranked_BxL, min(k, seq_len))
    return jnp.zeros(ranked_BxL.shape, bool).at[
        jnp.arange(batch_size)[:, None], chosen_BxK].set(True) & candidate_BxL


def adaptive_step(key, z_BxL, logits_BxLxV, *, tokens_per_step, mask_id, shift, scale=1.0,
                  log_snr_min=LOG_SNR_MIN, temperature=0.0, top_k=None, top_p=None,
                  float64=False, update_BxL=None):
    """Fully denoise the `tokens_per_step` positions with the largest π_{λmin}(z)·(max x̂ − x̂(z)).

    Only positions in `update_BxL` with a positive score are candidates: under masked noise a clean
    token has π_{λmin}(z) = 0 and is never touched. temperature 0 writes the arg-max of x̂,
    otherwise a draw from the tempered x̂. The score uses the tempered x̂ (x̂ itself when greedy).
    Exact ties are broken at random.
    """
    choice = _choose(key, z_BxL, logits_BxLxV, mask_id=mask_id, shift=shift, scale=scale,
                     log_snr_min=log_snr_min, temperature=temperature, top_k=top_k, top_p=top_p,
                     float64=float64, update_BxL=update_BxL)
    chosen_BxL = _top_ranked(choice.ranked_BxL, choice.candidate_BxL, tokens_per_step)
    return jnp.where(chosen_BxL, choice.new_BxL, z_BxL).astype(jnp.int32)


def threshold_step(key, z_BxL, logits_BxLxV, committed_BxL, *, threshold, tokens_per_step,
                   mask_id, shift, scale=1.0, log_snr_min=LOG_SNR_MIN, temperature=0.0,
                   top_k=None, top_p=None, float64=False, update_BxL=None):
    """Confidence-threshold parallel decoding: (z_new_BxL, committed_BxL).

    Commits every uncommitted candidate (as in adaptive_step) whose token has x̂(new) >=
    `threshold`, and at least the `tokens_per_step` best-scored ones, so a step commits >= 1
    position while any candidate is left. Committed positions are final. With a threshold no
    position reaches this is adaptive_step with the same key, draw for draw.
    """
    choice = _choose(key, z_BxL, logits_BxLxV, mask_id=mask_id, shift=shift, scale=scale,
                     log_snr_min=log_snr_min, temperature=temperature, top_k=top_k, top_p=top_p,
                     float64=float64, update_BxL=update_BxL)
    candidate_BxL = choice.candidate_BxL & ~committed_BxL
    ranked_BxL = jnp.where(candidate_BxL, choice.ranked_BxL, -jnp.inf)
    chosen_BxL = _top_ranked(ranked_BxL, candidate_BxL, tokens_per_step)
    chosen_BxL |= candidate_BxL & (choice.confidence_BxL >= threshold)
    z_new_BxL = jnp.where(chosen_BxL, choice.new_BxL, z_BxL).astype(jnp.int32)
    return z_new_BxL, committed_BxL | chosen_BxL
