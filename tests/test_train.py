"""The trainer end to end: exact resume (kill -9, SIGTERM), non-finite stop, meshes, processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "micro_config.py")


def _command(workdir, *overrides):
    return [sys.executable, "-m", "dlmjax.main", f"--config={CONFIG}", f"--workdir={workdir}",
            *overrides]


def _env(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu")


def _run(workdir, *overrides, devices=1):
    result = subprocess.run(_command(workdir, *overrides), cwd=ROOT, env=_env(devices),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_params(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    state = ocp.StandardCheckpointer().restore(path)
    return jax.tree.leaves(state["params"]), int(state["step"])


def _wait_for_checkpoint(workdir, step, process, limit=300):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + limit
    while not os.path.isdir(path):
        assert process.poll() is None, "trainer exited before the checkpoint"
        assert time.time() < deadline, f"no checkpoint {step} after {limit} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    _run(workdir)
    return workdir


def _assert_same_run(reference_dir, workdir):
    ref_params, ref_step = _final_params(reference_dir, 40)
    params, step = _final_params(workdir, 40)
    assert ref_step == step == 40
    for a, b in zip(ref_params, params):
        np.testing.assert_array_equal(a, b)  # bitwise
    ref, got = _metrics(reference_dir), _metrics(workdir)
    assert [m["step"] for m in got] == [m["step"] for m in ref]
    for key in ("loss", "elbo", "grad_norm", "lr"):
        assert [m[key] for m in got] == [m[key] for m in ref], key
    assert [m.get("eval_elbo") for m in got] == [m.get("eval_elbo") for m in ref]


def test_resume_after_kill_9_is_exact(straight_run, tmp_path):
    workdir = str(tmp_path)
    process = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(workdir, 20, process)
    process.kill()  # SIGKILL: no chance to save anything else
    process.wait()
    _run(workdir)
    _assert_same_run(straight_run, workdir)


def test_sigterm_saves_and_resume_is_exact(straight_run, tmp_path):
    workdir = str(tmp_path)
    process = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(workdir, 10, process)
    time.sleep(np.random.default_rng().uniform(0.0, 1.0))  # a random later step
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit())
    logged = _metrics(workdir)[-1]["step"] if os.path.exists(
        os.path.join(workdir, "metrics.jsonl")) else 0
    assert saved[-1] >= max(10, logged - 5), (saved, logged)  # the step in flight was saved
    _run(workdir)
    _assert_same_run(straight_run, workdir)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path)
    _run(workdir, "--config.train.steps=10")
    result = subprocess.run(_command(workdir, "--config.train.steps=40", "--config.optim.lr=1e30",
                                     "--allow_config_change"),
                            cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "non-finite loss" in result.stderr and "last good checkpoint is step 10" in result.stderr
    assert "(verified by its checksums)" in result.stderr
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit())
    params, step = _final_params(workdir, saved[-1])
    assert all(np.all(np.isfinite(p)) for p in params)
    assert step == saved[-1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_log_the_same_losses_as_one(tmp_path):
    overrides = ("--config.train.steps=10", "--config.train.log_every=1",
                 "--config.train.eval_every=0", "--config.train.checkpoint_every=10")
    single = str(tmp_path / "single")
    _run(single, *overrides, devices=4)
    multi = str(tmp_path / "multi")
    port = _free_port()
    processes = [subprocess.Popen(
        _command(multi, *overrides, f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}"),
        cwd=ROOT, env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for p in processes:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
    ref, got = _metrics(single), _metrics(multi)
    assert [m["step"] for m in got] == list(range(1, 11))
    for key in ("loss", "elbo", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in got], [m[key] for m in ref], rtol=1e-5,
                                   err_msg=key)


def test_checkpoint_restores_onto_a_different_mesh(straight_run):
    """Saved from a 1-device run, restored sharded over fsdp=8: same values, really sharded."""
    import micro_config

    from dlmjax import config as config_lib
    from dlmjax import evaluation

    config = micro_config.get_config()
    config.mesh.data, config.mesh.fsdp = 1, 8
    run = config_lib.derive(config, num_devices=8)
    params, step = evaluation.restore_params(run, straight_run)
    saved, _ = _final_params(straight_run, 40)
    assert step == 40
    for restored, reference in zip(jax.tree.leaves(params), saved):
        np.testing.assert_array_equal(np.asarray(restored), reference)
    assert params["embedding"].addressable_shards[0].data.shape == (64, 64 // 8)
