"""Run-level bootstrap: resample each run's noise, refit its curve, redo everything downstream.

Iso-FLOP points of one model size at different budgets are read off the same run curve, so
their errors are shared; resampling vertices or parabola residuals treats them as independent
and gives intervals that are too narrow. Here one resample redraws every run: its raw metric
residuals around its fitted curve are block-resampled (moving blocks at least as long as the
EMA's memory 1/(1 − γ), so the records' serial correlation survives), added back to the
curve, smoothed and refitted as in report.summarize_run. The resampled curves give resampled
iso-FLOP losses (the same (budget, size) points, best run per size per resample), from which
isoflop.approach2(scheme="run") and fit.bootstrap_parametric(loss_samples=...) redo vertices,
laws and Approach 3. See docs/science.md.
"""

import math

import numpy as np

from dlmjax.scaling import curves

_CURVE_PARAMS = 3     # C, B, b of L(S) = C + B·S^−b


def block_length(ema_gamma: float) -> int:
    """The EMA's memory in records, at least 1."""
    return max(1, math.ceil(1.0 / (1.0 - ema_gamma))) if ema_gamma > 0 else 1


def block_resample(resid_n, n_boot: int, block: int, rng) -> np.ndarray:
    """(n_boot, n) moving-block resamples of a residual series (blocks of `block` records)."""
    resid_n = np.asarray(resid_n, np.float64)
    n = resid_n.size
    block = min(block, n)
    num_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, num_blocks))
    idx = (starts[..., None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    return resid_n[idx]


def resample_curve(summary, n_boot: int, rng, *, block: int | None = None):
    """(C_R, B_R, b_R) of one run's curve refitted on n_boot block-resampled metric series."""
    if summary.steps is None:
        raise ValueError(f"{summary.path}: the run-level bootstrap needs the fit's inputs "
                         "(summaries from report.summarize_run)")
    gamma, curve = summary.ema_gamma, summary.curve
    block = block_length(gamma) if block is None else block
    steps, values, keep = summary.steps, summary.values, summary.keep
    centred = curves.ema(steps, gamma)
    # The mean series μ whose EMA is the fitted curve on the fit window (and the observed EMA
    # before it): refitting μ + 0 returns the curve exactly, so resamples are centred on it.
    window = np.arange(steps.size) >= int(np.argmax(keep))
    target = np.where(window, curve.loss_at_step(centred, extrapolate=True),
                      curves.ema(values, gamma))
    mean = _ema_inverse(target, gamma)
    resid = (values - mean)[window]
    # The curve was fitted to the EMA-smoothed series, which holds only n_eff = n(1 − γ)
    # independent values; its 3 parameters absorb 3 of them, exactly the slow components that
    # set a curve's error. Scaling the residuals by √(n_eff / (n_eff − 3)) restores their
    # variance (the analogue of the leverage correction of regression residuals).
    n_eff = resid.size / block_length(gamma)
    resid = resid * np.sqrt(n_eff / max(n_eff - _CURVE_PARAMS, 1.0))
    series = np.repeat(values[None], n_boot, 0)
    series[:, window] = mean[window][None] + block_resample(resid, n_boot, block, rng)
    smoothed = _ema_rows(series, gamma) if gamma > 0 else series
    return curves.fit_loss_curves(centred[keep], smoothed[:, keep], curve.b)


def _ema_inverse(smoothed, gamma):
    """x with curves.ema(x, gamma) = smoothed (the bias-corrected EMA is invertible)."""
    if gamma == 0:
        return smoothed.copy()
    raw = smoothed * (1.0 - gamma ** np.arange(1, smoothed.size + 1))
    prev = np.concatenate([[0.0], raw[:-1]])
    return (raw - gamma * prev) / (1.0 - gamma)


def _ema_rows(series_Rxn, gamma):
    import scipy.signal

    smoothed = scipy.signal.lfilter([1.0 - gamma], [1.0, -gamma], series_Rxn, axis=1)
    return smoothed / (1.0 - gamma ** np.arange(1, series_Rxn.shape[1] + 1))


def isoflop_loss_samples(summaries, points, *, n_boot: int, seed: int = 0,
                         block: int | None = None) -> np.ndarray:
    """(n_boot, len(points)) resampled iso-FLOP losses: per point (compute, size), the lowest
    resampled curve of that size's runs at that compute (NaN where no curve reaches it)."""
    rng = np.random.default_rng(seed)
    by_size = {}
    for s in summaries:
        by_size.setdefault(s.size, []).append(s)
    needed = {p["size"] for p in points}
    losses = {}     # size -> list of (R, len(points)) per run
    for size in sorted(needed):
        for s in by_size.get(size, []):
            c_R, b_coef_R, b_R = resample_curve(s, n_boot, rng, block=block)
            cur = s.curve
            cols = []
            for p in points:
                if p["size"] != size:
                    cols.append(np.full(n_boot, np.nan))
                    continue
                step = p["compute"] / cur.flops_per_step
                inside = cur.step_min * (1 - 1e-9) <= step <= cur.step_max * (1 + 1e-9)
                cols.append(c_R + b_coef_R * step ** (-b_R) if inside
                            else np.full(n_boot, np.nan))
            losses.setdefault(size, []).append(np.stack(cols, 1))
    out = np.full((n_boot, len(points)), np.nan)
    for runs_of_size in losses.values():
        stacked = np.stack(runs_of_size)                     # (runs, R, points)
        with np.errstate(all="ignore"):
            best = np.where(np.all(np.isnan(stacked), 0), np.nan,
                            np.nanmin(np.where(np.isnan(stacked), np.inf, stacked), 0))
        out = np.where(np.isnan(best), out, best)
    return out
