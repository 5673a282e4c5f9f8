"""Same-process timing ratios of the samplers (used by `make bench`; never gate a test on them)."""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from dlmjax.diffusion.sampling.loop import METHODS, sample
from dlmjax.diffusion.sampling.prefix import model_prefix_cache
from dlmjax.diffusion.sampling.steps import adaptive_step, ancestral_step, sample_prior


def _interleaved_times(fns, num_repeats, num_warmup):
    """Seconds of each zero-argument fn per round, timed in turn so load drifts hit all alike."""
    for fn in fns.values():
        for _ in range(num_warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(num_repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def _interleaved_medians(fns, num_repeats, num_warmup):
    times = _interleaved_times(fns, num_repeats, num_warmup)
    return {name: statistics.median(t) for name, t in times.items()}


def benchmark_sampler_step(logits_fn, batch_size, seq_len, *, vocab_size, mask_id, shift,
                           method="ancestral", num_repeats=20, num_warmup=3, **step_options):
    """Time of one sampler step (network call + step) over one network forward, same process.

    Both are jitted, warmed up and timed in turn, `num_repeats` rounds on the prior. Returns
    {"step_s", "forward_s", "draw_s" (medians; draw: the step on given logits), "ratio" (median
    of the rounds' ratios), "ratio_quartiles", "forward_plus_draw_ratio"}; the goal for a real
    model is ratio <= 1.05.
    """
    if method not in ("ancestral", "adaptive"):
        raise ValueError(f"method must be 'ancestral' or 'adaptive' (of {METHODS}), got "
                         f"{method!r}")
    key = jax.random.key(0)
    z_BxL = sample_prior(key, batch_size, seq_len, vocab_size=vocab_size, mask_id=mask_id,
                         shift=shift)

    def draw(key, z_BxL, logits_BxLxV):
        if method == "ancestral":
            return ancestral_step(key, z_BxL, logits_BxLxV, -1.0, 0.0, mask_id=mask_id,
                                  shift=shift, **step_options)
        return adaptive_step(key, z_BxL, logits_BxLxV, mask_id=mask_id, shift=shift,
                             **{"tokens_per_step": 1, **step_options})

    # The network goes in as an argument: parameters closed over become constants XLA may fold
    # (a zero-initialised head then gave NaN logits on XLA-CPU, which times another code path).
    net = logits_fn if isinstance(logits_fn, Partial) else Partial(logits_fn)
    forward = jax.jit(lambda net, z_BxL: net(z_BxL))
    step = jax.jit(lambda net, key, z_BxL: draw(key, z_BxL, net(z_BxL)))
    draw_only = jax.jit(draw)
    logits_BxLxV = forward(net, z_BxL)
    if not bool(jnp.all(jnp.isfinite(logits_BxLxV))):
        raise ValueError("the network's logits are not all finite: nothing to time")
    times = _interleaved_times({"forward_s": lambda: forward(net, z_BxL),
                                "step_s": lambda: step(net, key, z_BxL),
                                "draw_s": lambda: draw_only(key, z_BxL, logits_BxLxV)},
                               num_repeats, num_warmup)
    result = {name: statistics.median(t) for name, t in times.items()}
    # The median of each round's ratio: a drift in the machine's speed moves a round's calls
    # alike, but not the medians of calls timed minutes apart.
    ratios = [s / f for s, f in zip(times["step_s"], times["forward_s"])]
    result["ratio"] = statistics.median(ratios)
    result["ratio_quartiles"] = [float(q) for q in np.quantile(ratios, [0.25, 0.75])]
    # The draw alone, on logits already in memory: short calls, so a far steadier figure. One
    # forward plus it bounds the fused step from above (that one never writes out the logits).
    result["forward_plus_draw_ratio"] = statistics.median(
        [(f + d) / f for f, d in zip(times["forward_s"], times["draw_s"])])
    return result


def benchmark_prompt_cache(params=None, model_cfg=None, *, batch_size=8, num_steps=64,
                           shift=-1000.0, mask_id=3, num_repeats=5, num_warmup=1):
    """Sampling with a prompt of half the length: uncached seconds over cached seconds.

    Defaults to the tiny_cpu model (random parameters: the cost does not depend on them). Both
    runs use the same key and ancestral steps with the network at every step, interleaved,
    repeat-and-median. Returns {"uncached_s", "cached_s", "speedup", "same_tokens"}.
    """
    if model_cfg is None:
        import os
        import sys

        from dlmjax import config as config_lib
        from dlmjax.model import transformer

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))))
        from experiments import tiny_cpu

        model_cfg = config_lib.derive(tiny_cpu.get_config(), num_devices=1).model
        params = transformer.init_params(jax.random.key(0), model_cfg)
    seq_len = model_cfg.seq_len
    logits_fn, cache = model_prefix_cache(params, model_cfg)
    prompt_BxP = np.array(jax.random.randint(jax.random.key(1), (batch_size, seq_len // 2), 1,
                                               model_cfg.vocab_size))
    prompt_BxP[prompt_BxP == mask_id] = 0
    run = functools.partial(
        sample, jax.random.key(2), logits_fn, batch_size, seq_len,
        vocab_size=model_cfg.vocab_size, mask_id=mask_id, shift=shift, num_steps=num_steps,
        prompt_BxL=prompt_BxP, logits_fn_accepts_mask=True, reuse_logits=False)
    times = _interleaved_medians({"uncached_s": run, "cached_s": lambda: run(prefix_cache=cache)},
                                 num_repeats, num_warmup)
    times["speedup"] = times["uncached_s"] / times["cached_s"]
    times["same_tokens"] = bool(np.array_equal(np.asarray(run()),
                                               np.asarray(run(prefix_cache=cache))))
    return times
