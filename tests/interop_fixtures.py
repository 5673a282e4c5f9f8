"""Shared setup of the interop tests (test_hf, test_trackers, test_harness): one tiny model
trained once for all three, starting from an imported checkpoint, with W&B offline and a
profiler trace. Registered in conftest.py, so it is built once per session, and only when one
of those tests runs."""

import os

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


@pytest.fixture(scope="session")
def interop_run(tmp_path_factory):
    """Random weights → run dir → export → import → 4 training steps (W&B offline, steps 2-3
    profiled) → restart → steps 5-6. Returns the directories involved."""
    import jax

    from dlmjax import config as config_lib
    from dlmjax import fs, rundir, train
    from dlmjax.hf import export_checkpoint, import_checkpoint, importer

    root = tmp_path_factory.mktemp("interop")
    seed_dir, source, workdir = (str(root / n) for n in ("seed_run", "seed_export", "run"))
    wandb_dir = str(root / "wandb")
    config = tiny_config()
    run = config_lib.derive(config, jax.device_count())
    importer.write_state(run, seed_dir, random_params(run.model, 0))
    fs.write_text_atomic(rundir.config_path(seed_dir), config.to_json())
    export_checkpoint(seed_dir, source)
    config.train.wandb_project, config.train.profile_steps = WANDB_PROJECT, PROFILE_STEPS
    import_checkpoint(source, workdir, config)
    with _Env(WANDB_MODE="offline", WANDB_DIR=wandb_dir, WANDB_SILENT="true"):
        for steps in (4, 6):
            config = rundir.load_config(workdir)
            config.train.steps = steps
            fs.write_text_atomic(rundir.config_path(workdir), config.to_json())
            train.train(config_lib.derive(config, jax.device_count()), workdir, progress=False)
    return {"seed_run": seed_dir, "source": source, "run": workdir, "wandb_dir": wandb_dir}
