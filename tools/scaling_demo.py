"""`make scaling-demo`: a micro scaling study on CPU, end to end.

Plans 6 sizes × 3 FLOP budgets × masked and uniform noise (dlmjax.scaling.plan), trains one
run per (noise, size) long enough for every budget, then fits and writes the report
(iso-FLOP parabolas, compute-optimal frontier, tables) to --out. Interrupt it at any time:
finished runs are kept and an unfinished one resumes from its last checkpoint.

The task is a small Markov chain (V = 64, 4 successors per state) on 32-token sequences: every
size leaves its initial plateau within a few dozen steps, and the narrow models saturate well
above the chain's entropy (the diffusion ELBO asks for inference across masked gaps, which
needs width and depth), so each budget has an optimum inside the size range. A larger
chain (V = 256, branching 8) or S = 128 costs every run a ~400-step plateau that the larger
models cannot afford, and the smallest model wins at every CPU-sized budget.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_OUT = flags.DEFINE_string("out", "runs/scaling_demo", "Directory for the runs and the report.")
_SOURCE = flags.DEFINE_string("data_source", "synthetic_markov",
                              "data.source of every run (synthetic_markov has a known entropy).")

# At S = 32, M = 72·L·d² + 12·L·d·S spans 25k to 1.3M (1.7 decades; ×2 steps above 86k).
SIZES = ((1, 16), (1, 32), (2, 32), (4, 32), (2, 64), (4, 64))
BUDGETS = (2.5e11, 4.5e11, 8e11)
SEQ_LEN, VOCAB_SIZE, BATCH, LR = 32, 64, 64, 0.3
# The report reads C off EMA-smoothed curves centred on their records, which end ~25 records
# before the last step: the margin keeps max(BUDGETS) inside every curve.
MARGIN = 1.3
_BRANCHING = flags.DEFINE_integer("markov_branching", 4, "data.markov_branching (Markov source).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 10_000, "Bootstrap resamples of the fits.")


def point_config(point, source, markov_branching=4):
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
    c.optim.warmup_steps = 20
    # The loss-curve fit wants a few hundred logged points per run.
    c.train.log_every = max(1, point.steps // 300)
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


def main(argv):
    del argv
    import jax
    from tqdm import tqdm

    from dlmjax import config as config_lib
    from dlmjax import train
    from dlmjax.scaling import plan as plan_lib
    from dlmjax.scaling import report

    logging.set_verbosity(logging.WARNING)
    micro = plan_lib.plan_micro_study(BUDGETS, sizes=SIZES, seq_len=SEQ_LEN,
                                      vocab_size=VOCAB_SIZE, batch=BATCH, lr=LR,
                                      margin=MARGIN)
    runs_dir = os.path.join(_OUT.value, "runs")
    run_dirs = []
    total = sum(p.compute for p in micro.points)
    print(f"micro study: {len(micro.points)} runs, budgets "
          f"{', '.join(f'{c:.2g}' for c in micro.budgets)} FLOPs, predicted M* "
          f"{', '.join(f'{m:.2g}' for m in micro.predicted_m)}", flush=True)
    start = time.perf_counter()
    with tqdm(total=total, desc="study", unit="FLOP", unit_scale=True, position=0) as bar:
        for point in micro.points:
            run_dir = os.path.join(runs_dir, f"{point.noise}-{point.size}")
            run_dirs.append(run_dir)
            if not _finished(run_dir, point.steps):
                config = point_config(point, _SOURCE.value, _BRANCHING.value)
                run = config_lib.derive(config, jax.device_count())
                os.makedirs(run_dir, exist_ok=True)
                with open(os.path.join(run_dir, "config.json"), "w") as f:
                    f.write(config.to_json(indent=2))
                train.train(run, run_dir)
            bar.update(point.compute)
    print(f"trained in {(time.perf_counter() - start) / 60:.1f} min; fitting", flush=True)
    report.micro_study_report(run_dirs, _OUT.value, micro, n_boot=_BOOTSTRAP.value)
    print(f"report: {os.path.join(_OUT.value, 'report.md')}")


if __name__ == "__main__":
    app.run(main)
