"""Bad configurations and inputs fail early with a message that names the key or file.

Each case is (override, expected message fragment); the messages are printed by
`pytest -s` and quoted in the closing note of the trainer issue.
"""

import os
import subprocess
import sys

import pytest

from dlmjax import config as config_lib
from experiments import base, grid, masked_3b, tiny_cpu, uniform_3b, uniform_10b

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = [
    ({"noise.type": "hybrid"}, "noise.type: unknown noise type 'hybrid'"),
    ({"train.batch_size": 12}, "train.batch_size: the micro-batch of 12 sequences"),
    ({"model.num_heads": 7}, "model.num_heads"),
    ({"model.d_model": 100}, "model.d_model"),
    ({"train.microbatches": 5}, "train.microbatches: 5 does not divide train.batch_size=64"),
    ({"objective": "gpt"}, "objective: 'gpt' is not one of"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh: only one axis may be -1"),
    ({"mesh.data": 3}, "mesh"),
    ({"mesh.tensor": 2, "mesh.data": 4}, "mesh.tensor: tensor=2 needs mesh.strategy='fsdp_tp'"),
    ({"train.steps": 0, "train.tokens": 0}, "train.steps: no steps to run"),
    ({"optim.lr": -0.1}, "optim.lr: must be > 0, got -0.1"),
    ({"noise.per_token_fraction": 1.5}, "noise.per_token_fraction: must be in [0, 1]"),
    ({"noise.loss_aggregation": "avg"}, "noise.loss_aggregation: 'avg' is not one of"),
    ({"model.dtype": "float16"}, "model.dtype='float16'"),
    ({"model.remat": "some"}, "model.remat='some'"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every: must be >= 1"),
    ({"optim.b1": 1.0}, "optim.b1: must be in [0, 1), got 1.0"),
    ({"mesh.strategy": "zero3"}, "mesh.strategy: 'zero3' is not one of"),
    ({"model.vocab_size": 3}, "model.vocab_size: must exceed the mask id 3"),
    ({"optim.cooldown_fraction": 1.5}, "optim.cooldown_fraction: must be in [0, 1]"),
]


def _config(overrides):
    c = base.get_config()
    c.train.steps = 100
    with c.unlocked():
        for key, value in overrides.items():
            node = c
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
    return c


@pytest.mark.parametrize("overrides,fragment", BAD, ids=[next(iter(o)) for o, _ in BAD])
def test_bad_config_names_the_key(overrides, fragment):
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.derive(_config(overrides), num_devices=8)
    print(f"{overrides} -> {info.value}")
    assert fragment in str(info.value)


def test_experiment_files_derive_the_study_numbers():
    run = config_lib.derive(uniform_10b.get_config(), num_devices=64)
    assert run.model.heads == 36 and run.model.head_dim == 128
    assert run.total_tokens == 3072 * 2048 * 29_000
    assert abs(run.flops_per_token - 5.583e10) / 5.583e10 < 1e-3
    assert abs(run.flops_per_token * run.total_tokens - 1.0e22) / 1.0e22 < 0.02
    assert run.optimizer.b2 == 0.98 and run.optimizer.lr == pytest.approx(1.82)
    assert run.optimizer.eps == pytest.approx(1e-8 / (4608 * 34))
    for module, layers, steps in ((masked_3b, 18, 23_500), (uniform_3b, 19, 22_500)):
        run = config_lib.derive(module.get_config(), num_devices=64)
        assert (run.model.num_layers, run.model.d_model, run.steps) == (layers, 3072, steps)
    tiny = config_lib.derive(tiny_cpu.get_config(), num_devices=1)
    assert tiny.model.vocab_size == 4096 and tiny.config.data.source == "kjv"


def test_grid_points_are_addressable():
    c = grid.get_config("noise=uniform,size=L12-D768,batch=64,lr=0.3")
    run = config_lib.derive(c, num_devices=8)
    assert (run.model.num_layers, run.model.d_model, run.batch_size) == (12, 768, 64)
    assert c.noise.type == "uniform" and c.optim.lr == 0.3
    with pytest.raises(ValueError, match="size"):
        grid.get_config("noise=uniform,size=L13-D768,batch=64,lr=0.3")


def _cli(*args):
    result = subprocess.run([sys.executable, "-m", "dlmjax.main", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    print(f"{args} -> {result.stderr.strip().splitlines()[-1]}")
    return result


def test_cli_errors_name_the_key_or_file(tmp_path):
    micro = os.path.join(ROOT, "tests", "micro_config.py")
    result = _cli(f"--config={micro}", f"--workdir={tmp_path}", "--config.train.stesp=5")
    assert result.returncode == 2
    assert '--config.train.stesp: unknown config key; did you mean "steps"?' in result.stderr
    result = _cli(f"--config={micro}", f"--workdir={tmp_path}", "--config.train.steps=abc")
    assert result.returncode != 0 and "--config.train.steps=abc" in result.stderr
    result = _cli(f"--config={micro}", f"--workdir={tmp_path}", "--mode=eval")
    assert result.returncode != 0 and "no checkpoint in" in result.stderr
    result = _cli(f"--config={micro}", f"--workdir={tmp_path}", "--config.data.source=files",
                  "--config.data.vocab_size=0", "--config.model.vocab_size=4096",
                  "--config.data.paths=/nonexistent/corpus.txt")
    assert result.returncode != 0 and "/nonexistent/corpus.txt" in result.stderr
    result = _cli(f"--config={micro}", f"--workdir={tmp_path}", "--config.data.source=kjv",
                  "--config.data.vocab_size=0")
    assert result.returncode != 0 and "model.vocab_size=64 is smaller than" in result.stderr
