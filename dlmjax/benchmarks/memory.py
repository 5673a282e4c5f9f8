"""Memory ratios: compiled temporary bytes of value-and-grad, AOT, nothing allocated."""

import jax
import jax.numpy as jnp

from dlmjax.diffusion import elbo
from dlmjax.diffusion.schedule import alpha, log_snr_density, pi_derivative_at, uniform_fraction


def naive_token_losses(logits_BxLxV, z_BxL, x_BxL, log_snr_BxL, *, mask_id, shift, scale=1.0):
    """The loss as it is usually written: one-hot x and full-vocabulary q and p marginals.

    Kept only as the memory baseline that the closed form in `elbo` is measured against.
    """
    vocab_size = logits_BxLxV.shape[-1]
    lam = log_snr_BxL[..., None]
    ids_V = jnp.arange(vocab_size)
    logits_BxLxV = jnp.where(ids_V == mask_id, -jnp.inf, logits_BxLxV.astype(jnp.float32))
    xhat_BxLxV = jax.nn.softmax(logits_BxLxV, axis=-1)
    s = uniform_fraction(lam, shift=shift, scale=scale)
    pi_BxLxV = jnp.where(ids_V == mask_id, 1.0 - s, s / (vocab_size - 1))
    onehot_BxLxV = jax.nn.one_hot(x_BxL, vocab_size)
    a = alpha(lam)
    q_BxLxV = a * onehot_BxLxV + (1 - a) * pi_BxLxV
    p_BxLxV = a * xhat_BxLxV + (1 - a) * pi_BxLxV
    kl_BxL = jnp.sum(jax.scipy.special.xlogy(q_BxLxV, q_BxLxV)
                     - jax.scipy.special.xlogy(q_BxLxV, p_BxLxV), axis=-1)
    q_z = jnp.take_along_axis(q_BxLxV, z_BxL[..., None], -1)[..., 0]
    p_z = jnp.take_along_axis(p_BxLxV, z_BxL[..., None], -1)[..., 0]
    r = q_z / p_z
    pi_z = jnp.take_along_axis(pi_BxLxV, z_BxL[..., None], -1)[..., 0]
    dpi_z = pi_derivative_at(z_BxL, log_snr_BxL, vocab_size=vocab_size, mask_id=mask_id,
                             shift=shift, scale=scale)
    w = (pi_z - dpi_z) / (pi_z + jnp.exp(log_snr_BxL) * (z_BxL == x_BxL))
    div = kl_BxL + r - jnp.log(r) - 1
    return (jnp.clip(w, 0, elbo.LOSS_WEIGHT_CLIP) * div,
            jnp.clip(w / log_snr_density(log_snr_BxL), 0, elbo.ELBO_WEIGHT_CLIP) * div)


def loss_memory_report(batch=2, length=2048, d_model=512, vocab_size=131072, chunk_size=256):
    """Temp bytes of value-and-grad (w.r.t. hidden states and head) of both loss versions."""
    f32, i32 = jnp.float32, jnp.int32
    shapes = (jax.ShapeDtypeStruct((batch, length, d_model), f32),
              jax.ShapeDtypeStruct((d_model, vocab_size), f32),
              jax.ShapeDtypeStruct((batch, length), i32),
              jax.ShapeDtypeStruct((batch, length), i32),
              jax.ShapeDtypeStruct((batch, length), f32))
    kw = dict(mask_id=3, shift=0.0)

    def chunked(h, w, z, x, lam):
        return elbo.token_losses_from_hidden(h, w, z, x, lam, chunk_size=chunk_size, **kw)[0].sum()

    def naive(h, w, z, x, lam):
        return naive_token_losses(h @ w, z, x, lam, **kw)[0].sum()

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked_bytes, naive_bytes = temp_bytes(chunked), temp_bytes(naive)
    return {"chunked_temp_bytes": chunked_bytes, "naive_temp_bytes": naive_bytes,
            "ratio": chunked_bytes / naive_bytes}


def attention_memory_report(batch=1, heads=8, length=8192, head_dim=64, dtype="float32"):
    """Temp bytes of value-and-grad of the attention core (with sink and soft-cap): blockwise
    over dense, compiled and never run."""
    from dlmjax.model import attention

    qkv = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.dtype(dtype))
    sink = jax.ShapeDtypeStruct((heads, head_dim), jnp.dtype(dtype))

    def temp_bytes(implementation):
        def loss(q, k, v, sink_k, sink_v):
            o = attention.attend(q, k, v, sink_k, sink_v, softcap=30.0, dtype=jnp.dtype(dtype),
                                 implementation=implementation)
            return jnp.sum(o.astype(jnp.float32))

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))
        compiled = jax.jit(grad).lower(qkv, qkv, qkv, sink, sink).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    blockwise, dense = temp_bytes("blockwise"), temp_bytes("dense")
    return {"blockwise_temp_bytes": blockwise, "dense_temp_bytes": dense,
            "ratio": blockwise / dense}
