"""Run directories as written by the trainer (the contract with dlmjax/train.py).

RUN_DIR/config.json   the full experiment config as nested JSON; read here: model.num_layers,
                      model.d_model, model.seq_len, model.vocab_size, noise.type,
                      train.batch_size (sequences per step), optim.lr, train.steps and, when
                      present, optim.warmup_steps.
RUN_DIR/metrics.jsonl one JSON object per logged step: "step", "tokens" (cumulative training
                      tokens), "flops" (cumulative non-embedding training FLOPs, deepseek
                      convention), "loss", "elbo" (training ELBO, nats/token, over the rows
                      with one λ and no prompt: a true ELBO; NaN in a step without such rows,
                      skipped by the fits) and, on eval steps, "eval_elbo"; other fields
                      (e.g. "elbo_all_rows", see docs/science.md) are ignored.
"""

import dataclasses
import json
import math
import os

import numpy as np

from dlmjax import fs
from dlmjax.scaling import flops, grid

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
METRIC_FIELDS = ("step", "tokens", "flops", "loss", "elbo", "eval_elbo")
_REQUIRED_KEYS = ("model.num_layers", "model.d_model", "model.seq_len", "model.vocab_size",
                  "noise.type", "train.batch_size", "optim.lr", "train.steps")


@dataclasses.dataclass(frozen=True)
class Run:
    path: str
    config: dict
    metrics: dict               # field -> float64 array over logged steps (NaN where absent)

    def get(self, dotted: str):
        return flops.config_value(self.config, dotted, os.path.join(self.path, CONFIG_FILE))

    @property
    def point(self) -> grid.GridPoint:
        """The run as a grid point (its tokens field set to the configured run length)."""
        batch, seq_len = int(self.get("train.batch_size")), int(self.get("model.seq_len"))
        return grid.GridPoint(
            self.get("noise.type"), int(self.get("model.num_layers")),
            int(self.get("model.d_model")), batch, float(self.get("optim.lr")),
            int(self.get("train.steps")) * batch * seq_len, seq_len,
            int(self.get("model.vocab_size")))

    @property
    def warmup_steps(self) -> int:
        optim = self.config.get("optim", {})
        return int(optim.get("warmup_steps", 0)) if isinstance(optim, dict) else 0


def load_run(run_dir: str) -> Run:
    config_path = os.path.join(run_dir, CONFIG_FILE)
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    for path in (config_path, metrics_path):
        if not fs.isfile(path):  # local or gs:// (a study root in a bucket)
            raise ValueError(f"run directory {run_dir!r} lacks {os.path.basename(path)}")
    with fs.open_file(config_path) as f:
        config = json.load(f)
    for key in _REQUIRED_KEYS:
        flops.config_value(config, key, config_path)
    columns = {name: [] for name in METRIC_FIELDS}
    with fs.open_file(metrics_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics_path}:{line_no}: not JSON ({err})") from err
            for name in METRIC_FIELDS:
                value = record.get(name)
                columns[name].append(math.nan if value is None else float(value))
    metrics = {name: np.asarray(values, np.float64) for name, values in columns.items()}
    for name in ("step", "tokens", "flops", "elbo"):
        if metrics[name].size == 0 or np.all(np.isnan(metrics[name])):
            raise ValueError(f"{metrics_path}: field {name!r} is missing")
    return Run(run_dir, config, metrics)


def config_for_point(point: grid.GridPoint, **extra) -> dict:
    """A minimal nested config with the keys the scaling tools read (fake runs, tests)."""
    config = {
        "model": {"num_layers": point.num_layers, "d_model": point.d_model,
                  "seq_len": point.seq_len, "vocab_size": point.vocab_size},
        "noise": {"type": point.noise},
        "train": {"batch_size": point.batch, "steps": point.steps},
        "optim": {"lr": point.lr},
    }
    for dotted, value in extra.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def write_run(run_dir: str, config: dict, records) -> str:
    """Write config.json and metrics.jsonl (records: iterable of dicts)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(run_dir, METRICS_FILE), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return run_dir


def find_run_dirs(paths) -> list[str]:
    """The given run directories; a directory without config.json is searched recursively,
    except a study root (tools/study.py), which stands for the finished runs `collect` listed."""
    from dlmjax.study import layout as study_layout

    found = []
    for path in paths:
        if os.path.isfile(os.path.join(path, CONFIG_FILE)):
            found.append(path)
            continue
        if fs.isfile(fs.join(path, study_layout.STUDY_FILE)):
            manifest = fs.join(path, study_layout.FINISHED_FILE)
            if not fs.isfile(manifest):
                raise ValueError(f"{path!r} is a study root without {study_layout.FINISHED_FILE}"
                                 f": run tools/study.py collect --root={path} first")
            found += [run["run_dir"] for run in json.loads(fs.read_text(manifest))["runs"]]
            continue
        if not os.path.isdir(path):
            raise ValueError(f"{path!r} is neither a run directory nor a folder of runs")
        nested = sorted(root for root, _, files in os.walk(path) if CONFIG_FILE in files)
        if not nested:
            raise ValueError(f"no {CONFIG_FILE} under {path!r}")
        found += nested
    return found
