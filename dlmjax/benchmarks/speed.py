"""Speed ratios: train-step MFU against the same process's matmul, sampler step over forward,
data pipeline over train step, and the wall time of the 10B `describe`."""

import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from dlmjax.benchmarks.protocol import interleaved_medians, matched_matmul_call

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_run(**model_overrides):
    """tiny_cpu (the shipped 4096-token tokenizer's vocabulary), derived for one device."""
    from dlmjax import config as config_lib

    sys.path.insert(0, ROOT)
    from experiments import tiny_cpu

    cfg = tiny_cpu.get_config()
    for key, value in model_overrides.items():
        if key == "batch_size":
            cfg.train.batch_size = value
        else:
            setattr(cfg.model, key, value)
    return config_lib.derive(cfg, num_devices=1)


def l8_d512_run(**model_overrides):
    """L8-D512 at S = 512, 8 sequences, the tiny_cpu vocabulary (4096), float32, no remat.

    Blockwise attention: on the CPU it beats dense here (dense stores the [B, H, L, S]
    probabilities of all L layers for the backward pass and copies them in and out of the scan's
    stacked residuals, ~0.5 GB per array at this size); `cpu_mfu_l8_d512_s512` reports both.
    """
    overrides = {"attention": "blockwise", **model_overrides}
    return tiny_run(num_layers=8, d_model=512, seq_len=512, batch_size=8, **overrides)


def train_step_call(run):
    """(zero-argument callable running one full diffusion train step, FLOPs per step)."""
    from dlmjax import parallel, train

    device = jax.devices()[:1]
    mesh = parallel.make_mesh(1, 1, 1, devices=device)
    optimizer = train.make_optimizer(run)
    shardings = train.Shardings(run, mesh, optimizer)
    with parallel.sharding_context(mesh, run.config.mesh.strategy):
        step = train.compile_train_step(run, shardings, optimizer)
        state = jax.jit(functools.partial(train.init_state, run=run, optimizer=optimizer),
                        out_shardings=shardings.state)(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (run.batch_size, run.model.seq_len), 4,
                                run.model.vocab_size)
    x = jax.device_put(tokens.astype(jnp.int32), shardings.batch)
    holder = [state]

    def call():
        with parallel.sharding_context(mesh, run.config.mesh.strategy):
            holder[0], metrics = step(holder[0], x)
        jax.block_until_ready(metrics)

    m = run.model
    # Everything the step multiplies: M (with attention) plus the head, 6·D·V per token.
    flops = run.tokens_per_step * (run.flops_per_token + 6 * m.d_model * m.vocab_size)
    return call, flops


def train_mfu(runs, repeats=None, matmul_size=2048, matmul_dtype="float32"):
    """{name: step FLOP/s over matmul FLOP/s}, all steps and the matmul interleaved."""
    calls, flops = {}, {}
    for name, run in runs.items():
        calls[name], flops[name] = train_step_call(run)
    matmul, matmul_flops = matched_matmul_call(calls[next(iter(runs))], matmul_size,
                                               jnp.dtype(matmul_dtype))
    calls = {"matmul": matmul, **calls}
    seconds = interleaved_medians(calls, repeats=repeats)
    matmul_rate = matmul_flops / seconds["matmul"]
    out = {"matmul_flops_per_s": matmul_rate}
    for name, run in runs.items():
        out[f"{name}_step_seconds"] = seconds[name]
        out[f"{name}_tokens_per_s"] = run.tokens_per_step / seconds[name]
        out[name] = flops[name] / seconds[name] / matmul_rate
    return out


def cpu_mfu_tiny():
    report = train_mfu({"tiny": tiny_run()})
    return {"value": report["tiny"], **report}


def cpu_mfu_l8_d512_s512():
    """The configured attention (the value) next to the other pure-JAX one, interleaved."""
    base = l8_d512_run()
    other = "blockwise" if base.model.attention == "dense" else "dense"
    report = train_mfu({base.model.attention: base, other: l8_d512_run(attention=other)})
    return {"value": report[base.model.attention], **report}


def pipeline_margin():
    """KJV pipeline tokens/s over the tiny train step's tokens/s (goal: ≥ 10)."""
    from dlmjax import data

    run = tiny_run()
    step, _ = train_step_call(run)
    seconds = interleaved_medians({"step": step})["step"]
    pipeline = data.benchmark_pipeline(run.config.data, seq_len=run.model.seq_len,
                                       batch_size=run.batch_size)
    train_tokens_per_s = run.tokens_per_step / seconds
    return {"value": pipeline["pipeline_tokens_per_s"] / train_tokens_per_s,
            "pipeline_tokens_per_s": pipeline["pipeline_tokens_per_s"],
            "train_tokens_per_s": train_tokens_per_s}


def sampler_over_forward():
    """One ancestral (and adaptive) sampler step of the tiny model over one forward (≤ 1.05)."""
    from dlmjax import model as model_lib
    from dlmjax.config import MASK_ID
    from dlmjax.diffusion import sampling

    run = tiny_run()
    params = model_lib.init_params(jax.random.key(0), run.model)
    logits_fn = jax.tree_util.Partial(functools.partial(model_lib.apply, cfg=run.model), params)
    report = {method: sampling.benchmark_sampler_step(
        logits_fn, run.batch_size, run.model.seq_len, vocab_size=run.model.vocab_size,
        mask_id=MASK_ID, shift=run.shift, method=method)
        for method in ("ancestral", "adaptive")}
    return {"value": report["ancestral"]["ratio"], **report}


def describe_10b_seconds():
    """Wall seconds of `--mode=describe` of the 10B run (64 fake devices) and what it reports."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dlmjax.main", "--config=experiments/uniform_10b.py",
         "--mode=describe"], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"describe of uniform_10b failed:\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    memory = report["per_device_memory"]
    return {"value": seconds, "attention": report["model"].get("attention"),
            "compile_seconds": report["compile_seconds"],
            "per_device_temp_gib": memory["temp_bytes"] / 2**30,
            "per_device_total_gib": memory["total_gib"]}
