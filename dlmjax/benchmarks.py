"""Measurements printed by `make bench`: ratios taken within one process, never gated on time."""

import jax
import jax.numpy as jnp

from dlmjax import data
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


def _tiny_run():
    import os
    import sys

    from dlmjax import config as config_lib

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from experiments import tiny_cpu

    return config_lib.derive(tiny_cpu.get_config(), num_devices=1)


def _median_seconds(fn, repeats=5):
    import statistics
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_report(repeats=5):
    """The tiny_cpu train step on one device: tokens/s and FLOP/s over this process's matmul."""
    import functools

    from dlmjax import parallel, train

    run = _tiny_run()
    device = jax.devices()[:1]
    mesh = parallel.make_mesh(1, 1, 1, devices=device)
    optimizer = train.make_optimizer(run)
    shardings = train.Shardings(run, mesh, optimizer)
    with parallel.sharding_context(mesh, run.config.mesh.strategy):
        step = train.compile_train_step(run, shardings, optimizer)
        state = jax.jit(functools.partial(train.init_state, run=run, optimizer=optimizer),
                        out_shardings=shardings.state)(jax.random.key(0))
        x = jax.device_put(jnp.full((run.batch_size, run.model.seq_len), 7, jnp.int32),
                           shardings.batch)
        holder = [state]

        def one_step():
            holder[0], metrics = step(holder[0], x)
            jax.block_until_ready(metrics)

        seconds = _median_seconds(one_step, repeats)
    tokens_per_s = run.tokens_per_step / seconds
    m = run.model
    # Everything the step multiplies: M plus the embedding-free head (6·D·V per token).
    step_flops_per_token = run.flops_per_token + 6 * m.d_model * m.vocab_size
    matmul = train.measured_matmul_flops()
    return {"step_seconds": seconds, "train_tokens_per_s": tokens_per_s,
            "achieved_flops_per_s": tokens_per_s * step_flops_per_token,
            "matmul_flops_per_s": matmul,
            "flops_ratio": tokens_per_s * step_flops_per_token / matmul}


def pipeline_report():
    """The KJV pipeline's tokens/s next to what the tiny train step consumes (goal: ≥ 10×)."""
    from dlmjax import data

    run = _tiny_run()
    pipeline = data.benchmark_pipeline(run.config.data, seq_len=run.model.seq_len,
                                       batch_size=run.batch_size)
    step = train_step_report(repeats=3)
    return {"pipeline_tokens_per_s": pipeline["pipeline_tokens_per_s"],
            "train_tokens_per_s": step["train_tokens_per_s"],
            "ratio": pipeline["pipeline_tokens_per_s"] / step["train_tokens_per_s"]}


def sampler_report():
    """One ancestral sampler step of the tiny model over one forward pass (goal: ≤ 1.1)."""
    import functools

    from dlmjax import model as model_lib
    from dlmjax.config import MASK_ID
    from dlmjax.diffusion import sampling

    run = _tiny_run()
    params = model_lib.init_params(jax.random.key(0), run.model)
    logits_fn = jax.tree_util.Partial(functools.partial(model_lib.apply, cfg=run.model), params)
    return {method: sampling.benchmark_sampler_step(
        logits_fn, run.batch_size, run.model.seq_len, vocab_size=run.model.vocab_size,
        mask_id=MASK_ID, shift=run.shift, method=method)
        for method in ("ancestral", "adaptive")}


# Name → zero-argument function returning a dict of figures; `tools/bench.py` prints each.
BENCHMARKS = {
    "loss_memory (chunked / naive temp bytes of value-and-grad, B2 L2048 D512 V131072)":
        loss_memory_report,
    "train_step (tiny_cpu on one CPU device; FLOP/s over the same process's matmul FLOP/s)":
        train_step_report,
    "data_pipeline (KJV pipeline tokens/s over tiny train-step tokens/s; goal >= 10)":
        pipeline_report,
    "sampler (one sampler step over one forward of the tiny model; goal <= 1.1)":
        sampler_report,
    "prepare_data (KJV tokens/s per worker, 1 and 2 workers; goal >= 0.5M per core)":
        data.benchmark_prepare,
}
