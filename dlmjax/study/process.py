"""One trainer process of one attempt: what a Ray task runs on its node.

It starts `python -m dlmjax.main ...` (the entry's command, plus the coordinator address and
process id of a multi-process run) as a child process in the repository checkout, streams its
output to ROOT/logs/<name>/attempt-K-process-I.log, records node, pid, exit code and last error
line in ROOT/state/<name>/attempt-K-process-I.json, and returns that record.

The child cannot outlive its task: on Linux it gets SIGTERM when the task's worker dies
(PR_SET_PDEATHSIG; Ray also kills a dead worker's children), and a cancelled task (Ray raises
KeyboardInterrupt in it) sends SIGTERM, so the trainer saves, then SIGKILL after a grace period.
A trainer of an earlier attempt of the same run still alive on this node is waited for, then
killed, before the new one starts on the same workdir.
"""

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from dlmjax import fs
from dlmjax.study import attempts, experiment, layout

TERM_GRACE_S = 60.0
LOG_UPLOAD_S = 30.0
_ERROR_RE = re.compile(r"^(config error|error)\b|^\w*(Error|Exception|Interrupt)\b")
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child before exec: SIGTERM when the parent (the Ray worker) dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostbyname(socket.gethostname())


def trainer_argv(command, *, coordinator=None, num_processes=1, process_id=0) -> list[str]:
    """The entry's command with this interpreter and, for several processes, their flags."""
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    if num_processes > 1:
        argv += [f"--coordinator_address={coordinator}", f"--num_processes={num_processes}",
                 f"--process_id={process_id}"]
    return argv


def _merge_xla_flags(current: str, planned: str) -> str:
    """The node's XLA flags with the planned ones replacing any of the same name."""
    names = {flag.split("=", 1)[0] for flag in planned.split()}
    kept = [flag for flag in current.split() if flag.split("=", 1)[0] not in names]
    return " ".join(kept + planned.split())


def trainer_env(planned: dict) -> dict:
    """This node's environment plus the planned variables (XLA_FLAGS merged flag by flag)."""
    env = dict(os.environ)
    for name, value in planned.items():
        env[name] = _merge_xla_flags(env.get(name, ""), value) if name == "XLA_FLAGS" else value
    return env


def last_error_line(text: str) -> str:
    """The line that says why a trainer stopped: an error line if any, else the last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    lines = [line for line in lines if line and "%|" not in line]  # drop progress bars
    for line in reversed(lines):
        if _ERROR_RE.search(line):
            return line[:500]
    return lines[-1][:500] if lines else ""


def _tail(path: str, size: int = 65536) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode("utf-8", "replace")


def _alive_trainer(pid: int, workdir: str) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and any(
            workdir in arg for arg in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _stop_leftovers(root, name, attempt, workdir, ip, wait_s=TERM_GRACE_S):
    """Waits for trainers of earlier attempts of this run still alive here, then kills them."""
    pids = [r["pid"] for (k, _), r in attempts.process_records(root, name).items()
            if k < attempt and r.get("ended") is None and r.get("node_ip") == ip and r.get("pid")]
    deadline = time.time() + wait_s
    while True:
        pids = [pid for pid in pids if _alive_trainer(pid, workdir)]
        if not pids:
            return
        if time.time() > deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)


def _stop(child, grace_s):
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)  # the trainer saves a checkpoint and exits
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class _LogSink:
    """A local file the child writes to; copied to a bucket now and then when the root is one."""

    def __init__(self, destination: str):
        self.destination = destination
        self.remote = fs.is_remote(destination)
        if self.remote:
            fd, self.local = tempfile.mkstemp(prefix="dlmjax-study-", suffix=".log")
            os.close(fd)
        else:
            self.local = fs.absolute(destination)
            os.makedirs(os.path.dirname(self.local), exist_ok=True)
        self.file = open(self.local, "wb")  # noqa: SIM115 (closed in close())
        self._stop = threading.Event()
        self._thread = None
        if self.remote:
            self._thread = threading.Thread(target=self._upload_loop, daemon=True)
            self._thread.start()

    def _upload(self):
        with open(self.local, "rb") as f:
            fs.write_bytes_atomic(self.destination, f.read())

    def _upload_loop(self):
        while not self._stop.wait(LOG_UPLOAD_S):
            self._upload()

    def close(self) -> str:
        self.file.close()
        text = _tail(self.local)
        if self.remote:
            self._stop.set()
            self._upload()
            os.remove(self.local)
        return text


def run_process(spec: dict) -> dict:
    """Runs one trainer process (module doc). spec: root, name, workdir, attempt, process_id,
    num_processes, coordinator, command, env, and optionally term_grace_s."""
    root, name, attempt, pid_index = spec["root"], spec["name"], spec["attempt"], spec[
        "process_id"]
    record_path = layout.process_file(root, name, attempt, pid_index)
    ip = node_ip()
    _stop_leftovers(root, name, attempt, spec["workdir"], ip)
    argv = trainer_argv(spec["command"], coordinator=spec.get("coordinator"),
                        num_processes=spec["num_processes"], process_id=pid_index)
    log = _LogSink(layout.log_file(root, name, attempt, pid_index))
    record = {"attempt": attempt, "process_id": pid_index, "node_ip": ip,
              "hostname": socket.gethostname(), "pid": None, "started": time.time(),
              "ended": None, "returncode": None, "error": "", "log": log.destination,
              "argv": argv}
    child, cancelled = None, False
    # Ray cancels a running task by simulating SIGINT, which does nothing where SIGINT is
    # ignored (a cluster started from a background shell): make it raise KeyboardInterrupt.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        child = subprocess.Popen(argv, cwd=experiment.repo_root(), env=trainer_env(spec["env"]),
                                 stdin=subprocess.DEVNULL, stdout=log.file,
                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        record["pid"] = child.pid
        attempts.write_json(record_path, record)
        try:
            while child.poll() is None:  # not wait(): Ray's cancel needs Python to be running
                time.sleep(0.2)
        except BaseException:  # Ray's cancel arrives as KeyboardInterrupt
            cancelled = True
            _stop(child, spec.get("term_grace_s", TERM_GRACE_S))
            raise
    finally:
        text = log.close()
        returncode = None if child is None else child.returncode
        record.update(ended=time.time(), returncode=returncode, cancelled=cancelled,
                      error=_error(returncode, text))
        attempts.write_json(record_path, record)
    return record


def _error(returncode, log_text: str) -> str:
    if returncode == 0:
        return ""
    line = last_error_line(log_text)
    description = attempts.exit_description(returncode)
    if returncode is not None and returncode < 0:  # a signal: its output just stopped
        return f"{description}; last output: {line}" if line else description
    return f"{line} ({description})" if line else description
