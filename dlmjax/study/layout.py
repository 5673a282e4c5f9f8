"""Where everything of a study lives under its root (local or `gs://`, through dlmjax.fs).

    ROOT/study.json                         the plan: one entry per run (dlmjax.study.plan)
    ROOT/runs/<name>/                       a run's workdir (dlmjax.rundir: config, metrics, ckpts)
    ROOT/state/<name>/run.json              the run's attempts, written by the launcher only
    ROOT/state/<name>/attempt-K-process-I.json   one trainer process: node, pid, exit, error
    ROOT/logs/<name>/attempt-K-process-I.log     that process's output
    ROOT/launcher.json                      the live launcher (host, pid, heartbeat)
    ROOT/finished_runs.json                 the finished runs, written by `collect`

Everything a status needs is here, so any machine that sees the root can read it.
"""

import re

from dlmjax import fs

STUDY_FILE = "study.json"
LAUNCHER_FILE = "launcher.json"
FINISHED_FILE = "finished_runs.json"
RUN_STATE_FILE = "run.json"
_PROCESS_RE = re.compile(r"^attempt-(\d+)-process-(\d+)\.json$")


def study_file(root: str) -> str:
    return fs.join(root, STUDY_FILE)


def launcher_file(root: str) -> str:
    return fs.join(root, LAUNCHER_FILE)


def finished_file(root: str) -> str:
    return fs.join(root, FINISHED_FILE)


def run_name(key: str) -> str:
    """A path-safe name for a grid key: noise=masked,size=L8-D512 -> noise-masked_size-L8-D512."""
    name = key.replace("=", "-").replace(",", "_")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise ValueError(f"grid key {key!r} contains characters unfit for a directory name")
    return name


def workdir(root: str, name: str) -> str:
    return fs.join(root, "runs", name)


def state_dir(root: str, name: str) -> str:
    return fs.join(root, "state", name)


def run_state_file(root: str, name: str) -> str:
    return fs.join(state_dir(root, name), RUN_STATE_FILE)


def process_file(root: str, name: str, attempt: int, process_id: int) -> str:
    return fs.join(state_dir(root, name), f"attempt-{attempt}-process-{process_id}.json")


def parse_process_file(filename: str):
    """(attempt, process_id) of a process record's file name, or None."""
    match = _PROCESS_RE.match(filename)
    return (int(match.group(1)), int(match.group(2))) if match else None


def log_file(root: str, name: str, attempt: int, process_id: int) -> str:
    return fs.join(root, "logs", name, f"attempt-{attempt}-process-{process_id}.log")
