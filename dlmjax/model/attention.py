"""The attention core: softmax(cap·tanh(q·kᵀ/cap) masked) over the keys plus a learned sink.

Inputs are already projected, QK-normed, rotated and scaled by head_dim^−½. The sink is one
extra key/value pair per head that every query may attend to (so no row is ever fully masked);
without a sink a fully masked row is impossible in our masks (every query sees itself).
`model.attention` selects the implementation; "dense" materialises the [B, H, L, S] scores.
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("dense",)


def _soft_cap(s, cap):
    return cap * jnp.tanh(s / cap)


def dense_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask_BxLxS, *,
                    softcap, dtype):
    """o_BxLxHxK (dtype); mask True where query l may attend to key s; sinks may be None."""
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


def attend(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask_BxLxS, *, softcap,
           dtype, implementation="dense"):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={implementation!r}; expected one of {IMPLEMENTATIONS}")
    return dense_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask_BxLxS,
                           softcap=softcap, dtype=dtype)
