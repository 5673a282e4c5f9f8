"""Attention implementations: blockwise equals dense (values and gradients), its memory, and the
fallback of kernels whose features do not cover ours."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax.model import attention
from dlmjax.model.attention import NoisyMask, dense_attention
from dlmjax.model.attention_blockwise import blockwise_attention

B, H, K = 2, 2, 8


def _inputs(query_len, key_len, seed=0, scale=3.0):
    # NumPy inputs: eager jax.random calls would each compile a kernel.
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    return (scale * normal(B, query_len, H, K), scale * normal(B, key_len, H, K),
            normal(B, key_len, H, K), scale * normal(H, K), normal(H, K))


def _noisy_mask(query_len, key_len):
    # Row 0: a clean prefix of 7 keys (the queries are the last L positions); row 1: all noisy.
    pos_k = np.arange(key_len)
    noisy_k = np.stack([pos_k >= 7 + key_len - query_len, np.ones(key_len, bool)])
    return NoisyMask(noisy_k[:, key_len - query_len:], noisy_k)


CASES = {
    "bidirectional": dict(query_len=20, key_len=20, mask=None, causal=False, softcap=30.0),
    "prompt_masked": dict(query_len=20, key_len=20, mask="noisy", causal=False, softcap=5.0),
    "causal": dict(query_len=20, key_len=20, mask=None, causal=True, softcap=30.0),
    # S > L (keys of a cached prefix prepended), a dense boolean mask, causal, no sink.
    "prefix_dense_mask_causal_no_sink": dict(query_len=12, key_len=28, mask="dense",
                                             causal=True, softcap=5.0, sink=False),
    # bfloat16 inputs and matmuls (float32 softmax in both): equal to bfloat16 rounding.
    "prompt_masked_bfloat16": dict(query_len=20, key_len=20, mask="noisy", causal=False,
                                   softcap=30.0, dtype="bfloat16", tol=3e-2),
}


@pytest.mark.parametrize("name", CASES)
def test_blockwise_equals_dense_values_and_gradients(name):
    case = dict(CASES[name])
    L, S = case["query_len"], case["key_len"]
    q, k, v, sink_k, sink_v = _inputs(L, S)
    if not case.get("sink", True):
        sink_k = sink_v = None
    mask = None
    if case["mask"] == "noisy":
        mask = _noisy_mask(L, S)
    elif case["mask"] == "dense":
        noisy = _noisy_mask(L, S)
        mask = noisy.noisy_q_BxL[:, :, None] >= noisy.noisy_k_BxS[:, None, :]
    dtype, tol = jnp.dtype(case.get("dtype", "float32")), case.get("tol", 1e-5)
    q, k, v, sink_k, sink_v = (None if a is None else jnp.asarray(a, dtype)
                               for a in (q, k, v, sink_k, sink_v))
    kw = dict(softcap=case["softcap"], dtype=dtype, causal=case["causal"])
    w_o = np.random.default_rng(9).standard_normal((B, L, H, K), np.float32)  # any cotangent
    primals = (q, k, v) if sink_k is None else (q, k, v, sink_k, sink_v)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grads(fn, *primals):
        pad = (None, None) if len(primals) == 3 else ()
        o, vjp = jax.vjp(lambda *a: fn(*a, *pad, mask, **kw), *primals)
        return o, vjp(w_o.astype(o.dtype))

    # Blocks of 8 queries × 16 keys: several blocks, padded last blocks on both axes.
    blockwise = functools.partial(blockwise_attention, q_block=8, k_block=16)
    dense_o, dense_grads = value_and_grads(dense_attention, *primals)
    block_o, block_grads = value_and_grads(blockwise, *primals)
    assert block_o.dtype == dense_o.dtype == dtype
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    np.testing.assert_allclose(f32(block_o), f32(dense_o), rtol=tol, atol=tol)
    for g_block, g_dense in zip(block_grads, dense_grads):
        assert g_block.dtype == g_dense.dtype
        scale = float(jnp.max(jnp.abs(f32(g_dense))))
        assert scale > 0
        np.testing.assert_allclose(f32(g_block) / scale, f32(g_dense) / scale, atol=tol)


def test_blockwise_memory_is_a_tile_not_the_scores():
    # Compiled, never run: value-and-grad of the attention core at B1 H8 S8192 head_dim 64.
    from dlmjax.benchmarks import attention_memory_report

    report = attention_memory_report()
    assert report["ratio"] <= 0.1, report


def test_kernels_without_our_features_fall_back(caplog):
    attention.resolve.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert attention.resolve("cudnn", "cpu") == "blockwise"
        assert attention.resolve("splash", "cpu") == "blockwise"
        assert attention.resolve("cudnn", "gpu") == "blockwise"  # no soft-cap in jax.nn
    text = caplog.text
    assert "needs a GPU" in text and "needs a TPU" in text and "soft-cap" in text
    assert attention.resolve("dense") == "dense"
    with pytest.raises(ValueError, match="model.attention"):
        attention.resolve("flashy")
