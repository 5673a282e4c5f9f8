"""The study runner on a real local Ray cluster (2 CPUs) inside a private network namespace.

One cluster serves the module. Study A (3 one-process points, at most 2 at once) is launched,
its launcher killed with SIGKILL mid-run and relaunched, and one trainer of the second launch
killed with SIGKILL mid-run; then everything is compared bitwise with the same points trained
directly with dlmjax.main. Study B holds a 2-process run (2 bundles of 1 CPU, 2 fake devices
each), compared with 1 process on 4 devices, and a run whose config is invalid.
"""

import concurrent.futures
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import psutil
import pytest

from dlmjax.scaling import runs
from dlmjax.study import attempts, layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("config.model.num_heads=2", "config.data.source=synthetic_markov",
        "config.data.vocab_size=64", "config.model.dtype=float32", "config.model.remat=none",
        "config.optim.warmup_steps=5", "config.train.eval_every=0", "config.train.eval_batches=1",
        "config.train.peak_flops_per_device=1e11", "config.sample.num_samples=0")
A_SET = TINY + ("config.train.log_every=4", "config.train.checkpoint_every=5")
B_SET = TINY + ("config.train.log_every=2", "config.train.checkpoint_every=4")
POINT = "noise=masked,size=L1-D32,batch=8,lr=0.3,seq=32,vocab=64"
# One shape and LR: the compiled step is shared through the cache. Three points are enough for
# 2 slots: the first launcher starts two, so one is left that it never started.
A_STEPS = (40, 44, 36)
A_KEYS = [f"{POINT},tokens={steps * 256}" for steps in A_STEPS]
B_KEY, B_BAD_KEY = f"{POINT},tokens={16 * 256}", f"{POINT},tokens={12 * 256}"

_HOLDER = r"""
import sys, ray
ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1])
print(ctx.address_info["address"], flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


def _load_cli():
    spec = importlib.util.spec_from_file_location("study_cli", os.path.join(ROOT, "tools",
                                                                            "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base_env(cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RAY_ADDRESS")}
    return dict(env, RAY_AUTH_MODE="disabled", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=cache_dir,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


class Cluster:
    """A local Ray cluster in its own network namespace; commands join it with nsenter."""

    def __init__(self, env):
        self.env = env
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths
        self.holder = subprocess.Popen(
            ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash",
             sys.executable, "-c", _HOLDER, self.temp_dir],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self._address = None

    @property
    def address(self):
        """host:port of the cluster (waits for it to come up the first time)."""
        if self._address is None:
            self._address = self.holder.stdout.readline().strip()
            assert self._address.startswith("127.0.0.1:"), self._address
        return self._address

    def command(self, *args):
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", sys.executable, *args]

    def study(self, *args, **kwargs):
        """tools/study.py in the cluster's namespace, waited for."""
        return subprocess.run(self.command("tools/study.py", *args), cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=600, **kwargs)

    def start_launcher(self, root, *flags):
        return subprocess.Popen(
            self.command("tools/study.py", "launch", f"--root={root}", "--engine=ray",
                         f"--address={self.address}", *flags),
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)

    def stop(self):
        self.holder.stdin.close()
        try:
            self.holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _direct(workdir, key, overrides, devices, env):
    """The same point trained directly: python -m dlmjax.main, no study runner involved."""
    command = [sys.executable, "-m", "dlmjax.main", f"--config=experiments/grid.py:{key}",
               f"--workdir={workdir}", *[f"--{o}" for o in overrides]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count="
                                                    f"{devices}"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _final_params(workdir, step):
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                            "state"))
    return jax.tree.leaves(state["params"])


def _checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
        directory) else []


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(predicate, what, process=None, timeout=300):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"launcher exited while waiting for {what}: "
                                 f"{process.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _trainer_mid_run(root, entries, names, attempt):
    """(name, process record) of a live trainer of `attempt` with a checkpoint, not finished."""
    for entry in entries:
        if entry["name"] not in names:
            continue
        for (k, _), record in attempts.process_records(root, entry["name"]).items():
            saved = _checkpoints(entry["workdir"])
            if (k == attempt and record.get("ended") is None and record.get("pid")
                    and saved and saved[-1] < entry["steps"] and _alive(record["pid"])):
                return entry["name"], record
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return _base_env(str(tmp_path_factory.mktemp("jax_cache")))


@pytest.fixture(scope="module")
def cluster(env):
    c = Cluster(env)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def direct_runs(tmp_path_factory, env):
    """Reference runs trained directly; the first compiles the step everything else reuses."""
    base = tmp_path_factory.mktemp("direct")
    first = _direct(str(base / "a0"), A_KEYS[0], A_SET, 1, env)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    rest = [pool.submit(_direct, str(base / f"a{i}"), key, A_SET, 1, env)
            for i, key in enumerate(A_KEYS) if i]
    single = pool.submit(_direct, str(base / "b4"), B_KEY,
                         B_SET + ("config.mesh.data=1", "config.mesh.fsdp=4"), 4, env)
    yield {"a": [first] + rest, "b": single}  # futures after the first
    pool.shutdown()


@pytest.fixture(scope="module")
def study_a(tmp_path_factory, env, cluster, direct_runs):
    """Plan, launch, kill the launcher, relaunch, kill a trainer, finish, relaunch again."""
    del direct_runs  # planned after the first reference run has filled the compile cache
    root = str(tmp_path_factory.mktemp("study_a"))
    assert _load_cli().main(["plan", f"--root={root}", f"--keys={';'.join(A_KEYS)}",
                             *[f"--set={o}" for o in A_SET]]) == 0
    entries = json.load(open(layout.study_file(root)))["runs"]
    names = {e["name"] for e in entries}
    out = {"root": root, "entries": entries}

    first = cluster.start_launcher(root)
    x, x_record = _wait_for(lambda: _trainer_mid_run(root, entries, names, 1),
                            "a trainer with a checkpoint", first)
    first.kill()  # SIGKILL: the launcher gets no chance to clean up
    first.wait()
    out["launcher_killed_at"] = time.time()
    out["x_trainer_gone"] = _wait_for(lambda: not _alive(x_record["pid"]), "Ray to stop the "
                                      "trainer of the dead launcher", timeout=60)
    started = {e["name"] for e in entries if attempts.process_records(root, e["name"])}
    out["x"], out["started_by_first"] = x, started

    second = cluster.start_launcher(root)
    fresh = names - started
    y, y_record = _wait_for(lambda: _trainer_mid_run(root, entries, fresh, 1),
                            "a trainer of a run the first launcher never started", second)
    os.kill(y_record["pid"], signal.SIGKILL)
    out["y"], out["y_killed_at_checkpoint"] = y, _checkpoints(
        next(e["workdir"] for e in entries if e["name"] == y))[-1]
    second_out, _ = second.communicate(timeout=600)
    out["second"] = (second.returncode, second_out)

    out["status"] = json.loads(cluster.study("status", f"--root={root}", "--json").stdout)
    out["states_before_third"] = {n: open(layout.run_state_file(root, n)).read() for n in names}
    third = cluster.study("launch", f"--root={root}", "--engine=ray",
                          f"--address={cluster.address}")
    out["third"] = (third.returncode, third.stdout + third.stderr)
    out["states_after_third"] = {n: open(layout.run_state_file(root, n)).read() for n in names}
    return out


def test_study_runs_every_point_as_direct_training_would(study_a, direct_runs):
    rc, output = study_a["second"]
    assert rc == 0, output[-3000:]
    by_key = {r["key"]: r for r in study_a["status"]["runs"]}
    assert [by_key[k]["state"] for k in A_KEYS] == ["done"] * len(A_KEYS)
    assert [by_key[k]["step"] for k in A_KEYS] == [by_key[k]["steps"] for k in A_KEYS] == list(
        A_STEPS)
    references = direct_runs["a"][:1] + [f.result() for f in direct_runs["a"][1:]]
    for key, steps, reference in zip(A_KEYS, A_STEPS, references):
        workdir = by_key[key]["workdir"]
        ref, got = _metrics(reference), _metrics(workdir)
        logged = sorted({*range(4, steps + 1, 4), steps})
        assert [m["step"] for m in got] == logged  # nothing logged twice
        for field in ("loss", "elbo", "grad_norm", "lr", "tokens", "eval_elbo"):
            assert [m.get(field) for m in got] == [m.get(field) for m in ref], (key, field)
        for a, b in zip(_final_params(reference, steps), _final_params(workdir, steps)):
            np.testing.assert_array_equal(a, b)  # bitwise
        assert by_key[key]["elbo"] == ref[-1]["elbo"]


def test_at_most_two_trainers_ran_at_once(study_a):
    root, killed_at = study_a["root"], study_a["launcher_killed_at"]
    intervals = []
    for entry in study_a["entries"]:
        for record in attempts.process_records(root, entry["name"]).values():
            intervals.append((record["started"], record["ended"] or killed_at))
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = np.cumsum([delta for _, delta in events])
    assert running.max() == 2  # the cluster's 2 CPUs, both used


def test_killed_trainer_is_retried_and_resumes_from_its_checkpoint(study_a):
    root, y = study_a["root"], study_a["y"]
    by_name = {r["name"]: r for r in study_a["status"]["runs"]}
    assert by_name[y]["attempts"] == 2
    state = json.loads(study_a["states_after_third"][y])
    first, second = state["attempts"]
    assert first["outcome"] == "retryable" and "SIGKILL" in first["error"]
    assert second["outcome"] == "done"
    assert second["start_step"] >= study_a["y_killed_at_checkpoint"] >= 5
    # The second trainer's progress bar starts where the checkpoint left off.
    log = open(attempts.process_records(root, y)[(2, 0)]["log"]).read()
    first_bar = re.search(r"\| *(\d+)/(\d+) \[", log)
    assert first_bar and int(first_bar.group(1)) >= 5, log[-2000:]
    # Bitwise equality with the uninterrupted run: test_study_runs_every_point_...


def test_killed_launcher_relaunch_continues_without_duplicating_a_run(study_a):
    root, x = study_a["root"], study_a["x"]
    assert study_a["x_trainer_gone"]  # Ray stopped the dead launcher's trainers
    for entry in study_a["entries"]:
        state = json.loads(study_a["states_after_third"][entry["name"]])
        outcomes = [a["outcome"] for a in state["attempts"]]
        if entry["name"] == study_a["y"]:
            assert outcomes == ["retryable", "done"]
        elif entry["name"] in study_a["started_by_first"]:
            assert outcomes == ["interrupted", "done"], entry["name"]
        else:
            assert outcomes == ["done"], entry["name"]  # submitted, never started: not counted
        records = sorted(attempts.process_records(root, entry["name"]).items())
        for (_, earlier), (_, later) in zip(records, records[1:]):
            end = earlier["ended"] or study_a["launcher_killed_at"]
            assert later["started"] >= end  # never two trainers on one workdir
    state_x = json.loads(study_a["states_after_third"][x])
    assert state_x["attempts"][1]["start_step"] >= 5  # continued from its checkpoint


def test_relaunching_a_finished_study_submits_nothing(study_a):
    rc, output = study_a["third"]
    assert rc == 0, output[-3000:]
    assert "0 attempt(s) submitted" in output and "submitted noise" not in output
    assert study_a["states_after_third"] == study_a["states_before_third"]


def test_collect_then_fit_scaling_laws_on_the_study_root(study_a, tmp_path):
    root = study_a["root"]
    with pytest.raises(ValueError, match="collect --root"):  # the fitter, before collect
        runs.find_run_dirs([root])
    assert _load_cli().main(["collect", f"--root={root}"]) == 0
    listed = json.load(open(layout.finished_file(root)))["runs"]
    assert sorted(r["run_dir"] for r in listed) == sorted(e["workdir"]
                                                         for e in study_a["entries"])
    fit = [sys.executable, "tools/fit_scaling_laws.py", root, f"--out={tmp_path}",
           "--n_boot=20", "--no_plots"]
    result = subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["last_step"]) for r in rows) == sorted(A_STEPS)


@pytest.fixture(scope="module")
def study_b(tmp_path_factory, cluster, direct_runs):
    root = str(tmp_path_factory.mktemp("study_b"))
    cli = _load_cli()
    assert cli.main(["plan", f"--root={root}", f"--keys={B_KEY}", "--processes=2",
                     "--devices=2", '--resources={"CPU": 1}',
                     *[f"--set={o}" for o in B_SET]]) == 0
    assert cli.main(["plan", f"--root={root}", f"--keys={B_BAD_KEY}",
                     *[f"--set={o}" for o in B_SET + ("config.optim.warmup_steps=-1",)]]) == 0
    entries = json.load(open(layout.study_file(root)))["runs"]
    two = next(e for e in entries if e["key"] == B_KEY)
    launcher = cluster.start_launcher(root, "--max_attempts=3")

    def both_running():
        records = attempts.process_records(root, two["name"])
        saved = _checkpoints(two["workdir"])
        live = [records.get((1, i)) for i in range(2)]
        if saved and saved[-1] < two["steps"] and all(r and r.get("pid") and _alive(r["pid"])
                                                      for r in live):
            return live[1]
        return None

    victim = _wait_for(both_running, "both processes of the 2-process run", launcher)
    os.kill(victim["pid"], signal.SIGKILL)  # one process of the pair dies
    output, _ = launcher.communicate(timeout=600)
    status = json.loads(cluster.study("status", f"--root={root}", "--json").stdout)
    return {"root": root, "launch": (launcher.returncode, output),
            "status": {r["key"]: r for r in status["runs"]}, "entry": two,
            "single": direct_runs["b"].result()}


def test_invalid_config_fails_after_one_attempt_with_its_message(study_b):
    rc, output = study_b["launch"]
    assert rc == 1, output[-3000:]  # not every run is done
    bad = study_b["status"][B_BAD_KEY]
    assert bad["state"] == "failed" and bad["attempts"] == 1
    assert "error: optim.warmup_steps: must be >= 0, got -1" in bad["error"]
    assert len(attempts.process_records(study_b["root"], bad["name"])) == 1


def test_two_process_run_retried_together_logs_the_losses_of_one_process(study_b):
    """2 bundles of 1 CPU × 2 fake devices each; one process killed mid-run, both restarted."""
    entry, root = study_b["entry"], study_b["root"]
    run = study_b["status"][B_KEY]
    assert run["state"] == "done" and run["attempts"] == 2, study_b["launch"][1][-3000:]
    assert entry["processes"] == 2 and entry["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1,
                                                        "strategy": "fsdp"}
    records = attempts.process_records(root, entry["name"])
    assert sorted(records) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all("--num_processes=2" in r["argv"] for r in records.values())
    assert records[(1, 1)]["returncode"] == -9
    state = json.load(open(layout.run_state_file(root, entry["name"])))
    # Its partner was killed by the launcher (no exit of its own recorded), before the restart.
    assert records[(1, 0)]["ended"] is None or records[(1, 0)]["returncode"] != 0
    assert state["attempts"][0]["ended"] <= min(records[(2, i)]["started"] for i in range(2))
    assert [a["outcome"] for a in state["attempts"]] == ["retryable", "done"]
    assert "SIGKILL" in state["attempts"][0]["error"]
    ref, got = _metrics(study_b["single"]), _metrics(entry["workdir"])
    assert [m["step"] for m in got] == [m["step"] for m in ref] == list(range(2, 17, 2))
    for field in ("loss", "elbo", "grad_norm"):
        np.testing.assert_allclose([m[field] for m in got], [m[field] for m in ref], rtol=1e-5,
                                   err_msg=field)
