"""Bidirectional pre-norm transformer with the CompleteP parametrization (docs/science.md).

Parameter tree (L leading on everything under "layers", stacked by nn.scan):

    embedding              [V, D]        ('vocab', 'embed')
    layers/attn_norm       [L, D]        ('layers', 'norm')
    layers/attn/q_kernel   [L, D, H, K]  ('layers', 'embed', 'heads', 'kv')   also k_, v_kernel
    layers/attn/o_kernel   [L, H, K, D]  ('layers', 'heads', 'kv', 'embed')
    layers/attn/q_norm     [L, H, K]     QK-norm gains over the whole H·K; also k_norm (qk_norm)
    layers/attn/sink_key   [L, H, K]     learned key/value sink per head; also sink_value
                                         (attention_sink)
    layers/mlp_norm        [L, D]
    layers/mlp/up_kernel   [L, D, F]     ('layers', 'embed', 'mlp'), up_bias [L, F] (mlp_bias)
    layers/mlp/down_kernel [L, F, D]     ('layers', 'mlp', 'embed'), down_bias [L, D] (mlp_bias)
    final_norm             [D]
    unembedding            [D, V]        ('embed', 'vocab')

Names ending in "_kernel" are the hidden weight matrices (the η/D learning-rate group).
Activations carry logical names ('batch', 'length', 'act_embed', 'act_heads', 'act_mlp',
'act_vocab'); they become sharding constraints only under a mesh and nn.logical_axis_rules
(see dlmjax.parallel.sharding_context), and are no-ops otherwise.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlmjax.model import attention
from dlmjax.model.config import ModelConfig

NORM_EPS = 1e-6
_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the weight matmul outputs, recompute attention scores and elementwise ops.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rms_norm(x, gain, axes=-1, eps=NORM_EPS):
    """RMSNorm with gain (1 + γ), computed in float32 whatever the input dtype."""
    x = x.astype(jnp.float32)
    mean_sq = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
    return x * jax.lax.rsqrt(mean_sq + eps) * (1.0 + gain.astype(jnp.float32))


def rotary(x_BxLxHxK, theta, offset=0):
    """RoPE on the two halves of each head (float32); positions start at `offset`."""
    seq_len, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    positions_L = jnp.arange(offset, offset + seq_len, dtype=jnp.float32)
    angle_LxK2 = positions_L[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angle_LxK2)[:, None, :], jnp.sin(angle_LxK2)[:, None, :]
    x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _param(module, name, init, shape, axes, cfg):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                        jnp.dtype(cfg.param_dtype))


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


def _scaled(y, scale):
    return y if scale == 1.0 else y * jnp.asarray(scale, y.dtype)


class Attention(nn.Module):
    cfg: ModelConfig
    position_offset: int = 0  # > 0 when the keys of a cached clean prefix come first

    @nn.compact
    def __call__(self, x_BxLxD, mask, prefix_kv=None):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        D, H, K = cfg.d_model, cfg.heads, cfg.head_dim
        w_init = nn.initializers.normal(cfg.matrix_init_std)
        zeros = nn.initializers.zeros
        qkv_axes = ("embed", "heads", "kv")
        head_axes = ("heads", "kv")
        x_BxLxD = x_BxLxD.astype(dtype)

        def project(name):
            w_DxHxK = _param(self, name, w_init, (D, H, K), qkv_axes, cfg)
            y = jnp.einsum("bld,dhk->blhk", x_BxLxD, w_DxHxK.astype(dtype))
            y = _scaled(y, cfg.projection_scale(D, H * K))
            return _constrain(y, ("batch", "length", "act_heads", None))

        q_BxLxHxK, k_BxLxHxK = project("q_kernel"), project("k_kernel")
        if cfg.qk_norm:  # over the whole H·K-dimensional q and k, i.e. jointly over the heads
            q_gain = _param(self, "q_norm", zeros, (H, K), head_axes, cfg)
            k_gain = _param(self, "k_norm", zeros, (H, K), head_axes, cfg)
            q_BxLxHxK = rms_norm(q_BxLxHxK, q_gain, (-2, -1), cfg.norm_eps)
            k_BxLxHxK = rms_norm(k_BxLxHxK, k_gain, (-2, -1), cfg.norm_eps)
        offset = self.position_offset
        q_BxLxHxK = (rotary(q_BxLxHxK, cfg.rope_theta, offset) * K**-0.5).astype(dtype)
        k_BxLxHxK = rotary(k_BxLxHxK, cfg.rope_theta, offset).astype(dtype)
        v_BxLxHxK = project("v_kernel")
        # Keys/values for a clean-prefix cache; free unless "cache" is mutable.
        self.sow("cache", "kv", (k_BxLxHxK, v_BxLxHxK))
        if prefix_kv is not None:  # keys S = prefix + own; attend() handles S != L
            k_BxLxHxK = jnp.concatenate([prefix_kv[0].astype(dtype), k_BxLxHxK], axis=1)
            v_BxLxHxK = jnp.concatenate([prefix_kv[1].astype(dtype), v_BxLxHxK], axis=1)
        sink_k_HxK = sink_v_HxK = None
        if cfg.attention_sink:
            sink_k_HxK = _param(self, "sink_key", zeros, (H, K), head_axes, cfg).astype(dtype)
            sink_v_HxK = _param(self, "sink_value", zeros, (H, K), head_axes, cfg).astype(dtype)
        o_BxLxHxK = attention.attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, sink_k_HxK, sink_v_HxK,
                                     mask, softcap=cfg.attn_softcap, dtype=dtype,
                                     causal=cfg.causal, implementation=cfg.attention)
        o_BxLxHxK = _constrain(o_BxLxHxK, ("batch", "length", "act_heads", None))

        w_HxKxD = _param(self, "o_kernel", w_init, (H, K, D), ("heads", "kv", "embed"), cfg)
        y_BxLxD = jnp.einsum("blhk,hkd->bld", o_BxLxHxK, w_HxKxD.astype(dtype))
        y_BxLxD = _scaled(y_BxLxD, cfg.projection_scale(H * K, D))
        return _constrain(y_BxLxD, ("batch", "length", "act_embed"))


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        D, F = cfg.d_model, cfg.mlp_dim
        w_init = nn.initializers.normal(cfg.matrix_init_std)
        zeros = nn.initializers.zeros
        w_DxF = _param(self, "up_kernel", w_init, (D, F), ("embed", "mlp"), cfg)
        w_FxD = _param(self, "down_kernel", w_init, (F, D), ("mlp", "embed"), cfg)
        h_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD.astype(dtype), w_DxF.astype(dtype))
        h_BxLxF = _scaled(h_BxLxF, cfg.projection_scale(D, F))
        if cfg.mlp_bias:
            h_BxLxF = h_BxLxF + _param(self, "up_bias", zeros, (F,), ("mlp",), cfg).astype(dtype)
        h_BxLxF = _constrain(h_BxLxF, ("batch", "length", "act_mlp"))
        h_BxLxF = jnp.square(jax.nn.relu(h_BxLxF))
        y_BxLxD = jnp.einsum("blf,fd->bld", h_BxLxF, w_FxD.astype(dtype))
        y_BxLxD = _scaled(y_BxLxD, cfg.projection_scale(F, D))
        if cfg.mlp_bias:
            y_BxLxD = y_BxLxD + _param(self, "down_bias", zeros, (D,), ("norm",),
                                       cfg).astype(dtype)
        return _constrain(y_BxLxD, ("batch", "length", "act_embed"))


class Block(nn.Module):
    """h ← h + (4/L)·Attn(norm(h)); h ← h + (4/L)·MLP(norm(h)). A scan body: (carry, _)."""

    cfg: ModelConfig
    position_offset: int = 0

    @nn.compact
    def __call__(self, h_BxLxD, mask, prefix_kv=None):
        cfg = self.cfg
        zeros = nn.initializers.zeros
        scale = cfg.residual_multiplier
        attn_gain = _param(self, "attn_norm", zeros, (cfg.d_model,), ("norm",), cfg)
        mlp_gain = _param(self, "mlp_norm", zeros, (cfg.d_model,), ("norm",), cfg)
        attn = Attention(cfg, self.position_offset, name="attn")(
            rms_norm(h_BxLxD, attn_gain, eps=cfg.norm_eps), mask, prefix_kv)
        h_BxLxD = h_BxLxD + (scale * attn).astype(h_BxLxD.dtype)
        mlp = Mlp(cfg, name="mlp")(rms_norm(h_BxLxD, mlp_gain, eps=cfg.norm_eps))
        h_BxLxD = h_BxLxD + (scale * mlp).astype(h_BxLxD.dtype)
        h_BxLxD = _constrain(h_BxLxD, ("batch", "length", "act_embed"))
        # Per-layer outputs for diagnostics (coordinate check); free unless made mutable.
        self.sow("intermediates", "layer_output", h_BxLxD)
        return h_BxLxD, None


class Transformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxL, attn_mask=None, *, return_hidden=False, prefix_kv=None,
                 position_offset=0):
        """Logits [B, L, V] (float32) or, with return_hidden, final-norm hidden states [B, L, D].

        attn_mask: None, an attention.NoisyMask, or a boolean [B, L, L] array True where query q
        may attend to key k (the sink is always visible); causal models add the causal mask.
        prefix_kv: per-layer (keys, values) [N, B, P, H, K] of a cached clean prefix that these
        tokens follow (they sit at positions position_offset = P onwards); the mask then has
        P + L keys.
        """
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        seq_len = tokens_BxL.shape[1] + position_offset
        if seq_len > cfg.seq_len:
            raise ValueError(f"tokens have length {seq_len} > model.seq_len={cfg.seq_len}")

        table_VxD = _param(self, "embedding", nn.initializers.normal(cfg.embed_init_std),
                           (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
        h_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(dtype)
        h_BxLxD = _constrain(h_BxLxD, ("batch", "length", "act_embed"))

        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
        stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0, "cache": 0},
                        split_rngs={"params": True}, in_axes=(nn.broadcast, 0),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        h_BxLxD, _ = stack(cfg, position_offset, name="layers")(h_BxLxD, attn_mask, prefix_kv)

        final_gain = _param(self, "final_norm", nn.initializers.zeros, (cfg.d_model,),
                            ("norm",), cfg)
        h_BxLxD = rms_norm(h_BxLxD, final_gain, eps=cfg.norm_eps).astype(dtype)
        head_init = (nn.initializers.normal(cfg.head_init_std) if cfg.head_init_std
                     else nn.initializers.zeros)
        w_DxV = _param(self, "unembedding", head_init,
                       (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)
        if return_hidden:
            return h_BxLxD
        logits_BxLxV = jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV.astype(dtype),
                                  preferred_element_type=jnp.float32)
        return _constrain(logits_BxLxV * cfg.logit_multiplier, ("batch", "length", "act_vocab"))


def _boxed_init(key, cfg):
    tokens = jnp.zeros((1, min(cfg.seq_len, 8)), jnp.int32)
    return Transformer(cfg).init(key, tokens)["params"]


def init_params(key, cfg: ModelConfig):
    """Plain pytree of arrays (param_dtype). jit it with out_shardings to create it sharded."""
    return nn.unbox(_boxed_init(key, cfg))


def abstract_params(cfg: ModelConfig):
    """ShapeDtypeStruct tree of the parameters, without allocating them."""
    return jax.eval_shape(functools.partial(init_params, cfg=cfg), jax.random.key(0))


def logical_axes(cfg: ModelConfig):
    """Tree of PartitionSpecs of logical axis names, one per parameter."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, cfg=cfg), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def head_kernel(params):
    """w_DxV of the head (without the logit multiplier, which the loss applies)."""
    return params["unembedding"]


def apply(params, tokens_BxL, attn_mask=None, *, cfg: ModelConfig, return_hidden=False):
    return Transformer(cfg).apply({"params": params}, tokens_BxL, attn_mask,
                                  return_hidden=return_hidden)


def apply_with_layer_outputs(params, tokens_BxL, attn_mask=None, *, cfg: ModelConfig):
    """(logits_BxLxV, layer_outputs_NxBxLxD): residual stream after each of the N layers."""
    logits, state = Transformer(cfg).apply({"params": params}, tokens_BxL, attn_mask,
                                           mutable=["intermediates"])
    (layer_outputs,) = state["intermediates"]["layers"]["layer_output"]
    return logits, layer_outputs


def prefix_kv(params, tokens_BxL, attn_mask, prefix_len, *, cfg: ModelConfig):
    """Per-layer (keys, values) [N, B, prefix_len, H, K] of the first prefix_len positions.

    One forward of the whole window (so clean positions past the prefix are seen as in training);
    exact for a cache only if positions [0, prefix_len) are clean under `attn_mask`.
    """
    _, state = Transformer(cfg).apply({"params": params}, tokens_BxL, attn_mask,
                                      return_hidden=True, mutable=["cache"])
    ((k_NxBxLxHxK, v_NxBxLxHxK),) = state["cache"]["layers"]["attn"]["kv"]
    return k_NxBxLxHxK[:, :, :prefix_len], v_NxBxLxHxK[:, :, :prefix_len]


def apply_after_prefix(params, kv, tokens_BxW, attn_mask, *, cfg: ModelConfig):
    """Logits [B, W, V] of tokens at positions P.. after a cached prefix kv = prefix_kv(...)[:P].

    attn_mask covers the P + W keys (e.g. NoisyMask(noisy_BxW, [clean prefix, noisy_BxW])).
    """
    return Transformer(cfg).apply({"params": params}, tokens_BxW, attn_mask, prefix_kv=kv,
                                  position_offset=kv[0].shape[2])
