"""`make scaling-demo`: a micro scaling study on CPU that measures exponents, end to end.

5 FLOP budgets spanning 1.5 decades × 8 sizes × masked and uniform noise on a synthetic source
with a known entropy H (V = 64, 32-token rows). The default source is a mixture of 64
Zipf-weighted topics (one per row, each a sparse Dirichlet(0.1) distribution over the ids; H
is a row's entropy per token) on one-layer models of 8 widths. --data_source=synthetic_markov
uses a sparse Markov chain (4 successors per state, rows starting as the successor of a hidden
state, so the floor is 0.51% above the entropy rate) on models of 1 to 4 layers; its losses stay
far above H at these budgets, so Approach 3 cannot find E there (docs/science.md, "Synthetic
sources with a known floor").
Each size trains once (no cooldown), as long as the largest budget whose prior optimum
M*(C) = √C lies within [M/5, 32·M], so every budget has sizes on both sides of its vertex and
no size trains longer than it is needed. The report (markdown, CSV, PNGs) gives Approach 2's
exponents with run-level bootstrap intervals, Approach 3's E next to the source's entropy H
(on the points within report.APPROACH3_WINDOW of each budget's M*, and on every point),
and whether uniform noise wants more parameters than masked at the same budget. Interrupt it
at any time: finished runs are kept and an unfinished one resumes from its last checkpoint.
Each run's wall time goes to RUN_DIR/wall_s.txt (and the report), so the cost of larger
studies extrapolates.
"""

import json
import math
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_OUT = flags.DEFINE_string("out", "runs/scaling_demo", "Directory for the runs and the report.")
_SOURCE = flags.DEFINE_string("data_source", "synthetic_topics",
                              "data.source of every run: synthetic_topics or synthetic_markov.")

# At S = 32, M = 72·L·d² + 12·L·d·S spans 7.7k to 2.8M (2.6 decades).
SIZES = ((1, 8), (1, 16), (1, 32), (2, 32), (4, 32), (2, 64), (4, 64), (4, 96))
# On the topic mixture depth costs tokens and buys nothing at these budgets: one layer, 8 widths
# (M from 7.7k to 700k).
TOPIC_SIZES = tuple((1, d) for d in (8, 12, 16, 24, 32, 48, 64, 96))
BUDGETS = (4e10, 9.6e10, 2.3e11, 5.5e11, 1.3e12)      # 1.5 decades
SEQ_LEN, VOCAB_SIZE, BATCH, LR = 32, 64, 64, 0.3
NOISE_TYPES = ("masked", "uniform")
# A size serves the budgets whose prior M* lies in [M/NEAR, M·FAR]: wide below, since the
# optimum of small budgets may sit well under √C.
NEAR, FAR = 5.0, 32.0
# The report reads C off EMA-smoothed curves centred on their records, which end ~25 records
# before the last step: the margin keeps each run's largest budget inside its curve.
MARGIN = 1.3
# A size's budgets span up to ~1.4 decades of its own run; the curve fits start at 2% of it.
SKIP_FRACTION = 0.02
_BRANCHING = flags.DEFINE_integer("markov_branching", 4, "data.markov_branching (Markov source).")
_START = flags.DEFINE_string("markov_start", "successor", "data.markov_start (Markov source).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 2_000, "Bootstrap resamples of the fits.")


def plan_points(source="synthetic_topics"):
    """GridPoints, one per (noise, size) that serves at least one budget."""
    from dlmjax.scaling import flops, grid

    points = []
    for noise in NOISE_TYPES:
        for num_layers, d_model in (TOPIC_SIZES if source == "synthetic_topics" else SIZES):
            m = flops.flops_per_token(num_layers, d_model, SEQ_LEN)
            served = [c for c in BUDGETS if math.sqrt(c) / FAR <= m <= NEAR * math.sqrt(c)]
            if not served:
                continue
            steps = math.ceil(MARGIN * max(served) / (m * BATCH * SEQ_LEN))
            points.append(grid.GridPoint(noise, num_layers, d_model, BATCH, LR,
                                         steps * BATCH * SEQ_LEN, SEQ_LEN, VOCAB_SIZE))
    return points


def point_config(point, source, markov_branching=4, markov_start="stationary"):
    from experiments import base

    c = base.get_config()
    c.name = point.key
    for dotted, value in point.config_overrides().items():
        section, leaf = dotted.split(".")
        c[section][leaf] = value
    c.model.num_heads = max(1, point.d_model // 32)  # head_dim 32 at these widths
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.data.source = source
    c.data.vocab_size = point.vocab_size
    c.data.markov_branching = markov_branching
    c.data.markov_start = markov_start
    c.optim.warmup_steps = 20
    # The loss-curve fit wants a few hundred logged points per run.
    c.train.log_every = max(1, point.steps // 400)
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.train.checkpoint_every = max(100, point.steps // 4)
    c.train.keep_checkpoints = 1
    c.sample.num_samples = 0
    c.mesh.data = 1
    return c


def _finished(run_dir, steps):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        lines = f.read().splitlines()
    return bool(lines) and json.loads(lines[-1])["step"] >= steps


def _claim(run_dir, config):
    """The run directory's config.json (dlmjax.rundir): exit 2 if it holds a run of another
    config (e.g. an older demo's on another source), which would be mixed into the report."""
    from dlmjax import rundir
    from dlmjax.config import ConfigError

    os.makedirs(run_dir, exist_ok=True)
    try:
        rundir.claim_config(run_dir, config)
    except ConfigError as e:
        print(f"{e}\n(the demo: pass another --out)", file=sys.stderr)
        sys.exit(2)


def _wall_times(run_dirs):
    out = {}
    for d in run_dirs:
        path = os.path.join(d, "wall_s.txt")
        if os.path.exists(path):
            with open(path) as f:
                out[d] = float(f.read())
    return out


def _summary_markdown(result, points, run_dirs, entropy, n_boot):
    """The demo's own section: exponents, E vs H, uniform vs masked M*, per-run cost."""
    from dlmjax.scaling import fit

    lines = ["", "## Micro study summary", ""]
    h_rate, h_row = entropy["entropy_rate"], entropy["row_entropy_per_token"]
    if _SOURCE.value == "synthetic_markov":
        source = f"synthetic Markov chain (first state: {_START.value})"
    else:
        source = (f"{_SOURCE.value} (rows are independent, so H is a row's entropy per token; "
                  f"Monte Carlo standard error {entropy.get('monte_carlo_standard_error', 0):.1e})")
    lines.append(f"Source: {source}, entropy rate H = {h_rate:.4f} nats/token; entropy of a "
                 f"{SEQ_LEN}-token row per token {h_row:.4f} (the irreducible ELBO of "
                 f"independent rows). Intervals: run-level bootstrap, {n_boot} resamples, 95%.")
    lines += ["", "| noise | quantity | exponent | 95% interval | excludes 0 |",
              "|---|---|---|---|---|"]
    for row in result["laws"]:
        excl = not (row["alpha_lo"] <= 0 <= row["alpha_hi"])
        lines.append(f"| {row['noise']} | {row['quantity']}* | {row['alpha']:.4f} | "
                     f"[{row['alpha_lo']:.4f}, {row['alpha_hi']:.4f}] | {excl} |")
    lines += ["", "| noise | Approach 3 E | 95% interval | gap to row entropy | gap to H | "
              "points (window) | E on every point |", "|---|---|---|---|---|---|---|"]
    for row in result["parametric"]:
        if row["param"] == "E":
            every = [p for p in result["isoflop_points"] if p["noise"] == row["noise"]]
            e_all = fit.fit_parametric(*([p[k] for p in every]
                                         for k in ("flops_per_token", "tokens", "loss")))["E"]
            lines.append(f"| {row['noise']} | {row['value']:.4f} | [{row['lo']:.4f}, "
                         f"{row['hi']:.4f}] | {100 * (row['value'] / h_row - 1):+.2f}% | "
                         f"{100 * (row['value'] / h_rate - 1):+.2f}% | {row['points']} of "
                         f"{len(every)} (×{row['window']:g}) | {e_all:.4f} "
                         f"({100 * (e_all / h_rate - 1):+.2f}%) |")
    fits = result["fits"]
    if "masked" in fits and "uniform" in fits:
        lines += ["", "M* at each budget (Approach 2 laws in D; P(uniform > masked) over "
                  "independent resamples of the two laws):", "",
                  "| C | M* masked | M* uniform | ratio | P(uniform > masked) |",
                  "|---|---|---|---|---|"]
        mm, mu = fits["masked"]["M_law"], fits["uniform"]["M_law"]
        n = min(mm.A_samples.size, mu.A_samples.size)
        for c in BUDGETS:
            sm = mm.A_samples[:n] * c ** mm.alpha_samples[:n]
            su = mu.A_samples[:n] * c ** mu.alpha_samples[:n]
            lines.append(f"| {c:.2g} | {mm(c):.4g} | {mu(c):.4g} | {mu(c) / mm(c):.3f} | "
                         f"{np.mean(su > sm):.3f} |")
    walls = _wall_times(run_dirs)
    if walls:
        lines += ["", "Per-run cost (wall time on this machine, whatever its load):", "",
                  "| run | steps | FLOPs (non-embedding) | wall s | s per 1e12 FLOPs |",
                  "|---|---|---|---|---|"]
        for p, d in zip(points, run_dirs):
            if d in walls:
                f = p.compute
                lines.append(f"| {os.path.basename(d)} | {p.steps} | {f:.3g} | "
                             f"{walls[d]:.0f} | {walls[d] / f * 1e12:.0f} |")
        lines.append(f"\nTotal {sum(walls.values()) / 60:.1f} min of training.")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import jax
    from tqdm import tqdm

    from dlmjax import config as config_lib
    from dlmjax import data, train
    from dlmjax.scaling import report

    logging.set_verbosity(logging.WARNING)
    points = plan_points(_SOURCE.value)
    runs_dir = os.path.join(_OUT.value, "runs")
    run_dirs = []
    total = sum(p.compute for p in points)
    print(f"micro study: {len(points)} runs, budgets "
          f"{', '.join(f'{c:.2g}' for c in BUDGETS)} FLOPs, {total:.3g} FLOPs in all",
          flush=True)
    start = time.perf_counter()
    config = None
    with tqdm(total=total, desc="study", unit="FLOP", unit_scale=True, position=0) as bar:
        for point in points:
            run_dir = os.path.join(runs_dir, f"{point.noise}-{point.size}")
            run_dirs.append(run_dir)
            config = point_config(point, _SOURCE.value, _BRANCHING.value, _START.value)
            _claim(run_dir, config)
            if not _finished(run_dir, point.steps):
                run = config_lib.derive(config, jax.device_count())
                t0 = time.perf_counter()
                train.train(run, run_dir)
                # A resumed run adds its earlier wall time.
                previous = _wall_times([run_dir]).get(run_dir, 0.0)
                with open(os.path.join(run_dir, "wall_s.txt"), "w") as f:
                    f.write(f"{previous + time.perf_counter() - t0:.1f}")
                if not _finished(run_dir, point.steps):   # a signal stopped it after a save
                    print(f"\nstopped in {run_dir} (saved); run the same command to resume")
                    return
            bar.update(point.compute)
    print(f"trained in {(time.perf_counter() - start) / 60:.1f} min; fitting", flush=True)
    result = report.build_report(run_dirs, _OUT.value, budgets=BUDGETS, n_boot=_BOOTSTRAP.value,
                                 skip_fraction=SKIP_FRACTION)
    entropy = data.known_entropy(config.data, SEQ_LEN)
    with open(os.path.join(_OUT.value, "report.md"), "a") as f:
        f.write(_summary_markdown(result, points, run_dirs, entropy, _BOOTSTRAP.value))
    print(f"report: {os.path.join(_OUT.value, 'report.md')}")


if __name__ == "__main__":
    app.run(main)
