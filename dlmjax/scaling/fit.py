"""Robust fits of scaling laws, vectorised over bootstrap resamples.

Bootstrap resamples are multinomial count matrices W_Rxn (resample r uses point i W[r, i] times),
so all R refits run as one batched computation instead of a Python loop.

- Power laws y = A·x^α: Huber regression of log y on log x by iteratively reweighted least
  squares (convex, so IRLS reaches the optimum from OLS).
- The parametric law (Approach 3) lives in parametric.py; its names stay importable from here.
"""

import dataclasses

import numpy as np

PARAMETRIC_DELTA = 1e-3
_MAD_TO_SIGMA = 1.4826
_HUBER_K = 1.345   # Huber's tuning: 95% efficiency under Gaussian noise


def huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multinomial counts: row r says how often each point enters resample r."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def percentile_interval(samples, level: float = 0.95, axis: int = 0):
    """Percentile bootstrap interval, ignoring NaN (failed) resamples."""
    tail = 50.0 * (1.0 - level)
    return (np.nanpercentile(samples, tail, axis=axis),
            np.nanpercentile(samples, 100.0 - tail, axis=axis))


# --------------------------------------------------------------------------------------------
# Straight lines in log-log: y = A·x^α.

def _weighted_line(u, v, w_Rxn):
    """Weighted least-squares line per row; u and v are (n,) or (R, n)."""
    sw = w_Rxn.sum(1)
    su, sv = (w_Rxn * u).sum(1), (w_Rxn * v).sum(1)
    suu, suv = (w_Rxn * u * u).sum(1), (w_Rxn * u * v).sum(1)
    det = sw * suu - su * su
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (sw * suv - su * sv) / det
        intercept = (sv - slope * su) / sw
    bad = ~(np.abs(det) > 1e-12 * np.maximum(sw * suu, 1e-300))
    slope[bad] = np.nan
    intercept[bad] = np.nan
    return intercept, slope


def huber_line(u, v, w_Rxn, delta: float, *, max_iter: int = 500, tol: float = 1e-12):
    """Minimise Σ_i w_ri·huber(v_i − c_r − s_r·u_i) for every row r; returns (c_R, s_R).

    u and v are shared (n,) arrays or per-row (R, n) arrays.
    """
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    w_Rxn = np.atleast_2d(np.asarray(w_Rxn, np.float64))
    c, s = _weighted_line(u, v, w_Rxn)
    if delta <= 0:
        return c, s
    active = np.isfinite(s)
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        ui = u[idx] if u.ndim == 2 else u
        vi = v[idx] if v.ndim == 2 else v
        r = np.abs(vi - c[idx, None] - s[idx, None] * ui)
        omega = w_Rxn[idx] * np.minimum(1.0, delta / np.maximum(r, 1e-300))
        c_new, s_new = _weighted_line(ui, vi, omega)
        step = np.maximum(np.abs(c_new - c[idx]), np.abs(s_new - s[idx]))
        c[idx], s[idx] = c_new, s_new
        active[idx[~(step >= tol)]] = False
    return c, s


def default_delta(log_x, log_y) -> float:
    """Huber's k = 1.345 times a robust (MAD) scale of the OLS residuals in log y."""
    c, s = _weighted_line(log_x, log_y, np.ones((1, len(log_x))))
    resid = log_y - c[0] - s[0] * log_x
    scale = _MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid)))
    return float(_HUBER_K * scale) if scale > 0 else 0.0


def _log_xy(x, y):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y need the same length ≥ 2, got {x.size} and {y.size}")
    if not (np.all(x > 0) and np.all(y > 0)):
        raise ValueError("power-law fits need positive x and y")
    return np.log(x), np.log(y)


# The study's fits: scipy least_squares(loss="huber") with its default f_scale = 1 on log
# residuals, i.e. Huber δ = 1 in log units (effectively least squares for such residuals).
PAPER_DELTA = 1.0


def resolve_delta(delta, log_x, log_y) -> tuple[float, str]:
    """(δ, rule): None → Huber's rule on the residuals' MAD ("robust"), "paper" → 1 ("paper"),
    a number → itself ("fixed")."""
    if delta is None:
        return default_delta(log_x, log_y), "robust"
    if isinstance(delta, str):
        if delta != "paper":
            raise ValueError(f"delta must be None, 'paper' or a number, got {delta!r}")
        return PAPER_DELTA, "paper"
    return float(delta), "fixed"


def fit_power_law(x, y, *, delta: float | str | None = None) -> tuple[float, float]:
    """(A, alpha) of y = A·x^alpha by Huber regression on logs.

    delta None: Huber's rule (k = 1.345 × MAD scale of the residuals); "paper": the study's
    scipy least_squares(loss="huber", f_scale=1) on log residuals; a number: that δ.
    """
    u, v = _log_xy(x, y)
    if delta == "paper":
        import scipy.optimize

        c0, s0 = _weighted_line(u, v, np.ones((1, u.size)))
        sol = scipy.optimize.least_squares(lambda th: v - th[0] - th[1] * u,
                                           [c0[0], s0[0]], loss="huber", f_scale=PAPER_DELTA,
                                           xtol=1e-15, ftol=1e-15, gtol=1e-15)
        return float(np.exp(sol.x[0])), float(sol.x[1])
    delta, _ = resolve_delta(delta, u, v)
    c, s = huber_line(u, v, np.ones((1, u.size)), delta)
    return float(np.exp(c[0])), float(s[0])


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    A: float
    alpha: float
    A_ci: tuple
    alpha_ci: tuple
    A_samples: np.ndarray = dataclasses.field(repr=False)
    alpha_samples: np.ndarray = dataclasses.field(repr=False)
    delta: float = 0.0
    delta_rule: str = "fixed"   # "robust" (Huber's rule), "paper" (δ = 1) or "fixed"
    scheme: str = "points"      # the bootstrap that gave the intervals

    def __call__(self, x):
        return self.A * np.asarray(x, np.float64) ** self.alpha

    def band(self, x, level: float = 0.95):
        """Pointwise percentile band of A_r·x^α_r over the resamples."""
        x = np.asarray(x, np.float64)
        curves = self.A_samples[:, None] * x[None] ** self.alpha_samples[:, None]
        return percentile_interval(curves, level)


def power_law_from_samples(A, alpha, A_samples, alpha_samples, delta, level=0.95, *,
                           delta_rule="fixed", scheme="points") -> PowerLawFit:
    ok = np.isfinite(A_samples) & np.isfinite(alpha_samples)
    A_samples, alpha_samples = A_samples[ok], alpha_samples[ok]
    return PowerLawFit(float(A), float(alpha),
                       tuple(map(float, percentile_interval(A_samples, level))),
                       tuple(map(float, percentile_interval(alpha_samples, level))),
                       A_samples, alpha_samples, float(delta), delta_rule, scheme)


def bootstrap_power_law(x, y, *, n_boot: int = 10_000, seed: int = 0,
                        delta: float | str | None = None, level: float = 0.95) -> PowerLawFit:
    """Power law with percentile CIs from n_boot case resamples of the (x, y) points
    (delta as in fit_power_law; "paper" runs as the equivalent batched Huber δ = 1)."""
    u, v = _log_xy(x, y)
    delta, rule = resolve_delta(delta, u, v)
    c0, s0 = huber_line(u, v, np.ones((1, u.size)), delta)
    c, s = huber_line(u, v, bootstrap_counts(u.size, n_boot, seed), delta)
    return power_law_from_samples(np.exp(c0[0]), s0[0], np.exp(c), s, delta, level,
                                  delta_rule=rule, scheme="points")


# Approach 3 lives in parametric.py (which builds on the Huber pieces above); its names stay
# reachable as fit.<name>, resolved lazily so either module may be imported first.
_PARAMETRIC_NAMES = ("ParametricFit", "batched_lbfgs", "bootstrap_parametric", "fit_parametric",
                     "parametric_loss", "parametric_optimum")


def __getattr__(name):
    if name in _PARAMETRIC_NAMES:
        from dlmjax.scaling import parametric

        return getattr(parametric, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
