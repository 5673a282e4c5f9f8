"""Per-token GIDD training loss and ELBO from the closed form of q_λ(·|x).

q_λ(·|x) puts α + c_u on x, c_m on the mask and c_u on every other ordinary token, and the model
marginal p_λ = α·x̂ + (1 − α)·π_λ differs from it only through x̂ (x̂(mask) = 0, so the mask
masses cancel). Hence, with ℓ_v = log x̂_v and κ = log α − log c_u,

  KL = (α + c_u)·[log(α + c_u) − log p(x)] − c_u·Σ_{v ordinary, v≠x} softplus(ℓ_v + κ),

one reduction over V of terms that are all ≥ 0 (no cancellation inside the sum). Nothing of
shape [B, L, V] besides the log-softmax is built, and `token_losses_from_hidden` avoids even that
by running the head and this reduction over chunks of tokens under `jax.checkpoint`.
"""

import functools

import jax
import jax.numpy as jnp

from dlmjax.diffusion.schedule import (
    log_alpha,
    log_noise_masses,
    log_snr_density,
    mask_fraction,
    uniform_fraction,
)

LOSS_WEIGHT_CLIP = 1e3
ELBO_WEIGHT_CLIP = 1e6
# exp(log r) enters the Itakura–Saito term; capping log r keeps zero-weight terms (w = 0, e.g. z = x
# under pure masking with x̂_x ≈ 0) finite, so 0·IS stays 0 instead of 0·inf = NaN.
MAX_LOG_RATIO = 50.0


def _weight(z, x, log_snr, *, mask_id, vocab_size, shift, scale):
    """w = (π(z) − π'(z)) / (π(z) + e^λ·1[z = x]), simplified per case so that no 0/0 appears."""
    s = uniform_fraction(log_snr, shift=shift, scale=scale)
    one_minus_s = mask_fraction(log_snr, shift=shift, scale=scale)
    num_ordinary = vocab_size - 1
    w_mask = 1.0 + scale * s  # ((1−s) + a·s(1−s)) / (1−s)
    w_other = 1.0 - scale * one_minus_s  # (s/N − a·s(1−s)/N) / (s/N)
    w_clean = s * w_other / (s + num_ordinary * jnp.exp(log_snr))
    return jnp.where(z == mask_id, w_mask, jnp.where(z == x, w_clean, w_other))


def _losses_from_logits(logits_TxV, z_T, x_T, log_snr_T, *, mask_id, shift, scale):
    """Loss and ELBO for tokens along any leading shape T; logits are cast to float32."""
    vocab_size = logits_TxV.shape[-1]
    noised_T = jnp.isfinite(log_snr_T)  # λ = +inf marks clean conditioning tokens
    lam_T = jnp.where(noised_T, log_snr_T, 0.0).astype(jnp.float32)

    is_mask_V = jnp.arange(vocab_size) == mask_id
    logits_TxV = jnp.where(is_mask_V, -jnp.inf, logits_TxV.astype(jnp.float32))
    log_xhat_TxV = jax.nn.log_softmax(logits_TxV, axis=-1)
    log_xhat_x_T = jnp.take_along_axis(log_xhat_TxV, x_T[..., None], axis=-1)[..., 0]
    log_xhat_z_T = jnp.take_along_axis(log_xhat_TxV, z_T[..., None], axis=-1)[..., 0]

    log_a_T = log_alpha(lam_T)
    log_c_u_T, _ = log_noise_masses(lam_T, vocab_size=vocab_size, shift=shift, scale=scale)
    kappa_T = log_a_T - log_c_u_T
    c_u_T = jnp.exp(log_c_u_T)

    # The one reduction over the vocabulary; the mask column contributes softplus(−inf) = 0.
    sum_all_T = jnp.sum(jax.nn.softplus(log_xhat_TxV + kappa_T[..., None]), axis=-1)
    sum_others_T = sum_all_T - jax.nn.softplus(log_xhat_x_T + kappa_T)

    log_q_x_T = jnp.logaddexp(log_a_T, log_c_u_T)
    log_p_x_T = jnp.logaddexp(log_a_T + log_xhat_x_T, log_c_u_T)
    kl_T = jnp.exp(log_q_x_T) * (log_q_x_T - log_p_x_T) - c_u_T * sum_others_T

    # log r = log q(z|x) − log p(z): zero at the mask, closed forms at x and at other tokens.
    log_r_other_T = -jax.nn.softplus(log_xhat_z_T + kappa_T)
    log_r_T = jnp.where(z_T == mask_id, 0.0,
                        jnp.where(z_T == x_T, log_q_x_T - log_p_x_T, log_r_other_T))
    log_r_T = jnp.minimum(log_r_T, MAX_LOG_RATIO)
    itakura_saito_T = jnp.expm1(log_r_T) - log_r_T

    w_T = _weight(z_T, x_T, lam_T, mask_id=mask_id, vocab_size=vocab_size, shift=shift, scale=scale)
    divergence_T = kl_T + itakura_saito_T
    loss_T = jnp.clip(w_T, 0.0, LOSS_WEIGHT_CLIP) * divergence_T
    elbo_T = jnp.clip(w_T / log_snr_density(lam_T), 0.0, ELBO_WEIGHT_CLIP) * divergence_T
    return jnp.where(noised_T, loss_T, 0.0), jnp.where(noised_T, elbo_T, 0.0)


def token_losses(logits_BxLxV, z_BxL, x_BxL, log_snr_BxL, *, mask_id, shift, scale=1.0):
    """Per-token training loss (β_IS = 1, weight clipped at 1e3) and ELBO (nats), both float32.

    Tokens with λ = +inf (clean prompt tokens) get 0 in both. The logit of `mask_id` is ignored.
    """
    log_snr_BxL = jnp.broadcast_to(log_snr_BxL, z_BxL.shape)
    return _losses_from_logits(logits_BxLxV, z_BxL, x_BxL, log_snr_BxL,
                               mask_id=mask_id, shift=shift, scale=scale)


def map_token_chunks(chunk_fn, h_BxLxD, w_DxV, per_token, fills, *, logit_multiplier=1.0,
                     chunk_size=256, batch_shards=1):
    """Applies `chunk_fn(logits_BxCxV, *per_token_BxC)` to length chunks, rematerialised.

    A chunk holds all B rows and C = ⌈chunk_size / (B / batch_shards)⌉ positions, so each of the
    `batch_shards` devices that hold a slice of the batch sees about chunk_size tokens per chunk,
    and the batch axis is never reshaped: a batch-sharded input stays batch-sharded in
    every chunk (flattening B·L into one token axis makes XLA regather it, the "Involuntary full
    rematerialization" of its SPMD partitioner). Returns chunk_fn's per-token outputs as [B, L].
    Padding positions get `fills` (one per entry of `per_token`), which chunk_fn must map to zero
    loss.
    """
    batch, length, _ = h_BxLxD.shape
    rows = max(1, batch // batch_shards)
    chunk_len = min(length, max(1, -(-chunk_size // rows)))
    num_chunks = -(-length // chunk_len)
    pad = num_chunks * chunk_len - length

    def chunked(a, fill):  # [B, L, ...] → [num_chunks, B, C, ...]
        a = jnp.asarray(a)
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        return jnp.moveaxis(a.reshape(batch, num_chunks, chunk_len, *a.shape[2:]), 1, 0)

    inputs = (chunked(h_BxLxD, 0), *(chunked(a, f) for a, f in zip(per_token, fills)))

    # Under checkpoint the backward pass recomputes each chunk's logits instead of storing them.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one_chunk(h_BxCxD, *per_token_BxC):
        logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV.astype(h_BxCxD.dtype),
                                  preferred_element_type=jnp.float32) * logit_multiplier
        return chunk_fn(logits_BxCxV, *per_token_BxC)

    outputs = jax.lax.map(lambda args: one_chunk(*args), inputs)
    return jax.tree.map(
        lambda a: jnp.moveaxis(a, 0, 1).reshape(batch, num_chunks * chunk_len)[:, :length],
        outputs)


def token_losses_from_hidden(h_BxLxD, w_DxV, z_BxL, x_BxL, log_snr_BxL, *, mask_id, shift,
                             scale=1.0, logit_multiplier=1.0, chunk_size=256, batch_shards=1):
    """`token_losses(logit_multiplier * h @ w, ...)` without ever holding [B, L, V] logits.

    Tokens are processed about `chunk_size` per device at a time (`map_token_chunks`), so the
    peak memory is O(chunk_size·V) in the forward and the backward pass.
    """
    log_snr_BxL = jnp.broadcast_to(log_snr_BxL, z_BxL.shape).astype(jnp.float32)
    chunk_fn = functools.partial(_losses_from_logits, mask_id=mask_id, shift=shift, scale=scale)
    # Padded tokens are marked clean (λ = +inf), which zeroes their loss and gradient.
    return map_token_chunks(chunk_fn, h_BxLxD, w_DxV, (z_BxL, x_BxL, log_snr_BxL),
                            (0, 0, jnp.inf), logit_multiplier=logit_multiplier,
                            chunk_size=chunk_size, batch_shards=batch_shards)
