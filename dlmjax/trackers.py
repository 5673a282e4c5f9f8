"""Optional trackers beside metrics.jsonl and TensorBoard: Weights & Biases and a profiler trace.

- W&B (`train.wandb_project` set; `pip install wandb`): every metrics record is logged with its
  step. The W&B run id is kept in workdir/wandb_run.json, so a restarted run continues the same
  W&B run. Local runs keep W&B's files in workdir/wandb unless WANDB_DIR says otherwise;
  WANDB_MODE=offline works as usual (`wandb sync` uploads later). A missing package or a failing
  login only logs a warning: training never stops for a tracker.
- `train.profile_steps` = "A-B" (or "A"): a jax.profiler trace of steps A…B (each step
  annotated) into workdir/tensorboard/plugins/profile/<time>/, where TensorBoard's profile
  plugin finds it. Traced on process 0; bucket workdirs get the files copied after the trace.

Trackers implement `write(record)` and `close()`; `MetricsWriter` in dlmjax.metrics_log calls them.
"""

import json
import os
import re
import secrets
import string
import tempfile
from typing import Protocol

import jax
from absl import logging

from dlmjax import fs

WANDB_RUN_FILE = "wandb_run.json"
PROFILE_DIR = "tensorboard"  # TensorBoard's log dir of the run; the plugin reads plugins/profile
_STEPS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class Tracker(Protocol):
    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


def profile_window(spec):
    """(first, last) steps of train.profile_steps ("" → None); ValueError naming the key."""
    if not spec:
        return None
    match = _STEPS.match(str(spec))
    first = int(match.group(1)) if match else 0
    last = int(match.group(2) or first) if match else 0
    if not match or not 1 <= first <= last:
        raise ValueError(f"train.profile_steps={spec!r}: expected 'A-B' or 'A' with "
                         f"1 <= A <= B (steps to trace), or '' for none")
    return first, last


def check_config(train_cfg):
    """Validates the tracker keys of `train` (absent keys of older run configs are fine)."""
    from dlmjax.config import ConfigError

    for key in ("wandb_project", "wandb_entity", "wandb_run_name", "profile_steps"):
        value = train_cfg.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"train.{key}: must be a string, got {value!r}")
    try:
        profile_window(train_cfg.get("profile_steps", ""))
    except ValueError as e:
        raise ConfigError(str(e)) from None


class WandbTracker:
    """Logs each metrics record to one W&B run that survives restarts of the training run."""

    def __init__(self, config, workdir):
        import wandb

        train_cfg = config.train
        path = fs.join(workdir, WANDB_RUN_FILE)
        if fs.isfile(path):
            run_id = json.loads(fs.read_text(path))["run_id"]
        else:  # recorded before init, so a crash right after still resumes this id
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits)
                             for _ in range(8))
            fs.write_text_atomic(path, json.dumps({"run_id": run_id}) + "\n")
        directory = None
        if not os.environ.get("WANDB_DIR") and not fs.is_remote(workdir):
            directory = fs.absolute(workdir)
        self.run = wandb.init(project=train_cfg.wandb_project,
                              entity=train_cfg.get("wandb_entity", "") or None,
                              name=train_cfg.get("wandb_run_name", "") or config.name,
                              id=run_id, resume="allow", dir=directory, config=config.to_dict(),
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        logging.info("W&B run %s (id %s, kept in %s)", self.run.name, run_id, path)

    def write(self, record):
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(scalars, step=int(record["step"]))

    def close(self):
        self.run.finish()


def make_trackers(config, workdir):
    """The trackers the config asks for, on process 0 ([] elsewhere or when none is set)."""
    if jax.process_index() != 0 or not config.train.get("wandb_project", ""):
        return []
    try:
        return [WandbTracker(config, workdir)]
    except ImportError:
        logging.warning("train.wandb_project is set but wandb is not installed "
                        "(pip install wandb); training continues without W&B")
    except Exception as e:  # a login or network failure must not stop the training run
        logging.warning("W&B disabled: %s: %s", type(e).__name__, e)
    return []


class StepProfiler:
    """A jax.profiler trace of train.profile_steps; call before_step(step, state) each step."""

    def __init__(self, spec, workdir):
        self.window = profile_window(spec) if jax.process_index() == 0 else None
        self.target = fs.join(workdir, PROFILE_DIR)
        self.local = (tempfile.mkdtemp(prefix="dlmjax_profile_") if fs.is_remote(workdir)
                      else self.target)
        self.tracing = self.done = False
        self.annotation = None

    def before_step(self, step, state):
        if self.window is None or self.done:
            return
        self._end_annotation()
        first, last = self.window
        if not self.tracing and first <= step <= last:
            jax.profiler.start_trace(self.local)
            self.tracing = True
        if self.tracing and step > last:
            jax.block_until_ready(state)  # the last traced step has run on the device
            self._stop()
            return
        if self.tracing:
            self.annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
            self.annotation.__enter__()

    def close(self):
        self._end_annotation()
        if self.tracing:
            self._stop()

    def _end_annotation(self):
        if self.annotation is not None:
            self.annotation.__exit__(None, None, None)
            self.annotation = None

    def _stop(self):
        jax.profiler.stop_trace()
        self.tracing, self.done = False, True
        if self.local != self.target:
            for path in fs.glob(os.path.join(self.local, "plugins", "profile", "*", "*")):
                relative = os.path.relpath(path, self.local)
                fs.copy(path, fs.join(self.target, *relative.split(os.sep)))
        logging.info("profiler trace of steps %s-%s in %s/plugins/profile", *self.window,
                     self.target)
