"""Samplers: ancestral and adaptive steps, step schedules, priors, and the compiled sampling loop.

Ancestral step from λ_t to a less noisy λ_s. With q_s = α_s·x̂ + β_s·π_s (the marginal at λ_s for
the predicted x̂) and γ = β_t·π_t − α_{t|s}·β_s·π_s, the posterior

  p(z_s = v | z_t) ∝ q_s(v)·(α_{t|s}·1[v = z_t] + γ(z_t))

is a three-way mixture per position: keep z_t with weight α_{t|s}·q_s(z_t), else (weight γ(z_t))
draw from q_s, i.e. from x̂ with weight γ·α_s or from π_s with weight γ·β_s. Only x̂(z_t) and one
categorical draw from x̂ touch the vocabulary, so a step costs O(B·L·V) and builds no [V, V]
object. γ is computed as β_t·π_t·(1 − e^Δ) with Δ = λ_t − λ_s + log π_s(z) − log π_t(z) ≤ 0 (true
for scale a ≤ 1), which stays exact when λ_s → λ_t and at the shifts ±1000.

The categorical draw is an inverse-CDF draw with one uniform per position, done in two levels
(group sums over the vocabulary, then a cumulative sum inside the chosen group), which reads the
logits about twice and needs no per-vocabulary random numbers. With `float64=True` the
probabilities, cumulative sums, uniforms and mixture weights are float64 even when jax x64 is off:
that code runs under a local `jax.enable_x64(True)` scope, and the uniforms are built from two
uint32 words (53 bits), because jax.random itself cannot make float64 inside such a scope.

top-k and top-p need lax.top_k / a sort over V per position: cheap on accelerators, but slow on
CPU (seconds per step at B·L = 4096, V = 4096), so they are off by default.

The whole sampler (prior, every step, every block) is one jitted program: lax.fori_loop over
blocks and steps, lax.cond to skip the network when no token changed, no host synchronisation.
num_steps and the noise shift are traced values, so changing them does not recompile.
"""

import contextlib
import dataclasses
import functools
import math
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlmjax.diffusion.forward import sample_from_pi
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN, pi_at

METHODS = ("ancestral", "adaptive")
SCHEDULES = ("cosine", "linear")
# Step schedules run t from T_START to T_END (DESIGN.md §1).
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


def _precision(float64):
    return jax.enable_x64(True) if float64 else contextlib.nullcontext()


def _uniform_from_bits(bits_2xS, dtype):
    """U[0, 1) from two uint32 words: 24 bits for float32, 53 bits for float64 (needs x64 scope)."""
    if dtype == jnp.float64:
        high = (bits_2xS[0] >> 5).astype(jnp.float64)  # 27 bits
        low = (bits_2xS[1] >> 6).astype(jnp.float64)  # 26 bits
        return (high * 2.0**26 + low) * 2.0**-53
    return (bits_2xS[0] >> 8).astype(jnp.float32) * 2.0**-24


class _Xhat(NamedTuple):
    """x̂ kept as raw logits plus what turns them into sampling logits, never materialised.

    The sampling logit of id v is (l_v + bias_v)/T where l_v >= threshold, else −inf (bias is −inf
    on the mask). Consumers apply this inside their own reductions, which XLA fuses, so a step
    reads the logits about twice. The vocabulary is viewed as N groups of S ids.
    """

    logits_BxLxNxS: jax.Array
    bias_NxS: jax.Array
    threshold_BxL: jax.Array | None
    temperature: float
    group_top_BxLxN: jax.Array  # max sampling logit per group
    top_BxL: jax.Array
    mass_BxLxN: jax.Array  # Σ_group exp(sampling logit − top)


def _sampling_logits(logits, bias, threshold, temperature):
    """Elementwise map from raw logits to sampling logits; threshold/bias broadcast to logits."""
    out = logits + bias
    if threshold is not None:
        out = jnp.where(logits >= threshold, out, -jnp.inf)
    if temperature == 0:
        return jnp.where(out > -jnp.inf, 0.0, -jnp.inf).astype(out.dtype)  # uniform on the arg-max
    return out if temperature == 1.0 else out / temperature


def _threshold(logits_BxLxV, bias_V, *, temperature, top_k, top_p):
    """Smallest raw logit kept by greedy / top-k / top-p (None: keep all); ties are kept."""
    vocab_size = logits_BxLxV.shape[-1]
    if temperature != 0 and top_k is None and top_p is None:
        return None
    masked_BxLxV = logits_BxLxV + bias_V
    if temperature == 0:
        return jnp.max(masked_BxLxV, axis=-1)
    threshold_BxL = None
    if top_k is not None and top_k < vocab_size - 1:
        threshold_BxL = lax.top_k(masked_BxLxV, top_k)[0][..., -1]
    if top_p is not None and top_p < 1.0:
        kept_BxLxV = _sampling_logits(logits_BxLxV, bias_V, None if threshold_BxL is None
                                      else threshold_BxL[..., None], temperature)
        order_BxLxV = jnp.argsort(-kept_BxLxV, axis=-1)
        sorted_BxLxV = jnp.take_along_axis(kept_BxLxV, order_BxLxV, axis=-1)
        probs_BxLxV = jax.nn.softmax(sorted_BxLxV, axis=-1)
        mass_before_BxLxV = jnp.cumsum(probs_BxLxV, axis=-1) - probs_BxLxV
        num_kept_BxL = jnp.sum(mass_before_BxLxV < top_p, axis=-1)  # ≥ 1: the top is kept
        last_BxL = jnp.take_along_axis(order_BxLxV, num_kept_BxL[..., None] - 1, axis=-1)
        threshold_BxL = jnp.take_along_axis(logits_BxLxV, last_BxL, axis=-1)[..., 0]
    return threshold_BxL


def _group_size(vocab_size):
    """A divisor of V near √V for the two-level draw (V itself when V is small or has none)."""
    target = max(1, math.isqrt(vocab_size))
    for g in range(target, max(target // 4, 1) - 1, -1):
        if vocab_size % g == 0 and g > 1:
            return g
    return vocab_size


def _make_xhat(logits_BxLxV, *, mask_id, temperature=1.0, top_k=None, top_p=None,
               dtype=jnp.float32):
    *lead, vocab_size = logits_BxLxV.shape
    group = _group_size(vocab_size)
    logits_BxLxV = logits_BxLxV.astype(dtype)
    bias_V = jnp.where(jnp.arange(vocab_size) == mask_id, -jnp.inf, 0.0).astype(dtype)
    threshold_BxL = _threshold(logits_BxLxV, bias_V, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    logits_BxLxNxS = logits_BxLxV.reshape(*lead, vocab_size // group, group)
    bias_NxS = bias_V.reshape(-1, group)
    if threshold_BxL is None and temperature == 1.0:
        # Plain reductions over the raw logits (an elementwise producer such as the mask bias
        # would be materialised first on CPU); the mask's group is redone from a slice below.
        sampling_BxLxNxS = logits_BxLxNxS
    else:
        sampling_BxLxNxS = _sampling_logits(
            logits_BxLxNxS, bias_NxS,
            None if threshold_BxL is None else threshold_BxL[..., None, None], temperature)
    group_top_BxLxN = jnp.max(sampling_BxLxNxS, axis=-1)
    has_mask = 0 <= mask_id < vocab_size
    if has_mask:
        mask_group = mask_id // group
        mask_group_BxLxS = jnp.where(jnp.arange(group) == mask_id % group, -jnp.inf,
                                     sampling_BxLxNxS[..., mask_group, :])
        group_top_BxLxN = group_top_BxLxN.at[..., mask_group].set(
            jnp.max(mask_group_BxLxS, axis=-1))
    top_BxL = jnp.max(group_top_BxLxN, axis=-1)
    mass_BxLxN = jnp.sum(jnp.exp(sampling_BxLxNxS - top_BxL[..., None, None]), axis=-1)
    if has_mask:
        mass_BxLxN = mass_BxLxN.at[..., mask_group].set(
            jnp.sum(jnp.exp(mask_group_BxLxS - top_BxL[..., None]), axis=-1))
    return _Xhat(logits_BxLxNxS, bias_NxS, threshold_BxL, temperature, group_top_BxLxN, top_BxL,
                 mass_BxLxN)


def _log_normalizer(xhat):
    return xhat.top_BxL + jnp.log(jnp.sum(xhat.mass_BxLxN, axis=-1))


def _sampling_logit_at(xhat, ids_BxL):
    """Unnormalised sampling logit of the given ids (gathers, no pass over V)."""
    num_groups, group = xhat.bias_NxS.shape
    flat_BxLxV = xhat.logits_BxLxNxS.reshape(*ids_BxL.shape, num_groups * group)
    logit_BxL = jnp.take_along_axis(flat_BxLxV, ids_BxL[..., None], axis=-1)[..., 0]
    return _sampling_logits(logit_BxL, xhat.bias_NxS.reshape(-1)[ids_BxL], xhat.threshold_BxL,
                            xhat.temperature)


def _group_weights(xhat, g_BxL):
    """exp(sampling logit − top) of the ids in group g: [B, L, S]."""
    logits_BxLxS = jnp.take_along_axis(xhat.logits_BxLxNxS, g_BxL[..., None, None], axis=-2)[
        ..., 0, :]
    threshold = None if xhat.threshold_BxL is None else xhat.threshold_BxL[..., None]
    sampling_BxLxS = _sampling_logits(logits_BxLxS, xhat.bias_NxS[g_BxL], threshold,
                                      xhat.temperature)
    return jnp.exp(sampling_BxLxS - xhat.top_BxL[..., None])


def _last_positive_index(weights_BxLxN):
    n = weights_BxLxN.shape[-1]
    return jnp.max(jnp.where(weights_BxLxN > 0, jnp.arange(n), 0), axis=-1)


def _draw(xhat, u_BxL):
    """Inverse-CDF draw with one uniform per position: pick the group, then the id inside it.

    Excluded ids have weight exactly 0 and are never returned, even when rounding pushes the
    count past the end (it is clamped to the last id with positive weight).
    """
    group = xhat.bias_NxS.shape[1]
    cum_BxLxN = jnp.cumsum(xhat.mass_BxLxN, axis=-1)
    target_BxL = u_BxL.astype(cum_BxLxN.dtype) * cum_BxLxN[..., -1]
    g_BxL = jnp.sum(cum_BxLxN <= target_BxL[..., None], axis=-1)
    g_BxL = jnp.minimum(g_BxL, _last_positive_index(xhat.mass_BxLxN))
    before_BxL = jnp.take_along_axis(cum_BxLxN - xhat.mass_BxLxN, g_BxL[..., None], -1)[..., 0]
    weights_BxLxS = _group_weights(xhat, g_BxL)
    cum_in_BxLxS = jnp.cumsum(weights_BxLxS, axis=-1)
    j_BxL = jnp.sum(cum_in_BxLxS <= (target_BxL - before_BxL)[..., None], axis=-1)
    j_BxL = jnp.minimum(j_BxL, _last_positive_index(weights_BxLxS))
    return (g_BxL * group + j_BxL).astype(jnp.int32)


def _argmax(xhat):
    """Arg-max of x̂: the first group holding the top, then the first top id inside it."""
    group = xhat.bias_NxS.shape[1]
    g_BxL = jnp.argmax(xhat.group_top_BxLxN, axis=-1).astype(jnp.int32)
    j_BxL = jnp.argmax(_group_weights(xhat, g_BxL), axis=-1).astype(jnp.int32)
    return g_BxL * group + j_BxL


def predicted_logits(logits_BxLxV, *, mask_id, temperature=1.0, top_k=None, top_p=None):
    """Materialised sampling logits of x̂ (mask excluded, temperature, top-k, top-p; −inf = out).

    The sampler never builds this array; it exists to inspect and test the transform. temperature
    0 keeps only the arg-max set (greedy). Ties at the top-k / top-p threshold are kept.
    """
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    bias_V = jnp.where(jnp.arange(logits_BxLxV.shape[-1]) == mask_id, -jnp.inf, 0.0)
    threshold_BxL = _threshold(logits_BxLxV, bias_V, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    return _sampling_logits(logits_BxLxV, bias_V,
                            None if threshold_BxL is None else threshold_BxL[..., None],
                            temperature)


def categorical_from_bits(bits_2xBxL, logits_BxLxV, *, float64=False):
    """Draw from softmax(logits) with two uint32 words per position as the randomness.

    float64=True builds a 53-bit uniform and runs the whole draw in float64, so ids with mass
    below float32's 2^-24 resolution (e.g. 1e-12) are drawn at their true rate.
    """
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=-1, dtype=dtype)
        return _draw(xhat, _uniform_from_bits(bits_2xBxL, dtype))


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
    """One draw z_s ~ p(z_s | z_t), x̂ from `logits_BxLxV`; positions outside `update_BxL` stay."""
    vocab_size = logits_BxLxV.shape[-1]
    key_bits, key_pi = jax.random.split(key)
    log_snr_s_BxL = jnp.full(z_BxL.shape, log_snr_s, jnp.float32)
    from_pi_BxL = sample_from_pi(key_pi, log_snr_s_BxL, vocab_size=vocab_size, mask_id=mask_id,
                                 shift=shift, scale=scale)
    bits_4xBxL = jax.random.bits(key_bits, (4, *z_BxL.shape), jnp.uint32)
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=mask_id, temperature=temperature, top_k=top_k,
                          top_p=top_p, dtype=dtype)
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


def adaptive_step(key, z_BxL, logits_BxLxV, *, tokens_per_step, mask_id, shift, scale=1.0,
                  log_snr_min=LOG_SNR_MIN, temperature=0.0, top_k=None, top_p=None,
                  float64=False, update_BxL=None):
    """Fully denoise the `tokens_per_step` positions with the largest π_{λmin}(z)·(max x̂ − x̂(z)).

    Only positions in `update_BxL` with a positive score are candidates: under masked noise a clean
    token has π_{λmin}(z) = 0 and is never touched. temperature 0 writes the arg-max of x̂,
    otherwise a draw from the tempered x̂. The score uses the tempered x̂ (x̂ itself when greedy).
    Exact ties are broken at random.
    """
    vocab_size = logits_BxLxV.shape[-1]
    batch_size, seq_len = z_BxL.shape
    key_bits, key_tie = jax.random.split(key)
    bits_2xBxL = jax.random.bits(key_bits, (2, *z_BxL.shape), jnp.uint32)
    with _precision(float64):
        dtype = jnp.float64 if float64 else jnp.float32
        xhat = _make_xhat(logits_BxLxV, mask_id=mask_id, temperature=temperature or 1.0,
                          top_k=top_k, top_p=top_p, dtype=dtype)
        log_norm_BxL = _log_normalizer(xhat)
        # max_v x̂_v − x̂(z), with max x̂ = exp(top − log normaliser)
        gain_BxL = (jnp.exp(xhat.top_BxL - log_norm_BxL)
                    - jnp.exp(_sampling_logit_at(xhat, z_BxL) - log_norm_BxL))
        if temperature == 0:
            new_BxL = _argmax(xhat)
        else:
            new_BxL = _draw(xhat, _uniform_from_bits(bits_2xBxL, dtype))
        gain_BxL = gain_BxL.astype(jnp.float32)
    score_BxL = gain_BxL * pi_at(z_BxL, log_snr_min, vocab_size=vocab_size, mask_id=mask_id,
                                 shift=shift, scale=scale)
    candidate_BxL = score_BxL > 0
    if update_BxL is not None:
        candidate_BxL &= update_BxL
    jitter_BxL = 1.0 + 1e-6 * jax.random.uniform(key_tie, z_BxL.shape)
    ranked_BxL = jnp.where(candidate_BxL, score_BxL * jitter_BxL, -jnp.inf)
    _, chosen_BxK = lax.top_k(ranked_BxL, min(tokens_per_step, seq_len))
    chosen_BxL = jnp.zeros(z_BxL.shape, bool).at[
        jnp.arange(batch_size)[:, None], chosen_BxK].set(True) & candidate_BxL
    return jnp.where(chosen_BxL, new_BxL, z_BxL).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Config:
    batch_size: int
    seq_len: int
    vocab_size: int
    mask_id: int
    method: str
    schedule: str
    temperature: float
    top_k: int | None
    top_p: float | None
    float64: bool
    block_size: int
    context_len: int
    tokens_per_step: int
    reuse_logits: bool
    logits_fn_accepts_mask: bool
    batch_sharding: jax.sharding.Sharding | None


def _denoise_window(key, logits_fn, z_BxC, clean_BxC, update_BxC, num_steps, shift, scale, cfg):
    """num_steps sampler steps on one context window; the network runs only when z changed."""
    num_steps_f = num_steps.astype(jnp.float32)

    def log_snr(step):
        return _log_snr_at(step.astype(jnp.float32), num_steps_f, cfg.schedule, LOG_SNR_MIN,
                           LOG_SNR_MAX, jnp)
    noisy_BxC = ~clean_BxC

    def network(z):
        if cfg.logits_fn_accepts_mask:
            return logits_fn(z, attention_mask(noisy_BxC))
        return logits_fn(z)

    def constrain(z):
        if cfg.batch_sharding is None:
            return z
        return lax.with_sharding_constraint(z, cfg.batch_sharding)

    def body(i, carry):
        z_BxC, logits_BxCxV, changed = carry
        if cfg.reuse_logits:
            logits_BxCxV = lax.cond(changed, lambda ops: network(ops[0]).astype(ops[1].dtype),
                                    lambda ops: ops[1], (z_BxC, logits_BxCxV))
        else:
            logits_BxCxV = network(z_BxC).astype(logits_BxCxV.dtype)
        key_i = jax.random.fold_in(key, i)
        options = dict(mask_id=cfg.mask_id, shift=shift, scale=scale, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, float64=cfg.float64,
                       update_BxL=update_BxC)
        if cfg.method == "ancestral":
            z_new_BxC = ancestral_step(key_i, z_BxC, logits_BxCxV, log_snr(i), log_snr(i + 1),
                                       **options)
        else:
            z_new_BxC = adaptive_step(key_i, z_BxC, logits_BxCxV,
                                      tokens_per_step=cfg.tokens_per_step,
                                      log_snr_min=_first_log_snr(cfg.schedule), **options)
        z_new_BxC = constrain(z_new_BxC)
        return z_new_BxC, logits_BxCxV, jnp.any(z_new_BxC != z_BxC)

    logits_shape = jax.eval_shape(network, z_BxC)
    if logits_shape.shape != (*z_BxC.shape, cfg.vocab_size):
        raise ValueError(f"logits_fn must return [B, L, vocab_size={cfg.vocab_size}] logits, got "
                         f"{logits_shape.shape}")
    carry = (z_BxC, jnp.zeros(logits_shape.shape, logits_shape.dtype), jnp.array(True))
    return lax.fori_loop(0, num_steps, body, carry)[0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _sample(key, logits_fn, prompt_BxL, prompt_len_B, num_steps, shift, scale, cfg):
    key_prior, key_steps = jax.random.split(key)
    z_BxL = sample_prior(key_prior, cfg.batch_size, cfg.seq_len, vocab_size=cfg.vocab_size,
                         mask_id=cfg.mask_id, shift=shift, scale=scale,
                         log_snr=_first_log_snr(cfg.schedule))
    pos_L = jnp.arange(cfg.seq_len)
    if prompt_BxL is None:
        prompt_BxL = jnp.zeros_like(z_BxL)
        prompt_len_B = jnp.zeros((cfg.batch_size,), jnp.int32)
    prompt_clean_BxL = pos_L < prompt_len_B[:, None]
    z_BxL = jnp.where(prompt_clean_BxL, prompt_BxL, z_BxL).astype(jnp.int32)
    if cfg.batch_sharding is not None:
        z_BxL = lax.with_sharding_constraint(z_BxL, cfg.batch_sharding)
    num_blocks = -(-cfg.seq_len // cfg.block_size)

    def block(j, z_BxL):
        start = j * cfg.block_size
        end = jnp.minimum(start + cfg.block_size, cfg.seq_len)
        # Earlier blocks are clean context; later ones stay at the prior (they look pure noise).
        clean_BxL = prompt_clean_BxL | (pos_L < start)
        update_BxL = ~clean_BxL & (pos_L < end)
        window_start = jnp.clip(end - cfg.context_len, 0, cfg.seq_len - cfg.context_len)
        cut = lambda a: lax.dynamic_slice_in_dim(a, window_start, cfg.context_len, axis=1)  # noqa: E731

        def run(z_BxL):
            z_BxC = _denoise_window(jax.random.fold_in(key_steps, j), logits_fn, cut(z_BxL),
                                    cut(clean_BxL), cut(update_BxL), num_steps, shift, scale,
                                    cfg)
            return lax.dynamic_update_slice_in_dim(z_BxL, z_BxC, window_start, axis=1)

        return lax.cond(jnp.any(update_BxL), run, lambda z: z, z_BxL)

    return lax.fori_loop(0, num_blocks, block, z_BxL)


def sample(key, logits_fn, batch_size, seq_len, *, vocab_size, mask_id, shift, num_steps,
           method="ancestral", schedule="cosine", prompt_BxL=None, prompt_len_B=None, scale=1.0,
           temperature=None, top_k=None, top_p=None, float64=False, block_size=None,
           context_len=None, tokens_per_step=None, reuse_logits=True,
           logits_fn_accepts_mask=False, batch_sharding=None):
    """Generate tokens_BxL (int32) from the prior in one compiled program.

    logits_fn(z_BxL) -> logits_BxLxV, or logits_fn(z_BxL, attn_BxLxL) with
    `logits_fn_accepts_mask=True` (attn[b, q, k] = noisy[q] >= noisy[k], as in training). Pass a
    model as `jax.tree_util.Partial(apply_fn, params)` so the parameters are jit arguments rather
    than constants baked into the program; plain callables are cached by identity.

    - method "ancestral": the exact posterior step; temperature (default 1), top_k, top_p act on x̂.
      "adaptive": each step fully denoises `tokens_per_step` positions (default ⌈block/num_steps⌉)
      chosen by π_{λmin}(z)·(max x̂ − x̂(z)); temperature default 0 (greedy).
    - prompt_BxL [B, P ≤ seq_len] with prompt_len_B (default P): those tokens are kept clean.
    - block_size: generate block by block (num_steps steps per block), earlier blocks clean, later
      blocks held at the prior. context_len (default seq_len) is the window the network sees, ending
      at the current block, so seq_len may exceed the model's length.
    - float64: run the categorical draws and mixture weights in float64 (see module docstring).
    - batch_sharding: a Sharding for [B, L] token arrays, applied to the state at every step.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if vocab_size < 2 or not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} must lie in [0, vocab_size={vocab_size})")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if temperature is None:
        temperature = 1.0 if method == "ancestral" else 0.0
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    block_size = seq_len if block_size is None else block_size
    if not 1 <= block_size <= seq_len:
        raise ValueError(f"block_size must lie in [1, seq_len={seq_len}], got {block_size}")
    context_len = seq_len if context_len is None else context_len
    if not block_size <= context_len <= seq_len:
        raise ValueError(f"context_len must lie in [block_size={block_size}, seq_len={seq_len}], "
                         f"got {context_len}")
    if method == "ancestral":
        tokens_per_step = 1  # unused; fixed so that it does not split the compilation cache
    elif tokens_per_step is None:
        tokens_per_step = -(-block_size // num_steps)
    elif tokens_per_step * num_steps < block_size:
        raise ValueError(f"tokens_per_step={tokens_per_step} x num_steps={num_steps} cannot fill "
                         f"a block of {block_size} positions")
    if prompt_BxL is None and prompt_len_B is not None:
        raise ValueError("prompt_len_B given without prompt_BxL")
    if prompt_BxL is not None:
        prompt_BxL = jnp.asarray(prompt_BxL, jnp.int32)
        if prompt_BxL.ndim != 2 or prompt_BxL.shape[0] != batch_size or \
                prompt_BxL.shape[1] > seq_len:
            raise ValueError(f"prompt_BxL must have shape [batch_size={batch_size}, P <= "
                             f"seq_len={seq_len}], got {prompt_BxL.shape}")
        if prompt_len_B is None:
            prompt_len_B = jnp.full((batch_size,), prompt_BxL.shape[1], jnp.int32)
        prompt_len_B = jnp.clip(jnp.asarray(prompt_len_B, jnp.int32), 0, prompt_BxL.shape[1])
        if prompt_len_B.shape != (batch_size,):
            raise ValueError(f"prompt_len_B must have shape [{batch_size}], got "
                             f"{prompt_len_B.shape}")
        prompt_BxL = jnp.pad(prompt_BxL, ((0, 0), (0, seq_len - prompt_BxL.shape[1])))
    cfg = _Config(batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size, mask_id=mask_id,
                  method=method, schedule=schedule,
                  temperature=float(temperature), top_k=top_k, top_p=top_p, float64=float64,
                  block_size=block_size, context_len=context_len,
                  tokens_per_step=tokens_per_step, reuse_logits=reuse_logits,
                  logits_fn_accepts_mask=logits_fn_accepts_mask, batch_sharding=batch_sharding)
    if not isinstance(logits_fn, jax.tree_util.Partial):
        logits_fn = jax.tree_util.Partial(logits_fn)
    return _sample(key, logits_fn, prompt_BxL, prompt_len_B, jnp.int32(num_steps),
                   jnp.float32(shift), jnp.float32(scale), cfg)


def benchmark_sampler_step(logits_fn, batch_size, seq_len, *, vocab_size, mask_id, shift,
                           method="ancestral", num_repeats=20, num_warmup=3, **step_options):
    """Time of one sampler step (network call + step) over one network forward, same process.

    Both are jitted, warmed up, and timed as the median of `num_repeats` calls on the prior.
    Returns {"step_s", "forward_s", "ratio"}; the target for a real model is ratio <= 1.1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    key = jax.random.key(0)
    z_BxL = sample_prior(key, batch_size, seq_len, vocab_size=vocab_size, mask_id=mask_id,
                         shift=shift)
    forward = jax.jit(logits_fn)

    @jax.jit
    def step(key, z_BxL):
        logits_BxLxV = logits_fn(z_BxL)
        if method == "ancestral":
            return ancestral_step(key, z_BxL, logits_BxLxV, -1.0, 0.0, mask_id=mask_id,
                                  shift=shift, **step_options)
        return adaptive_step(key, z_BxL, logits_BxLxV, mask_id=mask_id, shift=shift,
                             **{"tokens_per_step": 1, **step_options})

    fns = {"forward_s": (forward, (z_BxL,)), "step_s": (step, (key, z_BxL))}
    for fn, args in fns.values():
        for _ in range(num_warmup):
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(num_repeats):  # interleaved, so drifts in machine load hit both alike
        for name, (fn, args) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    result["ratio"] = result["step_s"] / result["forward_s"]
    return result
