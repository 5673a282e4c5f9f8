"""Trackers: W&B offline records the scalars of metrics.jsonl and a restart continues the same
W&B run (read back from W&B's own run files); the profiler trace is where TensorBoard looks."""

import glob
import json
import os
import struct

import jax
import pytest
from interop_fixtures import PROFILE_STEPS, WANDB_PROJECT, tiny_config
from wandb.proto import wandb_internal_pb2

from dlmjax import config as config_lib
from dlmjax import rundir, trackers
from dlmjax.config import ConfigError

WANDB_BLOCK = 32768  # .wandb files are LevelDB-style logs: 32 KiB blocks of framed records
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path):
    """The protobuf Records of a .wandb transaction log, in order.

    Layout: a 7-byte header (":W&B", magic, version), then records framed as (crc32 u32,
    length u16, type u8) + payload, split into FIRST/MIDDLE/LAST pieces across block ends; a
    block tail shorter than a frame header is zero padding.
    """
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    pos, payload = 7, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # padding up to the block end
            pos += left
            continue
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def _config(**train_keys):
    c = tiny_config()
    for key, value in train_keys.items():
        c.train[key] = value
    return c


def test_wandb_offline_records_metrics_jsonl_and_resumes_the_same_run(interop_run):
    """The shared run was preempted after step 5 and restarted to step 6, with W&B offline."""
    workdir, wandb_dir = interop_run["run"], interop_run["wandb_dir"]
    name = rundir.load_config(workdir).name
    run_id = json.load(open(os.path.join(workdir, trackers.WANDB_RUN_FILE)))["run_id"]
    files = sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb")))
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)
    logged = {}
    for path in files:  # in time order: the restart's records come last
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id
                assert (record.run.project, record.run.display_name) == (WANDB_PROJECT, name)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in record.history.item}
                logged[items["_step"]] = {k: v for k, v in items.items()
                                          if not k.startswith("_")}
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert sorted(logged) == [1, 2, 3, 4, 5, 6] and interop_run["preempted_at"] == 5
    for record in metrics:
        scalars = {k: v for k, v in record.items() if k != "step"}
        assert logged[record["step"]] == scalars
    assert "eval_elbo" in logged[2] and "eval_elbo" in logged[6]


def test_profiler_trace_is_in_the_tensorboard_profile_layout(interop_run):
    workdir = interop_run["run"]
    traces = glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*",
                                    "*.xplane.pb"))
    assert len(traces) == 1  # the restart started after the window and traced nothing
    steps = []
    for plane in jax.profiler.ProfileData.from_file(traces[0]).planes:
        for line in plane.lines:
            steps += [dict(e.stats)["step_num"] for e in line.events if e.name == "train"]
    assert PROFILE_STEPS == "2-3" and sorted(steps) == [2, 3]


def test_tracker_keys_are_validated_and_optional():
    run = config_lib.derive(_config(), 8)
    assert trackers.make_trackers(run.config, "/nonexistent") == []  # no project: no W&B
    assert trackers.profile_window("") is None and trackers.profile_window("7") == (7, 7)
    for bad in ("3-2", "0-1", "a", "1,2"):
        with pytest.raises(ConfigError, match="train.profile_steps"):
            config_lib.derive(_config(profile_steps=bad), 8)
    old = _config()
    del old.train["wandb_project"], old.train["profile_steps"]  # an older run's config.json
    config_lib.derive(old, 8)
