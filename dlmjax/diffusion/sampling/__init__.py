"""Samplers of the diffusion LM, all inside one compiled program per configuration.

- draws: x̂ from logits (temperature, top-k/top-p, greedy), two-level categorical draws, float64.
- steps: step schedules, the prior, the ancestral (exact posterior), adaptive and threshold steps.
- corrective: entropy-bound decoding and ReMDM-style remasking (tokens sent back to noise).
- loop: `sample(...)`, the jitted loop over blocks and steps, and the clean-prefix cache.
- bench: the sampler-step and prompt-cache benchmarks.
"""

from dlmjax.diffusion.sampling.bench import benchmark_prompt_cache, benchmark_sampler_step
from dlmjax.diffusion.sampling.corrective import (
    REMASK_SCHEDULES,
    entropy_bound_step,
    remask_log_snr,
    remask_sigma,
    remask_step,
)
from dlmjax.diffusion.sampling.draws import (
    _argmax,
    _draw,
    _entropy,
    _group_size,
    _log_normalizer,
    _make_xhat,
    _precision,
    _sampling_logit_at,
    _sampling_logits,
    _threshold,
    _uniform_from_bits,
    _Xhat,
    categorical_from_bits,
    predicted_logits,
)
from dlmjax.diffusion.sampling.loop import METHODS, PrefixCache, _Config, _sample, sample
from dlmjax.diffusion.sampling.prefix import model_prefix_cache
from dlmjax.diffusion.sampling.steps import (
    SCHEDULES,
    T_END,
    T_START,
    _first_log_snr,
    _log_snr_at,
    adaptive_step,
    ancestral_step,
    attention_mask,
    posterior_log_weights,
    sample_prior,
    step_log_snrs,
    threshold_step,
)

__all__ = [
    "METHODS", "REMASK_SCHEDULES", "SCHEDULES", "T_END", "T_START", "PrefixCache",
    "adaptive_step", "ancestral_step", "attention_mask", "benchmark_prompt_cache",
    "benchmark_sampler_step", "categorical_from_bits", "entropy_bound_step", "model_prefix_cache",
    "posterior_log_weights", "predicted_logits", "remask_log_snr", "remask_sigma", "remask_step",
    "sample", "sample_prior", "step_log_snrs", "threshold_step",
    # internals that tests and benchmarks reach for
    "_Config", "_Xhat", "_argmax", "_draw", "_entropy", "_first_log_snr", "_group_size",
    "_log_normalizer", "_log_snr_at", "_make_xhat", "_precision", "_sample",
    "_sampling_logit_at", "_sampling_logits", "_threshold", "_uniform_from_bits",
]
