"""The run directory (issue 15): one owner, config identity, verified checkpoints, interruption.

One lone run of the micro model (12 steps, a checkpoint every 4) is the reference; the other
runs train in this process with JAX's persistent compilation cache (so each reloads the same
programs), with a tracker hook that acts at a chosen step (SIGINT, a second trainer).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from interop_fixtures import _compilation_cache

from dlmjax import checkpoint, metrics_log, parallel, rundir, runlock, trackers, train
from dlmjax import config as config_lib
from dlmjax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
STEPS = 12
OVERRIDES = {"train.steps": STEPS, "train.log_every": 1, "train.eval_every": 0,
             "train.checkpoint_every": 4, "train.keep_checkpoints": 5, "train.eval_batches": 1,
             "eval.batches": 1, "eval.grid_points": 2, "sample.steps": 4, "sample.length": 16}


def _config(**changes):
    import micro_config

    from dlmjax.hf.importer import set_dotted

    c = micro_config.get_config()
    for key, value in {**OVERRIDES, **changes}.items():
        set_dotted(c, key, value)
    return c


def _cli_overrides(**changes):
    return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()]


class _At:
    """A tracker calling `action(step)` when `step` is logged (inside the training loop)."""

    def __init__(self, actions):
        self.actions = dict(actions)

    def write(self, record):
        if record["step"] in self.actions:
            self.actions.pop(record["step"])(record["step"])

    def close(self):
        pass


def _train(workdir, config=None, actions=()):
    config = config or _config()
    rundir.claim_config(workdir, config)
    run = config_lib.derive(config, jax.device_count())
    real = trackers.make_trackers
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trackers, "make_trackers", lambda c, w: [*real(c, w), _At(actions)])
        return train.train(run, workdir, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with _compilation_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


@pytest.fixture(scope="module")
def lone(cache, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lone"))
    _train(workdir)
    return workdir


def _copy(lone, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(lone, workdir)
    return workdir


def _params(workdir, step):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                            "state"))
    return jax.tree.leaves(state["params"]), int(state["step"])


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_same_as(reference, workdir, steps=(STEPS,)):
    for step in steps:
        (want, want_step), (got, got_step) = _params(reference, step), _params(workdir, step)
        assert want_step == got_step == step
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)  # bitwise
    ref, got = _metrics(reference), _metrics(workdir)
    assert [m["step"] for m in got] == [m["step"] for m in ref] == list(range(1, STEPS + 1))
    for key in ("loss", "elbo", "grad_norm", "lr", "eval_elbo"):
        assert [m.get(key) for m in got] == [m.get(key) for m in ref], key


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dlmjax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_second_trainer_exits_2_naming_the_holder(lone, tmp_path):
    workdir = str(tmp_path / "run")
    seen = {}

    def second_trainer(step):
        seen["result"] = _cli(f"--config={MICRO}", f"--workdir={workdir}", *_cli_overrides())

    _train(workdir, actions={5: second_trainer})
    result = seen["result"]
    assert result.returncode == 2, result.stderr[-2000:]
    holder = f"{socket.gethostname()}:{os.getpid()}"
    assert f"{workdir} is in use by {holder} (train" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_same_as(lone, workdir, steps=(4, 8, 12))  # untouched by the second one
    assert not os.path.exists(runlock.lock_path(workdir))  # released at the end


def test_lock_takeover_reentry_and_live_holder(tmp_path, caplog):
    workdir = str(tmp_path)
    path = runlock.lock_path(workdir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(path, "w") as f:
        json.dump({"hostname": socket.gethostname(), "pid": dead.pid, "started": 0}, f)
    runlock.acquire(workdir, "eval")
    assert f"taking over the lock of {socket.gethostname()}:{dead.pid}" in caplog.text
    runlock.acquire(workdir)  # re-entrant: main and train.train both take it
    runlock.release(workdir)
    assert json.load(open(path))["pid"] == os.getpid()
    runlock.release(workdir)
    assert not os.path.exists(path)
    with open(path, "w") as f:  # a live process (pytest's parent) holds it
        json.dump({"hostname": socket.gethostname(), "pid": os.getppid(), "started": 0}, f)
    with pytest.raises(runlock.RunLocked, match=f"in use by {socket.gethostname()}:"
                                                 f"{os.getppid()}"):
        runlock.acquire(workdir)
    with pytest.raises(runlock.RunLocked, match="eval would write into it"):
        runlock.check_unowned(workdir, "eval")  # eval and sample only check


def test_changed_config_is_refused_then_allowed_and_recorded(lone, tmp_path):
    workdir = _copy(lone, tmp_path)
    before = open(rundir.config_path(workdir), "rb").read()
    result = _cli(f"--config={MICRO}", f"--workdir={workdir}",
                  *_cli_overrides(**{"optim.lr": 0.5, "train.batch_size": 16,
                                     "noise.type": "masked", "train.steps": 14}))
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    for key in ("noise.type: 'balanced' -> 'masked'", "optim.lr: 0.3 -> 0.5",
                "train.batch_size: 8 -> 16"):
        assert key in message
    assert "train.steps" not in message  # allowed: extending a run
    assert open(rundir.config_path(workdir), "rb").read() == before
    assert not os.path.exists(os.path.join(workdir, rundir.CHANGES_FILE))

    changed = _config(**{"optim.lr": 0.5, "train.steps": 14})
    with pytest.raises(ConfigError, match=r"changed optim.lr: 0.3 -> 0.5\. Use"):
        rundir.claim_config(workdir, changed)
    rundir.claim_config(workdir, changed, allow_change=True)
    state = train.train(config_lib.derive(changed, jax.device_count()), workdir, progress=False)
    assert int(state["step"]) == 14
    (record,) = [json.loads(line) for line in open(os.path.join(workdir, rundir.CHANGES_FILE))]
    assert record["forced"] and record["changes"] == {
        "optim.lr": {"old": 0.3, "new": 0.5}, "train.steps": {"old": STEPS, "new": 14}}
    assert rundir.load_config(workdir).optim.lr == 0.5


def test_sigint_at_random_steps_resumes_bitwise(lone, tmp_path):
    """Several trials in one run directory: a SIGINT at up to 4 random steps, each followed by
    a resume; each attempt saves the step in flight, and the end equals the lone run."""
    workdir = str(tmp_path / "run")
    stops, last = [], 0
    for s in sorted(np.random.default_rng().choice(np.arange(1, STEPS - 1), 4, replace=False)):
        if s > last + 1:  # the step after the signal is saved; the next trial starts after it
            stops.append(int(s))
            last = s
    handler = signal.getsignal(signal.SIGINT)
    for stop in stops:
        state = _train(workdir, actions={stop: lambda s: os.kill(os.getpid(), signal.SIGINT)})
        assert int(state["step"]) == stop + 1  # the signal came while step `stop` was logged
        assert checkpoint.CHECKSUM_FILE in os.listdir(os.path.join(workdir, "checkpoints",
                                                                   str(stop + 1)))
    assert signal.getsignal(signal.SIGINT) is handler  # restored after each attempt
    _train(workdir)
    _assert_same_as(lone, workdir)


def _largest_file(directory):
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    return max(files, key=os.path.getsize)


def test_corrupt_latest_checkpoint_falls_back_and_ends_bitwise(lone, tmp_path, caplog):
    workdir = _copy(lone, tmp_path)
    path = _largest_file(os.path.join(workdir, "checkpoints", "12", "state"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    open(path, "wb").write(bytes(data))
    _train(workdir)
    warnings = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
    assert len(warnings) == 1 and "/checkpoints/12 is unusable:" in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert os.path.isdir(os.path.join(workdir, checkpoint.QUARANTINE_DIR, "12"))
    _assert_same_as(lone, workdir)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_latest_checkpoint_restores_the_previous(lone, tmp_path, caplog, damage):
    workdir = _copy(lone, tmp_path)
    if damage == "truncate":
        path = _largest_file(os.path.join(workdir, "checkpoints", "12", "state"))
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        shutil.rmtree(os.path.join(workdir, "checkpoints", "12", "state"))
    run = config_lib.derive(_config(), jax.device_count())
    mesh = parallel.make_mesh(**run.mesh_shape)
    shardings = train.Shardings(run, mesh, train.make_optimizer(run))
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"))
    state, step = checkpoint.restore_verified(
        manager, train.abstract_state(run, shardings, train.make_optimizer(run)))
    manager.close()
    assert step == 8
    (warning,) = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
    assert "/checkpoints/12 is unusable: unreadable (" in warning and "\n" not in warning
    for a, b in zip(jax.tree.leaves(state["params"]), _params(lone, 8)[0]):
        np.testing.assert_array_equal(np.asarray(a), b)  # the resume then proceeds as above


def test_steps_below_the_checkpoint_and_torn_metrics(lone, tmp_path, caplog):
    workdir = _copy(lone, tmp_path)
    with pytest.raises(ValueError, match=r"train.steps=8 is below the latest checkpoint "
                                         r"\(step 12"):
        train.train(config_lib.derive(_config(**{"train.steps": 8}), jax.device_count()),
                    workdir, progress=False)
    path = os.path.join(workdir, "metrics.jsonl")
    text = open(path).read()
    open(path, "w").write(text + '{"step": 13, "lo')  # torn by a kill mid-line
    assert len(metrics_log.lines_up_to(path, STEPS)) == STEPS
    assert f"{path}: dropping its torn last line {STEPS + 1}" in caplog.text
    assert len(metrics_log.lines_up_to(path, 8)) == 8  # e.g. checkpoints/12 deleted: resume from 8
    assert f"{path} went to step {STEPS}; resuming from step 8" in caplog.text
    open(path, "w").write('{"step": 1, "lo\n' + text)
    with pytest.raises(ValueError, match=f"{path}: line 1 is not a metrics record"):
        metrics_log.lines_up_to(path, STEPS)


def test_eval_and_sample_with_the_workdir_alone(lone):
    result = _cli("--mode=eval", f"--workdir={lone}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(open(os.path.join(lone, f"eval_step{STEPS}.json")).read())
    assert report["grid_points"] == 2 and report["noise_type"] == "balanced"
    assert report["trained_config_hash"] == rundir.config_hash(rundir.load_config(lone))
    result = _cli("--mode=sample", f"--workdir={lone}", "--num_samples=1",
                  "--config.sample.length=8")
    assert result.returncode == 0, result.stderr[-2000:]
    text = open(os.path.join(lone, f"samples_step{STEPS}.txt")).read()
    assert len(text.split("--- sample 0\n")[1].split()) == 8  # 8 token ids
    with pytest.raises(ConfigError, match="noise.type='masked' but the run was trained with "
                                          "'balanced'"):
        from dlmjax import evaluation

        evaluation.check_identity(config_lib.derive(_config(**{"noise.type": "masked"}), 8),
                                  lone)


def test_bucket_lock_is_create_if_absent(gcs):
    workdir = gcs.fresh_prefix()
    path = runlock.lock_path(workdir)
    holder = {"hostname": socket.gethostname(), "pid": os.getppid(), "started": 0}
    from dlmjax import fs

    fs.create_exclusive(path, json.dumps(holder).encode())
    with pytest.raises(FileExistsError):  # the precondition ifGenerationMatch=0
        fs.create_exclusive(path, b"{}")
    with pytest.raises(runlock.RunLocked, match=f"in use by {socket.gethostname()}:"):
        runlock.acquire(workdir)
    fs.remove(path)
    runlock.acquire(workdir)
    assert json.loads(fs.read_text(path))["pid"] == os.getpid()
    runlock.release(workdir)
    assert not fs.exists(path)


def _oracle(words):
    """The checksum in Python integers: [Σ w, Σ w·(2i+1)] mod 2³² over the flat words."""
    flat = [int(w) for w in np.asarray(words).ravel()]
    return [sum(flat) % 2**32, sum(w * (2 * i + 1) for i, w in enumerate(flat)) % 2**32]


def test_checksums_equal_an_oracle_on_sharded_leaves_and_see_one_bit():
    import ml_dtypes
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    h = rng.standard_normal((8, 5)).astype(ml_dtypes.bfloat16)
    state = {"w": jax.device_put(x, NamedSharding(mesh, PartitionSpec("x"))),
             "h": jax.device_put(h, NamedSharding(mesh, PartitionSpec("x"))),
             "step": np.int32(-7)}
    sums = checkpoint.checksums(state)
    assert sums["['w']"] == _oracle(x.view(np.uint32))
    assert sums["['h']"] == _oracle(h.view(np.uint16))
    assert sums["['step']"] == _oracle(np.int32(-7).view(np.uint32))
    flipped = x.copy()
    flipped.view(np.uint32)[9, 1] ^= 1 << 13
    assert checkpoint.checksums({"w": flipped})["['w']"] != sums["['w']"]
