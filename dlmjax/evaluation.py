"""What a trained model is used for: samples (texts) and the held-out ELBO of a checkpoint."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from dlmjax import checkpoint, fs, parallel, train
from dlmjax import model as model_lib
from dlmjax.config import MASK_ID, Run
from dlmjax.diffusion import sampling


def _tokenizer(run: Run, workdir=None):
    """workdir/tokenizer.json when the run recorded one, else the data config's (or None)."""
    from dlmjax import data

    return data.run_tokenizer(workdir, run.config.data)


def _decode(tokenizer, tokens_BxL):
    from dlmjax import data

    if tokenizer is None:
        return [" ".join(map(str, row)) for row in np.asarray(tokens_BxL)]
    return data.decode_batch(tokenizer, np.asarray(tokens_BxL))


def _model_logits(params, z_BxL, attn_BxLxL, *, cfg):
    return model_lib.apply(params, z_BxL, attn_BxLxL, cfg=cfg)


def _autoregressive_sample(key, params, cfg, batch_size, seq_len, temperature):
    """Token-by-token sampling for the causal baseline (full recompute; small models only)."""
    def body(i, carry):
        tokens_BxL, key = carry
        key, sub = jax.random.split(key)
        logits_BxV = model_lib.apply(params, tokens_BxL, cfg=cfg)[:, i - 1]
        logits_BxV = logits_BxV.at[:, MASK_ID].set(-jnp.inf) / max(temperature, 1e-6)
        return tokens_BxL.at[:, i].set(jax.random.categorical(sub, logits_BxV)), key

    start_BxL = jnp.zeros((batch_size, seq_len), jnp.int32)  # BOS first
    return jax.lax.fori_loop(1, seq_len, body, (start_BxL, key))[0]


def sample_tokens(params, run: Run, key, num_samples, prompt_BxP=None, prompt_len_B=None):
    """tokens_BxL from the model with the run's `sample` settings (prompts kept clean)."""
    s = run.config.sample
    length = s.length or run.model.seq_len
    if run.config.objective == "autoregressive":
        return jax.jit(_autoregressive_sample, static_argnums=(2, 3, 4, 5))(
            key, params, run.model, num_samples, length, s.temperature)
    # Partial keeps params a jit argument of the sampler instead of a baked-in constant.
    logits_fn = jax.tree_util.Partial(functools.partial(_model_logits, cfg=run.model), params)
    # With a prompt, its keys/values are computed once and reused by every step (exact).
    prefix_cache = None
    if prompt_BxP is not None:
        prefix_cache = sampling.model_prefix_cache(params, run.model)[1]
    method_options = {k: s[k] for k in ("confidence_threshold", "entropy_bound",
                                        "remask_schedule", "remask_eta") if k in s}
    return sampling.sample(
        key, logits_fn, num_samples, length, vocab_size=run.model.vocab_size, mask_id=MASK_ID,
        shift=run.shift, num_steps=s.steps, method=s.method, schedule=s.schedule,
        prompt_BxL=prompt_BxP, prompt_len_B=prompt_len_B, scale=run.config.noise.scale,
        temperature=s.temperature, top_p=None if s.top_p >= 1.0 else s.top_p,
        float64=s.float64, block_size=s.block_size or None, logits_fn_accepts_mask=True,
        prefix_cache=prefix_cache, **method_options)


def sample_texts(params, run: Run, *, num_samples, prompts=(), seed=0, workdir=None):
    """Decoded samples: `num_samples` unconditional ones, or that many per prompt."""
    tokenizer = _tokenizer(run, workdir)
    key = jax.random.key(seed)
    if not prompts:
        return _decode(tokenizer, sample_tokens(params, run, key, num_samples))
    if tokenizer is None:
        raise ValueError("prompts need a tokenizer: set data.tokenizer (the run recorded none)")
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids
               for p in prompts for _ in range(num_samples)]
    longest = max(len(ids) for ids in encoded)
    if longest >= run.model.seq_len:
        raise ValueError(f"a prompt has {longest} tokens; model.seq_len is {run.model.seq_len}")
    prompt_BxP = np.zeros((len(encoded), longest), np.int32)
    for row, ids in enumerate(encoded):
        prompt_BxP[row, :len(ids)] = ids
    prompt_len_B = np.array([len(ids) for ids in encoded], np.int32)
    tokens = sample_tokens(params, run, key, len(encoded), prompt_BxP, prompt_len_B)
    return _decode(tokenizer, tokens)


def write_samples(workdir, texts, step):
    path = fs.join(workdir, f"samples_step{step}.txt")
    fs.write_text_atomic(path, "\n\n".join(f"--- sample {i}\n{t}" for i, t in enumerate(texts))
                         + "\n")
    return path


def restore_params(run: Run, workdir):
    """(params, step) of the newest checkpoint in workdir, on the run's mesh."""
    manager = checkpoint.make_manager(fs.join(fs.absolute(workdir), "checkpoints"),
                                      keep=run.config.train.keep_checkpoints)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
    mesh = parallel.make_mesh(**{k: run.mesh_shape[k] for k in ("data", "fsdp", "tensor")})
    optimizer = train.make_optimizer(run)
    shardings = train.Shardings(run, mesh, optimizer)
    state, step = checkpoint.restore_verified(manager,
                                              train.abstract_state(run, shardings, optimizer))
    manager.close()
    return state["params"], step


# What a checkpoint's numbers mean: evaluating it under other values gives a different quantity.
IDENTITY_KEYS = ("objective", "noise.type", "noise.scale")


def check_identity(run: Run, workdir, *, allow_config_change=False):
    """ConfigError when the run is evaluated under another objective or noise than it was
    trained with (workdir/config.json), unless allowed; returns the trained config's hash."""
    from dlmjax import rundir
    from dlmjax.config import ConfigError

    if not fs.isfile(rundir.config_path(workdir)):
        return None
    trained = rundir.load_config(workdir)
    old = rundir.flatten(json.loads(trained.to_json()))
    new = rundir.flatten(json.loads(run.config.to_json()))
    changed = [k for k in IDENTITY_KEYS if k in old and old[k] != new.get(k)]
    if changed and not allow_config_change:
        listed = "; ".join(f"{k}={new.get(k)!r} but the run was trained with {old[k]!r}"
                           for k in changed)
        raise ConfigError(f"{rundir.config_path(workdir)}: {listed}; evaluating under another "
                          f"noise gives a different quantity (pass --allow_config_change to do "
                          f"it anyway)")
    return rundir.config_hash(trained)


def _bytes_per_token(tokenizer, batches):
    """Mean UTF-8 bytes per ordinary (non-special) token of the evaluated rows."""
    from dlmjax import data

    num_bytes = num_tokens = 0
    for batch in batches:
        tokens = np.asarray(batch["tokens"])
        num_bytes += sum(len(t.encode()) for t in data.decode_batch(tokenizer, tokens))
        num_tokens += int(np.sum(tokens > MASK_ID))
    return num_bytes / max(num_tokens, 1)


def evaluate_checkpoint(run: Run, workdir, *, allow_config_change=False):
    """Held-out ELBO (nats/token) with its standard error, PPL and bits/byte of the newest
    checkpoint, on the deterministic λ grid; also written to workdir/eval_step<N>.json with the
    noise type and the hash of the run's config.json."""
    from dlmjax import data, rundir
    from dlmjax.diffusion import likelihood

    cfg = run.config
    trained_hash = check_identity(run, workdir, allow_config_change=allow_config_change)
    params, step = restore_params(run, workdir)
    batches = list(data.make_eval_batches(cfg.data, seq_len=run.model.seq_len,
                                          batch_size=run.batch_size // run.microbatches,
                                          num_batches=cfg.eval.batches))
    tokenizer = _tokenizer(run, workdir)
    bytes_per_token = _bytes_per_token(tokenizer, batches) if tokenizer else None
    if cfg.objective == "autoregressive":
        eval_fn = jax.jit(functools.partial(train.eval_step, run=run))
        sums = [eval_fn(params, b["tokens"], jax.random.key(0)) for b in batches]
        nats = sum(float(s[0]) for s in sums) / sum(float(s[1]) for s in sums)
        result = {"elbo_nats_per_token": nats, "stderr": 0.0, "perplexity": float(np.exp(nats)),
                  "bits_per_byte": (nats / np.log(2) / bytes_per_token
                                    if bytes_per_token else None)}
    else:
        logits_fn = jax.tree_util.Partial(functools.partial(_model_logits, cfg=run.model), params)
        result = likelihood.evaluate_elbo(
            jax.random.key(cfg.seed), logits_fn, batches, mask_id=MASK_ID, shift=run.shift,
            scale=cfg.noise.scale, method="grid", num_points=cfg.eval.grid_points,
            bytes_per_token=bytes_per_token, logits_fn_accepts_mask=True).as_dict()
    result.update(step=step, bytes_per_token=bytes_per_token, grid_points=cfg.eval.grid_points,
                  objective=cfg.objective, noise_type=cfg.noise.type,
                  noise_scale=cfg.noise.scale, config_hash=rundir.config_hash(cfg),
                  trained_config_hash=trained_hash)
    fs.write_text_atomic(fs.join(workdir, f"eval_step{step}.json"), json.dumps(result, indent=2))
    return result
