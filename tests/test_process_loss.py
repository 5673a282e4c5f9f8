"""kill -9 of either process of a two-process run on loopback: the survivor ends within 60 s
(default --heartbeat_timeout) with one line naming the lost process, exit code 3."""

import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "micro_config.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listeners(port):
    """Local addresses (hex, as the kernel writes them) listening on `port`, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


@pytest.mark.parametrize("victim", [1, 0])
def test_survivor_names_the_lost_process(victim, tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    processes = [subprocess.Popen(
        [sys.executable, "-m", "dlmjax.main", f"--config={CONFIG}", f"--workdir={tmp_path}",
         "--config.train.steps=100000", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.train.checkpoint_every=100000",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    survivor = processes[1 - victim]
    try:
        deadline = time.time() + 300
        # config.json is written once both processes have joined: the run is under way (kill
        # then, while it compiles, to spare the test's CPU; the survivor is stuck either way).
        while not os.path.exists(tmp_path / "config.json"):
            assert all(p.poll() is None for p in processes), "a process ended before starting"
            assert time.time() < deadline, "the processes did not start within 300 s"
            time.sleep(0.2)
        # The coordinator listens on 127.0.0.1 only (plain or IPv4-mapped IPv6), not on every
        # interface (jax's default).
        listeners = _listeners(port)
        assert listeners and set(listeners) <= {"0100007F", "0000000000000000FFFF00000100007F"}, (
            listeners)
        processes[victim].kill()
        killed_at = time.time()
        _, stderr = survivor.communicate(timeout=120)
        elapsed = time.time() - killed_at
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    print(f"kill -9 of process {victim}: exit {survivor.returncode} after {elapsed:.1f} s: "
          f"{lines}")
    assert survivor.returncode == 3, stderr[-3000:]
    assert elapsed < 60
    assert "Traceback" not in stderr
    assert len(lines) == 1 and stderr.rstrip().splitlines()[-1] == lines[0], stderr[-3000:]
    survivor_id = 1 - victim
    if victim == 1:
        assert lines[0].startswith("error: process 0: process 1 stopped responding")
    else:
        assert lines[0] == (f"error: process {survivor_id}: lost the coordinator "
                            f"(process 0 at 127.0.0.1:{port})")


def test_unreachable_coordinator_ends_with_one_line(tmp_path):
    port = _free_port()  # nobody listens there
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "dlmjax.main", f"--config={CONFIG}", f"--workdir={tmp_path}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
         "--init_timeout=5"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    elapsed = time.time() - start
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    print(f"unreachable coordinator: exit {result.returncode} after {elapsed:.1f} s: {lines}")
    assert result.returncode == 3, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: process 1: cannot start with the coordinator at "
                               f"127.0.0.1:{port} within --init_timeout=5 s")
