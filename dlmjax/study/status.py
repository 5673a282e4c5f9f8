"""Where every run of a study stands, from the study root alone (works from any machine).

States: done; failed (with its last error line); running (a trainer process of the current
attempt has started and not ended); retrying (an attempt failed and the next one waits for its
turn); pending (not started, waiting for resources, or its launcher is gone). Per run: steps and
tokens done, last training and held-out ELBO, attempts and, while running, an ETA from the
trainer's own tokens/s.
"""

import concurrent.futures
import json
import time

from dlmjax import fs
from dlmjax.study import attempts, lock, plan

STATES = ("done", "running", "retrying", "failed", "pending")


def _metrics(workdir: str) -> dict:
    """The last record of metrics.jsonl, plus the last held-out ELBO seen."""
    path = fs.join(workdir, "metrics.jsonl")
    if not fs.isfile(path):
        return {}
    last, eval_elbo = {}, None
    for line in fs.read_text(path).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        last = record
        eval_elbo = record.get("eval_elbo", eval_elbo)
    return dict(last, eval_elbo=eval_elbo)


def _state(run_state: dict, records: dict, launcher_alive: bool) -> str:
    if run_state["state"] in ("done", "failed"):
        return run_state["state"]
    history = run_state["attempts"]
    current = attempts.open_attempt(run_state)
    if current is not None and launcher_alive:
        started = [r for (k, _), r in records.items()
                   if k == current["attempt"] and r.get("ended") is None]
        if started:
            return "running"
    previous = history[-2] if current is not None and len(history) > 1 else (
        history[-1] if current is None and history else None)
    if launcher_alive and previous is not None and previous.get("outcome") == "retryable":
        return "retrying"
    return "pending"


def run_status(root: str, entry: dict, launcher_alive: bool) -> dict:
    run_state = attempts.load_run_state(root, entry)
    records = attempts.process_records(root, entry["name"])
    state = _state(run_state, records, launcher_alive)
    metrics = _metrics(entry["workdir"])
    step = int(metrics.get("step", 0))
    eta = None
    if state == "running" and metrics.get("tokens_per_s"):
        eta = (entry["steps"] - step) * entry["batch"] * entry["seq_len"] / metrics[
            "tokens_per_s"]
    last_attempt = run_state["attempts"][-1] if run_state["attempts"] else {}
    error = run_state.get("error") or next(
        (a["error"] for a in reversed(run_state["attempts"]) if a.get("error")), "")
    return {
        "key": entry["key"], "name": entry["name"], "state": state,
        "attempts": len(run_state["attempts"]), "step": step, "steps": entry["steps"],
        "tokens": int(metrics.get("tokens", 0)), "elbo": metrics.get("elbo"),
        "eval_elbo": metrics.get("eval_elbo"), "eta_s": eta,
        "error": error if state in ("failed", "retrying", "pending") else "",
        "workdir": entry["workdir"],
        "nodes": sorted({r.get("node_ip") for (k, _), r in records.items()
                         if k == last_attempt.get("attempt")} - {None}),
    }


def study_status(root: str) -> dict:
    """{"root", "launcher", "summary", "runs"} (see the module doc for the states)."""
    study = plan.load_study(root)
    launcher = lock.read(root)
    alive = lock.holder_alive(launcher)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # buckets: one round trip per file
        runs = list(pool.map(lambda e: run_status(root, e, alive), study["runs"]))
    summary = {s: sum(r["state"] == s for r in runs) for s in STATES}
    running_eta = [r["eta_s"] for r in runs if r["eta_s"] is not None]
    return {"root": root, "time": time.time(),
            "launcher": dict(launcher or {}, alive=alive), "summary": summary,
            "longest_running_eta_s": max(running_eta) if running_eta else None, "runs": runs}


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


def _number(value, fmt) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(status: dict) -> str:
    """A human-readable table of study_status()."""
    lines = [f"{'state':<9} {'step':>15} {'tokens':>9} {'elbo':>7} {'eval':>7} {'att':>3} "
             f"{'eta':>7}  key"]
    for r in status["runs"]:
        lines.append(f"{r['state']:<9} {str(r['step']) + '/' + str(r['steps']):>15} "
                     f"{r['tokens']:>9.3g} "
                     f"{_number(r['elbo'], '7.3f')} {_number(r['eval_elbo'], '7.3f')} "
                     f"{r['attempts']:>3} {_duration(r['eta_s']):>7}  {r['key']}")
        if r["error"]:
            lines.append(f"{'':<9} last error: {r['error']}")
    summary = ", ".join(f"{n} {s}" for s, n in status["summary"].items() if n)
    launcher = status["launcher"]
    who = (f"launcher pid {launcher.get('pid')} on {launcher.get('hostname')}"
           if launcher.get("alive") else "no launcher running")
    lines.append(f"{len(status['runs'])} runs: {summary}; {who}")
    if status["longest_running_eta_s"] is not None:
        lines.append(f"running runs end in {_duration(status['longest_running_eta_s'])}")
    return "\n".join(lines)
