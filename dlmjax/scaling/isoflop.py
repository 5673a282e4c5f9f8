"""Approach 2: iso-FLOP parabolas, their vertices, and power laws of the vertices in C.

For every FLOP budget C, log L is fitted by a parabola in log x (x = tokens D, or parameters P;
with x = D the vertex also gives M* = C/D*, so M*·D* = C holds exactly). The vertices then give
power laws x* = A·C^α and L* = A·C^α by Huber regression on logs.

Bootstrap (vectorised over resamples): see `approach2` for the three resampling schemes.
"""

import dataclasses

import numpy as np

from dlmjax.scaling import fit


@dataclasses.dataclass(frozen=True)
class Vertices:
    """One row per budget (sorted by C)."""

    compute: np.ndarray         # (K,) budgets C
    x_opt: np.ndarray           # (K,) vertex location (units of x)
    loss_opt: np.ndarray        # (K,) loss at the vertex
    coef: np.ndarray            # (K, 3) log L = c0 + c1·u + c2·u², u = log x − centre
    centre: np.ndarray          # (K,) mean log x of the budget's points
    x_range: np.ndarray         # (K, 2) smallest and largest x of the budget
    num_points: np.ndarray      # (K,)

    @property
    def interior(self) -> np.ndarray:
        """Vertex is a minimum (c2 > 0) inside the sampled range of x."""
        return (self.coef[:, 2] > 0) & (self.x_opt >= self.x_range[:, 0]) & (
            self.x_opt <= self.x_range[:, 1])

    def curve(self, k: int, x):
        u = np.log(np.asarray(x, np.float64)) - self.centre[k]
        c0, c1, c2 = self.coef[k]
        return np.exp(c0 + c1 * u + c2 * u * u)


def _group(compute, x, loss):
    compute, x, loss = (np.asarray(v, np.float64).ravel() for v in (compute, x, loss))
    if not (compute.shape == x.shape == loss.shape):
        raise ValueError("compute, x and loss must have equal lengths")
    if not (np.all(compute > 0) and np.all(x > 0) and np.all(loss > 0)):
        raise ValueError("iso-FLOP fits need positive compute, x and loss")
    budgets = np.unique(compute)
    groups = []
    for c in budgets:
        sel = compute == c
        if np.unique(x[sel]).size < 3:
            raise ValueError(f"budget C={c:.4g} has fewer than 3 distinct x; a parabola needs 3")
        groups.append((np.log(x[sel]), np.log(loss[sel])))
    return budgets, groups


def _design(u_n):
    return np.stack([np.ones_like(u_n), u_n, u_n * u_n], axis=1)


def _vertex(coef_Rx3, centre):
    c0, c1, c2 = coef_Rx3[..., 0], coef_Rx3[..., 1], coef_Rx3[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        u_opt = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    return centre + u_opt, c0 + c1 * u_opt + c2 * u_opt * u_opt


def fit_vertices(compute, x, loss) -> Vertices:
    """Least-squares parabola of log loss in log x for each budget, and its vertex."""
    budgets, groups = _group(compute, x, loss)
    coefs, centres, ranges, counts = [], [], [], []
    for u, v in groups:
        centre = u.mean()
        coefs.append(np.linalg.lstsq(_design(u - centre), v, rcond=None)[0])
        centres.append(centre)
        ranges.append((np.exp(u.min()), np.exp(u.max())))
        counts.append(u.size)
    coef, centre = np.array(coefs), np.array(centres)
    log_x, log_l = _vertex(coef, centre)
    return Vertices(budgets, np.exp(log_x), np.exp(log_l), coef, centre, np.array(ranges),
                    np.array(counts))


def bootstrap_vertices(compute, x, loss, *, n_boot: int, seed: int):
    """(log x*, log L*) of shape (R, K) from residual resamples of the budgets' parabolas.

    Residuals are leverage-corrected (r/√(1 − h)) and pooled over budgets: one budget has only
    n − 3 degrees of freedom, too few to estimate its own noise level. Returns also the pooled
    degrees of freedom (0 when every budget has exactly 3 points: nothing to resample).
    """
    budgets, groups = _group(compute, x, loss)
    fits, pool, dof = [], [], 0
    for u, v in groups:
        centre = u.mean()
        design = _design(u - centre)
        pinv = np.linalg.pinv(design)                           # (3, n)
        fitted = design @ (pinv @ v)
        leverage = np.einsum("ij,ji->i", design, pinv)
        keep = leverage < 1.0 - 1e-9
        pool.append((v - fitted)[keep] / np.sqrt(1.0 - leverage[keep]))
        dof += u.size - 3
        fits.append((centre, pinv, fitted))
    pool = np.concatenate(pool)
    pool = pool - pool.mean() if pool.size else np.zeros(1)
    rng = np.random.default_rng(seed)
    log_x = np.empty((n_boot, budgets.size))
    log_l = np.empty((n_boot, budgets.size))
    for k, (centre, pinv, fitted) in enumerate(fits):
        draws = pool[rng.integers(0, pool.size, size=(n_boot, fitted.size))]
        coef_R = (fitted[None] + draws) @ pinv.T
        log_x[:, k], log_l[:, k] = _vertex(coef_R, centre)
    return budgets, log_x, log_l, dof


@dataclasses.dataclass(frozen=True)
class Approach2Fit:
    vertices: Vertices
    used: np.ndarray            # (K,) budgets whose vertex entered the power laws
    x_law: fit.PowerLawFit      # x*(C)
    loss_law: fit.PowerLawFit   # L*(C)
    scheme: str                 # the bootstrap actually used (see approach2)


def _law_samples(log_c, log_y_RxK, counts_RxK, delta):
    ok = np.isfinite(log_y_RxK)
    w = np.where(ok, counts_RxK, 0.0)
    c, s = fit.huber_line(log_c, np.where(ok, log_y_RxK, 0.0), w, delta)
    enough = (w > 0).sum(1) >= 2
    return np.where(enough, np.exp(c), np.nan), np.where(enough, s, np.nan)


BOOTSTRAP_SCHEMES = ("run", "residuals", "budgets", "both")


def resampled_vertices(compute, x, loss_samples_Rxn):
    """(log x*, log L*) of shape (R, K): every budget's parabola refitted on each row of
    resampled losses (the run-level bootstrap, dlmjax/scaling/runboot.py)."""
    compute, x = np.asarray(compute, np.float64).ravel(), np.asarray(x, np.float64).ravel()
    loss_samples_Rxn = np.asarray(loss_samples_Rxn, np.float64)
    budgets = np.unique(compute)
    log_x = np.empty((loss_samples_Rxn.shape[0], budgets.size))
    log_l = np.empty_like(log_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_loss = np.log(loss_samples_Rxn)
    for k, c in enumerate(budgets):
        sel = compute == c
        u = np.log(x[sel])
        centre = u.mean()
        coef_R = log_loss[:, sel] @ np.linalg.pinv(_design(u - centre)).T
        log_x[:, k], log_l[:, k] = _vertex(coef_R, centre)
    return budgets, log_x, log_l


def approach2(compute, x, loss, *, n_boot: int = 10_000, seed: int = 0,
              delta: float | str | None = None, level: float = 0.95, interior_only: bool = True,
              scheme: str | None = None, loss_samples=None) -> Approach2Fit:
    """Vertices per budget, then x*(C) and L*(C) power laws with bootstrap CIs.

    scheme "run" (the default when loss_samples is given): loss_samples (R, n) are run-level
    resamples of the n iso-FLOP losses (runboot.isoflop_loss_samples); every vertex and law is
    refitted on each row, so errors shared by a run's points stay shared. The others need only
    the points: "residuals" (the default without loss_samples) redraws the parabolas' pooled
    residuals as if every point were independent; "budgets" redraws the vertex points
    themselves (the study's scheme; narrow with few budgets); "both" does both at once. With 3
    points per budget there are no residuals and "residuals" falls back to "budgets".
    delta: see fit.fit_power_law. interior_only drops budgets whose vertex is not a minimum
    inside their sampled x range.
    """
    if scheme is None:
        scheme = "run" if loss_samples is not None else "residuals"
    if scheme not in BOOTSTRAP_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {BOOTSTRAP_SCHEMES}")
    if scheme == "run" and loss_samples is None:
        raise ValueError("scheme 'run' needs loss_samples (runboot.isoflop_loss_samples)")
    vertices = fit_vertices(compute, x, loss)
    used = vertices.interior if interior_only else np.isfinite(vertices.x_opt)
    if used.sum() < 2:
        raise ValueError(f"only {int(used.sum())} budget(s) have a usable vertex; need ≥ 2")
    log_c = np.log(vertices.compute[used])
    log_x, log_l = np.log(vertices.x_opt[used]), np.log(vertices.loss_opt[used])
    delta_x, rule = fit.resolve_delta(delta, log_c, log_x)
    delta_l, _ = fit.resolve_delta(delta, log_c, log_l)
    ones = np.ones((1, log_c.size))
    cx, sx = fit.huber_line(log_c, log_x, ones, delta_x)
    cl, sl = fit.huber_line(log_c, log_l, ones, delta_l)

    if scheme == "run":
        _, boot_x, boot_l = resampled_vertices(compute, x, loss_samples)
        dof = None
    else:
        _, boot_x, boot_l, dof = bootstrap_vertices(compute, x, loss, n_boot=n_boot, seed=seed)
    boot_x, boot_l = boot_x[:, used], boot_l[:, used]
    if scheme == "residuals" and dof == 0:
        scheme = "budgets"
    if scheme == "budgets":
        boot_x = np.broadcast_to(log_x, boot_x.shape)
        boot_l = np.broadcast_to(log_l, boot_l.shape)
    counts = (np.ones(boot_x.shape) if scheme in ("residuals", "run")
              else fit.bootstrap_counts(log_c.size, n_boot, seed + 1))
    ax, alx = _law_samples(log_c, boot_x, counts, delta_x)
    al, all_ = _law_samples(log_c, boot_l, counts, delta_l)
    return Approach2Fit(
        vertices, used,
        fit.power_law_from_samples(np.exp(cx[0]), sx[0], ax, alx, delta_x, level,
                                   delta_rule=rule, scheme=scheme),
        fit.power_law_from_samples(np.exp(cl[0]), sl[0], al, all_, delta_l, level,
                                   delta_rule=rule, scheme=scheme), scheme)


def flops_law_from_tokens_law(tokens_law: fit.PowerLawFit) -> fit.PowerLawFit:
    """M* = C/D*: A_M = 1/A_D and α_M = 1 − α_D, sample by sample (so M*·D* = C exactly)."""
    return fit.power_law_from_samples(
        1.0 / tokens_law.A, 1.0 - tokens_law.alpha, 1.0 / tokens_law.A_samples,
        1.0 - tokens_law.alpha_samples, tokens_law.delta, delta_rule=tokens_law.delta_rule,
        scheme=tokens_law.scheme)
