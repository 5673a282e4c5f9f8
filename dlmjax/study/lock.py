"""One launcher per study: ROOT/launcher.json names it and carries its heartbeat.

A second launcher on a live study would submit every unfinished run a second time, so it is
refused. A launcher counts as alive when its process exists (same host) or, seen from another
host, when its heartbeat is recent. A dead launcher's file is taken over.
"""

import os
import socket
import time

from dlmjax.runlock import pid_alive as _pid_alive
from dlmjax.study import attempts, layout

HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S


class StudyLocked(RuntimeError):
    pass


def holder_alive(record, now=None) -> bool:
    if not record or record.get("stopped"):
        return False
    if record.get("hostname") == socket.gethostname():
        return _pid_alive(int(record.get("pid", 0)))
    return (now or time.time()) - float(record.get("heartbeat", 0)) < STALE_S


def read(root: str):
    return attempts.read_json(layout.launcher_file(root))


def acquire(root: str) -> dict:
    """Claims the study for this process; StudyLocked names a live holder."""
    current = read(root)
    if current and current.get("pid") != os.getpid() and holder_alive(current):
        raise StudyLocked(f"another launcher runs this study: pid {current.get('pid')} on "
                          f"{current.get('hostname')} (see {layout.launcher_file(root)})")
    record = {"hostname": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "heartbeat": time.time()}
    attempts.write_json(layout.launcher_file(root), record)
    return record


def heartbeat(root: str, record: dict) -> None:
    record["heartbeat"] = time.time()
    attempts.write_json(layout.launcher_file(root), record)


def release(root: str, record: dict) -> None:
    current = read(root)
    if current and current.get("pid") == record["pid"] and (
            current.get("hostname") == record["hostname"]):
        record["heartbeat"] = 0.0
        record["stopped"] = time.time()
        attempts.write_json(layout.launcher_file(root), record)
