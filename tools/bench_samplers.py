"""`make bench-samplers`: every sampler on a quality-versus-speed frontier.

For a trained diffusion model (default: tiny_cpu trained briefly into runs/) and an independent
judge, the suite's autoregressive baseline trained on the same corpus, each method is run across a
range of steps / thresholds / bounds. Per setting: network evaluations (NFE, per sample), tokens per
second (load-dependent), the judge's NLL of the samples (nats/token, mean ± standard error over
samples) and the samples' unigram entropy (a low-entropy sampler can fake a low NLL). The first
row is the reference: the judge on held-out corpus rows. Writes frontier.csv, frontier.md and
frontier.png into --out.

  python tools/bench_samplers.py [--workdir=runs/x --judge_workdir=runs/y] [--small]
"""

import csv
import functools
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained diffusion run (default: train one).")
_JUDGE = flags.DEFINE_string("judge_workdir", None, "Autoregressive judge run (default: train).")
_OUT = flags.DEFINE_string("out", "runs/bench_samplers", "Where the table and plot go.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 400, "Steps of each model trained here.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 32, "Samples per setting.")
_SMALL = flags.DEFINE_bool("small", False, "A few settings only (a quick look).")

# (method, sweep keyword, values, fixed options); steps are per sample (no blocks). The
# confidence methods run greedy (their default) and tempered (temperature 1: a draw from x̂),
# since greedy decoding of a weak model collapses to repetitions. A weak model's x̂ is flat
# (~5 nats per position), so tempered thresholds and entropy bounds sit on that scale.
GREEDY, TEMPERED = {"num_steps": 128}, {"num_steps": 128, "temperature": 1.0}
GRID = [
    ("ancestral", "num_steps", (16, 32, 64, 128, 256), {}),
    ("adaptive", "num_steps", (16, 32, 64, 128), {}),
    ("adaptive", "num_steps", (16, 32, 64, 128), {"temperature": 1.0}),
    ("threshold", "confidence_threshold", (0.5, 0.9), GREEDY),
    ("threshold", "confidence_threshold", (0.02, 0.05, 0.1, 0.2, 0.4), TEMPERED),
    ("entropy_bound", "entropy_bound", (1.0, 8.0), GREEDY),
    ("entropy_bound", "entropy_bound", (16.0, 32.0, 64.0, 128.0), TEMPERED),
    ("remask", "num_steps", (32, 64, 128, 256), {"remask_schedule": "cap"}),
    ("remask", "num_steps", (64, 256), {"remask_schedule": "loop"}),
]
SMALL_GRID = [
    ("ancestral", "num_steps", (16, 128), {}),
    ("adaptive", "num_steps", (32,), {}),
    ("threshold", "confidence_threshold", (0.05, 0.2), TEMPERED),
    ("entropy_bound", "entropy_bound", (16.0, 64.0), TEMPERED),
    ("remask", "num_steps", (64,), {"remask_schedule": "cap"}),
]


def _train(workdir, steps, objective):
    """Train tiny_cpu into workdir (skipped when it already holds a checkpoint)."""
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    subprocess.run([sys.executable, "-m", "dlmjax.main", "--config=experiments/tiny_cpu.py",
                    f"--workdir={workdir}", f"--config.train.steps={steps}",
                    f"--config.objective={objective}", "--config.sample.num_samples=0"],
                   check=True, cwd=ROOT)


def _load(workdir, steps, objective):
    import jax

    from dlmjax import config as config_lib
    from dlmjax import evaluation
    from experiments import tiny_cpu

    config = tiny_cpu.get_config()
    config.train.steps = steps
    config.objective = objective
    run = config_lib.derive(config, num_devices=jax.device_count())
    params, _ = evaluation.restore_params(run, workdir)
    return run, params


def judge_nll(judge_params, judge_run, tokens_BxL):
    """Per-sample mean NLL (nats/token) of tokens[1:] under the causal judge."""
    import jax
    import jax.numpy as jnp

    from dlmjax import model as model_lib
    from dlmjax.config import MASK_ID

    @jax.jit
    def nll(params, tokens_BxL):
        logits_BxLxV = model_lib.apply(params, tokens_BxL, cfg=judge_run.model)
        logits_BxLxV = logits_BxLxV.at[..., MASK_ID].set(-jnp.inf)
        logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1], axis=-1)
        picked_BxL = jnp.take_along_axis(logp_BxLxV, tokens_BxL[:, 1:, None], -1)[..., 0]
        return -jnp.mean(picked_BxL, axis=-1)

    return np.asarray(nll(judge_params, tokens_BxL))


def _heldout_row(run, judge_run, judge_params, n):
    """The reference: the judge on n held-out corpus rows (no sampler, no network evaluation)."""
    from dlmjax import data

    batch = next(iter(data.make_eval_batches(run.config.data, seq_len=run.model.seq_len,
                                             batch_size=n, num_batches=1)))
    nll_B = judge_nll(judge_params, judge_run, batch["tokens"])
    return {"method": "held-out text", "setting": "-", "nfe": 0, "tokens_per_s": float("nan"),
            "judge_nll": float(nll_B.mean()), "judge_nll_se": float(nll_B.std(ddof=1) / np.sqrt(n)),
            "unigram_entropy": unigram_entropy(batch["tokens"])}


def unigram_entropy(tokens):
    counts = np.bincount(np.asarray(tokens).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main(argv):
    del argv
    import jax

    from dlmjax.config import MASK_ID
    from dlmjax.diffusion import sampling

    steps = _TRAIN_STEPS.value
    workdir = _WORKDIR.value or os.path.join(ROOT, "runs", f"bench_samplers_diffusion_{steps}")
    judge_dir = _JUDGE.value or os.path.join(ROOT, "runs", f"bench_samplers_judge_{steps}")
    _train(workdir, steps, "diffusion")
    _train(judge_dir, steps, "autoregressive")
    run, params = _load(workdir, steps, "diffusion")
    judge_run, judge_params = _load(judge_dir, steps, "autoregressive")
    logits_fn, _ = sampling.model_prefix_cache(params, run.model)
    n, length = _NUM_SAMPLES.value, run.model.seq_len
    base = dict(vocab_size=run.model.vocab_size, mask_id=MASK_ID, shift=run.shift,
                scale=run.config.noise.scale, logits_fn_accepts_mask=True, float64=False,
                return_num_evals=True)
    rows = [_heldout_row(run, judge_run, judge_params, n)]
    print(rows[0], flush=True)
    for method, knob, values, fixed in (SMALL_GRID if _SMALL.value else GRID):
        for value in values:
            options = {"num_steps": 128, **fixed, knob: value, "method": method}
            draw = functools.partial(sampling.sample, logits_fn=logits_fn, batch_size=n,
                                     seq_len=length, **base, **options)
            jax.block_until_ready(draw(jax.random.key(0)))  # compile
            start = time.perf_counter()
            tokens, num_evals = jax.block_until_ready(draw(jax.random.key(1)))
            seconds = time.perf_counter() - start
            nll_B = judge_nll(judge_params, judge_run, tokens)
            row = {"method": method, "setting": f"{knob}={value}" + "".join(
                       f" {k}={v}" for k, v in fixed.items() if k != knob),
                   "nfe": int(num_evals), "tokens_per_s": n * length / seconds,
                   "judge_nll": float(nll_B.mean()),
                   "judge_nll_se": float(nll_B.std(ddof=1) / np.sqrt(n)),
                   "unigram_entropy": unigram_entropy(tokens)}
            rows.append(row)
            print(row, flush=True)
    os.makedirs(_OUT.value, exist_ok=True)
    _write(rows, _OUT.value, workdir, judge_dir)


def _write(rows, out, workdir, judge_dir):
    with open(os.path.join(out, "frontier.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Model {workdir}, judge {judge_dir}.", "",
             "| method | setting | NFE | tokens/s | judge NLL | ± se | unigram H |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['setting']} | {r['nfe']} | {r['tokens_per_s']:.0f} | "
              f"{r['judge_nll']:.3f} | {r['judge_nll_se']:.3f} | {r['unigram_entropy']:.3f} |"
              for r in rows]
    with open(os.path.join(out, "frontier.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(r):
        return r["method"] + (" (T=1)" if "temperature=1.0" in r["setting"] else "")

    fig, (ax_nll, ax_h) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(series(r) for r in rows if r["nfe"]):
        mine = [r for r in rows if series(r) == name]
        nfe = [r["nfe"] for r in mine]
        ax_nll.errorbar(nfe, [r["judge_nll"] for r in mine],
                        yerr=[r["judge_nll_se"] for r in mine], marker="o", capsize=3,
                        label=name, linestyle="none")
        ax_h.plot(nfe, [r["unigram_entropy"] for r in mine], "o", label=name)
    for r in rows:
        if not r["nfe"]:    # the held-out reference: no network evaluations
            ax_nll.axhline(r["judge_nll"], color="k", linestyle="--", label=r["method"])
            ax_h.axhline(r["unigram_entropy"], color="k", linestyle="--", label=r["method"])
    for ax, label in ((ax_nll, "judge NLL (nats/token)"), (ax_h, "unigram entropy (nats)")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_nll.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "frontier.png"), dpi=120)


if __name__ == "__main__":
    app.run(main)
