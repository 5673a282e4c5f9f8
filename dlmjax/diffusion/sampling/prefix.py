"""The clean-prefix cache hooks (sampling.PrefixCache) of a dlmjax transformer."""

import jax
import jax.numpy as jnp

from dlmjax.diffusion.sampling.loop import PrefixCache


def model_prefix_cache(params, model_cfg):
    """(logits_fn(z, attn), PrefixCache) of a dlmjax transformer, params as jit arguments."""
    from dlmjax.model import attention, transformer

    def logits(params, z_BxL, attn_BxLxL):
        return transformer.apply(params, z_BxL, attn_BxLxL, cfg=model_cfg)

    def prefix(params, z_BxC, noisy_BxC, prefix_len):
        return transformer.prefix_kv(params, z_BxC, attention.NoisyMask(noisy_BxC, noisy_BxC),
                                     prefix_len, cfg=model_cfg)

    def after_prefix(params, kv, z_BxW, noisy_BxW):
        prefix_noisy_BxP = jnp.zeros((z_BxW.shape[0], kv[0].shape[2]), bool)
        mask = attention.NoisyMask(noisy_BxW, jnp.concatenate([prefix_noisy_BxP, noisy_BxW], 1))
        return transformer.apply_after_prefix(params, kv, z_BxW, mask, cfg=model_cfg)

    partial = jax.tree_util.Partial
    return partial(logits, params), PrefixCache(partial(prefix, params),
                                                partial(after_prefix, params))
