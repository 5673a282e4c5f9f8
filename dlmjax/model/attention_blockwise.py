"""Blockwise attention: the dense form's result without any [B, H, L, S] array.

Queries and keys are split into blocks of at most `q_block` × `k_block`; each tile's scores are
built, soft-capped, masked and folded into a running (max, normaliser, weighted values) triple
(the online softmax). The learned sink is the state the fold starts from: max = its logit,
normaliser = 1, values = its value. A custom VJP recomputes the tiles in the backward pass from
the saved log-normaliser (lse), so neither pass keeps more than a tile of scores; with
r = q·k the raw score and s = cap·tanh(r / cap), ds/dr = 1 − (s / cap)².

Masks are never expanded beyond a tile: a `NoisyMask` becomes noisy_q[tile] ≥ noisy_k[tile],
causal becomes a comparison of positions, and a dense [B, L, S] boolean mask is sliced.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_BLOCK = 512


def _soft_cap(r, cap):
    return cap * jnp.tanh(r / cap)


def _blocks(n, block):
    block = min(block, n)
    return block, -(-n // block)


def _pad_to(x, axis, size, fill):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=fill)


class _Geometry(NamedTuple):
    """Static sizes: true lengths, block sizes, block counts and the causal offset."""

    L: int
    S: int
    qb: int
    nq: int
    kb: int
    nk: int
    causal: bool
    offset: int  # queries are the last L of the S positions


def _geometry(query_len, key_len, q_block, k_block, causal):
    return _Geometry(query_len, key_len, *_blocks(query_len, q_block), *_blocks(key_len, k_block),
                     causal, key_len - query_len)


def _tile_mask(geo, mask_kind, mask_arrays, qi, kj):
    """bool [B or 1, qb, kb] for query block qi and key block kj (padded keys hidden)."""
    q_pos = qi * geo.qb + jnp.arange(geo.qb)
    k_pos = kj * geo.kb + jnp.arange(geo.kb)
    visible = (k_pos < geo.S)[None, None, :]
    if geo.causal:
        visible = visible & (q_pos[:, None] + geo.offset >= k_pos[None, :])[None]
    if mask_kind == "noisy":
        noisy_q, noisy_k = mask_arrays
        nq = jax.lax.dynamic_slice_in_dim(noisy_q, qi * geo.qb, geo.qb, axis=1)
        nk = jax.lax.dynamic_slice_in_dim(noisy_k, kj * geo.kb, geo.kb, axis=1)
        visible = visible & (nq[:, :, None] >= nk[:, None, :])
    elif mask_kind == "dense":
        (mask,) = mask_arrays
        tile = jax.lax.dynamic_slice_in_dim(mask, qi * geo.qb, geo.qb, axis=1)
        visible = visible & jax.lax.dynamic_slice_in_dim(tile, kj * geo.kb, geo.kb, axis=2)
    return visible


def _slice(x, index, block, axis=1):
    return jax.lax.dynamic_slice_in_dim(x, index * block, block, axis=axis)


def _tile_scores(q_BxQxHxK, k_BxCxHxK, visible, softcap):
    """(capped scores s_BxHxQxC with −inf where hidden, float32)."""
    s = _soft_cap(jnp.einsum("bqhk,bchk->bhqc", q_BxQxHxK, k_BxCxHxK,
                             preferred_element_type=jnp.float32), softcap)
    return jnp.where(visible[:, None], s, -jnp.inf)


def _sink_logits(q_BxLxHxK, sink_k_HxK, softcap):
    return _soft_cap(jnp.einsum("bqhk,hk->bhq", q_BxLxHxK, sink_k_HxK,
                                preferred_element_type=jnp.float32), softcap)


def _forward(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays):
    """(o_BxLpxHxK float32, lse_BxHxLp) on padded queries q [B, Lp, H, K]."""
    B, _, H, K = q.shape

    def one_query_block(qi):
        q_blk = _slice(q, qi, geo.qb)
        if sink_k is not None:
            m = _sink_logits(q_blk, sink_k, softcap)
            denom = jnp.ones_like(m)
            acc = jnp.broadcast_to(sink_v.astype(jnp.float32)[None, :, None, :],
                                   (B, H, geo.qb, K))
        else:
            m = jnp.full((B, H, geo.qb), -jnp.inf, jnp.float32)
            denom = jnp.zeros_like(m)
            acc = jnp.zeros((B, H, geo.qb, K), jnp.float32)

        def fold(carry, kj):
            m, denom, acc = carry
            s = _tile_scores(q_blk, _slice(k, kj, geo.kb), _tile_mask(geo, mask_kind,
                                                                     mask_arrays, qi, kj), softcap)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing seen yet
            p = jnp.exp(s - m_safe[..., None])
            rescale = jnp.exp(m - m_safe)
            denom = denom * rescale + jnp.sum(p, axis=-1)
            acc = acc * rescale[..., None] + jnp.einsum(
                "bhqc,bchk->bhqk", p.astype(dtype), _slice(v, kj, geo.kb),
                preferred_element_type=jnp.float32)
            return (m_new, denom, acc), None

        (m, denom, acc), _ = jax.lax.scan(fold, (m, denom, acc), jnp.arange(geo.nk))
        o_BxHxQxK = acc / denom[..., None]
        return jnp.transpose(o_BxHxQxK, (0, 2, 1, 3)), m + jnp.log(denom)

    o_blocks, lse_blocks = jax.lax.map(one_query_block, jnp.arange(geo.nq))
    o = jnp.moveaxis(o_blocks, 0, 1).reshape(B, geo.nq * geo.qb, H, K)
    lse = jnp.moveaxis(lse_blocks, 0, 2).reshape(B, H, geo.nq * geo.qb)
    return o, lse


def _backward(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays, o, lse,
              do):
    """(dq, dk, dv, dsink_k, dsink_v) in float32, on padded q/k/v."""
    B, _, H, K = q.shape
    do = do.astype(jnp.float32)
    row_BxHxLp = jnp.einsum("bqhk,bqhk->bhq", do, o.astype(jnp.float32))  # Σ_k p·dp per row
    dq = jnp.zeros(q.shape, jnp.float32)
    dsink_k = dsink_v = None
    if sink_k is not None:
        s_sink = _sink_logits(q, sink_k, softcap)
        p_sink = jnp.exp(s_sink - lse)
        dsink_v = jnp.einsum("bhq,bqhk->hk", p_sink, do)
        dp_sink = jnp.einsum("bqhk,hk->bhq", do, sink_v.astype(jnp.float32))
        dr_sink = p_sink * (dp_sink - row_BxHxLp) * (1.0 - jnp.square(s_sink / softcap))
        dq = dq + jnp.einsum("bhq,hk->bqhk", dr_sink, sink_k.astype(jnp.float32))
        dsink_k = jnp.einsum("bhq,bqhk->hk", dr_sink, q.astype(jnp.float32))

    def one_key_block(dq, kj):
        k_blk, v_blk = _slice(k, kj, geo.kb), _slice(v, kj, geo.kb)

        def over_queries(carry, qi):
            dk_blk, dv_blk = carry
            q_blk, do_blk = _slice(q, qi, geo.qb), _slice(do, qi, geo.qb)
            s = _tile_scores(q_blk, k_blk, _tile_mask(geo, mask_kind, mask_arrays, qi, kj),
                             softcap)
            p = jnp.exp(s - _slice(lse, qi, geo.qb, axis=2)[..., None])
            dv_blk += jnp.einsum("bhqc,bqhk->bchk", p.astype(dtype), do_blk.astype(dtype),
                                 preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhk,bchk->bhqc", do_blk.astype(dtype), v_blk,
                            preferred_element_type=jnp.float32)
            # Hidden entries have p = 0 and s = −inf: the where keeps (1 − (s/cap)²) finite.
            dr = jnp.where(p > 0, p * (dp - _slice(row_BxHxLp, qi, geo.qb, axis=2)[..., None])
                           * (1.0 - jnp.square(s / softcap)), 0.0).astype(dtype)
            dk_blk += jnp.einsum("bhqc,bqhk->bchk", dr, q_blk,
                                 preferred_element_type=jnp.float32)
            dq_blk = jnp.einsum("bhqc,bchk->bqhk", dr, k_blk, preferred_element_type=jnp.float32)
            return (dk_blk, dv_blk), dq_blk

        zeros = jnp.zeros((B, geo.kb, H, K), jnp.float32)
        (dk_blk, dv_blk), dq_blocks = jax.lax.scan(over_queries, (zeros, zeros),
                                                   jnp.arange(geo.nq))
        dq = dq + jnp.moveaxis(dq_blocks, 0, 1).reshape(dq.shape)
        return dq, (dk_blk, dv_blk)

    dq, (dk_blocks, dv_blocks) = jax.lax.scan(one_key_block, dq, jnp.arange(geo.nk))
    dk = jnp.moveaxis(dk_blocks, 0, 1).reshape(B, geo.nk * geo.kb, H, K)
    dv = jnp.moveaxis(dv_blocks, 0, 1).reshape(B, geo.nk * geo.kb, H, K)
    return dq, dk, dv, dsink_k, dsink_v


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _attention(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays):
    o, _ = _forward(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays)
    return o.astype(dtype)


def _attention_fwd(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays):
    o, lse = _forward(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays)
    o = o.astype(dtype)
    return o, (q, k, v, sink_k, sink_v, mask_arrays, o, lse)


def _attention_bwd(geo, softcap, dtype, mask_kind, residuals, do):
    q, k, v, sink_k, sink_v, mask_arrays, o, lse = residuals
    grads = _backward(geo, softcap, dtype, mask_kind, q, k, v, sink_k, sink_v, mask_arrays, o,
                      lse, do)
    primals = (q, k, v, sink_k, sink_v)
    cast = tuple(None if g is None else g.astype(p.dtype) for g, p in zip(grads, primals))
    return (*cast, jax.tree.map(lambda _: None, mask_arrays))


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask, *,
                        softcap, dtype, causal=False, q_block=DEFAULT_BLOCK,
                        k_block=DEFAULT_BLOCK):
    """Same contract as `attention.dense_attention`; memory O(tile) instead of O(L·S)."""
    from dlmjax.model.attention import NoisyMask  # the mask types live with the dispatcher

    B, L, H, K = q_BxLxHxK.shape
    S = k_BxSxHxK.shape[1]
    geo = _geometry(L, S, q_block, k_block, causal)
    Lp, Sp = geo.nq * geo.qb, geo.nk * geo.kb
    if mask is None:
        mask_kind, mask_arrays = "none", ()
    elif isinstance(mask, NoisyMask):
        # Padded queries count as noisy (they see every real key); padded keys are hidden anyway.
        mask_kind = "noisy"
        mask_arrays = (_pad_to(jnp.asarray(mask.noisy_q_BxL), 1, Lp, True),
                       _pad_to(jnp.asarray(mask.noisy_k_BxS), 1, Sp, True))
    else:
        mask_kind = "dense"
        dense = _pad_to(_pad_to(jnp.asarray(mask, bool), 1, Lp, True), 2, Sp, True)
        mask_arrays = (dense,)
    q = _pad_to(q_BxLxHxK.astype(dtype), 1, Lp, 0)
    k = _pad_to(k_BxSxHxK.astype(dtype), 1, Sp, 0)
    v = _pad_to(v_BxSxHxK.astype(dtype), 1, Sp, 0)
    sink_k = None if sink_k_HxK is None else sink_k_HxK.astype(dtype)
    sink_v = None if sink_v_HxK is None else sink_v_HxK.astype(dtype)
    o = _attention(geo, float(softcap), jnp.dtype(dtype), mask_kind, q, k, v, sink_k, sink_v,
                   mask_arrays)
    return o[:, :L].astype(dtype)
