"""Scaling toolkit: accounting, grid, laws, planning, fits (with bootstrap coverage), report."""

import csv
import importlib.util
import json
import math
import os
import time

import numpy as np
import pytest

from dlmjax.diffusion.schedule import NOISE_SHIFTS
from dlmjax.scaling import (
    curves,
    fit,
    flops,
    grid,
    hparams,
    isoflop,
    laws,
    plan,
    report,
    runs,
    synthetic,
)


def _load_tool(name):
    """tools/ holds scripts, not a package: import one by path."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "tools", name + ".py")
    spec = importlib.util.spec_from_file_location(f"scaling_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fit_scaling_laws = _load_tool("fit_scaling_laws")
make_grid = _load_tool("make_grid")

# Approach-3 truth used by several tests (N = M in FLOPs/token, D in tokens).
PARAMS = {"E": 1.8, "A": 1400.0, "alpha": 0.35, "B": 1000.0, "beta": 0.3}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --- accounting ----------------------------------------------------------------------------

def test_params_and_flops_match_the_design_numbers():
    expected_p = [25.2e6, 49.2e6, 85.1e6, 201.6e6, 566.7e6]        # docs/science.md
    for (num_layers, d_model), p in zip(grid.STUDY_SIZES, expected_p):
        assert abs(flops.non_embedding_params(num_layers, d_model) - p) < 0.05e6
    # 10B run: P = 8.666B, M = 5.583e10, C ≈ 1.0e22 at 182B tokens
    assert abs(flops.non_embedding_params(34, 4608) / 8.666e9 - 1) < 1e-3
    assert abs(flops.flops_per_token(34, 4608, 2048) / 5.583e10 - 1) < 1e-3
    assert abs(flops.training_flops(34, 4608, 2048, 182e9) / 1.0e22 - 1) < 0.02
    num_layers, d_model, seq, vocab = 3, 96, 128, 1000
    m = 72 * num_layers * d_model**2 + 12 * num_layers * d_model * seq
    p = num_layers * (12 * d_model**2 + 14 * d_model) + d_model
    assert flops.flops_per_token(num_layers, d_model, seq) == m
    assert flops.flops_per_token(num_layers, d_model, seq, "6p") == 6 * p
    assert flops.flops_per_token(num_layers, d_model, seq, include_embeddings=True,
                                 vocab_size=vocab) == m + 6 * d_model * vocab
    assert flops.flops_per_token(num_layers, d_model, seq, "6p", include_embeddings=True,
                                 vocab_size=vocab) == 6 * (p + 2 * vocab * d_model)
    assert flops.params(num_layers, d_model, include_embeddings=True,
                        vocab_size=vocab) == p + 2 * vocab * d_model
    config = {"model": {"num_layers": num_layers, "d_model": d_model, "seq_len": seq,
                        "vocab_size": vocab}, "train": {"batch_size": 4, "steps": 10}}
    acc = flops.config_accounting(config)
    assert (acc["params"], acc["flops_per_token"], acc["tokens"]) == (p, m, 4 * seq * 10)
    assert acc["compute"] == m * 4 * seq * 10
    with pytest.raises(ValueError, match="convention"):
        flops.flops_per_token(2, 64, 128, "kaplan")
    with pytest.raises(ValueError, match="model.d_model"):
        flops.config_accounting({"model": {"num_layers": 2}})


# --- laws ----------------------------------------------------------------------------------

def test_published_laws_reproduce_the_study_numbers():
    uniform = laws.compute_optimal(1e22, "uniform")
    assert abs(uniform["M"] / 5.55e10 - 1) < 0.005
    assert abs(uniform["D"] / 1.80e11 - 1) < 0.005
    for noise in ("masked", "uniform"):
        for c in (1e18, 1e22):
            opt = laws.compute_optimal(c, noise)
            assert abs(opt["M"] * opt["D"] / c - 1) < 1e-3          # C = M·D
    assert abs(laws.compute_optimal(1e22, "uniform")["L"] - 2.22) < 0.01
    # The η* law at the 10B run's batch (3072 × 2048 tokens) is about 1.8 (docs/science.md).
    assert abs(laws.optimal_lr(3072 * 2048) - 1.8) < 0.05
    assert laws.optimal_batch_tokens(1e10) == pytest.approx(10**-2.4 * 1e10**0.8225)
    assert laws.BATCH_LAW.inverse(laws.BATCH_LAW(3e9)) == pytest.approx(3e9)
    balanced = laws.compute_optimal_law("balanced")
    assert 0.5663 < balanced["M"].alpha < 0.5888
    assert set(laws.NOISE_TYPES) == set(NOISE_SHIFTS)
    with pytest.raises(ValueError, match="noise type"):
        laws.compute_optimal_law("gaussian")


# --- grid ----------------------------------------------------------------------------------

def test_study_grid_has_510_addressable_points():
    points = grid.study_grid()
    assert len(points) == 510
    assert {p.size for p in points} == {"L8-D512", "L10-D640", "L12-D768", "L16-D1024",
                                        "L20-D1536"}
    assert {p.noise for p in points} == set(laws.NOISE_TYPES)
    assert {p.batch for p in points} == {8, 16, 32, 64, 128, 256, 512}
    keys = [p.key for p in points]
    assert len(set(keys)) == 510
    for point in points:
        assert grid.parse_point(point.key) == point
        assert grid.is_study_point(point)
    for noise in laws.NOISE_TYPES:
        assert sum(p.noise == noise for p in points) == 102
    for (num_layers, d_model) in grid.STUDY_SIZES:
        for batch in grid.STUDY_BATCHES:
            lrs = grid.study_lrs(num_layers, d_model, batch)
            assert len(lrs) in (2, 3)
            assert min(lrs) <= laws.optimal_lr(batch * 2048) <= max(lrs)
    point = grid.parse_point("noise=uniform,size=L12-D768,batch=64,lr=0.3")
    assert point == grid.grid_point("uniform", "L12-D768", 64, 0.3)
    overrides = point.config_overrides()
    assert overrides["model.num_layers"] == 12 and overrides["optim.lr"] == 0.3
    assert overrides["train.steps"] * 64 * 2048 == point.train_tokens
    assert point.steps > 0 and point.train_tokens >= grid.study_run_tokens(12, 768, 64)
    off_grid = grid.grid_point("masked", (4, 256), 48, 0.123, tokens=10**9, seq_len=512,
                               in_study=False)
    assert grid.parse_point(off_grid.key) == off_grid
    with pytest.raises(ValueError, match="not a study grid point"):
        grid.grid_point("uniform", "L12-D768", 64, 0.25)
    for bad in ("noise=uniform,size=L12-D768,batch=64", "noise=x,size=L1-D64,batch=8,lr=1",
                "noise=masked,size=12x768,batch=8,lr=1", "noise=masked,size=L1-D64,bs=8,lr=1"):
        with pytest.raises(ValueError):
            grid.parse_point(bad)


# --- planning ------------------------------------------------------------------------------

def test_iso_flop_plan_and_micro_study():
    compute = 1e21
    iso = plan.plan_iso_flop(compute, "uniform")
    m_star = laws.compute_optimal_law("uniform")["M"](compute)
    m = [p.flops_per_token for p in iso.points]
    assert len(iso.points) == 5 and m == sorted(m) and m[0] < m_star < m[-1]
    for p in iso.points:
        assert abs(p.compute / compute - 1) < 0.02           # whole steps
        b_star = laws.optimal_batch_tokens(p.train_tokens) / 2048
        assert abs(math.log2(p.batch / b_star)) <= 0.5 + 1e-9
        assert p.lr == pytest.approx(laws.optimal_lr(p.batch * 2048), rel=5e-3)
        assert p.d_model % 64 == 0 and grid.parse_point(p.key) == p
    micro = plan.plan_micro_study()
    m_sizes = sorted({p.flops_per_token for p in micro.points})
    assert len(micro.budgets) == 3 and len(micro.points) == 6
    assert all(m_sizes[0] < m < m_sizes[-1] for m in micro.predicted_m)
    assert all(p.compute >= micro.budgets[-1] for p in micro.points)
    with pytest.raises(ValueError, match="outside"):
        plan.plan_micro_study(budgets=(1e9, 1e12, 1e13))


def test_make_grid_tool_writes_a_manifest(tmp_path):
    out = tmp_path / "grid.json"
    assert make_grid.main(["--study", "--format", "json", "--out", str(out)]) == 0
    manifest = json.loads(out.read_text())
    assert len(manifest["runs"]) == 510
    assert manifest["runs"][0]["overrides"]["noise.type"] == "masked"
    out_csv = tmp_path / "iso.csv"
    assert make_grid.main(["--budget", "1e20", "--noise", "masked", "--format", "csv",
                           "--out", str(out_csv)]) == 0
    rows = _read_csv(out_csv)
    assert len(rows) == 5 and all(abs(float(r["compute"]) / 1e20 - 1) < 0.02 for r in rows)


# --- power laws and Approach 2 ---------------------------------------------------------------

def test_power_law_is_exact_and_robust():
    x = np.logspace(18, 21, 9)
    assert fit.fit_power_law(x, 0.5 * x**0.45) == pytest.approx((0.5, 0.45), rel=1e-9)
    rng = np.random.default_rng(0)
    y = 0.5 * x**0.45 * np.exp(0.01 * rng.standard_normal(x.size))
    y[4] *= 3.0                                                   # one wild point
    a_huber, alpha_huber = fit.fit_power_law(x, y)
    slope_ols = np.polyfit(np.log(x), np.log(y), 1)[0]
    assert abs(alpha_huber - 0.45) < 0.01 < abs(slope_ols - 0.45) + 0.01
    with pytest.raises(ValueError, match="positive"):
        fit.fit_power_law([1.0, 2.0], [1.0, -1.0])


def test_bootstrap_power_law_with_10000_resamples():
    rng = np.random.default_rng(1)
    x = np.logspace(18, 21, 12)
    y = 56.79 * x**0.4337 * np.exp(0.03 * rng.standard_normal(x.size))
    start = time.perf_counter()
    law = fit.bootstrap_power_law(x, y, n_boot=10_000, seed=0)
    print(f"power-law bootstrap, 10,000 resamples: {time.perf_counter() - start:.2f} s")
    assert law.alpha_samples.size == 10_000
    assert law.alpha_ci[0] < 0.4337 < law.alpha_ci[1]
    assert law.alpha_ci[0] < law.alpha < law.alpha_ci[1]
    lo, hi = law.band(np.array([1e19]))
    assert lo[0] < law(1e19) < hi[0]


def test_isoflop_vertices_of_exact_parabolas():
    law = laws.COMPUTE_OPTIMAL_LAWS["masked"]
    rng = np.random.default_rng(2)
    c, d = synthetic.isoflop_design(np.logspace(18, 20, 5), law["D"], num_points=6, shift=0.7,
                                    rng=rng)
    loss = synthetic.parabola_losses(c, d, tokens_law=law["D"], loss_law=law["L"],
                                     curvature=0.08, sigma=0.0, rng=rng)
    v = isoflop.fit_vertices(c, d, loss)
    np.testing.assert_allclose(v.x_opt, law["D"](v.compute), rtol=1e-9)
    np.testing.assert_allclose(v.loss_opt, law["L"](v.compute), rtol=1e-9)
    assert v.interior.all()
    fitted = isoflop.approach2(c, d, loss, n_boot=200)
    assert fitted.x_law.alpha == pytest.approx(law["D"].alpha, abs=1e-9)
    m_law = isoflop.flops_law_from_tokens_law(fitted.x_law)
    assert m_law.alpha == pytest.approx(law["M"].alpha, abs=1e-3)   # published: 0.5663
    assert m_law.A * fitted.x_law.A == pytest.approx(1.0)            # M*·D* = C


def _approach2_trial(seed, n_boot):
    law = laws.COMPUTE_OPTIMAL_LAWS["uniform"]
    rng = np.random.default_rng(seed)
    # Designs are off-centre: each budget's 7 sizes are shifted by up to e^±1 from the optimum.
    c, d = synthetic.isoflop_design(np.logspace(18, 20, 8), law["D"], num_points=7, span=1.2,
                                    shift=1.0, rng=rng)
    loss = synthetic.parabola_losses(c, d, tokens_law=law["D"], loss_law=law["L"],
                                     curvature=0.08, sigma=0.01, rng=rng)
    fitted = isoflop.approach2(c, d, loss, n_boot=n_boot, seed=seed)
    in_d = fitted.x_law.alpha_ci[0] <= law["D"].alpha <= fitted.x_law.alpha_ci[1]
    in_l = fitted.loss_law.alpha_ci[0] <= law["L"].alpha <= fitted.loss_law.alpha_ci[1]
    return in_d, in_l


def test_approach2_confidence_intervals_cover_the_true_exponents():
    hits = np.array([_approach2_trial(seed, n_boot=1000) for seed in range(50)])
    coverage = hits.mean(0)
    print(f"approach 2 coverage over 50 trials: D* exponent {coverage[0]:.2f}, "
          f"L* exponent {coverage[1]:.2f}")
    assert np.all(coverage >= 0.9)


# --- Approach 3 ----------------------------------------------------------------------------

def _parametric_data(seed, sigma):
    rng = np.random.default_rng(seed)
    n_opt = lambda c: fit.parametric_optimum(PARAMS, c)[0]       # noqa: E731
    c, n = synthetic.isoflop_design(np.logspace(18, 20, 8), n_opt, num_points=7, span=1.5,
                                    shift=0.8, rng=rng)
    d = c / n
    return n, d, synthetic.parametric_losses(PARAMS, n, d, sigma=sigma, rng=rng)


def test_fit_parametric_recovers_exact_law():
    n, d, loss = _parametric_data(0, sigma=0.0)
    got = fit.fit_parametric(n, d, loss)
    assert set(got) == {"A", "B", "E", "alpha", "beta"}
    for key, value in PARAMS.items():
        assert got[key] == pytest.approx(value, rel=1e-4)
    n_opt, d_opt = fit.parametric_optimum(got, 1e19)
    assert n_opt * d_opt == pytest.approx(1e19)
    assert fit.parametric_loss(got, n_opt, d_opt) < fit.parametric_loss(got, 1.2 * n_opt,
                                                                         d_opt / 1.2)


def test_bootstrap_parametric_with_10000_resamples():
    n, d, loss = _parametric_data(3, sigma=0.01)
    start = time.perf_counter()
    par = fit.bootstrap_parametric(n, d, loss, n_boot=10_000, seed=0)
    print(f"parametric bootstrap, 10,000 resamples of {n.size} points: "
          f"{time.perf_counter() - start:.2f} s")
    assert par.samples["alpha"].size + par.num_failed == 10_000
    for key in ("alpha", "beta", "E"):
        assert par.ci[key][0] <= par.params[key] <= par.ci[key][1]


def test_approach3_confidence_intervals_cover_the_true_exponents():
    hits = []
    for seed in range(50):
        par = fit.bootstrap_parametric(*_parametric_data(seed, sigma=0.01), n_boot=400,
                                       seed=seed)
        hits.append([par.ci[k][0] <= PARAMS[k] <= par.ci[k][1] for k in ("alpha", "beta")])
    coverage = np.mean(hits, axis=0)
    print(f"approach 3 coverage over 50 trials: alpha {coverage[0]:.2f}, beta {coverage[1]:.2f}")
    assert np.all(coverage >= 0.9)


# --- loss curves and hyperparameter laws -----------------------------------------------------

def test_ema_and_loss_curve_fit():
    x = np.array([4.0, 2.0, 1.0, 3.0])
    gamma = 0.96
    expected, acc = [], 0.0
    for t, v in enumerate(x, 1):
        acc = gamma * acc + (1 - gamma) * v
        expected.append(acc / (1 - gamma**t))
    np.testing.assert_allclose(curves.ema(x, gamma), expected, rtol=1e-12)
    np.testing.assert_array_equal(curves.ema(x, 0.0), x)
    steps = np.arange(100.0, 10001.0, 25.0)
    curve = curves.fit_loss_curve(steps, 2.4 + 35.0 * steps**-0.42, tokens_per_step=512.0,
                                  flops_per_step=1e9)
    assert (curve.C, curve.B, curve.b) == pytest.approx((2.4, 35.0, 0.42), rel=1e-6)
    assert curve.loss_at_flops(5000 * 1e9) == pytest.approx(2.4 + 35.0 * 5000.0**-0.42)
    target = 2.4 + 35.0 * 3000.0**-0.42
    assert curve.tokens_to_loss(target) == pytest.approx(3000 * 512.0, rel=1e-6)
    assert np.isnan(curve.loss_at_step(2e4)) and np.isnan(curve.tokens_to_loss(2.3))
    assert np.isfinite(curve.loss_at_step(2e4, extrapolate=True))


def test_hyperparameter_laws_from_an_exact_sweep():
    d0 = lambda loss: (400.0 / (loss - 2.5)) ** (1 / 0.3)         # noqa: E731
    cols = {"group": [], "batch": [], "lr": [], "target": [], "tokens": []}
    for size in grid.STUDY_SIZES[:2]:
        for batch in grid.STUDY_BATCHES:
            for lr in grid.study_lrs(*size, batch):
                for target in np.linspace(2.95, 3.3, 5):
                    cols["group"].append(grid.size_name(*size))
                    cols["batch"].append(batch * 2048.0)
                    cols["lr"].append(lr)
                    cols["target"].append(target)
                    # LR off its optimum costs nothing here, so the batch vertex is exact
                    cols["tokens"].append(float(synthetic.sweep_tokens(
                        target, batch * 2048.0, lr, optimal_tokens_fn=d0, batch_curvature=0.1,
                        lr_curvature=0.0)))
    rows = hparams.optimal_batches(**cols)
    assert len(rows) >= 6
    for row in rows:
        assert row["tokens_opt"] == pytest.approx(d0(row["target"]), rel=1e-6)
        assert row["batch_opt"] == pytest.approx(laws.optimal_batch_tokens(row["tokens_opt"]),
                                                 rel=1e-6)
    batch_law = hparams.fit_batch_law(rows, n_boot=500)
    assert (batch_law.A, batch_law.alpha) == pytest.approx((10**-2.4, 0.8225), rel=1e-5)
    cols["tokens"] = [float(synthetic.sweep_tokens(t, b, lr, optimal_tokens_fn=d0,
                                                   batch_curvature=0.1, lr_curvature=0.5))
                      for t, b, lr in zip(cols["target"], cols["batch"], cols["lr"])]
    lr_rows = hparams.optimal_lrs(**cols)
    for row in lr_rows:
        assert row["lr_opt"] == pytest.approx(laws.optimal_lr(row["batch"]), rel=1e-6)
    lr_law = hparams.fit_lr_law(lr_rows, n_boot=500)
    assert (lr_law.A, lr_law.alpha) == pytest.approx((10**-2.06, 0.3412), rel=1e-5)


# --- run directories and the report ----------------------------------------------------------

def _parametric_runs(root, noise_params):
    """One fake run per (noise, size), each long enough for 2e14 FLOPs, ELBO from the law."""
    dirs = []
    for noise, params in noise_params.items():
        for num_layers, d_model in ((2, 64), (3, 128), (4, 192), (6, 256), (8, 384)):
            probe = grid.GridPoint(noise, num_layers, d_model, 16, 0.1, None, 128, 256)
            steps = int(2e14 / (probe.flops_per_token * probe.tokens_per_step))
            point = grid.GridPoint(noise, num_layers, d_model, 16, 0.1,
                                   steps * probe.tokens_per_step, 128, 256)
            m = point.flops_per_token
            dirs.append(synthetic.write_fake_run(
                os.path.join(root, point.size + "_" + noise), point,
                lambda tokens, m=m, p=params: fit.parametric_loss(p, m, tokens),
                num_records=300))
    return dirs


def test_run_dir_errors_name_the_problem(tmp_path):
    point = grid.GridPoint("masked", 2, 64, 4, 0.1, 4096, 128, 256)
    config = runs.config_for_point(point)
    del config["optim"]["lr"]
    runs.write_run(str(tmp_path / "a"), config, [{"step": 1}])
    with pytest.raises(ValueError, match="optim.lr"):
        runs.load_run(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="metrics.jsonl"):
        os.makedirs(tmp_path / "b")
        (tmp_path / "b" / "config.json").write_text(json.dumps(runs.config_for_point(point)))
        runs.load_run(str(tmp_path / "b"))


def test_fit_scaling_laws_on_fake_runs_writes_the_right_numbers(tmp_path):
    other = {"E": 1.9, "A": 2000.0, "alpha": 0.36, "B": 1500.0, "beta": 0.3}
    truth = {"masked": PARAMS, "uniform": other}
    _parametric_runs(str(tmp_path / "runs"), truth)
    out = tmp_path / "report"
    # EMA off: the fake curves are exact, so every number below has a closed form. Noise-free
    # runs give the run-level bootstrap nothing to resample; the parabolas' residuals (their
    # misfit to the law's iso-FLOP curves) are what the intervals below must cover.
    assert fit_scaling_laws.main([str(tmp_path / "runs"), "--out", str(out), "--n_boot", "300",
                                  "--ema_gamma", "0", "--scheme", "residuals"]) == 0
    for name in ("runs.csv", "isoflop_points.csv", "vertices.csv", "compute_optimal_laws.csv",
                 "parametric_fit.csv", "report.md", "isoflop_masked.png", "isoflop_uniform.png",
                 "frontier.png"):
        assert (out / name).stat().st_size > 0, name

    for row in _read_csv(out / "runs.csv"):
        num_layers, d_model = grid.parse_size(row["size"])
        assert int(row["params"]) == flops.non_embedding_params(num_layers, d_model)
        assert float(row["flops_per_token"]) == flops.flops_per_token(num_layers, d_model, 128)
    points = _read_csv(out / "isoflop_points.csv")
    for row in points:
        m, c = float(row["flops_per_token"]), float(row["compute"])
        expected = fit.parametric_loss(truth[row["noise"]], m, c / m)
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-6)
    for row in _read_csv(out / "vertices.csv"):      # reference: numpy polyfit of the points
        sel = [p for p in points if p["noise"] == row["noise"] and p["compute"] == row["compute"]]
        u = np.log([float(p["tokens"]) for p in sel])
        c2, c1, c0 = np.polyfit(u, np.log([float(p["loss"]) for p in sel]), 2)
        assert float(row["D_opt"]) == pytest.approx(math.exp(-c1 / (2 * c2)), rel=1e-6)
        assert float(row["M_opt"]) * float(row["D_opt"]) == pytest.approx(float(row["compute"]),
                                                                          rel=1e-6)
    for row in _read_csv(out / "parametric_fit.csv"):
        if row["param"] in PARAMS:
            assert float(row["value"]) == pytest.approx(truth[row["noise"]][row["param"]],
                                                        rel=1e-3)
    law_rows = {(r["noise"], r["quantity"]): r
                for r in _read_csv(out / "compute_optimal_laws.csv")}
    for noise, params in truth.items():
        m_row = law_rows[noise, "M"]
        assert float(m_row["alpha"]) + float(law_rows[noise, "D"]["alpha"]) == pytest.approx(1.0)
        # Parabolas only approximate the exact law's iso-FLOP curves (the designs here are
        # off-centre), but the reported CI holds the true optimum exponent β/(α+β).
        true_alpha_m = params["beta"] / (params["alpha"] + params["beta"])
        assert float(m_row["alpha_lo"]) <= true_alpha_m <= float(m_row["alpha_hi"])
    text = (out / "report.md").read_text()
    assert "Compute-optimal laws" in text and "Parametric fit" in text and "frontier.png" in text


def test_report_of_a_batch_lr_sweep_recovers_the_hyperparameter_laws(tmp_path):
    d0 = lambda loss: (400.0 / (loss - 2.5)) ** (1 / 0.3)         # noqa: E731
    losses = np.exp(np.linspace(np.log(2.52), np.log(6.0), 4000))
    dirs = []
    for size in grid.STUDY_SIZES[:2]:
        for batch in grid.STUDY_BATCHES:
            for lr in grid.study_lrs(*size, batch):
                point = grid.GridPoint("masked", *size, batch, lr, 4 * 10**9)
                needed = synthetic.sweep_tokens(losses, batch * 2048.0, lr, optimal_tokens_fn=d0,
                                                batch_curvature=0.08, lr_curvature=0.5)

                def curve(tokens, n=needed):
                    """The run's ELBO after D tokens: tokens-needed(loss) inverted."""
                    return np.exp(np.interp(np.log(tokens), np.log(n[::-1]),
                                            np.log(losses[::-1])))

                dirs.append(synthetic.write_fake_run(str(tmp_path / point.key), point, curve,
                                                     num_records=2000))
    result = report.build_report(dirs, str(tmp_path / "out"), n_boot=500)
    assert (tmp_path / "out" / "batch_law.png").exists()
    assert (tmp_path / "out" / "lr_law.png").exists()
    assert len(result["batch_vertices"]) >= 6 and len(result["lr_vertices"]) >= 20
    assert abs(result["fits"]["lr_law"].alpha - 0.3412) < 0.002
    assert abs(result["fits"]["batch_law"].alpha - 0.8225) < 0.05
    rows = {r["quantity"]: r for r in _read_csv(tmp_path / "out" / "hyperparameter_laws.csv")}
    assert float(rows["eta*(B tokens)"]["alpha"]) == pytest.approx(
        result["fits"]["lr_law"].alpha, rel=1e-6)


def test_micro_study_report_finds_vertices_inside_the_size_range(tmp_path):
    micro = plan.plan_micro_study()
    # α = β and A = B put the law's optimum at M* = √C, the plan's default prior (r = 1).
    law = {"E": 2.0, "A": 500.0, "alpha": 0.3, "B": 500.0, "beta": 0.3}
    dirs = [synthetic.write_fake_run(
        str(tmp_path / p.key), p,
        lambda tokens, m=p.flops_per_token: fit.parametric_loss(law, m, tokens),
        num_records=min(p.steps, 400)) for p in micro.points]
    result = report.micro_study_report(dirs, str(tmp_path / "out"), micro, n_boot=200)
    for noise in ("masked", "uniform"):
        vertices = [v for v in result["vertices"] if v["noise"] == noise]
        assert [v["compute"] for v in vertices] == list(micro.budgets)
        for v, m_pred in zip(vertices, micro.predicted_m):
            assert v["interior"] and v["used"]
            assert abs(math.log(v["M_opt"] / m_pred)) < 0.3
    assert {r["scheme"] for r in result["laws"]} == {"run"}   # the run-level default
    assert (tmp_path / "out" / "frontier.png").exists()
