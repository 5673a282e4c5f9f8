"""x̂ from logits without materialising it: sampling logits, two-level categorical draws, arg-max.

The categorical draw is an inverse-CDF draw with one uniform per position, done in two levels
(group sums over the vocabulary, then a cumulative sum inside the chosen group), which needs no
per-vocabulary random numbers. The exps are shifted by the top logit only where they must be: a
draw of plain x̂ whose logits are in range skips the max pass. With `float64=True` the
probabilities, cumulative sums, uniforms and mixture weights are float64 even when jax x64 is off:
that code runs under a local `jax.enable_x64(True)` scope, and the uniforms are built from two
uint32 words (53 bits), because jax.random itself cannot make float64 inside such a scope.

top-k and top-p need lax.top_k / a sort over V per position: cheap on accelerators, but slow on
CPU (seconds per step at B·L = 4096, V = 4096), so they are off by default.
"""

import contextlib
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


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

    The logits may cover only the last L positions of a longer window (the cached clean prefix
    has none): `offset` positions come first. Per-position inputs (ids, uniforms) are given at
    window length and cut; per-position results come back at window length, reading 0 on the
    uncovered prefix, which a step never updates. Fields are of the covered positions.
    """

    logits_BxLxNxS: jax.Array
    bias_NxS: jax.Array
    threshold_BxL: jax.Array | None
    temperature: float
    group_top_BxLxN: jax.Array | None  # max sampling logit per group (None: need_top=False)
    shift_BxL: jax.Array  # subtracted before every exp: the top sampling logit, or 0
    mass_BxLxN: jax.Array  # Σ_group exp(sampling logit − shift)
    offset: int = 0


def _full(xhat, values_BxL):
    """Per-position values of the covered positions at window length (0 on the prefix)."""
    if not xhat.offset:
        return values_BxL
    return jnp.pad(values_BxL, ((0, 0),) * (values_BxL.ndim - 1) + ((xhat.offset, 0),))


def _covered(xhat, values_BxL):
    """The covered positions of a window-length per-position array."""
    return values_BxL[..., xhat.offset:]


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


def _masses(sampling_BxLxNxS, mask_group_BxLxS, mask_group, shift_BxL=None):
    """Σ_group exp(sampling logit − shift) ([B, L, N]); the mask's group from its masked slice."""
    def exp_sum(x, shift):  # shift None: no subtraction at all (not a subtraction of 0)
        return jnp.sum(jnp.exp(x if shift is None else x - shift), axis=-1)

    shift_BxLx1 = None if shift_BxL is None else shift_BxL[..., None]
    mass_BxLxN = exp_sum(sampling_BxLxNxS,
                         None if shift_BxLx1 is None else shift_BxLx1[..., None])
    if mask_group_BxLxS is None:
        return mass_BxLxN
    return mass_BxLxN.at[..., mask_group].set(exp_sum(mask_group_BxLxS, shift_BxLx1))


def _group_tops(sampling_BxLxNxS, mask_group_BxLxS, mask_group):
    group_top_BxLxN = jnp.max(sampling_BxLxNxS, axis=-1)
    if mask_group_BxLxS is None:
        return group_top_BxLxN
    return group_top_BxLxN.at[..., mask_group].set(jnp.max(mask_group_BxLxS, axis=-1))


# Unshifted masses are used when every position's total lies in [e^-60, e^60]: then no exp
# overflowed, and the top logit is above −60 − log V, so the ids that carry mass are far from
# float32's underflow at −87.
_UNSHIFTED_LOG_RANGE = 60.0


def _make_xhat(logits_BxLxV, *, mask_id, temperature=1.0, top_k=None, top_p=None,
               dtype=jnp.float32, seq_len=None, need_top=True, positions_BxL=None):
    """seq_len: the window length when the logits cover only its last positions (_Xhat).

    need_top=False (a draw or a normaliser, no arg-max or top probability) saves the max pass
    over V: with no top-k/top-p/temperature the exps go unshifted when every position in
    `positions_BxL` (window length, default all) is in range, else the shifted form is taken.
    Positions outside `positions_BxL` do not pick the form, so a step reads the same numbers
    whether or not its logits also cover positions it never updates.
    """
    *lead, vocab_size = logits_BxLxV.shape
    group = _group_size(vocab_size)
    logits_BxLxV = logits_BxLxV.astype(dtype)
    bias_V = jnp.where(jnp.arange(vocab_size) == mask_id, -jnp.inf, 0.0).astype(dtype)
    threshold_BxL = _threshold(logits_BxLxV, bias_V, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    logits_BxLxNxS = logits_BxLxV.reshape(*lead, vocab_size // group, group)
    bias_NxS = bias_V.reshape(-1, group)
    plain = threshold_BxL is None and temperature == 1.0
    if plain:
        # Plain reductions over the raw logits (an elementwise producer such as the mask bias
        # would be materialised first on CPU); the mask's group is redone from a slice.
        sampling_BxLxNxS = logits_BxLxNxS
    else:
        sampling_BxLxNxS = _sampling_logits(
            logits_BxLxNxS, bias_NxS,
            None if threshold_BxL is None else threshold_BxL[..., None, None], temperature)
    mask_group = mask_id // group
    mask_group_BxLxS = None
    if 0 <= mask_id < vocab_size:
        mask_group_BxLxS = jnp.where(jnp.arange(group) == mask_id % group, -jnp.inf,
                                     sampling_BxLxNxS[..., mask_group, :])
    offset = 0 if seq_len is None else seq_len - lead[-1]

    def shifted():
        group_top_BxLxN = _group_tops(sampling_BxLxNxS, mask_group_BxLxS, mask_group)
        top_BxL = jnp.max(group_top_BxLxN, axis=-1)
        return group_top_BxLxN, top_BxL, _masses(sampling_BxLxNxS, mask_group_BxLxS,
                                                 mask_group, top_BxL)

    if need_top or not plain:
        group_top_BxLxN, shift_BxL, mass_BxLxN = shifted()
    else:
        group_top_BxLxN = None
        mass_BxLxN = _masses(sampling_BxLxNxS, mask_group_BxLxS, mask_group)
        log_total_BxL = jnp.log(jnp.sum(mass_BxLxN, axis=-1))
        in_range_BxL = jnp.abs(log_total_BxL) <= _UNSHIFTED_LOG_RANGE  # False on NaN
        if positions_BxL is not None:
            in_range_BxL |= ~positions_BxL[..., offset:]
        shift_BxL, mass_BxLxN = lax.cond(
            jnp.all(in_range_BxL), lambda m: (jnp.zeros(lead, dtype), m),
            lambda _: shifted()[1:], mass_BxLxN)
    return _Xhat(logits_BxLxNxS, bias_NxS, threshold_BxL, temperature, group_top_BxLxN,
                 shift_BxL, mass_BxLxN, offset)


def _top(xhat):
    """The largest sampling logit per position (an x̂ made with need_top)."""
    return _full(xhat, jnp.max(xhat.group_top_BxLxN, axis=-1))


def _log_normalizer(xhat):
    return _full(xhat, xhat.shift_BxL + jnp.log(jnp.sum(xhat.mass_BxLxN, axis=-1)))


def _sampling_logit_at(xhat, ids_BxL):
    """Unnormalised sampling logit of the given ids (gathers, no pass over V)."""
    ids_BxL = _covered(xhat, ids_BxL)
    num_groups, group = xhat.bias_NxS.shape
    flat_BxLxV = xhat.logits_BxLxNxS.reshape(*ids_BxL.shape, num_groups * group)
    logit_BxL = jnp.take_along_axis(flat_BxLxV, ids_BxL[..., None], axis=-1)[..., 0]
    return _full(xhat, _sampling_logits(logit_BxL, xhat.bias_NxS.reshape(-1)[ids_BxL],
                                        xhat.threshold_BxL, xhat.temperature))


def _group_weights(xhat, g_BxL):
    """exp(sampling logit − shift) of the ids in group g: [B, L, S]."""
    logits_BxLxS = jnp.take_along_axis(xhat.logits_BxLxNxS, g_BxL[..., None, None], axis=-2)[
        ..., 0, :]
    threshold = None if xhat.threshold_BxL is None else xhat.threshold_BxL[..., None]
    sampling_BxLxS = _sampling_logits(logits_BxLxS, xhat.bias_NxS[g_BxL], threshold,
                                      xhat.temperature)
    return jnp.exp(sampling_BxLxS - xhat.shift_BxL[..., None])


def _last_positive_index(weights_BxLxN):
    n = weights_BxLxN.shape[-1]
    return jnp.max(jnp.where(weights_BxLxN > 0, jnp.arange(n), 0), axis=-1)


def _draw(xhat, u_BxL):
    """Inverse-CDF draw with one uniform per position: pick the group, then the id inside it.

    Excluded ids have weight exactly 0 and are never returned, even when rounding pushes the
    count past the end (it is clamped to the last id with positive weight).
    """
    group = xhat.bias_NxS.shape[1]
    u_BxL = _covered(xhat, u_BxL)
    cum_BxLxN = jnp.cumsum(xhat.mass_BxLxN, axis=-1)
    target_BxL = u_BxL.astype(cum_BxLxN.dtype) * cum_BxLxN[..., -1]
    g_BxL = jnp.sum(cum_BxLxN <= target_BxL[..., None], axis=-1)
    g_BxL = jnp.minimum(g_BxL, _last_positive_index(xhat.mass_BxLxN))
    before_BxL = jnp.take_along_axis(cum_BxLxN - xhat.mass_BxLxN, g_BxL[..., None], -1)[..., 0]
    weights_BxLxS = _group_weights(xhat, g_BxL)
    cum_in_BxLxS = jnp.cumsum(weights_BxLxS, axis=-1)
    j_BxL = jnp.sum(cum_in_BxLxS <= (target_BxL - before_BxL)[..., None], axis=-1)
    j_BxL = jnp.minimum(j_BxL, _last_positive_index(weights_BxLxS))
    return _full(xhat, (g_BxL * group + j_BxL).astype(jnp.int32))


def _first_max_index(x_BxLxN):
    """Index of the first maximum along the last axis, as int32.

    Written as a min over an iota rather than jnp.argmax: argmax's variadic reduction fails to
    trace on float64 operands inside a local enable_x64 scope (its initial values stay float32).
    """
    n = x_BxLxN.shape[-1]
    is_top = x_BxLxN == jnp.max(x_BxLxN, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_top, jnp.arange(n, dtype=jnp.int32), n), axis=-1)


def _argmax(xhat):
    """Arg-max of x̂: the first group holding the top, then the first top id inside it."""
    group = xhat.bias_NxS.shape[1]
    g_BxL = _first_max_index(xhat.group_top_BxLxN)
    j_BxL = _first_max_index(_group_weights(xhat, g_BxL))
    return _full(xhat, (g_BxL * group + j_BxL).astype(jnp.int32))


def _probability_at(xhat, ids_BxL):
    """x̂(ids) under the sampling transform (temperature, top-k/top-p), no pass over V."""
    return jnp.exp(_sampling_logit_at(xhat, ids_BxL) - _log_normalizer(xhat))


def _entropy(xhat):
    """Entropy (nats) of the sampling distribution of x̂ per position: one more pass over V."""
    threshold = None if xhat.threshold_BxL is None else xhat.threshold_BxL[..., None, None]
    shifted_BxLxNxS = _sampling_logits(xhat.logits_BxLxNxS, xhat.bias_NxS, threshold,
                                       xhat.temperature) - xhat.shift_BxL[..., None, None]
    weights_BxLxNxS = jnp.exp(shifted_BxLxNxS)
    mean_shifted_BxL = jnp.sum(jnp.where(weights_BxLxNxS > 0, weights_BxLxNxS * shifted_BxLxNxS,
                                         0.0), axis=(-2, -1))
    mass_BxL = jnp.sum(xhat.mass_BxLxN, axis=-1)
    return _full(xhat, jnp.maximum(jnp.log(mass_BxL) - mean_shifted_BxL / mass_BxL, 0.0))


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
        xhat = _make_xhat(logits_BxLxV, mask_id=-1, dtype=dtype, need_top=False)
        return _draw(xhat, _uniform_from_bits(bits_2xBxL, dtype))

