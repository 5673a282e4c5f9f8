"""Per-run loss curves: EMA smoothing and L(S) = C + B·S^−b fits.

Runs have no cooldown, so a run's smoothed curve gives its loss at every FLOP budget it passes.
The fit profiles b: for fixed b the model is linear in (C, B), solved in closed form for a whole
grid of b at once (vectorised), then refined by golden-section search around the best b.
"""

import dataclasses

import numpy as np
import scipy.signal

EMA_GAMMA = 0.96
_B_GRID = np.exp(np.linspace(np.log(1e-3), np.log(4.0), 400))


def ema(values, gamma: float = EMA_GAMMA):
    """Bias-corrected exponential moving average s_t/(1 − γ^t); gamma = 0 returns the input."""
    values = np.asarray(values, np.float64)
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"EMA gamma must be in [0, 1), got {gamma}")
    if gamma == 0.0 or values.size == 0:
        return values.copy()
    # s_t = γ·s_{t−1} + (1 − γ)·x_t with s_0 = 0, as a first-order IIR filter
    smoothed = scipy.signal.lfilter([1.0 - gamma], [1.0, -gamma], values)
    return smoothed / (1.0 - gamma ** np.arange(1, values.size + 1))


@dataclasses.dataclass(frozen=True)
class LossCurve:
    """L(S) = C + B·S^−b in steps S, valid on [step_min, step_max]; x = flops or tokens scale S."""

    C: float
    B: float
    b: float
    step_min: float
    step_max: float
    tokens_per_step: float
    flops_per_step: float
    rmse: float

    def loss_at_step(self, step, *, extrapolate: bool = False):
        step = np.asarray(step, np.float64)
        loss = self.C + self.B * step ** (-self.b)
        if extrapolate:
            return loss
        inside = (step >= self.step_min * (1 - 1e-9)) & (step <= self.step_max * (1 + 1e-9))
        return np.where(inside, loss, np.nan)

    def loss_at_flops(self, flops, *, extrapolate: bool = False):
        return self.loss_at_step(np.asarray(flops, np.float64) / self.flops_per_step,
                                 extrapolate=extrapolate)

    def loss_at_tokens(self, tokens, *, extrapolate: bool = False):
        return self.loss_at_step(np.asarray(tokens, np.float64) / self.tokens_per_step,
                                 extrapolate=extrapolate)

    def step_to_loss(self, loss, *, extrapolate: bool = False):
        """First step at which the curve reaches `loss` (NaN if never within its range)."""
        loss = np.asarray(loss, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(loss > self.C, ((loss - self.C) / self.B) ** (-1.0 / self.b), np.nan)
        if extrapolate:
            return step
        inside = (step >= self.step_min * (1 - 1e-9)) & (step <= self.step_max * (1 + 1e-9))
        return np.where(inside, step, np.nan)

    def tokens_to_loss(self, loss, *, extrapolate: bool = False):
        return self.step_to_loss(loss, extrapolate=extrapolate) * self.tokens_per_step


def _linear_fits(log_s, y, b_values):
    """For each b: least squares of y on [1, S^−b] with B ≥ 0; returns (C, B, sse) per b."""
    z = np.exp(-b_values[:, None] * log_s[None])              # (G, n)
    n = y.size
    zm, ym = z.mean(1), y.mean()
    zc = z - zm[:, None]
    szz = (zc * zc).sum(1)
    slope = np.where(szz > 0, (zc @ (y - ym)) / np.maximum(szz, 1e-300), 0.0)
    slope = np.maximum(slope, 0.0)
    intercept = ym - slope * zm
    resid = y[None] - intercept[:, None] - slope[:, None] * z
    return intercept, slope, (resid * resid).sum(1) / n


def fit_loss_curve(steps, loss, *, tokens_per_step: float = 1.0,
                   flops_per_step: float = 1.0) -> LossCurve:
    """Least-squares fit of L(S) = C + B·S^−b (b in [1e-3, 4], B ≥ 0) to the given points."""
    steps, loss = np.asarray(steps, np.float64), np.asarray(loss, np.float64)
    keep = np.isfinite(loss) & (steps > 0)
    steps, loss = steps[keep], loss[keep]
    if steps.size < 4:
        raise ValueError(f"a loss curve fit needs at least 4 finite points, got {steps.size}")
    log_s = np.log(steps)
    _, _, sse = _linear_fits(log_s, loss, _B_GRID)
    k = int(np.argmin(sse))
    lo, hi = np.log(_B_GRID[max(k - 1, 0)]), np.log(_B_GRID[min(k + 1, _B_GRID.size - 1)])
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):   # golden-section search in log b; the bracket shrinks to ~1e-12
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        f1, f2 = _linear_fits(log_s, loss, np.exp(np.array([m1, m2])))[2]
        lo, hi = (lo, m2) if f1 <= f2 else (m1, hi)
    b = np.exp(0.5 * (lo + hi))
    c, slope, mse = _linear_fits(log_s, loss, np.array([b]))
    return LossCurve(float(c[0]), float(slope[0]), float(b), float(steps.min()),
                     float(steps.max()), float(tokens_per_step), float(flops_per_step),
                     float(np.sqrt(mse[0])))


def _linear_fits_rows(log_s, y_Rxn, b_RxG):
    """_linear_fits for R series at once, each at its own G values of b; returns (C, B, mse)."""
    z = np.exp(-b_RxG[..., None] * log_s)                      # (R, G, n)
    zm, ym = z.mean(-1), y_Rxn.mean(-1)[:, None]
    zc = z - zm[..., None]
    szz = (zc * zc).sum(-1)
    cov = np.einsum("rgn,rn->rg", zc, y_Rxn - ym)
    slope = np.maximum(np.where(szz > 0, cov / np.maximum(szz, 1e-300), 0.0), 0.0)
    intercept = ym - slope * zm
    resid = y_Rxn[:, None] - intercept[..., None] - slope[..., None] * z
    return intercept, slope, (resid * resid).mean(-1)


def fit_loss_curves(steps, loss_Rxn, b_start=None, *, num_grid: int = 65):
    """(C_R, B_R, b_R): fit_loss_curve for R series on the same steps, vectorised.

    The profile search runs over a log grid of num_grid values of b across [1e-3, 4] (b is
    poorly identified on short curves: resamples must be free to roam as far as a fresh run's
    fit would), then golden-section search around each row's best grid point. b_start is
    accepted for call compatibility and ignored.
    """
    del b_start
    log_s = np.log(np.asarray(steps, np.float64))
    y = np.asarray(loss_Rxn, np.float64)
    grid_G = np.linspace(np.log(_B_GRID[0]), np.log(_B_GRID[-1]), num_grid)
    log_b = np.repeat(grid_G[None], y.shape[0], 0)
    _, _, mse = _linear_fits_rows(log_s, y, np.exp(log_b))
    k = np.argmin(mse, axis=1)
    rows = np.arange(y.shape[0])
    lo = log_b[rows, np.maximum(k - 1, 0)]
    hi = log_b[rows, np.minimum(k + 1, num_grid - 1)]
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(36):     # the bracket shrinks to ~1e-8 of a grid step
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        f = _linear_fits_rows(log_s, y, np.exp(np.stack([m1, m2], 1)))[2]
        left = f[:, 0] <= f[:, 1]
        lo, hi = np.where(left, lo, m1), np.where(left, m2, hi)
    b = np.exp(0.5 * (lo + hi))
    c, slope, _ = _linear_fits_rows(log_s, y, b[:, None])
    return c[:, 0], slope[:, 0], b
