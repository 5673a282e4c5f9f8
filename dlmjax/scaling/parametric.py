"""Approach 3: the parametric law L(N, D) = E + A/N^α + B/D^β, fitted and bootstrapped.

Huber (δ = 1e-3) on log L with log L̂ = LSE(a − α·log N, b − β·log D, e); A = eᵃ, B = eᵇ,
E = eᵉ. The point fit runs a batched L-BFGS from the best `num_starts` points of a grid of
initialisations; bootstrap refits start from the point estimate and take batched
Levenberg–Marquardt steps on the IRLS majoriser of the Huber loss.
"""

import dataclasses

import numpy as np

from dlmjax.scaling.fit import PARAMETRIC_DELTA, bootstrap_counts, huber, percentile_interval


def _lse_terms(theta_Rx5, n_n, d_n, *, with_jac=True):
    """log L̂ and its Jacobian; theta = (a, b, e, alpha, beta) on centred log N, log D."""
    a, b, e, alpha, beta = (theta_Rx5[:, k, None] for k in range(5))
    t1 = a - alpha * n_n[None]
    t2 = b - beta * d_n[None]
    t3 = np.broadcast_to(e, t1.shape)
    top = np.maximum(np.maximum(t1, t2), t3)
    e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
    total = e1 + e2 + e3
    if not with_jac:
        return top + np.log(total), None
    p1, p2, p3 = e1 / total, e2 / total, e3 / total
    jac = np.stack([p1, p2, p3, -p1 * n_n[None], -p2 * d_n[None]], axis=-1)
    return top + np.log(total), jac


def _rows(y):
    """Targets shared by every row, (n,) → (1, n), or one row each, (R, n) as is."""
    return y if y.ndim == 2 else y[None]


def _objective(theta_Rx5, n_n, d_n, y_n, w_Rxn, delta):
    pred, _ = _lse_terms(theta_Rx5, n_n, d_n, with_jac=False)
    return (w_Rxn * huber(pred - _rows(y_n), delta)).sum(1)


def _lm_refine(theta_Rx5, n_n, d_n, y_n, w_Rxn, delta, *, max_iter=200, tol=1e-10):
    """Batched Levenberg–Marquardt on the IRLS majoriser of the weighted Huber objective."""
    theta = theta_Rx5.copy()
    mu = np.full(theta.shape[0], 1e-3)
    obj = _objective(theta, n_n, d_n, y_n, w_Rxn, delta)
    active = np.ones(theta.shape[0], bool)
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        th, w = theta[idx], w_Rxn[idx]
        y_i = y_n[idx] if y_n.ndim == 2 else y_n
        pred, jac = _lse_terms(th, n_n, d_n)
        r = pred - _rows(y_i)
        omega = w * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        weighted_Rx5xn = (jac * omega[..., None]).transpose(0, 2, 1)
        grad = np.matmul(weighted_Rx5xn, r[..., None])[..., 0]
        hess = np.matmul(weighted_Rx5xn, jac)
        diag = np.diagonal(hess, axis1=1, axis2=2)
        damped = hess + (mu[idx, None] * (diag + 1e-12))[:, :, None] * np.eye(5)[None]
        try:
            step = -np.linalg.solve(damped, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:     # a term that no point feels leaves a zero row
            step = -np.matmul(np.linalg.pinv(damped), grad[..., None])[..., 0]
        cand = th + step
        cand[:, 3:] = np.maximum(cand[:, 3:], 1e-6)      # exponents stay positive
        cand_obj = _objective(cand, n_n, d_n, y_i, w, delta)
        better = np.isfinite(cand_obj) & (cand_obj <= obj[idx])
        gain = obj[idx] - np.where(better, cand_obj, obj[idx])
        theta[idx[better]] = cand[better]
        obj[idx[better]] = cand_obj[better]
        mu[idx] = np.where(better, mu[idx] / 3.0, mu[idx] * 4.0)
        small = np.max(np.abs(step), axis=1) < tol
        done = (better & (small | (gain <= 1e-14 * obj[idx]))) | (mu[idx] > 1e10)
        active[idx[done]] = False
    return theta, obj


def _prepare(N, D, L):
    N, D, L = (np.asarray(v, np.float64).ravel() for v in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.size < 5:
        raise ValueError(f"N, D, L need equal lengths ≥ 5, got {N.size}, {D.size}, {L.size}")
    if not (np.all(N > 0) and np.all(D > 0) and np.all(L > 0)):
        raise ValueError("fit_parametric needs positive N, D and L")
    log_n, log_d = np.log(N), np.log(D)
    n0, d0 = log_n.mean(), log_d.mean()
    return log_n - n0, log_d - d0, np.log(L), n0, d0


def _initial_grid(y_n):
    y_mid, y_min = np.median(y_n), y_n.min()
    shares = np.log([0.01, 0.05, 0.2, 0.5])
    e_vals = y_min + np.log([0.2, 0.5, 0.8, 0.95])
    exps = np.array([0.1, 0.25, 0.5, 1.0, 2.0])
    grid = np.meshgrid(y_mid + shares, y_mid + shares, e_vals, exps, exps, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def _to_params(theta, n0, d0) -> dict:
    a, b, e, alpha, beta = theta
    return {"A": float(np.exp(a + alpha * n0)), "B": float(np.exp(b + beta * d0)),
            "E": float(np.exp(e)), "alpha": float(alpha), "beta": float(beta)}


def _huber_value_and_grad(theta_Rx5, n_n, d_n, y_n, delta):
    pred, jac = _lse_terms(theta_Rx5, n_n, d_n)
    r = pred - y_n[None]
    psi = np.clip(r, -delta, delta)
    return huber(r, delta).sum(1), np.matmul(psi[:, None, :], jac)[:, 0]


def batched_lbfgs(value_and_grad, x0_Rxk, *, memory: int = 10, max_iter: int = 500,
                  gtol: float = 1e-10, ftol: float = 1e-14):
    """L-BFGS on R independent problems at once (two-loop recursion, Armijo backtracking).

    value_and_grad maps (R', k) points to ((R',) values, (R', k) gradients). Returns (x, f).
    """
    x = np.array(x0_Rxk, np.float64)
    num, dim = x.shape
    f, g = value_and_grad(x)
    s_hist = np.zeros((num, memory, dim))
    y_hist = np.zeros((num, memory, dim))
    rho = np.zeros((num, memory))
    active = np.isfinite(f)
    for it in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        gi, sh, yh, rh = g[idx], s_hist[idx], y_hist[idx], rho[idx]
        order = [(it - 1 - j) % memory for j in range(memory)]      # newest first
        q, alphas = gi.copy(), []
        for j in order:
            a = rh[:, j] * np.einsum("rk,rk->r", sh[:, j], q)
            q -= a[:, None] * yh[:, j]
            alphas.append(a)
        newest = order[0]
        yy = np.einsum("rk,rk->r", yh[:, newest], yh[:, newest])
        gamma = np.where(rh[:, newest] > 0, 1.0 / np.maximum(rh[:, newest] * yy, 1e-300), 1.0)
        r = gamma[:, None] * q
        for j, a in zip(reversed(order), reversed(alphas)):
            b = rh[:, j] * np.einsum("rk,rk->r", yh[:, j], r)
            r += sh[:, j] * (a - b)[:, None]
        direction = -r
        slope = np.einsum("rk,rk->r", direction, gi)
        uphill = ~(slope < 0)
        direction[uphill] = -gi[uphill]
        slope[uphill] = -np.einsum("rk,rk->r", gi[uphill], gi[uphill])
        if it == 0:
            direction /= np.maximum(np.abs(direction).max(1, keepdims=True), 1.0)
            slope = np.einsum("rk,rk->r", direction, gi)
        t = np.ones(idx.size)
        x_new, f_new, g_new = x[idx].copy(), f[idx].copy(), gi.copy()
        pending = np.ones(idx.size, bool)
        for _ in range(40):
            p = np.nonzero(pending)[0]
            if p.size == 0:
                break
            cand = x[idx[p]] + t[p, None] * direction[p]
            fc, gc = value_and_grad(cand)
            ok = np.isfinite(fc) & (fc <= f[idx[p]] + 1e-4 * t[p] * slope[p])
            x_new[p[ok]], f_new[p[ok]], g_new[p[ok]] = cand[ok], fc[ok], gc[ok]
            pending[p[ok]] = False
            t[p[~ok]] *= 0.5
        slot = it % memory
        step, dgrad = x_new - x[idx], g_new - gi
        sy = np.einsum("rk,rk->r", step, dgrad)
        s_hist[idx, slot], y_hist[idx, slot] = step, dgrad
        rho[idx, slot] = np.where(sy > 1e-300, 1.0 / np.where(sy > 1e-300, sy, 1.0), 0.0)
        small = (f[idx] - f_new <= ftol * np.maximum(np.abs(f[idx]), 1e-300)) | (
            np.abs(g_new).max(1) < gtol)
        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        active[idx[small | pending]] = False
    return x, f


def _fit_theta(n_n, d_n, y_n, delta, num_starts):
    inits = _initial_grid(y_n)
    start_obj = _objective(inits, n_n, d_n, y_n, np.ones((len(inits), y_n.size)), delta)
    starts = inits[np.argsort(start_obj)[:num_starts]]
    theta, obj = batched_lbfgs(
        lambda th: _huber_value_and_grad(th, n_n, d_n, y_n, delta), starts)
    obj = np.where(np.all(theta[:, 3:] > 0, axis=1), obj, np.inf)    # exponents must be > 0
    best = theta[np.nanargmin(obj)]
    polished, _ = _lm_refine(best[None], n_n, d_n, y_n, np.ones((1, y_n.size)), delta)
    return polished[0]


def fit_parametric(N, D, L, *, delta: float = PARAMETRIC_DELTA, num_starts: int = 64) -> dict:
    """L(N, D) = E + A/N^alpha + B/D^beta; returns dict(A, B, E, alpha, beta)."""
    n_n, d_n, y_n, n0, d0 = _prepare(N, D, L)
    return _to_params(_fit_theta(n_n, d_n, y_n, delta, num_starts), n0, d0)


@dataclasses.dataclass(frozen=True)
class ParametricFit:
    params: dict                # A, B, E, alpha, beta
    ci: dict                    # name -> (lo, hi)
    samples: dict = dataclasses.field(repr=False)   # name -> (R,) bootstrap estimates
    num_failed: int


def bootstrap_parametric(N, D, L, *, n_boot: int = 10_000, seed: int = 0,
                         delta: float = PARAMETRIC_DELTA, level: float = 0.95,
                         num_starts: int = 64, chunk: int = 2_000,
                         loss_samples=None) -> ParametricFit:
    """fit_parametric plus percentile CIs from batched refits: n_boot case resamples of the
    points, or, given loss_samples (R, n) (run-level resamples of L, see runboot), one refit per
    row of resampled losses on the same (N, D)."""
    n_n, d_n, y_n, n0, d0 = _prepare(N, D, L)
    theta0 = _fit_theta(n_n, d_n, y_n, delta, num_starts)
    if loss_samples is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            y_Rxn = np.log(np.asarray(loss_samples, np.float64))
        counts = np.isfinite(y_Rxn).astype(np.float64)
        y_Rxn = np.where(counts > 0, y_Rxn, 0.0)
        n_boot = y_Rxn.shape[0]
    else:
        y_Rxn, counts = None, bootstrap_counts(y_n.size, n_boot, seed)
    thetas = []
    for start in range(0, n_boot, chunk):
        w = counts[start:start + chunk]
        y = y_n if y_Rxn is None else y_Rxn[start:start + chunk]
        th, _ = _lm_refine(np.repeat(theta0[None], len(w), 0), n_n, d_n, y, w, delta)
        thetas.append(th)
    th = np.concatenate(thetas)
    samples = {"A": np.exp(th[:, 0] + th[:, 3] * n0), "B": np.exp(th[:, 1] + th[:, 4] * d0),
               "E": np.exp(th[:, 2]), "alpha": th[:, 3], "beta": th[:, 4]}
    ok = np.all([np.isfinite(v) for v in samples.values()], axis=0)
    samples = {k: v[ok] for k, v in samples.items()}
    ci = {k: tuple(map(float, percentile_interval(v, level))) for k, v in samples.items()}
    return ParametricFit(_to_params(theta0, n0, d0), ci, samples, int((~ok).sum()))


def parametric_loss(params: dict, N, D):
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def parametric_optimum(params: dict, compute):
    """(N*, D*) minimising L(N, D) subject to N·D = C (C = M·D with N = M).

    N* = G·C^(β/(α+β)), D* = C/N*, G = (αA/(βB))^(1/(α+β)).
    """
    a, b = params["alpha"], params["beta"]
    g = (a * params["A"] / (b * params["B"])) ** (1.0 / (a + b))
    n_opt = g * np.asarray(compute, np.float64) ** (b / (a + b))
    return n_opt, compute / n_opt
