"""Likelihood bounds and generations of text pieces, for benchmark harnesses (docs/interop.md).

A diffusion model has no exact log p(continuation | context); it has the ELBO bound. Here a
request is (prompt ids, continuation ids): the prompt (BOS + context) stays clean, the
continuation is noised, and −ELBO of the continuation is estimated by

- "grid" (default): `num_points` Gauss–Legendre nodes in α = σ(λ) (dlmjax.diffusion.likelihood),
  one z draw per node; λ deterministic, z sampled;
- "monte_carlo": antithetic pairs of λ drawn as in training.

`num_samples` independent estimates are averaged (their spread gives the standard error).
Every request draws its noise from its own key (from the seed and the prompt), so a score never
depends on the batch it was computed in, and the choices of one question share their noise.
Rows are padded to a few bucket lengths; padded keys are invisible to every query, so padding
changes nothing (`fill="none"`). `fill="prior"` instead fills the rest of the model's window
with prior noise that every noisy query sees, as the study's own likelihood code does.

`Backend` is what the estimators need from a model: a logits function (z, attn) → logits and
the diffusion settings. `backend_from_workdir` builds one from a run directory, on its mesh; a
test passes an exact oracle instead.
"""

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dlmjax.diffusion.elbo import token_losses
from dlmjax.diffusion.forward import sample_from_pi, sample_zt
from dlmjax.diffusion.likelihood import quadrature
from dlmjax.diffusion.schedule import LOG_SNR_MAX, LOG_SNR_MIN

METHODS = ("grid", "monte_carlo")
FILLS = ("none", "prior")
MASK_ID, BOS_ID, EOS_ID = 3, 0, 1


@dataclasses.dataclass(frozen=True)
class Backend:
    """A model as the scorers see it.

    logits_fn(z_BxL, attn_BxLxL) -> logits_BxLxV, attn a boolean [B, L, L] (True where query q
    may attend to key k). Pass a model as jax.tree_util.Partial(apply, params) so its parameters
    are arguments of the compiled programs. `sample` holds keyword defaults of
    dlmjax.diffusion.sampling.sample (method, num_steps, schedule, temperature, ...).
    """

    logits_fn: Callable
    vocab_size: int
    seq_len: int
    shift: float
    scale: float = 1.0
    mask_id: int = MASK_ID
    tokenizer: object = None  # a tokenizers.Tokenizer whose ids 0-3 are BOS, EOS, PAD, MASK
    sample: dict = dataclasses.field(default_factory=dict)
    mesh: object = None  # jax.sharding.Mesh the parameters live on, or None
    strategy: str = "fsdp"

    def context(self):
        """Trace model code under this (binds the activation sharding rules to the mesh)."""
        from dlmjax import parallel

        if self.mesh is None:
            import contextlib

            return contextlib.nullcontext()
        return parallel.sharding_context(self.mesh, self.strategy)


def _model_logits(params, z_BxL, attn_BxLxL, *, cfg):
    from dlmjax import model as model_lib

    return model_lib.apply(params, z_BxL, attn_BxLxL, cfg=cfg)


def backend_from_workdir(workdir):
    """(Backend, run) of the newest checkpoint of a run directory, on the run's mesh."""
    import tokenizers

    from dlmjax import config as config_lib
    from dlmjax import evaluation, parallel, rundir
    from dlmjax.data import tokenizer as tok_lib
    from dlmjax.hf.tokenizer_files import run_tokenizer_text

    config = rundir.load_config(workdir)
    run = config_lib.derive(config, jax.device_count())
    if config.objective != "diffusion":
        raise ValueError(f"{workdir}: objective={config.objective!r}; the scorers need a "
                         f"diffusion model")
    params, _ = evaluation.restore_params(run, workdir)
    text = run_tokenizer_text(config, workdir)
    tokenizer = None
    if text is not None:
        tokenizer = tokenizers.Tokenizer.from_str(text)
        tok_lib.check_special_tokens(tokenizer, f"{workdir} tokenizer")
    s = config.sample
    sample = dict(method=s.method, num_steps=s.steps, schedule=s.schedule,
                  temperature=s.temperature, top_p=None if s.top_p >= 1.0 else s.top_p,
                  float64=s.float64, block_size=s.block_size or None)
    mesh = parallel.make_mesh(**{k: run.mesh_shape[k] for k in ("data", "fsdp", "tensor")})
    logits_fn = jax.tree_util.Partial(functools.partial(_model_logits, cfg=run.model), params)
    backend = Backend(logits_fn=logits_fn, vocab_size=run.model.vocab_size,
                      seq_len=run.model.seq_len, shift=run.shift, scale=config.noise.scale,
                      tokenizer=tokenizer, sample=sample, mesh=mesh, strategy=config.mesh.strategy)
    return backend, run


# ----------------------------------------------------------------------------- the estimators


def _row_keys(keys_Bx2, *salts):
    keys = jax.random.wrap_key_data(keys_Bx2)
    for salt in salts:
        keys = jax.vmap(lambda k, s=salt: jax.random.fold_in(k, s))(keys)
    return keys


def _layout(prompt_len_B, length_B, seq_len, fill):
    """(scored, noisy, attn): which positions count, which are noised, who sees whom."""
    pos_L = jnp.arange(seq_len)
    clean_BxL = pos_L < prompt_len_B[:, None]
    inside_BxL = pos_L < length_B[:, None]
    scored_BxL = inside_BxL & ~clean_BxL
    if fill == "prior":  # the tail is prior noise: noisy, visible, never scored
        attn_BxLxL = ~clean_BxL[:, :, None] >= ~clean_BxL[:, None, :]
        return scored_BxL, ~clean_BxL, attn_BxLxL
    attn_BxLxL = inside_BxL[:, None, :] & (scored_BxL[:, :, None] >= scored_BxL[:, None, :])
    attn_BxLxL |= jnp.eye(seq_len, dtype=bool)[None]  # padded queries see themselves only
    return scored_BxL, scored_BxL, attn_BxLxL


def _greedy_B(keys_Bx2, logits_fn, tokens_BxL, scored_BxL, attn_BxLxL, *, options):
    """Whether one denoising step from the prior recovers the whole continuation by argmax."""
    seq_len = tokens_BxL.shape[1]
    prior_BxL = jax.vmap(lambda k: sample_from_pi(
        k, jnp.full((1, seq_len), LOG_SNR_MIN), **options)[0])(_row_keys(keys_Bx2, 5))
    z_BxL = jnp.where(scored_BxL, prior_BxL, tokens_BxL)
    logits_BxLxV = logits_fn(z_BxL, attn_BxLxL).at[..., options["mask_id"]].set(-jnp.inf)
    hit_BxL = jnp.argmax(logits_BxLxV, axis=-1) == tokens_BxL
    return jnp.all(hit_BxL | ~scored_BxL, axis=-1)


@functools.partial(jax.jit, static_argnames=("vocab_size", "mask_id", "method", "num_points",
                                             "num_samples", "samples_per_forward", "fill"))
def _estimates(keys_Bx2, logits_fn, tokens_BxL, prompt_len_B, length_B, shift, scale, *,
               vocab_size, mask_id, method, num_points, num_samples, samples_per_forward, fill):
    """(nats_SxB, greedy_B): `num_samples` independent estimates of each row's −ELBO (of the
    continuation only), and the greedy check (on the padded layout, whatever `fill`)."""
    seq_len = tokens_BxL.shape[1]
    scored_BxL, noisy_BxL, attn_BxLxL = _layout(prompt_len_B, length_B, seq_len, fill)
    options = dict(vocab_size=vocab_size, mask_id=mask_id, shift=shift, scale=scale)

    def nats_B(keys, log_snr_B):
        log_snr_BxL = jnp.where(scored_BxL, log_snr_B[:, None], jnp.inf)
        z_BxL = jax.vmap(lambda k, x, lam: sample_zt(k, x[None], lam[None], **options)[0])(
            keys, tokens_BxL, log_snr_BxL)
        if fill == "prior":
            tail_BxL = noisy_BxL & ~scored_BxL
            prior_BxL = jax.vmap(lambda k: sample_from_pi(
                jax.random.fold_in(k, 1), jnp.full((1, seq_len), LOG_SNR_MIN), **options)[0])(keys)
            z_BxL = jnp.where(tail_BxL, prior_BxL, z_BxL)
        logits_BxLxV = logits_fn(z_BxL, attn_BxLxL)
        _, elbo_BxL = token_losses(logits_BxLxV, z_BxL, tokens_BxL, log_snr_BxL, mask_id=mask_id,
                                   shift=shift, scale=scale)
        return jnp.sum(jnp.where(scored_BxL, elbo_BxL, 0.0), axis=-1)

    alpha_lo = 0.5 * (1.0 + math.tanh(0.5 * LOG_SNR_MIN))
    alpha_hi = 0.5 * (1.0 + math.tanh(0.5 * LOG_SNR_MAX))

    def one_estimate(sample):
        if method == "grid":
            log_snr_P, weight_P = quadrature(num_points)
            points = (jnp.arange(num_points), jnp.asarray(log_snr_P, jnp.float32),
                      jnp.asarray(weight_P, jnp.float32))

            def add(total_B, point):
                index, log_snr, weight = point
                log_snr_B = jnp.full(tokens_BxL.shape[:1], log_snr)
                keys = _row_keys(keys_Bx2, sample, index)
                return total_B + weight * nats_B(keys, log_snr_B), None

            return jax.lax.scan(add, jnp.zeros(tokens_BxL.shape[:1]), points)[0]
        keys = _row_keys(keys_Bx2, sample)
        u_B = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2)))(keys)
        total_B = 0.0
        for salt, v_B in ((3, u_B), (4, 1.0 - u_B)):  # an antithetic pair
            alpha_B = alpha_lo + (alpha_hi - alpha_lo) * v_B
            log_snr_B = jnp.log(alpha_B) - jnp.log1p(-alpha_B)
            total_B = total_B + nats_B(_row_keys(keys_Bx2, sample, salt), log_snr_B)
        return total_B * 0.5 * (alpha_hi - alpha_lo)

    nats_SxB = jax.lax.map(one_estimate, jnp.arange(num_samples), batch_size=samples_per_forward)
    if fill == "prior":
        scored_BxL, _, attn_BxLxL = _layout(prompt_len_B, length_B, seq_len, "none")
    return nats_SxB, _greedy_B(keys_Bx2, logits_fn, tokens_BxL, scored_BxL, attn_BxLxL,
                               options=options)


def _bucket(length, seq_len):
    """Padded row length: the next power of two from 16, capped at the model's window."""
    return min(seq_len, max(16, 1 << (length - 1).bit_length()))


def request_key(seed, prompt_ids):
    """uint32[2] key data of a request: the seed and a checksum of its prompt."""
    digest = zlib.crc32(np.asarray(prompt_ids, np.int64).tobytes())
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), digest)))


@dataclasses.dataclass(frozen=True)
class Score:
    nats: float  # −ELBO of the continuation (the mean of the estimates)
    stderr: float  # standard error of that mean (nan with one estimate)
    greedy: bool


def score(backend: Backend, requests, *, method="grid", num_points=32, num_samples=1,
          samples_per_forward=1, fill="none", batch_size=8, seed=0, progress=None):
    """Score per request (prompt_ids, continuation_ids), in order. Prompts are kept clean."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r}; expected one of {FILLS}")
    if num_points < 1 or num_samples < 1 or samples_per_forward < 1 or batch_size < 1:
        raise ValueError("num_points, num_samples, samples_per_forward and batch_size must be "
                         ">= 1")
    for prompt, continuation in requests:
        if not continuation or len(prompt) + len(continuation) > backend.seq_len:
            raise ValueError(f"a request has {len(prompt)} prompt + {len(continuation)} "
                             f"continuation tokens; each needs >= 1 continuation token and at "
                             f"most model.seq_len={backend.seq_len} in all")
    dp = 1 if backend.mesh is None else math.prod(
        backend.mesh.shape[a] for a in ("data", "fsdp") if a in backend.mesh.shape)
    rows = -(-batch_size // dp) * dp  # every batch shards evenly over the data axes
    order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
    results = [None] * len(requests)
    for start in range(0, len(order), rows):
        chunk = order[start:start + rows]
        width = _bucket(max(sum(map(len, requests[i])) for i in chunk), backend.seq_len)
        if fill == "prior":
            width = backend.seq_len
        tokens = np.full((rows, width), 2, np.int32)  # PAD
        prompt_len = np.zeros(rows, np.int32)
        length = np.ones(rows, np.int32)
        keys = np.zeros((rows, 2), np.uint32)
        for row, i in enumerate(chunk):
            prompt, continuation = requests[i]
            ids = list(prompt) + list(continuation)
            tokens[row, :len(ids)] = ids
            prompt_len[row], length[row] = len(prompt), len(ids)
            keys[row] = request_key(seed, prompt)
        args = _device_args(backend, dp, keys, tokens, prompt_len, length)
        with backend.context():
            nats_SxB, greedy_B = _estimates(
                args[0], backend.logits_fn, *args[1:], jnp.float32(backend.shift),
                jnp.float32(backend.scale), vocab_size=backend.vocab_size,
                mask_id=backend.mask_id, method=method, num_points=num_points,
                num_samples=num_samples, samples_per_forward=samples_per_forward, fill=fill)
        nats_SxB, greedy_B = np.asarray(nats_SxB, np.float64), np.asarray(greedy_B)
        for row, i in enumerate(chunk):
            samples = nats_SxB[:, row]
            stderr = (float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
                      if len(samples) > 1 else math.nan)
            results[i] = Score(float(np.mean(samples)), stderr, bool(greedy_B[row]))
        if progress is not None:
            progress(len(chunk))
    return results


def _device_args(backend, dp, *arrays):
    if backend.mesh is None or dp == 1:
        return arrays
    from dlmjax import parallel

    return tuple(jax.device_put(a, parallel.batch_sharding(backend.mesh, a.ndim)) for a in arrays)


def rolling_windows(tokens, seq_len, *, context=1, bos_id=BOS_ID):
    """(prompt, continuation) pairs covering `tokens` once: the first conditioned on BOS, each
    later one on the tokens before it (at least `context`, more where the window has room)."""
    if not 1 <= context < seq_len:
        raise ValueError(f"context={context} must be in [1, seq_len={seq_len})")
    windows, start = [], 0
    while start < len(tokens):
        stride = seq_len - 1 if start == 0 else seq_len - context
        continuation = list(tokens[start:start + stride])
        prompt = [bos_id] if start == 0 else list(
            tokens[max(0, start - (seq_len - len(continuation))):start])
        windows.append((prompt, continuation))
        start += len(continuation)
    return windows


def generate(backend: Backend, prompts, max_new_tokens, *, seed=0, **overrides):
    """Generated ids after each prompt (lists of ints), `max_new_tokens` each at most, with the
    backend's sampler defaults updated by `overrides`; prompts stay clean."""
    from dlmjax.diffusion import sampling

    options = {**backend.sample, **{k: v for k, v in overrides.items() if v is not None}}
    longest = max(len(p) for p in prompts)
    total = min(backend.seq_len, longest + max_new_tokens)
    if longest >= total:
        raise ValueError(f"a prompt of {longest} tokens leaves no room in model.seq_len="
                         f"{backend.seq_len}")
    prompt_BxP = np.zeros((len(prompts), longest), np.int32)
    for row, ids in enumerate(prompts):
        prompt_BxP[row, :len(ids)] = ids
    prompt_len_B = np.array([len(p) for p in prompts], np.int32)
    if options.get("block_size"):
        options["block_size"] = min(options["block_size"], total)
    with backend.context():
        tokens_BxL = sampling.sample(
            jax.random.key(seed), backend.logits_fn, len(prompts), total,
            vocab_size=backend.vocab_size, mask_id=backend.mask_id, shift=backend.shift,
            scale=backend.scale, prompt_BxL=prompt_BxP, prompt_len_B=prompt_len_B,
            logits_fn_accepts_mask=True, **options)
    tokens_BxL = np.asarray(tokens_BxL)
    return [tokens_BxL[row, len(p):len(p) + max_new_tokens].tolist()
            for row, p in enumerate(prompts)]
