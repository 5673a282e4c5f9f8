"""One owner per run directory: workdir/lock.json, created exclusively and held for the run.

Two trainers on one workdir would interleave metrics.jsonl and overwrite each other's
checkpoints, so the second one is refused with the holder's host:pid; so are eval and sample
while a trainer owns the directory (they only check: they write their own result files and may
run side by side). The file is created with create-if-absent semantics (a hard link locally, an
upload with the GCS precondition ifGenerationMatch=0 in a bucket), so of two starters exactly
one wins. A lock left by a dead process on this host is taken over with a message; one from
another host cannot be checked from here and is reported (delete the file if that process is
gone). Re-entrant within a process: `main` and `train.train` both take it.
"""

import json
import os
import socket
import time

from absl import logging

from dlmjax import fs

LOCK_FILE = "lock.json"
_held = {}  # lock path → [record, depth] of the locks this process holds


class RunLocked(ValueError):
    """The workdir is owned by another live process; the message names it."""


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists on this host (a zombie counts as dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def lock_path(workdir: str) -> str:
    return fs.join(workdir, LOCK_FILE)


def _describe(record) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return (f"{record.get('hostname')}:{record.get('pid')} ({record.get('purpose', '?')}, "
            f"since {started})")


def _read(path):
    try:
        return json.loads(fs.read_text(path))
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # torn or unreadable: treated as a dead holder of unknown identity


def _is_stale(record) -> bool:
    if record is None:
        return False
    if not record:
        return True
    return record.get("hostname") == socket.gethostname() and not pid_alive(
        int(record.get("pid", 0)))


def acquire(workdir: str, purpose: str = "train") -> None:
    """Claims `workdir` for this process until `release`; RunLocked names a live holder."""
    path = lock_path(workdir)
    if path in _held:
        _held[path][1] += 1
        return
    fs.makedirs(workdir)
    record = {"hostname": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
              "started": time.time()}
    for _ in range(5):
        try:
            fs.create_exclusive(path, (json.dumps(record) + "\n").encode())
            _held[path] = [record, 1]
            return
        except FileExistsError:
            holder = _read(path)
        if holder is None:
            continue  # released in between: try again
        if not _is_stale(holder):
            raise RunLocked(f"{path}: {workdir} is in use by {_describe(holder)}; wait for it "
                            f"to finish or use another --workdir")
        logging.warning("%s: taking over the lock of %s, which is no longer running", path,
                        _describe(holder) if holder else "an unreadable lock file")
        _remove_if_unchanged(path, holder)
    raise RunLocked(f"{path}: could not take the lock of {workdir} (contended)")


def check_unowned(workdir: str, purpose: str) -> None:
    """For eval and sample, which write only their own result files and may run side by side:
    RunLocked if a live process (a trainer) owns `workdir`; nothing is taken."""
    path = lock_path(workdir)
    holder = _read(path) if path not in _held else None
    if holder and not _is_stale(holder):
        raise RunLocked(f"{path}: {workdir} is in use by {_describe(holder)}; {purpose} would "
                        f"write into it meanwhile: wait for it to finish")


def _remove_if_unchanged(path, holder):
    """Deletes the stale lock unless another process has replaced it meanwhile."""
    if _read(path) == holder:
        try:
            fs.remove(path)
        except FileNotFoundError:
            pass


def release(workdir: str) -> None:
    path = lock_path(workdir)
    if path not in _held:
        return
    _held[path][1] -= 1
    if _held[path][1] > 0:
        return
    record, _ = _held.pop(path)
    if _read(path) == record:
        fs.remove(path)


class held:
    """`with runlock.held(workdir, purpose):` acquire … release."""

    def __init__(self, workdir, purpose="train"):
        self.workdir, self.purpose = workdir, purpose

    def __enter__(self):
        acquire(self.workdir, self.purpose)
        return self

    def __exit__(self, *exc):
        release(self.workdir)
