"""The measuring protocol of `make bench`: warm up, then interleave and take medians.

Every figure is a ratio of two things measured in the same process, alternating call by call
(A, B, A, B, ...), so a change in machine load during the run moves both alike.
"""

import statistics
import time

import jax
import jax.numpy as jnp

MATMUL_SIZE = 2048
# Timed calls per figure (tools/bench.py --repeats sets it; fewer on a loaded machine).
SETTINGS = {"repeats": 7}


def interleaved_medians(fns, repeats=None, warmup=2):
    """{name: median seconds} of zero-argument callables that block until their result is ready."""
    repeats = repeats or SETTINGS["repeats"]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_call(size=MATMUL_SIZE, dtype=jnp.float32, device=None):
    """(zero-argument callable, FLOPs per call) of a size³ matmul: the MFU ceiling."""
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    f = jax.jit(lambda a: a @ a)

    def call():
        f(a).block_until_ready()

    return call, 2 * size**3
