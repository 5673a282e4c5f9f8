"""Mesh construction, the rule tables, and sharded = single-device for forward, loss and one
optimizer step on 8 fake CPU devices."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from dlmjax import parallel
from dlmjax.diffusion.elbo import token_losses_from_hidden
from dlmjax.model import ModelConfig, abstract_params, apply, head_kernel, init_params
from dlmjax.optim import make_optimizer

CFG = ModelConfig(vocab_size=64, num_layers=2, d_model=64, num_heads=4, seq_len=16,
                  dtype="float32", remat="full")
BATCH = 8


def test_make_mesh_sizes_and_errors():
    mesh = parallel.make_mesh(data=2, fsdp=-1, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(parallel.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="'data'"):
        parallel.make_mesh(data=-1, fsdp=3)
    with pytest.raises(ValueError, match="multiply to 6"):
        parallel.make_mesh(data=2, fsdp=3)
    with pytest.raises(ValueError, match="'tensor'"):
        parallel.make_mesh(tensor=0)
    with pytest.raises(ValueError, match="strategy"):
        parallel.rules_for("zero3")


def test_rule_tables_map_logical_names():
    mesh = parallel.make_mesh(data=1, fsdp=2, tensor=4)
    sh = parallel.param_shardings(CFG, mesh, "fsdp_tp")
    assert sh["layers"]["attn"]["q_kernel"].spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert sh["layers"]["mlp"]["down_kernel"].spec == PartitionSpec(None, "tensor", "fsdp")
    assert sh["embedding"].spec == PartitionSpec("tensor", "fsdp")
    assert sh["final_norm"].spec == PartitionSpec(None)
    dp = parallel.param_shardings(CFG, mesh, "dp")
    assert all(s.spec == PartitionSpec(*([None] * len(s.spec))) for s in jax.tree.leaves(dp))
    assert parallel.batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"), None)
    # Optimizer state: moments follow their parameter, counts are replicated, also with the
    # optional clipping and (masked) weight-decay transforms in the chain.
    opt = make_optimizer(lr=0.3, d_model=64, num_layers=2, total_steps=10, batch_size=8,
                         weight_decay=0.1, clip_norm=1.0)
    opt_sh = parallel.opt_state_shardings(opt, abstract_params(CFG), sh, mesh)
    state = jax.eval_shape(opt.init, abstract_params(CFG))
    assert jax.tree.structure(opt_sh) == jax.tree.structure(state)
    laprop_sh = next(x for x in opt_sh if hasattr(x, "nu"))
    assert laprop_sh.nu == sh and laprop_sh.mu == sh and laprop_sh.count.spec == PartitionSpec()


def test_sharded_init_equals_single_device_init():
    mesh = parallel.make_mesh(data=1, fsdp=2, tensor=4)
    sh = parallel.param_shardings(CFG, mesh, "fsdp_tp")
    with parallel.sharding_context(mesh, "fsdp_tp"):
        sharded = jax.jit(init_params, static_argnums=1, out_shardings=sh)(jax.random.key(3), CFG)
    single = jax.jit(init_params, static_argnums=1)(jax.random.key(3), CFG)
    assert sharded["layers"]["mlp"]["up_kernel"].addressable_shards[0].data.shape == (2, 32, 64)
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_array_equal(got, want)


def _batch():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 64, (BATCH, 16))
    lam = np.repeat(rng.uniform(-3, 3, (BATCH, 1)), 16, axis=1).astype(np.float32)
    z = np.where(rng.random(x.shape) < 1 / (1 + np.exp(-lam)), x, 0)
    noisy = np.arange(16)[None] >= rng.integers(0, 8, (BATCH, 1))  # clean prompt prefixes
    lam = np.where(noisy, lam, np.inf).astype(np.float32)
    z = np.where(noisy, z, x)
    mask = noisy[:, :, None] >= noisy[:, None, :]
    return tuple(jnp.asarray(a) for a in (z, x, lam, mask))


def _params():
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), jnp.float32),
                        abstract_params(CFG))


OPT = make_optimizer(lr=0.3, d_model=CFG.d_model, num_layers=CFG.num_layers, total_steps=10,
                     warmup_steps=0, batch_size=BATCH)


def _step(params, opt_state, z, x, lam, mask, cfg=CFG):
    """Forward logits, summed diffusion loss and one LaProp step."""

    def loss_fn(p):
        h = apply(p, z, mask, cfg=cfg, return_hidden=True)
        loss, _ = token_losses_from_hidden(h, head_kernel(p), z, x, lam, mask_id=0,
                                           shift=-2.0, logit_multiplier=CFG.logit_multiplier,
                                           chunk_size=32)
        return jnp.sum(loss), h

    (loss, h), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = OPT.update(grads, opt_state, params)
    new_params = jax.tree.map(jnp.add, params, updates)
    logits = CFG.logit_multiplier * h @ head_kernel(params)  # the forward's output
    return logits, loss, new_params, opt_state


@functools.cache
def _single_device_result():
    """The reference runs without rematerialisation, so the comparison also covers remat."""
    params = _params()
    step = jax.jit(functools.partial(_step, cfg=dataclasses.replace(CFG, remat="none")))
    return jax.device_get(step(params, OPT.init(params), *_batch()))


def _assert_close(got, want, rel=1e-5):
    """Relative to the array's scale: sharding reorders float32 sums, so entries near zero can
    differ by more than 1e-5 of themselves but not of the tensor."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.max(np.abs(got - want), initial=0.0) <= rel * np.max(np.abs(want), initial=0.0)


# (data, fsdp, tensor, strategy): 2×4 and 8×1 meshes.
MESHES = [(2, 4, 1, "fsdp"), (1, 8, 1, "fsdp"), (1, 2, 4, "fsdp_tp")]


@pytest.mark.parametrize("data,fsdp,tensor,strategy", MESHES)
def test_sharded_step_equals_single_device(data, fsdp, tensor, strategy):
    mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
    param_sh = parallel.param_shardings(CFG, mesh, strategy)
    opt_sh = parallel.opt_state_shardings(OPT, abstract_params(CFG), param_sh, mesh)
    batch_sh = (parallel.batch_sharding(mesh), parallel.batch_sharding(mesh),
                parallel.batch_sharding(mesh), parallel.batch_sharding(mesh, ndim=3))
    logits_sh = jax.sharding.NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None))
    with parallel.sharding_context(mesh, strategy):
        params = jax.device_put(_params(), param_sh)
        opt_state = jax.jit(OPT.init, out_shardings=opt_sh)(params)
        batch = jax.device_put(_batch(), batch_sh)
        step = jax.jit(_step, in_shardings=(param_sh, opt_sh, *batch_sh),
                       out_shardings=(logits_sh, parallel.replicated(mesh), param_sh, opt_sh))
        logits, loss, new_params, new_opt_state = step(params, opt_state, *batch)

    ref_logits, ref_loss, ref_params, ref_opt_state = _single_device_result()
    _assert_close(logits, ref_logits)
    _assert_close(loss, ref_loss)
    for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):
        _assert_close(got, want)
    state, ref_state = new_opt_state[0], ref_opt_state[0]
    assert int(state.count) == int(ref_state.count) == 1
    for got_nu, want_nu, got_mu, want_mu in zip(*map(jax.tree.leaves, (
            state.nu, ref_state.nu, state.mu, ref_state.mu))):
        _assert_close(np.sqrt(got_nu), np.sqrt(want_nu))  # |g|, on the gradient's own scale
        # mu = g/(|g| + ε) after one step: where g cancels to ~0 its sign is rounding noise.
        well_conditioned = np.sqrt(want_nu) > 1e-3 * np.sqrt(np.max(want_nu))
        _assert_close(np.where(well_conditioned, got_mu, 0), np.where(well_conditioned, want_mu, 0))

    # Really sharded: per-device shard shapes of parameters and their optimizer moments.
    L, D, H, K, F, V = 2, 64, 4, 16, 256, 64
    shard = lambda a: a.addressable_shards[0].data.shape  # noqa: E731
    tp = tensor
    assert shard(new_params["layers"]["attn"]["q_kernel"]) == (L, D // fsdp, H // tp, K)
    assert shard(new_params["layers"]["mlp"]["up_kernel"]) == (L, D // fsdp, F // tp)
    assert shard(new_params["unembedding"]) == (D // fsdp, V // tp)
    assert shard(state.nu["layers"]["mlp"]["down_kernel"]) == (L, F // tp, D // fsdp)
    assert shard(state.mu["embedding"]) == (V // tp, D // fsdp)
    assert shard(logits) == (BATCH // (data * fsdp), 16, V)
    assert state.count.sharding.is_fully_replicated
