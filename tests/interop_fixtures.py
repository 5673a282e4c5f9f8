"""Shared setup of the interop tests (test_hf, test_trackers, test_harness): one tiny model
trained once for all three, starting from an imported checkpoint, with W&B offline, a profiler
trace and a preemption. Registered in conftest.py, so it is built once per session, and only
when one of those tests runs."""

import contextlib
import os
import signal

import numpy as np
import pytest

WANDB_PROJECT = "dlmjax-tests"
PROFILE_STEPS = "2-3"


def tiny_config(**model):
    """The micro model on KJV text (so exports carry a real tokenizer), sharded fsdp=2."""
    import micro_config

    c = micro_config.get_config()
    c.name = "interop_tiny"
    c.data.source, c.data.tokenizer, c.data.vocab_size = "kjv", "kjv", 0
    c.model.vocab_size = 4096
    c.mesh.data, c.mesh.fsdp = 4, 2
    c.train.steps = 6
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.eval_batches = 1
    c.train.checkpoint_every = 4
    c.eval.batches = 1
    c.eval.grid_points = 4
    c.sample.steps = 4
    c.sample.length = 16
    c.sample.block_size = 8
    c.sample.method = "adaptive"
    c.sample.temperature = 0.0
    c.sample.float64 = False  # adaptive + greedy + float64 trips a dtype bug in the sampler
    for key, value in model.items():
        c.model[key] = value
    return c


def random_params(model_cfg, seed):
    """Every parameter random (gains, biases, sinks and the head are zero at init, which would
    hide half of the forward pass); matrices ~ N(0, 1/fan_in). NumPy, so nothing compiles."""
    import jax

    from dlmjax import model as model_lib

    m = model_cfg
    fan_in = {"q_kernel": m.d_model, "k_kernel": m.d_model, "v_kernel": m.d_model,
              "o_kernel": m.heads * m.head_dim, "up_kernel": m.d_model, "down_kernel": m.mlp_dim,
              "unembedding": m.d_model, "embedding": 1}
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        std = fan_in[path[-1].key] ** -0.5 if path[-1].key in fan_in else 0.3
        return (rng.standard_normal(leaf.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, model_lib.abstract_params(m))


class _Env:
    def __init__(self, **values):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _compilation_cache(directory):
    """JAX's persistent compilation cache, on only inside: the restarted run then reloads the
    programs the first run compiled instead of compiling them again."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    options = {"jax_compilation_cache_dir": str(directory),
               "jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
    saved = {key: getattr(jax.config, key) for key in options}
    for key, value in options.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)
        compilation_cache.reset_cache()


class _PreemptAt:
    """A tracker that sends this process SIGTERM once `step` is logged: the trainer's own
    preemption handling then saves a checkpoint and stops, as on a preempted machine."""

    def __init__(self, step):
        self.step = step

    def write(self, record):
        if record["step"] == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def close(self):
        pass


@pytest.fixture(scope="session")
def interop_run(tmp_path_factory):
    """Random weights exported → imported → trained with W&B offline and steps 2-3 profiled,
    preempted (SIGTERM) after step 4 → restarted → step 6. Returns the directories involved."""
    import jax

    from dlmjax import config as config_lib
    from dlmjax import rundir, trackers, train
    from dlmjax.data import load_tokenizer
    from dlmjax.hf import import_checkpoint
    from dlmjax.hf.exporter import export_params

    root = tmp_path_factory.mktemp("interop")
    source, workdir, wandb_dir = (str(root / n) for n in ("seed_export", "run", "wandb"))
    config = tiny_config()
    config.data.cache_dir = str(root / "data_cache")  # KJV is tokenised once per session
    run = config_lib.derive(config, jax.device_count())
    export_params(random_params(run.model, 0), run, source,
                  tokenizer_text=load_tokenizer("kjv").to_str())
    config.train.wandb_project, config.train.profile_steps = WANDB_PROJECT, PROFILE_STEPS
    import_checkpoint(source, workdir, config)
    run = config_lib.derive(rundir.load_config(workdir), jax.device_count())
    real_trackers = trackers.make_trackers
    with _Env(WANDB_MODE="offline", WANDB_DIR=wandb_dir, WANDB_SILENT="true"), \
            _compilation_cache(root / "xla_cache"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(trackers, "make_trackers", lambda c, w: [*real_trackers(c, w),
                                                                _PreemptAt(4)])
        preempted = train.train(run, workdir, progress=False)
        patch.undo()
        finished = train.train(run, workdir, progress=False)
    assert int(preempted["step"]) < run.steps == int(finished["step"]) == 6
    return {"source": source, "run": workdir, "wandb_dir": wandb_dir,
            "preempted_at": int(preempted["step"])}
