"""The attention core: softmax(cap·tanh(q·kᵀ/cap) masked) over the keys plus a learned sink.

Inputs are already projected, QK-normed, rotated and scaled by head_dim^−½; queries have length
L and keys length S (S ≠ L when keys of a cached clean prefix are prepended). The sink is one
extra key/value pair per head that every query may attend to (so no row is ever fully masked);
without a sink a fully masked row is impossible in our masks (every query sees itself).

Masks are structured where they can be, so that an implementation that never builds [L, S]
arrays can use them: `NoisyMask` (prompt conditioning, attn[q, k] = noisy[q] ≥ noisy[k]) and
`causal=True` (the autoregressive baseline, query i sees keys ≤ i + S − L). A dense boolean
[B, L, S] array is accepted too. `model.attention` selects the implementation: "dense"
materialises the [B, H, L, S] scores; "blockwise" (attention_blockwise.py) folds key blocks with an
online softmax and a recomputing backward pass, never building more than a tile; "cudnn" names
the GPU fused kernel, which falls back to "blockwise" with a one-line message naming the missing
feature (see `resolve`); "splash" is the Pallas TPU kernel with our sink and NoisyMask folded in
around it (attention_splash.py), falling back the same way off a TPU or for a call it cannot take.
"""

import functools
import inspect
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dlmjax.model.attention_blockwise import blockwise_attention

IMPLEMENTATIONS = ("dense", "blockwise", "cudnn", "splash")


class NoisyMask(NamedTuple):
    """attn[b, q, k] = noisy_q[b, q] ≥ noisy_k[b, k]: clean queries never see noisy keys."""

    noisy_q_BxL: jax.Array
    noisy_k_BxS: jax.Array


def dense_mask(mask, query_len, key_len, causal=False):
    """The boolean [B or 1, L, S] form of a mask (None when everything is visible)."""
    if isinstance(mask, NoisyMask):
        mask = mask.noisy_q_BxL[:, :, None] >= mask.noisy_k_BxS[:, None, :]
    if causal:
        offset = key_len - query_len  # queries are the last L of the S positions
        causal_1xLxS = (jnp.arange(query_len)[:, None] + offset >= jnp.arange(key_len)[None])[None]
        mask = causal_1xLxS if mask is None else mask & causal_1xLxS
    return mask


def _soft_cap(s, cap):
    return cap * jnp.tanh(s / cap)


def dense_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask, *,
                    softcap, dtype, causal=False):
    """o_BxLxHxK (dtype); `mask` (module docstring) True where q may see k; sinks may be None."""
    mask_BxLxS = dense_mask(mask, q_BxLxHxK.shape[1], k_BxSxHxK.shape[1], causal)
    s_BxHxLxS = _soft_cap(jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxSxHxK,
                                     preferred_element_type=jnp.float32), softcap)
    if mask_BxLxS is not None:
        s_BxHxLxS = jnp.where(mask_BxLxS[:, None], s_BxHxLxS, -jnp.inf)
    row_max_BxHxL = jnp.max(s_BxHxLxS, axis=-1)
    if sink_k_HxK is not None:
        sink_BxHxL = _soft_cap(jnp.einsum("bqhk,hk->bhq", q_BxLxHxK, sink_k_HxK,
                                          preferred_element_type=jnp.float32), softcap)
        row_max_BxHxL = jnp.maximum(row_max_BxHxL, sink_BxHxL)
    # Normalised after the value matmul, so no [B, H, L, S + 1] copy with the sink is built.
    max_BxHxL = jax.lax.stop_gradient(row_max_BxHxL)
    p_BxHxLxS = jnp.exp(s_BxHxLxS - max_BxHxL[..., None])
    denom_BxHxL = jnp.sum(p_BxHxLxS, axis=-1)
    o_BxLxHxK = jnp.einsum("bhqs,bshk->bqhk", p_BxHxLxS.astype(dtype), v_BxSxHxK,
                           preferred_element_type=jnp.float32)
    if sink_k_HxK is not None:
        p_sink_BxHxL = jnp.exp(sink_BxHxL - max_BxHxL)
        denom_BxHxL = denom_BxHxL + p_sink_BxHxL
        o_BxLxHxK += jnp.einsum("bhq,hk->bqhk", p_sink_BxHxL, sink_v_HxK.astype(jnp.float32))
    o_BxLxHxK /= jnp.transpose(denom_BxHxL, (0, 2, 1))[..., None]
    return o_BxLxHxK.astype(dtype)


def _missing_feature(implementation, platform):
    """Why `implementation` cannot run our attention on `platform` (None when it can)."""
    if implementation == "cudnn":
        if platform != "gpu":
            return f"cuDNN attention needs a GPU, this is {platform}"
        params = inspect.signature(jax.nn.dot_product_attention).parameters
        if not any("cap" in name for name in params):
            return "jax.nn.dot_product_attention has no logit soft-cap (model.attn_softcap)"
    if implementation == "splash" and platform != "tpu":
        return f"the Pallas splash kernel needs a TPU, this is {platform}"
    return None


@functools.cache
def resolve(implementation, platform=None):
    """The implementation that runs: `implementation`, or "blockwise" with a logged reason."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={implementation!r}; expected one of {IMPLEMENTATIONS}")
    reason = _missing_feature(implementation, platform or jax.default_backend())
    if reason is None:
        return implementation
    _fall_back_once(implementation, reason)
    return "blockwise"


@functools.cache
def _fall_back_once(implementation, reason):
    logging.warning("model.attention=%r falls back to 'blockwise': %s", implementation, reason)


def attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask=None, *, softcap,
           dtype, causal=False, implementation="dense"):
    implementation = resolve(implementation)
    if implementation == "splash":
        from dlmjax.model import attention_splash

        reason = attention_splash.unsupported(mask, q_BxLxHxK.shape[1], k_BxSxHxK.shape[1])
        if reason is None:
            return attention_splash.splash_attention(
                q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask, softcap=softcap,
                dtype=dtype, causal=causal)
        _fall_back_once(implementation, reason)
        implementation = "blockwise"
    if implementation == "blockwise":
        return blockwise_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask,
                                   softcap=softcap, dtype=dtype, causal=causal)
    return dense_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask,
                           softcap=softcap, dtype=dtype, causal=causal)
