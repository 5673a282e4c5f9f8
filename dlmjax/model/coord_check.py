"""Coordinate check of the parametrization: do activations and their updates keep their size
across width and depth? (The μP / CompleteP test.)

A few LaProp steps of the diffusion loss on a small synthetic denoising task, then the RMS of:
each layer's output at init, its change after the steps, and the logits after the steps. Under
CompleteP these stay put across widths and depths; under the standard parametrization (one init
scale, one learning rate, no multipliers) the updates grow with width.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dlmjax.diffusion.elbo import token_losses
from dlmjax.diffusion.forward import sample_zt
from dlmjax.diffusion.schedule import NOISE_SHIFTS
from dlmjax.model.config import ModelConfig
from dlmjax.model.transformer import apply, apply_with_layer_outputs, init_params
from dlmjax.optim import make_optimizer, scale_by_laprop

REFERENCE_LR = 0.3
# Standard-parametrization control: the CompleteP hidden-matrix LR at the base width 128, for all.
STANDARD_LR = REFERENCE_LR / 128


def synthetic_batch(key, batch_size, seq_len, vocab_size):
    """Tokens with structure to learn: each sequence repeats a random 4-token motif."""
    motif = jax.random.randint(key, (batch_size, 4), 1, vocab_size)
    return jnp.tile(motif, (1, seq_len // 4 + 1))[:, :seq_len]


# These programs are small and compile-bound: XLA's backend optimisation costs more than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


@functools.partial(jax.jit, static_argnames=("cfg",), compiler_options=_FAST_COMPILE)
def _layer_output_rms(params, params0, tokens_BxL, *, cfg):
    _, acts0_NxBxLxD = apply_with_layer_outputs(params0, tokens_BxL, cfg=cfg)
    logits, acts_NxBxLxD = apply_with_layer_outputs(params, tokens_BxL, cfg=cfg)
    return {
        "init_act": jax.vmap(_rms)(acts0_NxBxLxD),
        "delta": jax.vmap(_rms)(acts_NxBxLxD - acts0_NxBxLxD),
        "logits": _rms(logits),
    }


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "batch_size", "standard_lr"),
                   compiler_options=_FAST_COMPILE)
def _train(key, *, cfg, steps, batch_size, standard_lr):
    """(params0, params after `steps` steps, evaluation input)."""
    key_init, key_data, key_eval, key_train = jax.random.split(key, 4)
    vocab, mask_id, shift = cfg.vocab_size, 0, NOISE_SHIFTS["masked"]
    x_BxL = synthetic_batch(key_data, batch_size, cfg.seq_len, vocab)
    if standard_lr is None:
        opt = make_optimizer(lr=REFERENCE_LR, d_model=cfg.d_model, num_layers=cfg.num_layers,
                             total_steps=steps, warmup_steps=0, batch_size=batch_size)
    else:
        opt = optax.chain(scale_by_laprop(0.9, 0.99, 1e-8), optax.scale(-standard_lr))

    def noised(k):
        lam_Bx1 = jax.random.uniform(k, (batch_size, 1), minval=-3.0, maxval=3.0)
        z = sample_zt(jax.random.fold_in(k, 1), x_BxL, lam_Bx1, vocab_size=vocab,
                      mask_id=mask_id, shift=shift)
        return z, jnp.broadcast_to(lam_Bx1, x_BxL.shape)

    def loss_fn(params, z, lam):
        loss, _ = token_losses(apply(params, z, cfg=cfg), z, x_BxL, lam, mask_id=mask_id,
                               shift=shift)
        return jnp.mean(loss)

    def step(carry, k):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, *noised(k))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    params0 = init_params(key_init, cfg)
    (params, _), _ = jax.lax.scan(step, (params0, opt.init(params0)),
                                  jax.random.split(key_train, steps))
    return params0, params, noised(key_eval)[0]


def measure(key, *, cfg: ModelConfig, steps=10, batch_size=8, standard_lr=None):
    """Dict of RMS statistics after `steps` optimizer steps (float32 arrays).

    init_act: RMS of each layer's output at init; delta: RMS of its change after the steps;
    logits: RMS of the logits after the steps. standard_lr: use one LaProp LR for every parameter
    (the control) instead of the CompleteP groups at η = 0.3.
    """
    params0, params, z_eval = _train(key, cfg=cfg, steps=steps, batch_size=batch_size,
                                     standard_lr=standard_lr)
    return _layer_output_rms(params, params0, z_eval, cfg=cfg)


def coord_check(widths=(128, 256, 512, 1024), depths=(2, 4, 8, 16), *, base_width=128,
                base_depth=2, vocab_size=64, seq_len=16, batch_size=8, steps=10, seed=0):
    """Tables {sweep: {size: stats}} for the sweeps 'width' and 'depth' (CompleteP) and
    'width_standard' (the control), stats as in `measure` converted to Python floats."""
    def run(width, depth, standard):
        cfg = ModelConfig(vocab_size=vocab_size, num_layers=depth, d_model=width, seq_len=seq_len,
                          dtype="float32", remat="none",
                          parametrization="standard" if standard else "completep")
        stats = measure(jax.random.key(seed), cfg=cfg, steps=steps, batch_size=batch_size,
                        standard_lr=STANDARD_LR if standard else None)
        return jax.tree.map(lambda a: a.tolist(), stats)

    return {
        "width": {w: run(w, base_depth, False) for w in widths},
        "depth": {n: run(base_width, n, False) for n in depths},
        "width_standard": {w: run(w, base_depth, True) for w in widths},
    }
