"""Launching a study on a Ray cluster: Ray schedules and places, dlmjax says what to run.

Every unfinished run is submitted at once; the cluster's resources decide how many run together.
A run of one process is one Ray task with the entry's resources. A run of N processes is a
placement group of N bundles of those resources (STRICT_SPREAD when the cluster has N nodes, so
each process gets its own host; PACK on one machine; or as --placement says); a first zero-CPU
task in bundle 0 picks the coordinator's address (that node's IP and a free port), then one task
per bundle runs process i with `--coordinator_address --num_processes --process_id`.

Retries: the processes of a multi-process run live and die together, which Ray's per-task
retries cannot express, so an attempt is the whole set of tasks. When one process fails, the
others are killed (they are stuck in a collective with the dead one), and the next attempt is a
fresh submission of all of them; the trainer resumes from the newest checkpoint. Exit code 2 (bad
input or config) fails the run at once. Attempts are recorded in the study root as they happen
(dlmjax.study.attempts), so a new launcher after a crash of this one knows what is done and what
was cut short, and submits each unfinished run exactly once.
"""

import dataclasses
import json
import signal
import socket
import threading
import time

from absl import logging

from dlmjax.study import attempts, lock, plan, process

try:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # Ray is the `study` extra; only launching needs it
    ray = None

PLACEMENTS = ("auto", "STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK")
DEFAULT_MAX_ATTEMPTS = 5
_INTERRUPTED = "the launcher stopped before this attempt ended"


def _free_port() -> str:
    """This node's IP and a port free on it: the coordinator of a multi-process run."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"{process.node_ip()}:{port}"


def _task_options(resources: dict) -> dict:
    """Ray task options that consume exactly `resources` (one bundle)."""
    special = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
    options = {option: resources[name] for name, option in special.items() if name in resources}
    options.setdefault("num_cpus", 0)
    custom = {k: v for k, v in resources.items() if k not in special}
    if custom:
        options["resources"] = custom
    return options


@dataclasses.dataclass
class _Attempt:
    entry: dict
    record: dict                      # this attempt's entry in the run's state
    placement_group: object = None
    probe: object = None              # ObjectRef of the coordinator address
    tasks: dict = dataclasses.field(default_factory=dict)     # ObjectRef -> process id
    results: dict = dataclasses.field(default_factory=dict)   # process id -> record
    cancelling: bool = False

    @property
    def outstanding(self) -> list:
        return [self.probe] if self.probe is not None else list(self.tasks)


class Launcher:
    """One launch of a study (module doc). Call run(); it returns when no run is left."""

    def __init__(self, root: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 placement: str = "auto", retry_failed: bool = False, on_event=logging.info,
                 term_grace_s: float = process.TERM_GRACE_S, poll_s: float = 2.0):
        if ray is None:
            raise ImportError("launch --engine=ray needs Ray: pip install -e '.[study]'")
        if max_attempts < 1:
            raise ValueError(f"--max_attempts must be >= 1, got {max_attempts}")
        if placement not in PLACEMENTS:
            raise ValueError(f"--placement {placement!r} is not one of {PLACEMENTS}")
        self.root = root
        self.study = plan.load_study(root)
        self.max_attempts = max_attempts
        self.placement = placement
        self.retry_failed = retry_failed
        self.on_event = on_event
        self.term_grace_s = term_grace_s
        self.poll_s = poll_s
        self.states = {e["name"]: attempts.load_run_state(root, e) for e in self.study["runs"]}
        self.active: dict[str, _Attempt] = {}
        self.submitted = 0

    # --- what to run -------------------------------------------------------------------------
    def _todo(self) -> list[dict]:
        todo = []
        for entry in self.study["runs"]:
            state = self.states[entry["name"]]
            changed = attempts.close_interrupted(
                state, _INTERRUPTED, attempts.process_records(self.root, entry["name"]))
            if state["state"] == "failed" and self.retry_failed:
                state.update(state="pending", error="")
                state["retry_from"] = len(state["attempts"])
                changed = True
            if state["state"] not in ("done", "failed") and state["attempts"] and (
                    attempts.last_logged_step(entry["workdir"]) >= entry["steps"]):
                state.update(state="done", error="")  # finished as its launcher died
                changed = True
            if changed:
                attempts.save_run_state(self.root, state)
            if state["state"] not in ("done", "failed"):
                todo.append(entry)
        return todo

    def _counted(self, state) -> int:
        since = state.get("retry_from", 0)
        return attempts.counted({"attempts": state["attempts"][since:]})

    # --- submission --------------------------------------------------------------------------
    def _strategy(self, processes: int) -> str:
        if self.placement != "auto":
            return self.placement
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return "STRICT_SPREAD" if len(nodes) >= processes else "PACK"

    def _submit(self, entry: dict) -> None:
        state = self.states[entry["name"]]
        record = {"attempt": len(state["attempts"]) + 1, "submitted": time.time(),
                  "ended": None, "outcome": None, "error": "",
                  "start_step": attempts.last_logged_step(entry["workdir"]), "end_step": None}
        state["attempts"].append(record)
        state["state"] = "running"
        attempts.save_run_state(self.root, state)
        attempt = _Attempt(entry, record)
        if entry["processes"] > 1:
            strategy = self._strategy(entry["processes"])
            attempt.placement_group = ray.util.placement_group(
                [dict(entry["resources"])] * entry["processes"], strategy=strategy)
            attempt.probe = ray.remote(_free_port).options(
                num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    attempt.placement_group, placement_group_bundle_index=0)).remote()
            record["placement"] = strategy
        else:
            self._submit_processes(attempt, coordinator=None)
        self.active[entry["name"]] = attempt
        self.submitted += 1
        self.on_event(f"submitted {entry['key']} (attempt {record['attempt']}, "
                      f"{entry['processes']} process(es) of {entry['resources']})")

    def _submit_processes(self, attempt: _Attempt, coordinator) -> None:
        entry = attempt.entry
        remote = ray.remote(process.run_process)
        for i in range(entry["processes"]):
            options = dict(_task_options(entry["resources"]), max_retries=0)
            if attempt.placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    attempt.placement_group, placement_group_bundle_index=i)
            spec = {"root": self.root, "name": entry["name"], "workdir": entry["workdir"],
                    "attempt": attempt.record["attempt"], "process_id": i,
                    "num_processes": entry["processes"], "coordinator": coordinator,
                    "command": entry["command"], "env": entry["env"],
                    "term_grace_s": self.term_grace_s}
            attempt.tasks[remote.options(**options).remote(spec)] = i

    # --- completion --------------------------------------------------------------------------
    def _on_ready(self, attempt: _Attempt, ref) -> None:
        if attempt.probe is not None and ref == attempt.probe:
            attempt.probe = None
            try:
                coordinator = ray.get(ref)
            except ray.exceptions.RayError as err:
                attempt.results[0] = {"returncode": None, "error": _ray_error(err)}
                self._finish(attempt)
                return
            self._submit_processes(attempt, coordinator)
            return
        index = attempt.tasks.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            result = {"returncode": None, "error": _ray_error(err),
                      "cancelled": attempt.cancelling}
        attempt.results[index] = result
        if result.get("returncode") != 0 and not attempt.cancelling and attempt.tasks:
            # The others cannot go on without this one: they wait in a collective that never
            # completes, and cannot save either (a save is collective too). Stop them now.
            attempt.cancelling = True
            for other in attempt.tasks:
                ray.cancel(other, force=True)
        if not attempt.tasks:
            self._finish(attempt)

    def _finish(self, attempt: _Attempt) -> None:
        if attempt.placement_group is not None:
            ray.util.remove_placement_group(attempt.placement_group)
        entry, record = attempt.entry, attempt.record
        state = self.states[entry["name"]]
        step = attempts.last_logged_step(entry["workdir"])
        results = [attempt.results[i] for i in sorted(attempt.results)]
        outcome, error = attempts.classify(results, finished=step >= entry["steps"])
        record.update(ended=time.time(), outcome=outcome, error=error, end_step=step)
        del self.active[entry["name"]]
        if outcome == "done":
            state.update(state="done", error="")
            self.on_event(f"done {entry['key']} ({step} steps, attempt {record['attempt']})")
        elif outcome == "retryable" and self._counted(state) < self.max_attempts:
            state["error"] = error
            self.on_event(f"retrying {entry['key']} after attempt {record['attempt']} "
                          f"(step {step}): {error}")
        else:
            if outcome == "retryable":
                error = f"{error} (gave up after {self._counted(state)} attempts)"
            state.update(state="failed", error=error)
            self.on_event(f"failed {entry['key']}: {error}")
        attempts.save_run_state(self.root, state)
        if state["state"] == "running":  # retryable, attempts left
            self._submit(entry)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, *, address=None, progress=None) -> dict:
        """Submits every unfinished run and waits for all; returns {"submitted", "done",
        "failed", "total"}. `progress(done, failed, total)` is called as runs end."""
        self.holder = lock.acquire(self.root)
        try:
            todo = self._todo()
            if todo:
                self._loop(todo, address, progress)
        finally:
            self._interrupt_active()
            lock.release(self.root, self.holder)
        states = [self.states[e["name"]]["state"] for e in self.study["runs"]]
        return {"submitted": self.submitted, "done": states.count("done"),
                "failed": states.count("failed"), "total": len(states)}

    def _loop(self, todo, address, progress) -> None:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        if threading.current_thread() is threading.main_thread():
            # Ray's driver aborts on SIGTERM; stop like Ctrl-C instead, so that the trainers
            # are cancelled (they save) and their attempts recorded as interrupted.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        self.on_event(f"{len(todo)} of {len(self.study['runs'])} runs to launch on "
                      f"{ray.cluster_resources()}")
        self._warn_infeasible(todo)
        for entry in todo:
            self._submit(entry)
        last_beat = time.time()
        while self.active:
            owner = {ref: a for a in self.active.values() for ref in a.outstanding}
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                self._on_ready(owner[ref], ref)
            if progress is not None:
                states = [s["state"] for s in self.states.values()]
                progress(states.count("done"), states.count("failed"), len(states))
            if time.time() - last_beat > lock.HEARTBEAT_S:
                lock.heartbeat(self.root, self.holder)
                last_beat = time.time()

    def _warn_infeasible(self, todo) -> None:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for resources in {json.dumps(e["resources"], sort_keys=True) for e in todo}:
            wanted = json.loads(resources)
            if not any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
                self.on_event(f"warning: no node of this cluster offers {wanted} now; runs "
                              "that need it wait until one joins")

    def _interrupt_active(self) -> None:
        """On the way out with runs still active (Ctrl-C, SIGTERM): stop and record them."""
        if not self.active:
            return
        refs = [ref for attempt in self.active.values() for ref in attempt.outstanding]
        self.on_event(f"cancelling {len(refs)} task(s)")
        for ref in refs:
            ray.cancel(ref)  # the trainers get SIGTERM and save
        ray.wait(refs, num_returns=len(refs), timeout=self.term_grace_s + 5)
        for attempt in self.active.values():
            name = attempt.entry["name"]
            state = self.states[name]
            attempts.close_interrupted(state, _INTERRUPTED,
                                       attempts.process_records(self.root, name))
            attempts.save_run_state(self.root, state)
        self.active.clear()


def _ray_error(err) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]
