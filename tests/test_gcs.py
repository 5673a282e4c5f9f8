"""gs:// end to end, against a local GCS emulator (tests/gcs_emulator.py, the `gcs` fixture).

A corpus uploaded to the bucket is prepared into parquet shards in the bucket; a tiny run trains
on them with its workdir in the bucket, is stopped by SIGTERM, resumes, and must end bitwise
equal (parameters and logged losses) to an uninterrupted local run on local shards of the same
corpus; then --mode=eval and --mode=sample work on the bucket's workdir.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from gcs_emulator import GcsEmulator

from dlmjax import data, fs
from dlmjax.data import kjv
from dlmjax.data import tokenizer as tok_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
STEPS = 24


@pytest.fixture(scope="module")
def corpus(gcs, tmp_path_factory):
    """The same corpus prepared locally and, from a copy in the bucket, into the bucket."""
    local = tmp_path_factory.mktemp("gcs_corpus")
    text = "\n".join(kjv.kjv_chapters("train")[:150]) + "\n"
    (local / "kjv150.txt").write_text(text)
    remote_text = f"{gcs.fresh_prefix('text')}/kjv150.txt"
    fs.write_text_atomic(remote_text, text)
    settings = dict(shard_mb=0.1, row_length=256, progress=False)
    local_manifest = data.prepare_corpus([str(local / "kjv150.txt")], str(local / "tok"), "kjv",
                                         **settings)
    remote_manifest = data.prepare_corpus([remote_text], gcs.fresh_prefix("tok"), "kjv",
                                          **settings)
    assert local_manifest["shards"] == remote_manifest["shards"]  # same bytes (sha256) and layout
    assert len(remote_manifest["shards"]) >= 3
    assert fs.listdir(remote_manifest["directory"]) == sorted(
        ["manifest.json", "tokenizer.json"] + [s["path"] for s in remote_manifest["shards"]])
    return local_manifest["directory"], remote_manifest["directory"]


def _command(workdir, shards, *extra):
    return [sys.executable, "-m", "dlmjax.main", f"--config={MICRO}", f"--workdir={workdir}",
            "--config.data.source=tokenized", f"--config.data.paths={shards}",
            "--config.data.vocab_size=0", "--config.model.vocab_size=4096",
            f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=8",
            "--config.train.log_every=2", "--config.train.eval_every=8", *extra]


def _start(command, compile_cache):
    # A shared compilation cache: the runs compile the same programs, and compiling dominates
    # the cost of such tiny runs.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=compile_cache)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    return stdout


def _metrics(workdir):
    GcsEmulator.forget_listings()
    return [json.loads(line) for line in fs.read_text(fs.join(workdir, "metrics.jsonl"))
            .splitlines()]


def _params(workdir, step):
    GcsEmulator.forget_listings()
    state = ocp.StandardCheckpointer().restore(fs.join(workdir, "checkpoints", str(step), "state"))
    return jax.tree.leaves(state["params"])


def _appeared(directory):
    GcsEmulator.forget_listings()
    return fs.isdir(directory)


def _steps_saved(workdir):
    GcsEmulator.forget_listings()
    return sorted(int(n) for n in fs.listdir(fs.join(workdir, "checkpoints")) if n.isdigit())


def test_bucket_run_resumes_bitwise_then_evals_and_samples(gcs, corpus, tmp_path):
    local_shards, remote_shards = corpus
    local_dir = str(tmp_path / "local")
    workdir = gcs.fresh_prefix("run")
    cache = str(tmp_path / "compile_cache")
    straight = _start(_command(local_dir, local_shards), cache)
    deadline = time.monotonic() + 600
    while not glob.glob(os.path.join(cache, "jit_train_step-*")):  # compiled once, then shared
        assert straight.poll() in (None, 0), straight.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the train step did not compile"
        time.sleep(0.2)
    interrupted = _start(_command(workdir, remote_shards), cache)
    while not _appeared(fs.join(workdir, "checkpoints", "8")):
        assert interrupted.poll() is None, interrupted.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint 8 in the bucket"
        time.sleep(0.2)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))  # a random later step
    interrupted.send_signal(signal.SIGTERM)
    _finish(interrupted)
    stopped_at = _steps_saved(workdir)[-1]
    assert 8 <= stopped_at < STEPS, stopped_at
    _finish(_start(_command(workdir, remote_shards), cache))  # resumes from the bucket
    _finish(straight)

    for a, b in zip(_params(local_dir, STEPS), _params(workdir, STEPS)):
        np.testing.assert_array_equal(a, b)  # bitwise
    ref, got = _metrics(local_dir), _metrics(workdir)
    assert [m["step"] for m in got] == [m["step"] for m in ref] == list(range(2, STEPS + 1, 2))
    for key in ("loss", "elbo", "grad_norm", "lr", "eval_elbo"):
        assert [m.get(key) for m in got] == [m.get(key) for m in ref], key
    # The tokenizer travelled with the run.
    assert fs.read_bytes(fs.join(workdir, "tokenizer.json")) == tok_lib.tokenizer_bytes("kjv")
    config = json.loads(fs.read_text(fs.join(workdir, "config.json")))
    assert config["data"]["tokenizer_sha256"] == tok_lib.tokenizer_sha256("kjv")
    assert fs.isdir(fs.join(workdir, "tensorboard"))

    GcsEmulator.forget_listings()
    evaluation = _start(_command(workdir, remote_shards, "--mode=eval", "--config.eval.batches=2",
                                 "--config.eval.grid_points=8"), cache)
    sampling = _start(_command(workdir, remote_shards, "--mode=sample", "--num_samples=2",
                               "--prompt=In the beginning God", "--config.sample.steps=8"),
                      cache)
    result = json.loads(_finish(evaluation))
    GcsEmulator.forget_listings()
    assert result["step"] == STEPS and np.isfinite(result["elbo_nats_per_token"])
    assert 3.5 < result["bytes_per_token"] < 5.0  # decoded with the run's KJV tokenizer
    saved = json.loads(fs.read_text(fs.join(workdir, f"eval_step{STEPS}.json")))
    assert saved == result
    printed = _finish(sampling)
    GcsEmulator.forget_listings()
    texts = fs.read_text(fs.join(workdir, f"samples_step{STEPS}.txt"))
    for i in range(2):
        assert f"--- sample {i}\nIn the beginning God" in printed
        assert f"--- sample {i}\nIn the beginning God" in texts


def test_text_files_globs_and_caches_in_a_bucket(gcs, tmp_path):
    """data.source=files on gs:// globs (.txt and .jsonl.gz), with data.cache_dir in the bucket:
    the same documents and tokens as from local copies; the cached stream is reused."""
    import gzip

    chapters = kjv.kjv_chapters("heldout")
    prefix = gcs.fresh_prefix("files")
    (tmp_path / "a.txt").write_text("\n".join(chapters[:30]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for chapter in chapters[30:]:
            f.write(json.dumps({"text": chapter}) + "\n")
    for name in ("a.txt", "b.jsonl.gz"):
        fs.write_bytes_atomic(f"{prefix}/{name}", (tmp_path / name).read_bytes())
    streams = []
    for paths, cache in (((f"{prefix}/*.txt", f"{prefix}/*.jsonl.gz"), f"{prefix}/cache"),
                         ((str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl.gz")), "")):
        cfg = data.default_data_config()
        cfg.update(source="files", paths=paths, cache_dir=cache, data_dir=str(tmp_path / "tfds"),
                   heldout_fraction=0.1)
        rows = data.packed_rows(cfg, split="train", seq_len=32)
        streams.append(rows.stream.read(0, len(rows.stream)))
    np.testing.assert_array_equal(streams[0], streams[1])
    GcsEmulator.forget_listings()
    cached = [n for n in fs.listdir(f"{prefix}/cache") if n.startswith("tokens-")]
    assert len(cached) == 1
    blob = np.frombuffer(fs.read_bytes(f"{prefix}/cache/{cached[0]}"), dtype="<u4")
    np.testing.assert_array_equal(blob, streams[0])
