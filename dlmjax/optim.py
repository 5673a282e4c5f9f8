"""LaProp, the warm-up–stable–decay schedule and the CompleteP parameter groups (docs/science.md).

LaProp with the bias correction written as a step-dependent decay β̃(k) = 1 − (1 − β)/(1 − β^k)
(k = 1, 2, ...), so the stored moments are already bias-corrected:

    ν_k = β̃2(k)·ν_{k−1} + (1 − β̃2(k))·g_k²
    m_k = β̃1(k)·m_{k−1} + (1 − β̃1(k))·g_k / (√ν_k + ε)
    Δθ_k = −η_group·s(k)·(m_k + wd·θ_{k−1})          (wd on weight matrices only)

s(k) is the WSD schedule, η_group is η/D for hidden weight matrices and 0.02·η for everything
else (norm gains, biases, sinks, embedding, head).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MATRIX, OTHER = "matrix", "other"
OTHER_LR_FACTOR = 0.02
LARGE_BATCH = 256  # sequences; β2 drops from 0.99 to 0.98 from here on


def param_groups(params):
    """Labels each leaf MATRIX (hidden weight matrices: names ending in "_kernel") or OTHER."""

    def label(path, _):
        name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
        return MATRIX if str(name).endswith("_kernel") else OTHER

    return jax.tree_util.tree_map_with_path(label, params)


def wsd_schedule(*, total_steps, warmup_steps=2000, cooldown_fraction=0.0):
    """Learning-rate factor s(k) for the update at optimizer count k = 0 … total_steps − 1.

    Warm-up s = (k + 1)/W for k < W (so s reaches 1 at k = W − 1), then 1, then over the final
    C = round(cooldown_fraction·total_steps) steps s = 1 − √((k − k0)/C) with k0 = total − C
    (1 at the cooldown's first step, reaching 0 at k = total, one step after the last).
    Where warm-up and cooldown overlap the smaller factor wins.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= cooldown_fraction <= 1.0:
        raise ValueError(f"cooldown_fraction must be in [0, 1], got {cooldown_fraction}")
    cooldown_steps = int(round(cooldown_fraction * total_steps))
    cooldown_start = total_steps - cooldown_steps

    def schedule(count):
        k = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (k + 1.0) / warmup_steps) if warmup_steps else 1.0
        if not cooldown_steps:
            return jnp.asarray(warm, jnp.float32)
        progress = jnp.clip((k - cooldown_start) / cooldown_steps, 0.0, 1.0)
        return jnp.minimum(warm, 1.0 - jnp.sqrt(progress))

    return schedule


class LaPropState(NamedTuple):
    count: jax.Array  # number of updates applied so far
    mu: optax.Updates  # bias-corrected momentum of the normalised gradient (float32)
    nu: optax.Updates  # bias-corrected second moment (float32)


def _debias_decay(beta, k):
    """β̃(k) = 1 − (1 − β)/(1 − β^k); β̃(1) = 0, so the first step uses the raw statistics."""
    return 1.0 - (1.0 - beta) / (1.0 - beta**k)


def scale_by_laprop(b1=0.9, b2=0.99, eps=1e-8):
    """LaProp direction m_k (see module docstring); the caller scales it by −η."""

    def init_fn(params):
        zeros = lambda p: jnp.zeros(p.shape, jnp.float32)  # noqa: E731
        return LaPropState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
                           nu=jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        k = count.astype(jnp.float32)
        d1, d2 = _debias_decay(b1, k), _debias_decay(b2, k)
        g = jax.tree.map(lambda x: x.astype(jnp.float32), updates)
        nu = jax.tree.map(lambda n, x: d2 * n + (1.0 - d2) * jnp.square(x), state.nu, g)
        mu = jax.tree.map(lambda m, x, n: d1 * m + (1.0 - d1) * x / (jnp.sqrt(n) + eps),
                          state.mu, g, nu)
        out = jax.tree.map(lambda m, x: m.astype(x.dtype), mu, updates)
        return out, LaPropState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_group_lr(schedule, group_lrs):
    """Multiplies each update by −group_lrs[label]·schedule(count); labels from param_groups."""

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        factor = schedule(state.count)
        labels = param_groups(updates)
        updates = jax.tree.map(lambda u, g: (-group_lrs[g] * factor * u).astype(u.dtype),
                               updates, labels)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class OptimizerHParams:
    """Every value the optimizer derives from the run, computed in one place."""

    lr: float
    lr_matrix: float  # η/D
    lr_other: float  # 0.02·η
    b1: float
    b2: float
    eps: float  # 1e-8/(D·L)
    weight_decay: float
    clip_norm: float
    total_steps: int
    warmup_steps: int
    cooldown_fraction: float


def derive_hparams(*, lr, d_model, num_layers, total_steps, warmup_steps=2000,
                   cooldown_fraction=0.0, batch_size, b1=0.9, b2=None, weight_decay=0.0,
                   clip_norm=0.0) -> OptimizerHParams:
    for key, value in (("lr", lr), ("d_model", d_model), ("num_layers", num_layers),
                       ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"optimizer {key} must be positive, got {value}")
    if weight_decay < 0 or clip_norm < 0:
        raise ValueError(f"weight_decay ({weight_decay}) and clip_norm ({clip_norm}) must be >= 0")
    if b2 is None:
        b2 = 0.98 if batch_size >= LARGE_BATCH else 0.99
    for key, value in (("b1", b1), ("b2", b2)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"optimizer {key} must be in [0, 1), got {value}")
    return OptimizerHParams(lr=lr, lr_matrix=lr / d_model, lr_other=OTHER_LR_FACTOR * lr,
                            b1=b1, b2=b2, eps=1e-8 / (d_model * num_layers),
                            weight_decay=weight_decay, clip_norm=clip_norm,
                            total_steps=total_steps, warmup_steps=warmup_steps,
                            cooldown_fraction=cooldown_fraction)


def optimizer_from_hparams(hp: OptimizerHParams) -> optax.GradientTransformation:
    schedule = wsd_schedule(total_steps=hp.total_steps, warmup_steps=hp.warmup_steps,
                            cooldown_fraction=hp.cooldown_fraction)
    parts = []
    if hp.clip_norm:
        parts.append(optax.clip_by_global_norm(hp.clip_norm))
    parts.append(scale_by_laprop(hp.b1, hp.b2, hp.eps))
    if hp.weight_decay:
        # Decoupled: added after the normalisation, scaled by the group LR like AdamW.
        is_matrix = lambda p: jax.tree.map(lambda g: g == MATRIX, param_groups(p))  # noqa: E731
        parts.append(optax.add_decayed_weights(hp.weight_decay, mask=is_matrix))
    parts.append(scale_by_group_lr(schedule, {MATRIX: hp.lr_matrix, OTHER: hp.lr_other}))
    return optax.chain(*parts)


def make_optimizer(*, lr, d_model, num_layers, total_steps, warmup_steps=2000,
                   cooldown_fraction=0.0, batch_size, b1=0.9, b2=None, weight_decay=0.0,
                   clip_norm=0.0) -> optax.GradientTransformation:
    """The whole optimizer of docs/science.md from explicit arguments (see derive_hparams)."""
    return optimizer_from_hparams(derive_hparams(
        lr=lr, d_model=d_model, num_layers=num_layers, total_steps=total_steps,
        warmup_steps=warmup_steps, cooldown_fraction=cooldown_fraction, batch_size=batch_size,
        b1=b1, b2=b2, weight_decay=weight_decay, clip_norm=clip_norm))
