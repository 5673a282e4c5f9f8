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


def interleaved_medians(fns, repeats=None, warmup=1):
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


def matmul_call(size=MATMUL_SIZE, dtype=jnp.float32, device=None, times=1):
    """(zero-argument callable, FLOPs per call) of `times` size³ matmuls: the MFU ceiling."""
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    f = jax.jit(lambda a: a @ a)

    def call():
        for _ in range(times):
            f(a).block_until_ready()

    return call, 2 * size**3 * times


def matched_matmul_call(reference, size=MATMUL_SIZE, dtype=jnp.float32):
    """`matmul_call` repeated so that one call lasts about as long as one `reference()` call.

    On a loaded machine a short matmul and a long step see the load differently (the short one
    can fall between other processes' bursts); calls of equal length sample it alike.
    """
    single, _ = matmul_call(size, dtype)
    single()
    reference()
    start = time.perf_counter()
    reference()
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    single()
    one_s = time.perf_counter() - start
    return matmul_call(size, dtype, times=max(1, round(ref_s / one_s)))
