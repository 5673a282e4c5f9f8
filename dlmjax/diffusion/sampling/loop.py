"""The compiled sampling loop: prior, blocks, steps, and the clean-prefix cache.

The whole sampler (prior, every step, every block) is one jitted program: a lax.while_loop over
steps inside a loop over blocks, lax.cond to skip the network when no token changed, no host
synchronisation. num_steps and the noise shift are traced values, so changing them does not
recompile. Threshold and entropy-bound decoding leave the step loop as soon as every position
of the block is committed.

Clean-prefix cache. Clean positions attend only to clean ones (attn[q, k] = noisy[q] >= noisy[k]),
so within a block their activations are constant. With `prefix_cache`, the per-layer keys/values
of the clean prefix of the window (the prompt part every row shares, and earlier blocks) are
computed once per block, and each step runs the network only on the rest of the window, attending
to [prefix K/V, own K/V], and does its vocabulary-wide work on those positions only (its random
draws are made at the window's shape, so they are the uncached loop's): exact, not an
approximation. The prefix length must be static, so the block loop is unrolled in Python on this
path (one step loop per block in the program).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlmjax.diffusion.sampling import corrective
from dlmjax.diffusion.sampling.steps import (
    SCHEDULES,
    _first_log_snr,
    _log_snr_at,
    adaptive_step,
    ancestral_step,
    attention_mask,
    sample_prior,
    threshold_step,
)
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN, pi_at

METHODS = ("ancestral", "adaptive", "threshold", "entropy_bound", "remask")
_CONFIDENCE_METHODS = ("adaptive", "threshold", "entropy_bound")  # greedy by default


class PrefixCache(NamedTuple):
    """The model hooks of cached prompted sampling (build with jax.tree_util.Partial over params).

    prefix_fn(z_BxC, noisy_BxC, prefix_len) -> cache: per-layer keys/values of positions
      [0, prefix_len) of the window, all clean (a pytree; `prefix_len` is a Python int).
    logits_fn(cache, z_BxW, noisy_BxW) -> logits_BxWxV of positions [prefix_len, C), attending to
      the cached prefix and to themselves under attn[q, k] = noisy[q] >= noisy[k].
    """

    prefix_fn: Callable
    logits_fn: Callable


@dataclasses.dataclass(frozen=True)
class _Config:
    batch_size: int
    seq_len: int
    vocab_size: int
    mask_id: int
    method: str
    schedule: str
    temperature: float
    top_k: int | None
    top_p: float | None
    float64: bool
    block_size: int
    context_len: int
    tokens_per_step: int
    reuse_logits: bool
    logits_fn_accepts_mask: bool
    batch_sharding: jax.sharding.Sharding | None
    confidence_threshold: float = 0.9
    entropy_bound: float = 1.0
    remask_schedule: str = "cap"
    remask_eta: float = 0.02
    remask_t_on: float = 0.55
    remask_t_off: float = 0.05
    prefix_len: int = 0  # clean prefix shared by every row (static); used with the cache only
    cached: bool = False


def _step(cfg, key, i, z_BxC, logits_BxCxV, committed_BxC, update_BxC, num_steps, shift, scale):
    """One step of cfg.method: (z_new_BxC, committed_BxC, keep_going)."""
    num_steps_f = num_steps.astype(jnp.float32)
    i_f = i.astype(jnp.float32)

    def log_snr(step):
        return _log_snr_at(step, num_steps_f, cfg.schedule, LOG_SNR_MIN, LOG_SNR_MAX, jnp)

    options = dict(mask_id=cfg.mask_id, shift=shift, scale=scale, temperature=cfg.temperature,
                   top_k=cfg.top_k, top_p=cfg.top_p, float64=cfg.float64, update_BxL=update_BxC)
    log_snr_min = _first_log_snr(cfg.schedule)
    keep_going = jnp.array(True)
    if cfg.method == "ancestral":
        z_new_BxC = ancestral_step(key, z_BxC, logits_BxCxV, log_snr(i_f), log_snr(i_f + 1),
                                   **options)
    elif cfg.method == "adaptive":
        z_new_BxC = adaptive_step(key, z_BxC, logits_BxCxV, tokens_per_step=cfg.tokens_per_step,
                                  log_snr_min=log_snr_min, **options)
    elif cfg.method == "threshold":
        z_new_BxC, new_committed_BxC = threshold_step(
            key, z_BxC, logits_BxCxV, committed_BxC, threshold=cfg.confidence_threshold,
            tokens_per_step=cfg.tokens_per_step, log_snr_min=log_snr_min, **options)
        # Done when this step committed nothing (a fixed point: x̂ and z no longer change) or
        # when no uncommitted position can ever score (π_{λmin}(z) = 0: no mask left).
        can_score_BxC = pi_at(z_new_BxC, log_snr_min, vocab_size=cfg.vocab_size,
                              mask_id=cfg.mask_id, shift=shift, scale=scale) > 0
        keep_going = jnp.any(new_committed_BxC & ~committed_BxC) & jnp.any(
            update_BxC & ~new_committed_BxC & can_score_BxC)
        committed_BxC = new_committed_BxC
    elif cfg.method == "entropy_bound":
        z_new_BxC, committed_BxC = corrective.entropy_bound_step(
            key, z_BxC, logits_BxCxV, committed_BxC, log_snr(i_f + 1), bound=cfg.entropy_bound,
            tokens_per_step=cfg.tokens_per_step, **options)
        keep_going = jnp.any(update_BxC & ~committed_BxC)
    else:
        schedule = dict(remask_schedule=cfg.remask_schedule, t_on=cfg.remask_t_on,
                        t_off=cfg.remask_t_off)
        log_snr_t = corrective.remask_log_snr(i_f, num_steps_f, schedule=cfg.schedule, **schedule)
        log_snr_s = corrective.remask_log_snr(i_f + 1, num_steps_f, schedule=cfg.schedule,
                                              **schedule)
        sigma = corrective.remask_sigma(i_f, num_steps_f, log_snr_s, eta=cfg.remask_eta,
                                        **schedule)
        z_new_BxC = corrective.remask_step(key, z_BxC, logits_BxCxV, log_snr_t, log_snr_s, sigma,
                                           **options)
    return z_new_BxC, committed_BxC, keep_going


def _denoise_window(key, network, z_BxC, update_BxC, num_steps, shift, scale, cfg,
                    num_covered):
    """Up to num_steps sampler steps on one window: (z_BxC, network evaluations).

    network(z_BxC) gives the logits of the last num_covered positions of the window.
    """
    def constrain(z):
        if cfg.batch_sharding is None:
            return z
        return lax.with_sharding_constraint(z, cfg.batch_sharding)

    def cond(carry):
        i, *_, keep_going, _ = carry
        return (i < num_steps) & keep_going

    def body(carry):
        i, z_BxC, logits_BxCxV, changed, committed_BxC, _, num_evals = carry
        if cfg.reuse_logits:
            logits_BxCxV = lax.cond(changed, lambda ops: network(ops[0]).astype(ops[1].dtype),
                                    lambda ops: ops[1], (z_BxC, logits_BxCxV))
            num_evals = num_evals + changed.astype(jnp.int32)
        else:
            logits_BxCxV = network(z_BxC).astype(logits_BxCxV.dtype)
            num_evals = num_evals + 1
        z_new_BxC, committed_BxC, keep_going = _step(
            cfg, jax.random.fold_in(key, i), i, z_BxC, logits_BxCxV, committed_BxC, update_BxC,
            num_steps, shift, scale)
        z_new_BxC = constrain(z_new_BxC)
        return (i + 1, z_new_BxC, logits_BxCxV, jnp.any(z_new_BxC != z_BxC), committed_BxC,
                keep_going, num_evals)

    logits_shape = jax.eval_shape(network, z_BxC)
    if logits_shape.shape != (*z_BxC.shape[:-1], num_covered, cfg.vocab_size):
        raise ValueError(f"logits_fn must return [B, L, vocab_size={cfg.vocab_size}] logits, got "
                         f"{logits_shape.shape}")
    carry = (jnp.int32(0), z_BxC, jnp.zeros(logits_shape.shape, logits_shape.dtype),
             jnp.array(True), jnp.zeros(z_BxC.shape, bool), jnp.array(True), jnp.int32(0))
    carry = lax.while_loop(cond, body, carry)
    return carry[1], carry[-1]


def _plain_network(logits_fn, noisy_BxC, cfg):
    if cfg.logits_fn_accepts_mask:
        return lambda z: logits_fn(z, attention_mask(noisy_BxC))
    return logits_fn


def _cached_network(prefix_cache, z_BxC, noisy_BxC, prefix_len):
    """The network on positions [prefix_len, C) over the cached prefix: logits_BxWxV."""
    cache = prefix_cache.prefix_fn(z_BxC, noisy_BxC, prefix_len)
    return lambda z: prefix_cache.logits_fn(cache, z[:, prefix_len:], noisy_BxC[:, prefix_len:])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _sample(key, logits_fn, prefix_cache, prompt_BxL, prompt_len_B, num_steps, shift, scale,
            cfg):
    key_prior, key_steps = jax.random.split(key)
    z_BxL = sample_prior(key_prior, cfg.batch_size, cfg.seq_len, vocab_size=cfg.vocab_size,
                         mask_id=cfg.mask_id, shift=shift, scale=scale,
                         log_snr=_first_log_snr(cfg.schedule))
    pos_L = jnp.arange(cfg.seq_len)
    if prompt_BxL is None:
        prompt_BxL = jnp.zeros_like(z_BxL)
        prompt_len_B = jnp.zeros((cfg.batch_size,), jnp.int32)
    prompt_clean_BxL = pos_L < prompt_len_B[:, None]
    z_BxL = jnp.where(prompt_clean_BxL, prompt_BxL, z_BxL).astype(jnp.int32)
    if cfg.batch_sharding is not None:
        z_BxL = lax.with_sharding_constraint(z_BxL, cfg.batch_sharding)
    num_blocks = -(-cfg.seq_len // cfg.block_size)

    def block(j, carry, xp):
        """Block j; with xp = np (static j, cached path) the window bounds are Python ints."""
        z_BxL, num_evals = carry
        start = j * cfg.block_size
        end = xp.minimum(start + cfg.block_size, cfg.seq_len)
        # Earlier blocks are clean context; later ones stay at the prior (they look pure noise).
        clean_BxL = prompt_clean_BxL | (pos_L < start)
        update_BxL = ~clean_BxL & (pos_L < end)
        window_start = xp.clip(end - cfg.context_len, 0, cfg.seq_len - cfg.context_len)
        cut = lambda a: lax.dynamic_slice_in_dim(a, window_start, cfg.context_len, axis=1)  # noqa: E731
        # The clean prefix every row shares, in window coordinates (static on the cached path).
        prefix_len = 0
        if cfg.cached:
            prefix_len = int(np.clip(max(cfg.prefix_len, start) - window_start, 0,
                                     cfg.context_len - 1))

        def run(operands):
            z_BxL, num_evals = operands
            z_BxC, noisy_BxC = cut(z_BxL), ~cut(clean_BxL)
            if prefix_len:
                network = _cached_network(prefix_cache, z_BxC, noisy_BxC, prefix_len)
                num_evals = num_evals + 1  # the prefix forward
            else:
                network = _plain_network(logits_fn, noisy_BxC, cfg)
            z_BxC, evals = _denoise_window(jax.random.fold_in(key_steps, j), network, z_BxC,
                                           cut(update_BxL), num_steps, shift, scale, cfg,
                                           cfg.context_len - prefix_len)
            return (lax.dynamic_update_slice_in_dim(z_BxL, z_BxC, window_start, axis=1),
                    num_evals + evals)

        return lax.cond(jnp.any(update_BxL), run, lambda ops: ops, (z_BxL, num_evals))

    carry = (z_BxL, jnp.int32(0))
    if cfg.cached:
        for j in range(num_blocks):
            carry = block(j, carry, np)
        return carry
    return lax.fori_loop(0, num_blocks, lambda j, c: block(j, c, jnp), carry)


def _static_prefix_len(prompt_len_B):
    """min(prompt_len_B) as a Python int when it is concrete (0 under tracing: no cache)."""
    try:
        return int(np.min(np.asarray(prompt_len_B)))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return 0


def sample(key, logits_fn, batch_size, seq_len, *, vocab_size, mask_id, shift, num_steps,
           method="ancestral", schedule="cosine", prompt_BxL=None, prompt_len_B=None, scale=1.0,
           temperature=None, top_k=None, top_p=None, float64=False, block_size=None,
           context_len=None, tokens_per_step=None, reuse_logits=True,
           logits_fn_accepts_mask=False, batch_sharding=None, confidence_threshold=0.9,
           entropy_bound=1.0, remask_schedule="cap", remask_eta=0.02, remask_t_on=0.55,
           remask_t_off=0.05, prefix_cache=None, return_num_evals=False):
    """Generate tokens_BxL (int32) from the prior in one compiled program.

    logits_fn(z_BxL) -> logits_BxLxV, or logits_fn(z_BxL, attn_BxLxL) with
    `logits_fn_accepts_mask=True` (attn[b, q, k] = noisy[q] >= noisy[k], as in training). Pass a
    model as `jax.tree_util.Partial(apply_fn, params)` so the parameters are jit arguments rather
    than constants baked into the program; plain callables are cached by identity.

    - method "ancestral": the exact posterior step; temperature (default 1), top_k, top_p act on x̂.
      "adaptive": each step fully denoises `tokens_per_step` positions (default ⌈block/num_steps⌉)
      chosen by π_{λmin}(z)·(max x̂ − x̂(z)); temperature default 0 (greedy).
      "threshold": adaptive plus every position whose token has x̂ >= `confidence_threshold`
      (default 0.9) is committed in the same step; stops once the block is committed.
      "entropy_bound": commits the lowest-entropy positions while their summed entropy stays
      within `entropy_bound` nats (default 1.0, at least `tokens_per_step`), renoises the rest.
      "remask": ReMDM-style remasking with σ schedule `remask_schedule` ("cap", "rescale" or
      "loop"), `remask_eta` (default 0.02), loop phase t in [`remask_t_off`, `remask_t_on`]
      (defaults 0.05, 0.55); temperature default 1. See sampling.corrective.
    - prompt_BxL [B, P ≤ seq_len] with prompt_len_B (default P): those tokens are kept clean.
    - block_size: generate block by block (num_steps steps per block), earlier blocks clean, later
      blocks held at the prior. context_len (default seq_len) is the window the network sees, ending
      at the current block, so seq_len may exceed the model's length.
    - prefix_cache: a PrefixCache; the clean prefix (the prompt part all rows share, earlier
      blocks) is computed once per block and reused by every step (exact; see module docstring).
    - float64: run the categorical draws and mixture weights in float64 (see sampling.draws).
    - batch_sharding: a Sharding for [B, L] token arrays, applied to the state at every step.
    - return_num_evals: also return the number of network evaluations (an int32 scalar; the
      cached prefix forward counts as one).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if vocab_size < 2 or not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} must lie in [0, vocab_size={vocab_size})")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if temperature is None:
        temperature = 0.0 if method in _CONFIDENCE_METHODS else 1.0
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    block_size = seq_len if block_size is None else block_size
    if not 1 <= block_size <= seq_len:
        raise ValueError(f"block_size must lie in [1, seq_len={seq_len}], got {block_size}")
    context_len = seq_len if context_len is None else context_len
    if not block_size <= context_len <= seq_len:
        raise ValueError(f"context_len must lie in [block_size={block_size}, seq_len={seq_len}], "
                         f"got {context_len}")
    if method not in _CONFIDENCE_METHODS:
        tokens_per_step = 1  # unused; fixed so that it does not split the compilation cache
    elif tokens_per_step is None:
        tokens_per_step = -(-block_size // num_steps)
    elif tokens_per_step < 1 or (method != "entropy_bound"
                                 and tokens_per_step * num_steps < block_size):
        raise ValueError(f"tokens_per_step={tokens_per_step} x num_steps={num_steps} cannot fill "
                         f"a block of {block_size} positions")
    method_options = _method_options(method, confidence_threshold, entropy_bound,
                                     remask_schedule, remask_eta, remask_t_on, remask_t_off)
    if prompt_BxL is None and prompt_len_B is not None:
        raise ValueError("prompt_len_B given without prompt_BxL")
    prefix_len = 0
    if prompt_BxL is not None:
        prompt_BxL = jnp.asarray(prompt_BxL, jnp.int32)
        if prompt_BxL.ndim != 2 or prompt_BxL.shape[0] != batch_size or \
                prompt_BxL.shape[1] > seq_len:
            raise ValueError(f"prompt_BxL must have shape [batch_size={batch_size}, P <= "
                             f"seq_len={seq_len}], got {prompt_BxL.shape}")
        if prompt_len_B is None:
            prompt_len_B = jnp.full((batch_size,), prompt_BxL.shape[1], jnp.int32)
        prompt_len_B = jnp.clip(jnp.asarray(prompt_len_B, jnp.int32), 0, prompt_BxL.shape[1])
        if prompt_len_B.shape != (batch_size,):
            raise ValueError(f"prompt_len_B must have shape [{batch_size}], got "
                             f"{prompt_len_B.shape}")
        prompt_BxL = jnp.pad(prompt_BxL, ((0, 0), (0, seq_len - prompt_BxL.shape[1])))
        if prefix_cache is not None:
            prefix_len = _static_prefix_len(prompt_len_B)
    if prefix_cache is not None and not isinstance(prefix_cache, PrefixCache):
        raise ValueError(f"prefix_cache must be a sampling.PrefixCache, got {type(prefix_cache)}")
    cached = prefix_cache is not None and (prefix_len > 0 or block_size < seq_len)
    cfg = _Config(batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size, mask_id=mask_id,
                  method=method, schedule=schedule,
                  temperature=float(temperature), top_k=top_k, top_p=top_p, float64=float64,
                  block_size=block_size, context_len=context_len,
                  tokens_per_step=tokens_per_step, reuse_logits=reuse_logits,
                  logits_fn_accepts_mask=logits_fn_accepts_mask, batch_sharding=batch_sharding,
                  prefix_len=prefix_len if cached else 0, cached=cached, **method_options)
    if not isinstance(logits_fn, jax.tree_util.Partial):
        logits_fn = jax.tree_util.Partial(logits_fn)
    if cached:
        prefix_cache = PrefixCache(*(fn if isinstance(fn, jax.tree_util.Partial)
                                     else jax.tree_util.Partial(fn) for fn in prefix_cache))
    else:
        prefix_cache = None
    tokens_BxL, num_evals = _sample(key, logits_fn, prefix_cache, prompt_BxL, prompt_len_B,
                                    jnp.int32(num_steps), jnp.float32(shift), jnp.float32(scale),
                                    cfg)
    return (tokens_BxL, num_evals) if return_num_evals else tokens_BxL


def _method_options(method, confidence_threshold, entropy_bound, remask_schedule, remask_eta,
                    remask_t_on, remask_t_off):
    """The validated options of `method`; the others keep their defaults (one compile each)."""
    options = {}
    if method == "threshold":
        if not np.isfinite(confidence_threshold) and confidence_threshold != np.inf:
            raise ValueError(f"confidence_threshold must be a number, got {confidence_threshold}")
        options["confidence_threshold"] = float(confidence_threshold)
    elif method == "entropy_bound":
        if not entropy_bound >= 0:
            raise ValueError(f"entropy_bound must be >= 0 nats, got {entropy_bound}")
        options["entropy_bound"] = float(entropy_bound)
    elif method == "remask":
        if remask_schedule not in corrective.REMASK_SCHEDULES:
            raise ValueError(f"remask_schedule must be one of {corrective.REMASK_SCHEDULES}, got "
                             f"{remask_schedule!r}")
        if not 0 <= remask_eta <= 1:
            raise ValueError(f"remask_eta must lie in [0, 1], got {remask_eta}")
        if not 0 < remask_t_off < remask_t_on < 1:
            raise ValueError(f"need 0 < remask_t_off < remask_t_on < 1, got {remask_t_off}, "
                             f"{remask_t_on}")
        options.update(remask_schedule=remask_schedule, remask_eta=float(remask_eta),
                       remask_t_on=float(remask_t_on), remask_t_off=float(remask_t_off))
    return options
