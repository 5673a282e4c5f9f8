"""From finished run directories to the scaling report: CSV and markdown tables, PNG figures.

Pipeline (each step a function, `build_report` chains them):
1. summarize_run: EMA-smoothed ELBO (γ = 0.96) → L(S) = C + B·S^−b on the steps after warm-up.
2. isoflop_points: at each FLOP budget, each size's best loss over its runs (batch/LR envelope)
   read off the curves (no cooldown, so every budget a run passes counts).
3. Approach 2 per noise type: parabola vertices in D (giving D*, M* = C/D*, L*) and in P.
4. Approach 3 per noise type: L(M, D) = E + A/M^α + B/D^β on the points within a factor
   APPROACH3_WINDOW in M of their budget's vertex (approach3_points says why).
5. When the runs form a batch/LR sweep: optimal batch and LR vertices and the B*, η* laws.
"""

import dataclasses
import math
import os

import numpy as np
from absl import logging

from dlmjax.scaling import (
    curves,
    fit,
    hparams,
    isoflop,
    laws,
    plan,
    plots,
    report_files,
    runboot,
    runs,
)

SKIP_FRACTION = 0.1
# Approach 3 keeps the points whose M is within this factor of their budget's M* = C/D*.
APPROACH3_WINDOW = 4.0


@dataclasses.dataclass(frozen=True)
class RunSummary:
    path: str
    noise: str
    num_layers: int
    d_model: int
    batch: int                  # sequences
    lr: float
    seq_len: int
    params: int                 # non-embedding P
    flops_per_token: float      # M
    last_step: int
    tokens: float               # at the last logged step
    flops: float                # at the last logged step
    final_loss: float           # smoothed metric at the last logged step
    curve: curves.LossCurve
    # The fit's inputs, for the run-level bootstrap (dlmjax/scaling/runboot.py).
    steps: np.ndarray = dataclasses.field(default=None, repr=False)     # logged steps
    values: np.ndarray = dataclasses.field(default=None, repr=False)    # raw metric values
    keep: np.ndarray = dataclasses.field(default=None, repr=False)      # records in the fit
    ema_gamma: float = curves.EMA_GAMMA

    @property
    def size(self) -> str:
        return f"L{self.num_layers}-D{self.d_model}"

    @property
    def group(self) -> str:
        return f"{self.noise}/{self.size}"

    @property
    def batch_tokens(self) -> int:
        return self.batch * self.seq_len


def summarize_run(run: runs.Run, *, metric: str = "elbo", ema_gamma: float = curves.EMA_GAMMA,
                  skip_fraction: float = SKIP_FRACTION) -> RunSummary:
    """Fit the run's smoothed curve on the steps after max(warm-up, skip_fraction·last step)."""
    if metric not in runs.METRIC_FIELDS[3:]:
        raise ValueError(f"metric {metric!r} is not one of {runs.METRIC_FIELDS[3:]}")
    m = run.metrics
    ok = np.isfinite(m[metric]) & np.isfinite(m["step"])
    steps, values = m["step"][ok], m[metric][ok]
    if steps.size < 4:
        raise ValueError(f"{run.path}: fewer than 4 logged values of {metric!r}")
    smoothed = curves.ema(values, ema_gamma)
    # An EMA value averages the recent records: place it at their weighted mean step, which
    # removes the lag (γ/(1 − γ) records) that would otherwise inflate tokens-to-target.
    centred = curves.ema(steps, ema_gamma)
    last = steps.max()
    first = max(run.warmup_steps, skip_fraction * last)
    keep = centred > first
    if keep.sum() < 4:
        keep = np.arange(steps.size) >= steps.size - 4
    i_last = int(np.nanargmax(m["step"]))
    tokens_last, flops_last, step_last = (float(m[k][i_last]) for k in ("tokens", "flops", "step"))
    curve = curves.fit_loss_curve(centred[keep], smoothed[keep],
                                  tokens_per_step=tokens_last / step_last,
                                  flops_per_step=flops_last / step_last)
    point = run.point
    return RunSummary(run.path, point.noise, point.num_layers, point.d_model, point.batch,
                      point.lr, point.seq_len, point.params, point.flops_per_token,
                      int(step_last), tokens_last, flops_last, float(smoothed[-1]), curve,
                      steps, values, keep, ema_gamma)


def choose_budgets(summaries, *, num_budgets: int = 8, min_sizes: int = 3) -> np.ndarray:
    """num_budgets log-spaced budgets (2 significant digits) over the FLOP range that the curves
    of at least min_sizes model sizes pass through."""
    cover = {}
    for s in summaries:
        lo = s.curve.step_min * s.curve.flops_per_step
        hi = s.curve.step_max * s.curve.flops_per_step
        cover.setdefault(s.size, []).append((lo, hi))
    if not cover:
        return np.array([])
    lo = min(a for spans in cover.values() for a, _ in spans)
    hi = max(b for spans in cover.values() for _, b in spans)
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), 400))
    covered = np.array([sum(any(a <= c <= b for a, b in spans) for spans in cover.values())
                        for c in fine]) >= min_sizes
    if not covered.any():
        return np.array([])
    first, last = fine[covered][0], fine[covered][-1]
    budgets = np.exp(np.linspace(np.log(first), np.log(last), num_budgets + 2)[1:-1])
    return np.unique([float(f"{c:.2g}") for c in budgets])


def isoflop_points(summaries, budgets) -> list[dict]:
    """Per (budget, size): the lowest loss over that size's runs at C (and which run gave it)."""
    rows = []
    by_size = {}
    for s in summaries:
        by_size.setdefault(s.size, []).append(s)
    for c in budgets:
        for size, group in sorted(by_size.items(), key=lambda kv: kv[1][0].flops_per_token):
            losses = np.array([g.curve.loss_at_flops(c) for g in group], np.float64)
            if not np.any(np.isfinite(losses)):
                continue
            best = group[int(np.nanargmin(losses))]
            rows.append({"compute": float(c), "size": size, "num_layers": best.num_layers,
                         "d_model": best.d_model, "params": best.params,
                         "flops_per_token": best.flops_per_token,
                         "tokens": float(c) / best.flops_per_token,
                         "loss": float(np.nanmin(losses)), "batch": best.batch, "lr": best.lr,
                         "num_runs": int(np.isfinite(losses).sum())})
    return rows


def approach3_points(points, vertices, window: float = APPROACH3_WINDOW) -> np.ndarray:
    """Mask of the iso-FLOP points within a factor `window` in M of their budget's M* = C/D*
    (the parabola's vertex, or the budget's lowest loss where the parabola has none).

    Far larger models read at a small budget sit at the start of their runs (tens of steps, an
    excess still bounded by the unigram loss), where the loss falls faster than any power law
    of D; fitted with the rest, they pull E below the floor (docs/science.md, "The
    estimands"). window=inf keeps every point.
    """
    compute = np.array([p["compute"] for p in points])
    m = np.array([p["flops_per_token"] for p in points])
    loss = np.array([p["loss"] for p in points])
    keep = np.zeros(compute.size, bool)
    for c in np.unique(compute):
        here = compute == c
        k = np.nonzero(np.isclose(vertices.compute, c))[0]
        d_opt = vertices.x_opt[k[0]] if k.size and vertices.interior[k[0]] else np.nan
        m_opt = c / d_opt if np.isfinite(d_opt) else m[here][np.argmin(loss[here])]
        keep |= here & (m <= window * m_opt) & (m >= m_opt / window)
    return keep


def _law_row(noise, quantity, law: fit.PowerLawFit, num_budgets, scheme) -> dict:
    return {"noise": noise, "quantity": quantity, "A": law.A, "alpha": law.alpha,
            "A_lo": law.A_ci[0], "A_hi": law.A_ci[1], "alpha_lo": law.alpha_ci[0],
            "alpha_hi": law.alpha_ci[1], "num_points": num_budgets,
            "num_resamples": int(law.alpha_samples.size), "scheme": scheme,
            "delta": f"{law.delta_rule} ({law.delta:.3g})"}


def compute_optimal_fits(points, *, n_boot: int, seed: int, scheme: str, loss_samples=None,
                         delta=None) -> dict:
    """Approach 2 in D (→ D*, M*, L*) and in P (→ P*) for one noise type's iso-FLOP points
    (loss_samples: run-level resamples of their losses, for scheme "run")."""
    c = np.array([p["compute"] for p in points])
    loss = np.array([p["loss"] for p in points])
    tokens = np.array([p["tokens"] for p in points])
    params = np.array([p["params"] for p in points], np.float64)
    out = {}
    kwargs = dict(n_boot=n_boot, scheme=scheme, delta=delta,
                  loss_samples=loss_samples if scheme == "run" else None)
    in_d = isoflop.approach2(c, tokens, loss, seed=seed, **kwargs)
    out["D"] = in_d
    out["M_law"] = isoflop.flops_law_from_tokens_law(in_d.x_law)
    try:
        out["P"] = isoflop.approach2(c, params, loss, seed=seed + 7, **kwargs)
    except ValueError as err:
        logging.info("no P* law: %s", err)
    return out


def build_report(run_dirs, out_dir: str, *, budgets=None, n_boot: int = 10_000, seed: int = 0,
                 metric: str = "elbo", ema_gamma: float = curves.EMA_GAMMA,
                 skip_fraction: float = SKIP_FRACTION, scheme: str = "run",
                 num_targets: int = 8, make_plots: bool = True, delta=None,
                 approach3_window: float = APPROACH3_WINDOW) -> dict:
    """Read finished runs, fit everything, write tables and figures to out_dir; return them.

    budgets: FLOP budgets for the iso-FLOP analysis (default: choose_budgets per noise type).
    scheme: the bootstrap of the compute-optimal intervals, "run" (default: block-resample every
    run's curve, see runboot) or one of isoflop.BOOTSTRAP_SCHEMES' point schemes.
    delta: the power laws' Huber δ (None: robust rule; "paper": the study's; see fit).
    approach3_window: Approach 3's points, within this factor of each M* (inf: all).
    The returned dict holds the tables (lists of row dicts), the fits, notes on what was
    skipped and why, and the paths written.
    """
    if not run_dirs:
        raise ValueError("build_report needs at least one run directory")
    if not approach3_window >= 1.0:
        raise ValueError(f"approach3_window must be >= 1 (a factor around M*), got "
                         f"{approach3_window}")
    os.makedirs(out_dir, exist_ok=True)
    summaries = [summarize_run(runs.load_run(d), metric=metric, ema_gamma=ema_gamma,
                               skip_fraction=skip_fraction) for d in run_dirs]
    result = {"summaries": summaries, "notes": [], "files": [], "budgets": {},
              "isoflop_points": [], "vertices": [], "laws": [], "parametric": [],
              "batch_vertices": [], "lr_vertices": [], "lr_at_optimal_batch": [],
              "hparam_laws": [], "fits": {}}
    notes, files = result["notes"], result["files"]

    run_rows = [{"run": s.path, "noise": s.noise, "size": s.size, "params": s.params,
                 "flops_per_token": s.flops_per_token, "batch": s.batch, "lr": s.lr,
                 "last_step": s.last_step, "tokens": s.tokens, "flops": s.flops,
                 "final_loss": s.final_loss, "curve_C": s.curve.C, "curve_B": s.curve.B,
                 "curve_b": s.curve.b, "curve_rmse": s.curve.rmse} for s in summaries]
    files.append(report_files.write_csv(os.path.join(out_dir, "runs.csv"), run_rows))

    frontier = {}
    for noise in [n for n in laws.NOISE_TYPES if any(s.noise == n for s in summaries)]:
        group = [s for s in summaries if s.noise == noise]
        chosen = np.asarray(budgets, np.float64) if budgets is not None else choose_budgets(group)
        result["budgets"][noise] = chosen
        points = [dict(noise=noise, **p) for p in isoflop_points(group, chosen)]
        result["isoflop_points"] += points
        sizes_at = {}
        for p in points:
            sizes_at.setdefault(p["compute"], set()).add(p["size"])
        points = [p for p in points if len(sizes_at[p["compute"]]) >= 3]   # a parabola needs 3
        if len({p["compute"] for p in points}) < 2:
            notes.append(f"{noise}: fewer than 2 budgets reached by ≥ 3 sizes; no iso-FLOP fits")
            continue
        loss_samples = None
        if scheme == "run":
            loss_samples = runboot.isoflop_loss_samples(group, points, n_boot=n_boot, seed=seed)
        try:
            fits = compute_optimal_fits(points, n_boot=n_boot, seed=seed, scheme=scheme,
                                        loss_samples=loss_samples, delta=delta)
        except ValueError as err:
            notes.append(f"{noise}: approach 2 skipped ({err})")
            continue
        result["fits"][noise] = fits
        in_d = fits["D"]
        v = in_d.vertices
        for k in range(v.compute.size):
            result["vertices"].append({
                "noise": noise, "compute": float(v.compute[k]), "D_opt": float(v.x_opt[k]),
                "M_opt": float(v.compute[k] / v.x_opt[k]), "loss_opt": float(v.loss_opt[k]),
                "num_points": int(v.num_points[k]), "interior": bool(v.interior[k]),
                "used": bool(in_d.used[k])})
        laws_here = [("D", in_d.x_law), ("M", fits["M_law"]), ("L", in_d.loss_law)]
        if "P" in fits:
            laws_here.append(("P", fits["P"].x_law))
        for quantity, law in laws_here:
            result["laws"].append(_law_row(noise, quantity, law, int(in_d.used.sum()),
                                           in_d.scheme))
        used = in_d.used
        frontier[noise] = {"compute": v.compute[used], "D": v.x_opt[used],
                           "M": v.compute[used] / v.x_opt[used], "D_law": in_d.x_law,
                           "M_law": fits["M_law"]}
        if make_plots:
            c = np.array([p["compute"] for p in points])
            files.append(plots.plot_isoflop(
                os.path.join(out_dir, f"isoflop_{noise}.png"), c,
                [p["tokens"] for p in points], [p["loss"] for p in points], v,
                title=f"iso-FLOP curves, {noise} noise"))
        near = approach3_points(points, v, approach3_window)
        near_points = [p for p, k in zip(points, near) if k]
        try:
            par = fit.bootstrap_parametric([p["flops_per_token"] for p in near_points],
                                           [p["tokens"] for p in near_points],
                                           [p["loss"] for p in near_points], n_boot=n_boot,
                                           seed=seed, loss_samples=None if loss_samples is None
                                           else loss_samples[:, near])
        except ValueError as err:
            notes.append(f"{noise}: approach 3 skipped ({err})")
            continue
        result["fits"][noise]["parametric"] = par
        a, b = par.params["alpha"], par.params["beta"]
        window_info = {"points": int(near.sum()), "window": approach3_window}
        for name in ("E", "A", "alpha", "B", "beta"):
            result["parametric"].append({"noise": noise, "param": name,
                                         "value": par.params[name], "lo": par.ci[name][0],
                                         "hi": par.ci[name][1], **window_info})
        result["parametric"].append({"noise": noise, "param": "M*_exponent β/(α+β)",
                                     "value": b / (a + b), "lo": math.nan, "hi": math.nan,
                                     **window_info})

    _hyperparameter_laws(summaries, result, n_boot=n_boot, seed=seed, num_targets=num_targets)

    for name, key in (("isoflop_points.csv", "isoflop_points"), ("vertices.csv", "vertices"),
                      ("compute_optimal_laws.csv", "laws"), ("parametric_fit.csv", "parametric"),
                      ("batch_vertices.csv", "batch_vertices"), ("lr_vertices.csv", "lr_vertices"),
                      ("lr_at_optimal_batch.csv", "lr_at_optimal_batch"),
                      ("hyperparameter_laws.csv", "hparam_laws")):
        if result[key]:
            files.append(report_files.write_csv(os.path.join(out_dir, name), result[key]))
    if make_plots and frontier:
        files.append(plots.plot_frontier(os.path.join(out_dir, "frontier.png"), frontier,
                                         published=laws.COMPUTE_OPTIMAL_LAWS))
    if make_plots and "batch_law" in result["fits"]:
        rows, law = result["batch_vertices"], result["fits"]["batch_law"]
        files.append(plots.plot_power_law(
            os.path.join(out_dir, "batch_law.png"), [r["tokens_opt"] for r in rows],
            [r["batch_opt"] for r in rows], law, xlabel="tokens D* (to target loss)",
            ylabel="optimal batch B* (tokens)", title="optimal batch size",
            groups=[r["group"] for r in rows], published=laws.BATCH_LAW))
    if make_plots and "lr_law" in result["fits"]:
        rows, law = result["lr_at_optimal_batch"], result["fits"]["lr_law"]
        files.append(plots.plot_power_law(
            os.path.join(out_dir, "lr_law.png"), [r["batch_opt"] for r in rows],
            [r["lr_opt"] for r in rows], law, xlabel="batch B (tokens)",
            ylabel="optimal learning rate η*", title="optimal learning rate",
            groups=[r["group"] for r in rows], published=laws.LR_LAW))
    files.append(report_files.write_markdown(os.path.join(out_dir, "report.md"), result))
    return result


def _hyperparameter_laws(summaries, result, *, n_boot, seed, num_targets):
    groups = {}
    for s in summaries:
        groups.setdefault(s.group, []).append(s)
    sweep = {g: members for g, members in groups.items()
             if len({m.batch for m in members}) >= 3 or any(
                 sum(m.batch == b for m in members) >= 3 for b in {m.batch for m in members})}
    if not sweep:
        return
    cols = {"group": [], "batch": [], "lr": [], "target": [], "tokens": []}
    for g, members in sweep.items():
        starts = [m.curve.loss_at_step(m.curve.step_min) for m in members]
        ends = [m.curve.loss_at_step(m.curve.step_max) for m in members]
        for target in hparams.target_losses(starts, ends, num_targets):
            for m in members:
                cols["group"].append(g)
                cols["batch"].append(m.batch_tokens)
                cols["lr"].append(m.lr)
                cols["target"].append(target)
                cols["tokens"].append(float(m.curve.tokens_to_loss(target)))
    result["batch_vertices"] = hparams.optimal_batches(**cols)
    result["lr_vertices"] = hparams.optimal_lrs(**cols)
    result["lr_at_optimal_batch"] = hparams.lr_at_optimal_batch(**cols)
    # The study's η* law is the LR at the optimal batch; the pooled one is a diagnostic.
    for name, rows, fitter, quantity in (
            ("batch_law", result["batch_vertices"], hparams.fit_batch_law, "B*(D) tokens"),
            ("lr_law", result["lr_at_optimal_batch"],
             lambda rows, **kw: hparams.fit_lr_law_at_optimal_batch(**cols, **kw),
             "eta*(B tokens)"),
            ("lr_law_pooled", result["lr_vertices"], hparams.fit_lr_law,
             "eta*(B tokens) pooled (diagnostic)")):
        try:
            law = fitter(rows, n_boot=n_boot, seed=seed)
        except ValueError as err:
            result["notes"].append(f"{name} skipped ({err})")
            continue
        result["fits"][name] = law
        result["hparam_laws"].append(_law_row("all", quantity, law, len(rows),
                                              "targets (case resampling)"))


def micro_study_report(run_dirs, out_dir: str, micro_plan: plan.MicroPlan, **kwargs) -> dict:
    """The report of a finished plan_micro_study: its budgets, the rest as build_report."""
    return build_report(run_dirs, out_dir, budgets=micro_plan.budgets, **kwargs)
