"""The study runner without a cluster: mesh fits, the study file, selection, status, records."""

import importlib.util
import json
import os
import socket
import time

import pytest

from dlmjax import config as config_lib
from dlmjax.scaling import flops, grid, runs
from dlmjax.study import attempts, collect, layout, lock, mesh, plan, process, selection, status
from experiments import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("config.model.num_heads=2", "config.data.source=synthetic_markov",
        "config.data.vocab_size=64", "config.model.dtype=float32")
KEYS = ["noise=masked,size=L1-D32,batch=8,lr=0.3,tokens=15360,seq=32,vocab=64",
        "noise=uniform,size=L2-D64,batch=16,lr=0.5,tokens=16384,seq=32,vocab=64"]


def _cli():
    spec = importlib.util.spec_from_file_location("study_cli", os.path.join(ROOT, "tools",
                                                                            "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan(root, keys=KEYS, *extra):
    return _cli().main(["plan", f"--root={root}", f"--keys={';'.join(keys)}",
                        *[f"--set={o}" for o in TINY], *extra])


def test_mesh_fits_small_batches_with_fewer_hosts_or_tensor_parallelism():
    big = mesh.fit_mesh(batch=64, microbatches=1, heads=8, d_model=512, processes=16,
                        devices_per_process=4)
    assert (big.processes, big.data, big.fsdp, big.tensor, big.note) == (16, 1, 64, 1, "")
    small = mesh.fit_mesh(batch=8, microbatches=1, heads=8, d_model=512, processes=16,
                          devices_per_process=4)
    assert (small.processes, small.data, small.fsdp, small.tensor) == (8, 1, 8, 4)
    assert small.strategy == "fsdp_tp" and "runs on 8 process(es)" in small.note
    ten_heads = mesh.fit_mesh(batch=8, microbatches=1, heads=10, d_model=640, processes=16,
                              devices_per_process=4)  # tensor must divide 10 and the host's 4
    assert (ten_heads.processes, ten_heads.fsdp, ten_heads.tensor) == (4, 8, 2)
    uneven = mesh.fit_mesh(batch=256, microbatches=1, heads=10, d_model=640, processes=64,
                           devices_per_process=4)
    assert (uneven.data, uneven.fsdp, uneven.tensor) == (2, 128, 1)  # 640 = 128 · 5
    with pytest.raises(ValueError, match="no mesh fits"):
        mesh.fit_mesh(batch=1, microbatches=1, heads=1, d_model=64, processes=1,
                      devices_per_process=4)


@pytest.mark.parametrize("processes,devices", [(1, 8), (16, 4), (64, 4)])
def test_every_grid_point_gets_a_mesh_the_trainer_accepts(processes, devices):
    config = base.get_config()
    for point in grid.study_grid():
        fit = mesh.fit_mesh(batch=point.batch, microbatches=1, heads=point.d_model // (
            64 if point.d_model <= 1024 else 128), d_model=point.d_model, processes=processes,
            devices_per_process=devices)
        assert fit.data * fit.fsdp * fit.tensor == fit.devices
        assert point.batch % (fit.data * fit.fsdp) == 0 and point.batch % fit.processes == 0
        assert devices % fit.tensor == 0 and point.d_model % fit.fsdp == 0
        assert (fit.processes == processes) == (not fit.note)
        for dotted, value in {**point.config_overrides(), **fit.config_overrides()}.items():
            section, leaf = dotted.split(".")
            config[section][leaf] = value
        run = config_lib.derive(config, fit.devices)  # the trainer's own validation
        assert run.data_parallel == fit.data * fit.fsdp


def test_plan_writes_runs_with_their_size_command_and_device_time(tmp_path, capsys):
    root = str(tmp_path / "root")
    assert _plan(root, KEYS, "--mfu=0.5", "--peak_flops=1e12") == 0
    printed = capsys.readouterr().out
    assert "2 in" in printed and "device-hours" in printed
    study = json.load(open(layout.study_file(root)))
    first, second = study["runs"]
    assert first["name"] == layout.run_name(KEYS[0]) and first["workdir"] == os.path.join(
        root, "runs", first["name"])
    assert first["steps"] == 15360 // (8 * 32) == 60 and second["steps"] == 16384 // (16 * 32)
    for entry, (num_layers, d_model) in zip((first, second), ((1, 32), (2, 64))):
        m = 72 * num_layers * d_model**2 + 12 * num_layers * d_model * 32
        assert entry["flops"] == m * entry["tokens"]
        assert entry["flops_with_head"] == (m + 6 * d_model * 64) * entry["tokens"]
        assert entry["env"] == {"JAX_PLATFORMS": "cpu",
                                "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert first["command"] == [
        "python", "-m", "dlmjax.main", f"--config=experiments/grid.py:{KEYS[0]}",
        f"--workdir={first['workdir']}", *[f"--{o}" for o in TINY], "--config.mesh.data=1",
        "--config.mesh.fsdp=1", "--config.mesh.tensor=1", "--config.mesh.strategy=fsdp",
        "--config.mesh.num_devices=1"]
    totals = study["totals"]
    assert totals["flops"] == first["flops"] + second["flops"]
    assert totals["device_hours"] == pytest.approx(totals["flops"] / (0.5 * 1e12) / 3600,
                                                   rel=1e-12)
    # Planning again adds nothing; the same key with another command is refused.
    assert _plan(root, KEYS[:1]) == 0 and len(json.load(open(layout.study_file(root)))[
        "runs"]) == 2
    assert _plan(root, KEYS[:1], "--set=config.train.log_every=7") == 2
    assert "already in" in capsys.readouterr().err


def test_plan_of_several_hosts_and_accelerators(tmp_path):
    root = str(tmp_path)
    key = "noise=masked,size=L8-D512,batch=8,lr=0.3"
    study, added = plan.plan_study(root, [key], hosts=plan.Hosts(16, {"TPU": 4}))
    entry = added[0]
    assert (entry["processes"], entry["devices_per_process"]) == (8, 4)  # batch 8: 8 hosts
    assert entry["mesh"] == {"data": 1, "fsdp": 8, "tensor": 4, "strategy": "fsdp_tp"}
    assert entry["env"] == {} and entry["resources"] == {"TPU": 4}
    assert entry["steps"] == grid.parse_point(key).steps
    assert entry["flops"] == grid.parse_point(key).compute
    assert study["totals"]["device_hours"] == pytest.approx(
        entry["flops"] / (plan.DEFAULT_MFU * plan.DEFAULT_PEAK_FLOPS) / 3600)
    assert flops.flops_per_token(8, 512, 2048) * entry["tokens"] == entry["flops"]


def test_plan_keeps_runs_whose_config_the_trainer_will_reject_with_a_warning(tmp_path, capsys):
    root = str(tmp_path)
    assert _plan(root, KEYS[:1], "--set=config.optim.warmup_steps=-1",
                 "--set=config.model.no_such_key=1") == 0
    entry = json.load(open(layout.study_file(root)))["runs"][0]
    assert "--config.optim.warmup_steps=-1" in entry["command"]
    assert any("unknown config key config.model.no_such_key" in w for w in entry["warnings"])
    assert any("optim.warmup_steps: must be >= 0" in w for w in entry["warnings"])
    assert "the run will fail" in capsys.readouterr().err


def test_selection_by_filter_and_by_plan_file(tmp_path):
    assert len(selection.select("all")) == 510
    assert len(selection.select("noise=uniform")) == 102
    chosen = selection.select("noise=masked|uniform,size=L8-D512")
    assert len(chosen) == 42 and all("size=L8-D512" in k for k in chosen)
    assert selection.select("noise=masked,size=L8-D512,batch=64,lr=0.3") == [
        "noise=masked,size=L8-D512,batch=64,lr=0.3"]
    with pytest.raises(ValueError, match="FIELD one of"):
        selection.select("depth=3")
    with pytest.raises(ValueError, match="matches none"):
        selection.select("noise=masked,batch=3")
    manifest = tmp_path / "grid.json"
    manifest.write_text(json.dumps({"runs": [{"key": KEYS[0]}, {"key": KEYS[1]}]}))
    assert selection.from_plan_file(str(manifest)) == KEYS
    manifest_csv = tmp_path / "grid.csv"
    manifest_csv.write_text("key,steps\n" + "".join(f'"{k}",1\n' for k in KEYS))
    assert selection.from_plan_file(str(manifest_csv)) == KEYS
    assert selection.split_keys(f" {KEYS[0]} ;{KEYS[1]};") == KEYS
    assert _cli().main(["plan", f"--root={tmp_path}", "--select=size=L3"]) == 2


def _write_metrics(workdir, records):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _record(attempt, *, ended=None, **extra):
    return {"attempt": attempt, "submitted": 1.0, "ended": ended, "outcome": None, "error": "",
            "start_step": 0, "end_step": None, **extra}


def test_status_reads_every_state_from_the_root(tmp_path, capsys):
    root = str(tmp_path)
    keys = [f"noise=masked,size=L1-D32,batch=8,lr=0.3,tokens={256 * s},seq=32,vocab=64"
            for s in (10, 11, 12, 13, 14)]
    study, _ = plan.plan_study(root, keys, overrides=TINY)
    done, failed, running, retrying, pending = study["runs"]

    def save(entry, state, history, error=""):
        attempts.save_run_state(root, {"key": entry["key"], "name": entry["name"],
                                       "state": state, "error": error, "attempts": history})

    save(done, "done", [_record(1, ended=2.0, outcome="done")])
    _write_metrics(done["workdir"], [{"step": 10, "tokens": 2560, "elbo": 3.5,
                                      "eval_elbo": 3.7}])
    save(failed, "failed", [_record(1, ended=2.0, outcome="fatal")],
         error="config error: optim.lr: bad (exit 2)")
    save(running, "running", [_record(1, ended=2.0, outcome="interrupted"), _record(2)])
    attempts.write_json(layout.process_file(root, running["name"], 2, 0),
                        {"attempt": 2, "process_id": 0, "node_ip": "127.0.0.1", "pid": 1,
                         "started": 3.0, "ended": None})
    _write_metrics(running["workdir"], [{"step": 4, "tokens": 1024, "elbo": 4.0,
                                         "eval_elbo": 4.4, "tokens_per_s": 512.0},
                                        {"step": 6, "tokens": 1536, "elbo": 3.9,
                                         "tokens_per_s": 256.0}])
    save(retrying, "running", [_record(1, ended=2.0, outcome="retryable",
                                       error="killed by SIGKILL (exit -9)"), _record(2)])
    holder = lock.acquire(root)  # this process plays the live launcher

    result = status.study_status(root)
    by_key = {r["key"]: r for r in result["runs"]}
    assert [by_key[k]["state"] for k in keys] == ["done", "failed", "running", "retrying",
                                                  "pending"]
    assert [by_key[k]["attempts"] for k in keys] == [1, 1, 2, 2, 0]
    assert by_key[keys[0]]["step"] == 10 and by_key[keys[0]]["eval_elbo"] == 3.7
    assert by_key[keys[1]]["error"] == "config error: optim.lr: bad (exit 2)"
    run = by_key[keys[2]]
    assert (run["step"], run["tokens"], run["elbo"], run["eval_elbo"]) == (6, 1536, 3.9, 4.4)
    assert run["eta_s"] == (12 - 6) * 8 * 32 / 256.0  # remaining tokens at the last tokens/s
    assert "SIGKILL" in by_key[keys[3]]["error"]
    assert result["summary"] == {"done": 1, "running": 1, "retrying": 1, "failed": 1,
                                 "pending": 1}
    assert _cli().main(["status", f"--root={root}", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"key", "state", "attempts", "step", "steps"} <= set(printed["runs"][0])
    assert _cli().main(["status", f"--root={root}"]) == 0
    table = capsys.readouterr().out
    assert "last error: config error: optim.lr" in table and "6/12" in table

    lock.release(root, holder)  # no launcher: nothing runs, nothing retries
    states = [r["state"] for r in status.study_status(root)["runs"]]
    assert states == ["done", "failed", "pending", "pending", "pending"]


def test_collect_lists_finished_runs_for_the_fitter(tmp_path):
    root = str(tmp_path)
    study, _ = plan.plan_study(root, KEYS, overrides=TINY)
    with pytest.raises(ValueError, match="collect"):
        runs.find_run_dirs([root])
    finished, unfinished = study["runs"]
    for entry, step in ((finished, finished["steps"]), (unfinished, 3)):
        attempts.save_run_state(root, {"key": entry["key"], "name": entry["name"],
                                       "state": "done" if entry is finished else "running",
                                       "error": "", "attempts": []})
        _write_metrics(entry["workdir"], [{"step": step}])
        with open(os.path.join(entry["workdir"], "config.json"), "w") as f:
            f.write("{}")
    manifest = collect.collect(root, out=str(tmp_path / "copies"))
    assert [r["key"] for r in manifest["runs"]] == [finished["key"]]
    assert runs.find_run_dirs([root]) == [str(tmp_path / "copies" / finished["name"])]
    assert os.path.isfile(tmp_path / "copies" / finished["name"] / "metrics.jsonl")
    collect.collect(root)
    assert runs.find_run_dirs([root]) == [finished["workdir"]]


def test_attempt_outcomes_and_error_lines():
    ok = {"returncode": 0, "error": ""}
    assert attempts.classify([ok, ok], finished=True) == ("done", "")
    assert attempts.classify([ok], finished=False)[0] == "retryable"  # SIGTERM-saved exit 0
    bad = {"returncode": 2, "error": "config error: x"}
    killed = {"returncode": -9, "error": "killed"}
    cancelled = {"returncode": -15, "error": "", "cancelled": True}
    assert attempts.classify([killed, bad], finished=False) == ("fatal", "config error: x")
    assert attempts.classify([killed, cancelled], finished=False) == ("retryable", "killed")
    assert attempts.classify([{"returncode": None, "error": "NodeDiedError: x"}],
                             finished=False) == ("retryable", "NodeDiedError: x")
    assert attempts.exit_description(-9) == "killed by SIGKILL (exit -9)"
    log = ("I1201 starting\nrun:  40%|####      | 4/10 [00:01<00:02]\r"
           "run:  50%|#####     | 5/10 [00:01<00:01]\nTraceback (most recent call last):\n"
           '  File "x.py", line 1\nValueError: corpus too small\n')
    assert process.last_error_line(log) == "ValueError: corpus too small"
    assert process.last_error_line("x\nconfig error: optim.lr: must be > 0\n") == (
        "config error: optim.lr: must be > 0")
    assert process.last_error_line("one\ntwo\r  3/10 [00:01%|\n") == "two"
    assert process._error(-9, "step 5\n") == "killed by SIGKILL (exit -9); last output: step 5"
    assert process._error(1, "ValueError: x\n") == "ValueError: x (exit 1)"


def test_trainer_command_and_environment(monkeypatch):
    command = ["python", "-m", "dlmjax.main", "--config=x"]
    argv = process.trainer_argv(command, coordinator="10.0.0.1:1234", num_processes=2,
                                process_id=1)
    assert argv[1:] == ["-m", "dlmjax.main", "--config=x", "--coordinator_address=10.0.0.1:1234",
                        "--num_processes=2", "--process_id=1"]
    assert process.trainer_argv(command)[1:] == command[1:]
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=d")
    env = process.trainer_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                               "JAX_PLATFORMS": "cpu"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=d --xla_force_host_platform_device_count=2"
    assert env["JAX_PLATFORMS"] == "cpu"


def test_one_launcher_per_study(tmp_path):
    root = str(tmp_path)
    live = {"hostname": socket.gethostname(), "pid": os.getppid(), "heartbeat": time.time()}
    attempts.write_json(layout.launcher_file(root), live)
    with pytest.raises(lock.StudyLocked, match=f"pid {os.getppid()}"):
        lock.acquire(root)
    elsewhere = {"hostname": "other-host", "pid": 1, "heartbeat": time.time() - lock.STALE_S - 1}
    attempts.write_json(layout.launcher_file(root), elsewhere)  # stale: taken over
    mine = lock.acquire(root)
    assert lock.read(root)["pid"] == os.getpid() and lock.holder_alive(lock.read(root))
    lock.release(root, mine)
    assert not lock.holder_alive(lock.read(root))


def test_a_study_root_names_runs_safely():
    assert layout.run_name("noise=masked,size=L8-D512,batch=64,lr=0.3") == (
        "noise-masked_size-L8-D512_batch-64_lr-0.3")
    with pytest.raises(ValueError):
        layout.run_name("noise=masked/../x")


@pytest.fixture
def bucket(monkeypatch):
    """A local Google Cloud Storage emulator with one bucket, stopped by its PID."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start",
                               "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                               "--default-bucket", "study-bucket"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "emulator did not start"
            time.sleep(0.1)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    yield "gs://study-bucket"
    server.terminate()
    server.wait(timeout=30)


def test_a_study_in_a_bucket_plans_records_and_reports(bucket, tmp_path):
    """Study file, process record, streamed log, status and collect all go through gs://."""
    from dlmjax import fs

    root = f"{bucket}/study"
    study, _ = plan.plan_study(root, KEYS[:1], overrides=TINY)
    entry = study["runs"][0]
    assert entry["workdir"] == f"{root}/runs/{entry['name']}"
    assert fs.isfile(f"{root}/study.json")
    script = ("import sys; print('step 1'); sys.stdout.flush(); "
              "print('error: FileNotFoundError: data.paths: /no/such/file', file=sys.stderr); "
              "sys.exit(2)")
    record = process.run_process({
        "root": root, "name": entry["name"], "workdir": entry["workdir"], "attempt": 1,
        "process_id": 0, "num_processes": 1, "coordinator": None,
        "command": ["python", "-c", script], "env": {}})
    assert record["returncode"] == 2 and record["pid"] > 0
    assert record["error"] == "error: FileNotFoundError: data.paths: /no/such/file (exit 2)"
    assert record["log"] == layout.log_file(root, entry["name"], 1, 0)
    assert "step 1" in fs.read_text(record["log"])
    stored = attempts.process_records(root, entry["name"])[(1, 0)]
    assert stored["ended"] >= stored["started"] and stored["returncode"] == 2
    attempts.save_run_state(root, {"key": entry["key"], "name": entry["name"], "state": "failed",
                                   "error": record["error"], "attempts": [
                                       _record(1, ended=2.0, outcome="fatal",
                                               error=record["error"])]})
    result = status.study_status(root)["runs"][0]
    assert (result["state"], result["attempts"], result["error"]) == ("failed", 1,
                                                                      record["error"])
    assert collect.collect(root, out=str(tmp_path))["runs"] == []  # nothing finished

    # A finished run in the bucket reaches the fitter's loader through the study root.
    done_study, _ = plan.plan_study(root, KEYS[1:], overrides=TINY)
    done = done_study["runs"][1]
    fs.write_text_atomic(fs.join(done["workdir"], "config.json"), json.dumps(
        runs.config_for_point(grid.parse_point(done["key"]))))
    records = [{"step": s, "tokens": s * 512, "flops": s * 1e6, "elbo": 5.0 - s / 100}
               for s in range(1, done["steps"] + 1)]
    fs.write_text_atomic(fs.join(done["workdir"], "metrics.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in records))
    attempts.save_run_state(root, {"key": done["key"], "name": done["name"], "state": "done",
                                   "error": "", "attempts": [_record(1, ended=2.0,
                                                                     outcome="done")]})
    collect.collect(root)
    assert runs.find_run_dirs([root]) == [done["workdir"]]
    loaded = runs.load_run(done["workdir"])
    assert loaded.metrics["step"][-1] == done["steps"] and loaded.point.key == done["key"]
