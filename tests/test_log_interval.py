"""A record's metrics are means over the steps since the previous record, resumable exactly."""

import math

import jax.numpy as jnp
import numpy as np

from dlmjax import checkpoint
from dlmjax.metrics_log import LogInterval


def _steps(n, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 3, n) * 512.0          # some steps have no ELBO rows
    return [{"loss": np.float32(rng.uniform(0.3, 0.6)), "elbo": np.float32(
        rng.uniform(2, 3) if t else np.nan), "elbo_tokens": np.float32(t),
             "elbo_all_rows": np.float32(rng.uniform(1, 2)), "grad_norm": np.float32(k),
             "lr": np.float32(0.3)} for k, t in enumerate(tokens)]


def test_record_is_the_token_weighted_mean_of_the_interval():
    steps = _steps(12)
    interval = LogInterval()
    for m in steps:
        interval.add(m)
    record = interval.record()
    tokens = np.array([float(m["elbo_tokens"]) for m in steps])
    elbo = np.array([float(m["elbo"]) for m in steps])
    has = tokens > 0
    assert record["elbo"] == np.sum(elbo[has] * tokens[has]) / tokens.sum()
    np.testing.assert_allclose(record["loss"], np.mean([float(m["loss"]) for m in steps]),
                               rtol=1e-15)
    assert record["elbo_tokens"] == tokens.sum()
    assert record["grad_norm"] == 11 and record["lr"] == np.float32(0.3)   # the last step's
    # The next interval starts afresh; one without ELBO rows logs NaN, not 0.
    interval.add({**steps[0], "elbo": np.nan, "elbo_tokens": 0.0})
    again = interval.record()
    assert math.isnan(again["elbo"]) and again["loss"] == float(steps[0]["loss"])


def test_an_interval_cut_by_a_checkpoint_resumes_bit_for_bit(tmp_path):
    """The sums travel inside the orbax checkpoint: once the step has committed they are there,
    even if the trainer is killed before it records anything else about the save."""
    steps = _steps(20, seed=1)
    straight = LogInterval()
    for m in steps:
        straight.add(m)
    first = LogInterval()
    for m in steps[:7]:
        first.add(m)
    manager = checkpoint.make_manager(str(tmp_path))
    assert checkpoint.save(manager, 7, {"w": jnp.arange(3.0)}, log_interval=first.state())
    manager.wait_until_finished()  # committed; `checkpoint.finish` never runs (a kill -9 here)
    reopened = checkpoint.make_manager(str(tmp_path))
    assert reopened.latest_step() == 7
    resumed = LogInterval(checkpoint.read_log_interval(reopened, 7))
    for m in steps[7:]:
        resumed.add(m)
    assert resumed.record() == straight.record()
    assert checkpoint.read_log_interval(reopened, 8) is None  # no such item: a fresh interval
