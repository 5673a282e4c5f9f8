"""Splash attention (the Pallas TPU kernel) with our learned sink and prompt mask, exactly.

The kernel computes softmax(cap·tanh(q·kᵀ/cap)) over the keys with static masks (causal here)
and segment ids, and returns the log-normaliser lse of each query row. What it lacks is folded
in around it:

- **The sink**, one learned key/value per head with logit s = cap·tanh(q·k_sink/cap), is the
  softmax's extra column: with Λ = logaddexp(lse, s) the output is
  O = e^{lse−Λ}·o + e^{s−Λ}·v_sink. The flash backward needs only the final output and the final
  log-normaliser (p = e^{score−Λ}, Dᵢ = dOᵢ·Oᵢ), so the kernel's own backward, given (O, Λ),
  returns the keys' exact gradients; the sink's are [H, L] products computed here.
- **NoisyMask** (noisy[q] ≥ noisy[k]) is two kernel calls: noisy queries see every key; clean
  queries see the keys whose noisy flag equals theirs (segment ids), i.e. the clean keys. So a
  prompted batch costs two attentions, an unprompted one (mask None) one.

The kernel works on one example ([H, L, K]); the batch is vmapped and, under a mesh, split by
shard_map over the batch and head axes (a Pallas call cannot be partitioned automatically). On
CPU the same code runs in Pallas interpret mode (`interpret=True`), which is how the tests check it.
Lengths must be multiples of 128 (the kernel's smallest block): see `unsupported`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec

from dlmjax import parallel
from dlmjax.model.attention import NoisyMask

MIN_BLOCK = 128
_HEAD_AXES = ("tensor",)  # the mesh axis of 'act_heads' in parallel.RULES


def unsupported(mask, query_len, key_len):
    """Why splash cannot run this call (None when it can): a dense mask or an odd length."""
    if mask is not None and not isinstance(mask, NoisyMask):
        return "splash takes NoisyMask or causal masks, not a dense [B, L, S] boolean mask"
    if query_len % MIN_BLOCK or key_len % MIN_BLOCK:
        return (f"splash needs lengths that are multiples of {MIN_BLOCK}, got queries "
                f"{query_len} and keys {key_len}")
    return None


def _block(n):
    return next(b for b in (512, 256, MIN_BLOCK) if n % b == 0)


@functools.cache
def _kernel(heads, query_len, key_len, causal, softcap, interpret):
    """The splash kernel of one example (returns o and lse) for these static settings."""
    shape = (query_len, key_len)
    head_mask = masks.CausalMask(shape, offset=key_len - query_len) if causal else \
        masks.FullMask(shape)
    bq, bk = _block(query_len), _block(key_len)
    sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                              block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq,
                              block_kv_dq=bk)
    with jax.ensure_compile_time_eval():  # concrete mask tables, safe to cache across traces
        return splash.make_splash_mha(masks.MultiHeadMask([head_mask] * heads), head_shards=1,
                                      q_seq_shards=1, block_sizes=sizes, save_residuals=True,
                                      attn_logits_soft_cap=softcap, interpret=interpret)


def _collapsed(info):
    """Mask info as the kernel's backward takes it (partial mask blocks in one leading axis)."""
    if info is None or info.partial_mask_blocks is None:
        return info
    blocks = info.partial_mask_blocks
    return info._replace(partial_mask_blocks=blocks.reshape(-1, *blocks.shape[-2:]))


def _keys_backward(kernel, q, k, v, segments, o, lse, do):
    """dq, dk, dv of the keys' part, from the final output and log-normaliser."""
    kw = kernel.kwargs
    residuals = (q, k, v, segments, None, o, lse, _collapsed(kernel.dq_mask_info),
                 _collapsed(kernel.dkv_mask_info))
    grads = splash._splash_attention_bwd(False, kw["mask_value"], kw["is_mqa"],
                                         kw["block_sizes"], kw["residual_checkpoint_name"],
                                         kw["mask_function"], kw["attn_logits_soft_cap"],
                                         kw["interpret"], residuals, do)
    return grads[3:6]


def _sink_logit(q_HxLxK, sink_k_HxK, softcap):
    r_HxL = jnp.einsum("hlk,hk->hl", q_HxLxK.astype(jnp.float32), sink_k_HxK.astype(jnp.float32))
    return r_HxL, softcap * jnp.tanh(r_HxL / softcap)


def _forward(static, q, k, v, sink_k, sink_v, segments):
    kernel = _kernel(q.shape[0], q.shape[1], k.shape[1], *static)
    o_HxLxK, (lse_HxL,) = kernel(q, k, v, segments)
    if sink_k is None:
        return o_HxLxK.astype(q.dtype), lse_HxL
    _, s_HxL = _sink_logit(q, sink_k, static[1])
    total_HxL = jnp.logaddexp(lse_HxL, s_HxL)
    out_HxLxK = (jnp.exp(lse_HxL - total_HxL)[..., None] * o_HxLxK.astype(jnp.float32)
                 + jnp.exp(s_HxL - total_HxL)[..., None] * sink_v[:, None].astype(jnp.float32))
    return out_HxLxK.astype(q.dtype), total_HxL


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _with_sink(static, q, k, v, sink_k, sink_v, segments):
    """One example: [H, L, K] queries, [H, S, K] keys/values, [H, K] sink or None; static =
    (causal, softcap, interpret)."""
    return _forward(static, q, k, v, sink_k, sink_v, segments)[0]


def _with_sink_fwd(static, q, k, v, sink_k, sink_v, segments):
    out, total = _forward(static, q, k, v, sink_k, sink_v, segments)
    return out, (q, k, v, sink_k, sink_v, segments, out, total)


def _with_sink_bwd(static, residuals, do_HxLxK):
    q, k, v, sink_k, sink_v, segments, out, total_HxL = residuals
    softcap = static[1]
    kernel = _kernel(q.shape[0], q.shape[1], k.shape[1], *static)
    dq, dk, dv = _keys_backward(kernel, q, k, v, segments, out, total_HxL, do_HxLxK)
    seg_grad = None if segments is None else jax.tree.map(
        lambda s: np.zeros(s.shape, jax.dtypes.float0), segments)
    if sink_k is None:
        return dq, dk, dv, None, None, seg_grad
    do = do_HxLxK.astype(jnp.float32)
    r_HxL, s_HxL = _sink_logit(q, sink_k, softcap)
    p_HxL = jnp.exp(s_HxL - total_HxL)
    d_HxL = jnp.sum(do * out.astype(jnp.float32), axis=-1)
    ds_HxL = p_HxL * (jnp.einsum("hlk,hk->hl", do, sink_v.astype(jnp.float32)) - d_HxL)
    dr_HxL = ds_HxL * (1.0 - jnp.tanh(r_HxL / softcap) ** 2)
    dq = dq.astype(jnp.float32) + dr_HxL[..., None] * sink_k[:, None].astype(jnp.float32)
    d_sink_k = jnp.einsum("hl,hlk->hk", dr_HxL, q.astype(jnp.float32))
    d_sink_v = jnp.einsum("hl,hlk->hk", p_HxL, do)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            d_sink_k.astype(sink_k.dtype), d_sink_v.astype(sink_v.dtype), seg_grad)


_with_sink.defvjp(_with_sink_fwd, _with_sink_bwd)


def _batched(static, q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, sink_k_HxK, sink_v_HxK, noisy):
    """[B, H, L, K] output; `noisy` is None or (noisy_q_BxL, noisy_k_BxS) as int32."""
    call = jax.vmap(functools.partial(_with_sink, static), in_axes=(0, 0, 0, None, None, 0))
    if noisy is None:
        return call(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, sink_k_HxK, sink_v_HxK, None)
    noisy_q_BxL, noisy_k_BxS = noisy
    every_key = call(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, sink_k_HxK, sink_v_HxK, None)
    same_flag = call(q_BxHxLxK, k_BxHxSxK, v_BxHxSxK, sink_k_HxK, sink_v_HxK,
                     splash.SegmentIds(q=noisy_q_BxL, kv=noisy_k_BxS))
    return jnp.where(noisy_q_BxL[:, None, :, None] > 0, every_key, same_flag)


def _mesh_axes():
    """(batch axes, head axes) of the current mesh that have more than one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), ()
    split = lambda names: tuple(a for a in names if a in mesh.axis_names  # noqa: E731
                                and mesh.shape[a] > 1)
    return split(parallel.BATCH_AXES), split(_HEAD_AXES)


def splash_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, sink_k_HxK, sink_v_HxK, mask, *,
                     softcap, dtype, causal=False, interpret=False):
    """o_BxLxHxK (dtype), as `attention.dense_attention`; check `unsupported` first."""
    reason = unsupported(mask, q_BxLxHxK.shape[1], k_BxSxHxK.shape[1])
    if reason:
        raise ValueError(reason)
    to_heads = functools.partial(jnp.transpose, axes=(0, 2, 1, 3))
    q, k, v = (to_heads(x.astype(dtype)) for x in (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK))
    noisy = None
    if mask is not None:
        noisy = (mask.noisy_q_BxL.astype(jnp.int32), mask.noisy_k_BxS.astype(jnp.int32))
    static = (causal, float(softcap), interpret)
    body = functools.partial(_batched, static)
    batch_axes, head_axes = _mesh_axes()
    if batch_axes or head_axes:
        bhlk = PartitionSpec(batch_axes or None, head_axes or None)
        hk, bl = PartitionSpec(head_axes or None), PartitionSpec(batch_axes or None)
        body = jax.shard_map(body, in_specs=(bhlk, bhlk, bhlk, hk, hk, bl), out_specs=bhlk,
                             check_vma=False)
    o_BxHxLxK = body(q, k, v, sink_k_HxK, sink_v_HxK, noisy)
    return to_heads(o_BxHxLxK).astype(dtype)
