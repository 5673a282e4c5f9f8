"""A run's attempts, recorded durably under the study root, and what an attempt's end means.

ROOT/state/<name>/run.json (written by the launcher only):
    {"key", "name", "state": "pending" | "running" | "done" | "failed", "error",
     "attempts": [{"attempt", "submitted", "ended", "outcome", "error", "start_step",
                   "end_step"}]}
ROOT/state/<name>/attempt-K-process-I.json (written by that process's Ray task):
    {"attempt", "process_id", "node_ip", "hostname", "pid", "started", "ended", "returncode",
     "error", "log"}

Outcomes: "done"; "fatal" (exit code 2, bad input or config: retrying cannot help);
"retryable" (killed, preempted, crashed, a lost node, exit 3 of a multi-process failure, or a
clean exit before the last step); "interrupted" (the launcher itself stopped: not the run's
fault, so it does not count against --max_attempts).
"""

import json
import signal
import time

from dlmjax import fs
from dlmjax.study import layout

EXIT_BAD_INPUT = 2


def last_logged_step(workdir: str) -> int:
    """The step of the last record in a workdir's metrics.jsonl (0 if none)."""
    path = fs.join(workdir, "metrics.jsonl")
    if not fs.isfile(path):
        return 0
    for line in reversed(fs.read_text(path).splitlines()):
        if line.strip():
            try:
                return int(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                return 0
    return 0


def read_json(path: str, default=None):
    """The JSON in `path`, or `default` when it is missing or torn."""
    if not fs.isfile(path):
        return default
    try:
        return json.loads(fs.read_text(path))
    except (json.JSONDecodeError, OSError):
        return default


def write_json(path: str, value) -> None:
    fs.write_text_atomic(path, json.dumps(value, indent=1))


def load_run_state(root: str, entry: dict) -> dict:
    state = read_json(layout.run_state_file(root, entry["name"]))
    return state or {"key": entry["key"], "name": entry["name"], "state": "pending",
                     "error": "", "attempts": []}


def save_run_state(root: str, state: dict) -> None:
    state["updated"] = time.time()
    write_json(layout.run_state_file(root, state["name"]), state)


def process_records(root: str, name: str) -> dict:
    """{(attempt, process_id): record} of every process record of a run."""
    directory = layout.state_dir(root, name)
    records = {}
    for filename in fs.listdir(directory):
        ids = layout.parse_process_file(filename)
        if ids is not None:
            record = read_json(fs.join(directory, filename))
            if record is not None:
                records[ids] = record
    return records


def counted(state: dict) -> int:
    """Attempts that count against --max_attempts (all but the interrupted ones)."""
    return sum(1 for a in state["attempts"] if a.get("outcome") != "interrupted")


def open_attempt(state: dict):
    """The attempt without an end, if any."""
    last = state["attempts"][-1] if state["attempts"] else None
    return last if last is not None and last.get("ended") is None else None


def close_interrupted(state: dict, reason: str, records: dict) -> bool:
    """Closes an open attempt whose launcher stopped; True if there was one.

    An attempt none of whose processes started (it waited for resources) is dropped: only
    attempts that ran count. `records`: the run's process_records().
    """
    last = open_attempt(state)
    if last is None:
        return False
    if not any(k == last["attempt"] for k, _ in records):
        state["attempts"].pop()
    else:
        last.update(ended=time.time(), outcome="interrupted", error=reason)
    return True


def exit_description(returncode) -> str:
    if returncode is None:
        return "no exit code"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name} (exit {returncode})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def classify(results, *, finished: bool) -> tuple[str, str]:
    """(outcome, error) of an attempt from its processes' results, in process order.

    results: dicts with "returncode" (None when Ray lost the task) and "error"; `finished`:
    the run's metrics reached its last step. The error is the first failing process's.
    """
    failures = [r for r in results if r.get("returncode") != 0 and not r.get("cancelled")]
    fatal = [r for r in failures if r.get("returncode") == EXIT_BAD_INPUT]
    if fatal:
        return "fatal", fatal[0]["error"]
    if failures:
        return "retryable", failures[0]["error"]
    if any(r.get("cancelled") for r in results):
        return "retryable", "cancelled"
    if finished:
        return "done", ""
    return "retryable", "every process exited 0 before the last step (preempted?)"
