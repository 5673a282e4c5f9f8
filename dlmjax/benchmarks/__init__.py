"""What `make bench` measures: each figure a ratio taken within one process (protocol.py).

`FIGURES` maps each key of bench/latest.json to a zero-argument function returning a dict whose
"value" is the figure (the rest are the measurements it came from). Adding a figure is one line.
"""

from dlmjax.benchmarks.memory import (
    attention_memory_report,
    loss_memory_report,
    naive_token_losses,
)
from dlmjax.benchmarks.speed import (
    cpu_mfu_l8_d512_s512,
    cpu_mfu_tiny,
    describe_10b_seconds,
    pipeline_margin,
    sampler_over_forward,
)


def _prepare_data():
    from dlmjax import data

    report = data.benchmark_prepare()
    return {"value": report["2_workers_tokens_per_cpu_s"] / report["goal_tokens_per_cpu_s"],
            **report}


def _prompt_cache_speedup():
    from dlmjax.diffusion import sampling

    return _value(sampling.benchmark_prompt_cache, "speedup")()


def _value(report_fn, key="ratio"):
    def figure():
        report = report_fn()
        return {"value": report[key], **report}

    return figure


FIGURES = {
    "cpu_mfu_tiny": cpu_mfu_tiny,
    "cpu_mfu_l8_d512_s512": cpu_mfu_l8_d512_s512,
    "loss_memory_ratio": _value(loss_memory_report),
    "attention_memory_ratio": _value(attention_memory_report),
    "sampler_over_forward": sampler_over_forward,
    "prompt_cache_speedup": _prompt_cache_speedup,
    "pipeline_margin": pipeline_margin,
    "describe_10b_seconds": describe_10b_seconds,
    "prepare_cpu_rate_over_goal": _prepare_data,
}
BENCHMARKS = FIGURES  # the earlier name

# What each figure is and which way is better (printed by tools/bench.py).
DESCRIPTIONS = {
    "cpu_mfu_tiny": "tiny_cpu train step FLOP/s over matmul FLOP/s (higher is better)",
    "cpu_mfu_l8_d512_s512": "L8-D512 S512 B8 V4096 train step over matmul (goal >= 0.5)",
    "loss_memory_ratio": "chunked / naive loss temp bytes, B2 L2048 D512 V131072 (lower)",
    "attention_memory_ratio": "blockwise / dense attention temp bytes, B1 H8 S8192 (<= 0.1)",
    "sampler_over_forward": "one ancestral sampler step over one forward (<= 1.05)",
    "prompt_cache_speedup": "prompted sample uncached over cached, tiny model (>= 1.6)",
    "pipeline_margin": "KJV pipeline tokens/s over tiny train tokens/s (>= 10)",
    "describe_10b_seconds": "wall seconds of the 10B --mode=describe (lower)",
    "prepare_cpu_rate_over_goal": "prepare_data tokens per worker CPU-second over 0.5M (>= 1)",
}

__all__ = ["BENCHMARKS", "DESCRIPTIONS", "FIGURES", "attention_memory_report", "loss_memory_report",
           "naive_token_losses"]
