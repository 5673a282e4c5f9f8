"""The splash path (Pallas kernel in interpret mode on CPU) equals the dense form: values and
gradients of queries, keys, values and the learned sink, for every mask we use, one device and
a batch split over a mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax import parallel
from dlmjax.model import attention
from dlmjax.model.attention import NoisyMask, dense_attention
from dlmjax.model.attention_splash import splash_attention, unsupported

H, K = 2, 64


def _inputs(batch, query_len, key_len, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    return (0.6 * normal(batch, query_len, H, K), 0.6 * normal(batch, key_len, H, K),
            normal(batch, key_len, H, K), 0.6 * normal(H, K), normal(H, K))


def _noisy_mask(batch, query_len, key_len, seed=1):
    # Keys before the queries are a clean prefix; the queries' own positions are clean at random
    # (committed tokens) except the last row, which is all noisy (an unprompted row).
    noisy_q = np.random.default_rng(seed).random((batch, query_len)) < 0.6
    noisy_q[-1] = True
    noisy_k = np.concatenate([np.zeros((batch, key_len - query_len), bool), noisy_q], axis=1)
    return NoisyMask(noisy_q, noisy_k)


CASES = {
    "bidirectional": dict(query_len=128, key_len=128, mask=False, causal=False),
    "prompt_masked_prefix": dict(query_len=128, key_len=256, mask=True, causal=False),
    "causal_prefix": dict(query_len=128, key_len=256, mask=False, causal=True),
    "prompt_masked_no_sink": dict(query_len=128, key_len=128, mask=True, causal=False,
                                  sink=False),
}


def _value_and_grads(fn, primals, mask, causal, w_o):
    pad = (None, None) if len(primals) == 3 else ()
    o, vjp = jax.vjp(lambda *a: fn(*a, *pad, mask, softcap=30.0, dtype=jnp.float32,
                                   causal=causal), *primals)
    return o, vjp(w_o)


def _assert_same(got, want, tol=1e-5):
    (o, grads), (o_ref, grads_ref) = got, want
    np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), rtol=tol, atol=tol)
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref):
        scale = float(np.max(np.abs(g_ref)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(g_ref) / scale, atol=tol)


@pytest.mark.parametrize("name", CASES)
def test_splash_equals_dense_values_and_gradients(name):
    case = CASES[name]
    batch, L, S = 2, case["query_len"], case["key_len"]
    q, k, v, sink_k, sink_v = _inputs(batch, L, S)
    primals = (q, k, v) if case.get("sink") is False else (q, k, v, sink_k, sink_v)
    mask = _noisy_mask(batch, L, S) if case["mask"] else None
    w_o = np.random.default_rng(9).standard_normal((batch, L, H, K), np.float32)
    splash = functools.partial(splash_attention, interpret=True)
    run = jax.jit(_value_and_grads, static_argnums=(0, 3))
    _assert_same(run(splash, primals, mask, case["causal"], w_o),
                 run(dense_attention, primals, mask, case["causal"], w_o))


def test_splash_splits_the_batch_over_a_mesh():
    # 8 fake devices: the batch of 8 over data × fsdp = 2 × 2 and the 2 heads over tensor, via
    # shard_map; values and gradients.
    mesh = parallel.make_mesh(2, 2, 2)
    batch, L = 8, 128
    primals = _inputs(batch, L, L, seed=3)
    mask = _noisy_mask(batch, L, L, seed=4)
    w_o = np.random.default_rng(5).standard_normal((batch, L, H, K), np.float32)
    splash = functools.partial(splash_attention, interpret=True)
    with parallel.sharding_context(mesh, "fsdp_tp"):
        sharded = [jax.device_put(a, parallel.batch_sharding(mesh, a.ndim)) for a in primals[:3]]
        got = jax.jit(_value_and_grads, static_argnums=(0, 3))(
            splash, (*sharded, *primals[3:]), mask, False, w_o)
    assert len(got[0].sharding.device_set) == 8
    _assert_same(got, jax.jit(_value_and_grads, static_argnums=(0, 3))(
        dense_attention, primals, mask, False, w_o))


def test_splash_names_what_it_cannot_take():
    dense_mask = np.ones((1, 128, 128), bool)
    assert "dense" in unsupported(dense_mask, 128, 128)
    assert "multiples of 128" in unsupported(None, 100, 128)
    assert unsupported(_noisy_mask(1, 128, 256), 128, 256) is None
    with pytest.raises(ValueError, match="multiples of 128"):
        splash_attention(*_inputs(1, 20, 20), None, softcap=30.0, dtype=jnp.float32)
    attention.resolve.cache_clear()
    assert attention.resolve("splash", "tpu") == "splash"
