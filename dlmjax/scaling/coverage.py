"""Coverage of the compute-optimal intervals on seeded synthetic studies with a known answer.

A study: one run per model size, its logged ELBO following L(M, D) = E + A/M^α + B/D^β times
lognormal AR(1) noise over the records (so a run's iso-FLOP points share its curve's error),
read through the real pipeline (report.summarize_run → isoflop_points → isoflop.approach2).
The truth is the same pipeline on the noise-free study (the value the estimator converges to;
Approach 2's parabolas only approximate the law's iso-FLOP curves). tools/bootstrap_coverage.py
runs many studies; tests run a few.
"""

import numpy as np

from dlmjax.scaling import fit, grid, isoflop, report, runboot, runs, synthetic

LAW = {"E": 2.0, "A": 500.0, "alpha": 0.3, "B": 500.0, "beta": 0.3}     # M*(C) = √C
SIZES = ((1, 16), (1, 32), (2, 32), (4, 32), (2, 64), (4, 64))
BUDGETS = tuple(np.geomspace(2.2e10, 2.2e11, 5))   # inside every run's fitted window
SCHEMES = ("run", "residuals", "budgets", "both")


def study_runs(rng, *, sigma: float, phi: float, num_records: int = 200) -> list:
    """One in-memory runs.Run per size, each long enough for 1.3 × the largest budget."""
    out = []
    for num_layers, d_model in SIZES:
        probe = grid.GridPoint("masked", num_layers, d_model, 64, 0.3, None, 32, 64)
        steps = int(np.ceil(1.3 * BUDGETS[-1] / (probe.flops_per_token * probe.tokens_per_step)))
        point = grid.GridPoint("masked", num_layers, d_model, 64, 0.3,
                               steps * probe.tokens_per_step, 32, 64)
        m = point.flops_per_token
        records = synthetic.metrics_records(
            point, lambda d, m=m: fit.parametric_loss(LAW, m, d), num_records=num_records)
        noise = np.zeros(len(records))
        if sigma > 0:
            eps = rng.standard_normal(len(records))
            for t in range(len(records)):
                noise[t] = eps[t] * np.sqrt(1 - phi**2) + (phi * noise[t - 1] if t else 0.0)
        cols = {name: np.array([r.get(name, np.nan) for r in records], np.float64)
                for name in runs.METRIC_FIELDS}
        cols["elbo"] = cols["elbo"] * np.exp(sigma * noise)
        out.append(runs.Run(point.key, runs.config_for_point(point), cols))
    return out


def study_fits(rng, *, sigma, phi, n_boot, schemes=SCHEMES, seed=0, delta=None) -> dict:
    """scheme → Approach2Fit of one synthetic study (tokens as x: D* and L* laws)."""
    summaries = [report.summarize_run(r) for r in study_runs(rng, sigma=sigma, phi=phi)]
    points = report.isoflop_points(summaries, BUDGETS)
    c = np.array([p["compute"] for p in points])
    d = np.array([p["tokens"] for p in points])
    loss = np.array([p["loss"] for p in points])
    out = {}
    for scheme in schemes:
        samples = (runboot.isoflop_loss_samples(summaries, points, n_boot=n_boot, seed=seed)
                   if scheme == "run" else None)
        out[scheme] = isoflop.approach2(c, d, loss, n_boot=n_boot, seed=seed, scheme=scheme,
                                        loss_samples=samples, delta=delta)
    return out


def truth() -> tuple[float, float]:
    """(D* exponent, L* exponent) of the noise-free study."""
    fits = study_fits(np.random.default_rng(0), sigma=0.0, phi=0.0, n_boot=2,
                      schemes=("budgets",))["budgets"]
    return fits.x_law.alpha, fits.loss_law.alpha


def coverage(num_studies: int, *, sigma: float = 0.02, phi: float = 0.5, n_boot: int = 200,
             seed: int = 0, schemes=SCHEMES) -> dict:
    """scheme → (share of studies whose 95% interval holds the D* exponent, same for L*)."""
    true_d, true_l = truth()
    hits = {s: np.zeros(2) for s in schemes}
    for k in range(num_studies):
        fits = study_fits(np.random.default_rng(seed + k), sigma=sigma, phi=phi, n_boot=n_boot,
                          schemes=schemes, seed=seed + k)
        for s, f in fits.items():
            hits[s] += [f.x_law.alpha_ci[0] <= true_d <= f.x_law.alpha_ci[1],
                        f.loss_law.alpha_ci[0] <= true_l <= f.loss_law.alpha_ci[1]]
    return {s: tuple(h / num_studies) for s, h in hits.items()}
