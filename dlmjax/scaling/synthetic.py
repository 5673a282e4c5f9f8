"""Losses from known laws, for recovery tests and demos without a trainer.

Every generator takes a NumPy Generator and returns float64 arrays; noise is multiplicative
(lognormal with sd `sigma` in log loss), matching fits done on log loss.
"""

import numpy as np

from dlmjax.scaling import fit, grid, laws, runs


def isoflop_design(budgets, optimum_fn, *, num_points: int = 7, span: float = 1.2,
                   shift: float = 0.0, rng=None):
    """(C, x): per budget, num_points values of x log-spaced over optimum·e^{±span}, the design
    centre moved off the optimum by a uniform draw in ±shift (log units)."""
    cs, xs = [], []
    for c in np.asarray(budgets, np.float64):
        offset = rng.uniform(-shift, shift) if shift > 0 else 0.0
        u = np.log(optimum_fn(c)) + offset + np.linspace(-span, span, num_points)
        cs.append(np.full(num_points, c))
        xs.append(np.exp(u))
    return np.concatenate(cs), np.concatenate(xs)


def parabola_losses(compute, tokens, *, tokens_law: laws.PowerLaw, loss_law: laws.PowerLaw,
                    curvature: float, sigma: float, rng):
    """log L = log L*(C) + curvature·(log D − log D*(C))² + noise: the Approach-2 model."""
    compute, tokens = np.asarray(compute, np.float64), np.asarray(tokens, np.float64)
    u = np.log(tokens) - np.log(tokens_law(compute))
    log_l = np.log(loss_law(compute)) + curvature * u * u
    return np.exp(log_l + sigma * rng.standard_normal(compute.shape))


def parametric_losses(params: dict, N, D, *, sigma: float, rng):
    """L = (E + A/N^α + B/D^β)·e^{σε}: the Approach-3 model."""
    loss = fit.parametric_loss(params, N, D)
    return loss * np.exp(sigma * rng.standard_normal(loss.shape))


def sweep_tokens(target, batch_tokens, lr, *, optimal_tokens_fn, batch_curvature: float,
                 lr_curvature: float, lr_batch_exponent: float | None = None):
    """Tokens needed to reach a loss with batch B and LR η when the study's laws hold:
    D = D₀·exp(κ_B·ln²(B/B*(D₀)) + κ_η·ln²(η/η*(B, D₀))), D₀ = optimal_tokens_fn(target).

    η*(B, D₀) = η*_law(B*(D₀))·(B/B*(D₀))^γ: the published LR law holds along B*(D). With
    γ = lr_batch_exponent ≠ the law's exponent (None: equal, so η* ignores the run length),
    η* at a fixed B falls with the run length when γ > the law's exponent.
    """
    d0 = optimal_tokens_fn(np.asarray(target, np.float64))
    b_opt = laws.optimal_batch_tokens(d0)
    gamma = laws.LR_LAW.alpha if lr_batch_exponent is None else lr_batch_exponent
    lr_opt = laws.optimal_lr(b_opt) * (np.asarray(batch_tokens, np.float64) / b_opt) ** gamma
    log_b = np.log(np.asarray(batch_tokens, np.float64) / b_opt)
    log_lr = np.log(np.asarray(lr, np.float64) / lr_opt)
    return d0 * np.exp(batch_curvature * log_b**2 + lr_curvature * log_lr**2)


def metrics_records(point: grid.GridPoint, loss_at_tokens, *, num_records: int = 200,
                    eval_every: int = 10, noise: float = 0.0, rng=None):
    """Trainer-style metrics for a run whose ELBO follows loss_at_tokens(tokens)."""
    steps = np.unique(np.linspace(1, point.steps, num_records).round().astype(int))
    tokens = steps * point.tokens_per_step
    elbo = np.asarray(loss_at_tokens(tokens.astype(np.float64)), np.float64)
    if noise > 0:
        elbo = elbo + noise * rng.standard_normal(elbo.shape)
    records = []
    for i, (s, d, e) in enumerate(zip(steps, tokens, elbo)):
        record = {"step": int(s), "tokens": int(d), "flops": float(point.flops_per_token * d),
                  "loss": float(e), "elbo": float(e), "lr": point.lr}
        if i % eval_every == eval_every - 1:
            record["eval_elbo"] = float(e)
        records.append(record)
    return records


def write_fake_run(run_dir: str, point: grid.GridPoint, loss_at_tokens, **kwargs) -> str:
    """A run directory in the trainer's format whose ELBO follows the given law."""
    return runs.write_run(run_dir, runs.config_for_point(point),
                          metrics_records(point, loss_at_tokens, **kwargs))
