"""The run's metrics log: what a record holds, and metrics.jsonl / TensorBoard that keep it.

A record's `loss`, `elbo` and `elbo_all_rows` are means over every step since the previous
record, not the last step's value: the laws are fitted on the ELBO curve, and a single step's
batch carries `log_every` times the noise. `elbo` is weighted by each step's ELBO tokens (steps
without ELBO rows add nothing; NaN if none had any) and `elbo_tokens` is their total; the other
keys (grad_norm, lr) are the last step's. The running sums travel with each checkpoint
(`LogInterval.state`), so a run resumed between two records logs what an uninterrupted one does.
"""

import json
import math

import jax
from absl import logging

from dlmjax import fs, tensorboard

MEAN_KEYS = ("loss", "elbo_all_rows")


def _no_sums() -> dict:
    return {"steps": 0, "elbo_weighted": 0.0, "elbo_tokens": 0.0, **{k: 0.0 for k in MEAN_KEYS}}


class LogInterval:
    """Float64 running sums of the per-step metrics since the last record.

    sums: what `state()` returned when the run's checkpoint was saved (None: a fresh interval).
    """

    def __init__(self, sums: dict | None = None):
        self.sums = dict(sums) if sums else _no_sums()
        self.last = {}

    def add(self, metrics: dict) -> None:
        """One step's host metrics (scalars)."""
        self.last = {k: float(v) for k, v in metrics.items()}
        self.sums["steps"] += 1
        for key in MEAN_KEYS:
            self.sums[key] += self.last[key]
        tokens = self.last["elbo_tokens"]
        if tokens > 0:
            self.sums["elbo_weighted"] += self.last["elbo"] * tokens
            self.sums["elbo_tokens"] += tokens

    def record(self) -> dict:
        """The record's metric fields; then the interval starts afresh."""
        s, out = self.sums, dict(self.last)
        for key in MEAN_KEYS:
            out[key] = s[key] / s["steps"]
        out["elbo"] = s["elbo_weighted"] / s["elbo_tokens"] if s["elbo_tokens"] else math.nan
        out["elbo_tokens"] = s["elbo_tokens"]
        self.sums = _no_sums()
        return out

    def state(self) -> dict:
        """JSON-able sums to save with a checkpoint (Python floats round-trip exactly)."""
        return dict(self.sums)


class MetricsWriter:
    """metrics.jsonl and TensorBoard, on process 0 only; local or in a bucket.

    Locally each record is one appended, flushed line (a torn last line, from a kill mid-write,
    is dropped on resume by lines_up_to); a bucket has no append, so there the whole file is
    rewritten (one atomic object write) at every record.
    """

    def __init__(self, workdir, resume_step, extra_trackers=()):
        self.active = jax.process_index() == 0
        self.trackers = list(extra_trackers)  # dlmjax.trackers (W&B), process 0 only
        self.path = fs.join(workdir, "metrics.jsonl")
        self.tb = None
        if not self.active:
            return
        self.lines = lines_up_to(self.path, resume_step)
        fs.write_text_atomic(self.path, "".join(self.lines))
        self.file = None if fs.is_remote(self.path) else open(self.path, "a")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        tensorboard.register_bucket_writer()
        self.tb = SummaryWriter(fs.join(workdir, "tensorboard"))

    def write(self, record):
        if not self.active:
            return
        line = json.dumps(record) + "\n"
        if self.file is None:
            self.lines.append(line)
            fs.write_text_atomic(self.path, "".join(self.lines))
        else:  # rewriting locally would cost O(records) per record over a long run
            self.file.write(line)
            self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, record["step"])
        self.tb.flush()
        for tracker in self.trackers:
            tracker.write(record)

    def close(self):
        if self.active:
            if self.file is not None:
                self.file.close()
            self.tb.close()
        for tracker in self.trackers:
            tracker.close()


def lines_up_to(path, step):
    """Metric lines up to `step`: a resumed run re-logs later ones, so none is duplicated.

    A torn last line (a writer killed mid-line by an older dlmjax, or a full disk) is dropped
    with a warning; a bad line before the end is an error naming the file and line.
    """
    if not fs.exists(path):
        return []
    lines = [line for line in fs.read_text(path).splitlines(keepends=True) if line.strip()]
    kept, later = [], 0
    for number, line in enumerate(lines, 1):
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError) as e:
            if number == len(lines):
                logging.warning("%s: dropping its torn last line %d (%s)", path, number, e)
                break
            raise ValueError(f"{path}: line {number} is not a metrics record ({e})") from None
        if record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            later = max(later, record_step)
    if later:
        logging.warning("%s went to step %d; resuming from step %d, the later lines are "
                        "logged again", path, later, step)
    return kept
