"""Multi-process start-up, and a fast, one-line end when a process or the coordinator is lost.

jax's coordination service notices a dead process only after its heartbeat timeout and then
aborts the survivors with a C++ stack trace; a lost coordinator aborts them at once. Here:
- the coordinator binds only the host it was given (jax's default is every interface);
- each process publishes a counter in the service's key-value store every second, and a watchdog
  thread ends the process (exit 3) when a peer's counter stops for `heartbeat_timeout` seconds or
  the coordinator stops answering;
- jax's own abort (SIGABRT) is caught at the C level and replaced by the same one line, naming the
  process that went silent when the watchdog saw it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import threading
import time

from dlmjax.errors import EXIT_PEER_LOST, InputError, PeerLostError

_POLL_S = 1.0
_STATE = {}  # process_id, num_processes, coordinator, heartbeat_timeout, last_seen, coordinator_ok
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_handler_ref = []  # keeps the C callback alive


def check_flags(coordinator, num_processes, process_id, distributed, init_timeout,
                heartbeat_timeout) -> bool:
    """InputError for an inconsistent set of multi-process flags; True when the run is one."""
    given = [name for name, value in (("--num_processes", num_processes),
                                      ("--process_id", process_id)) if value is not None]
    if given and not coordinator and not distributed:
        raise InputError(f"{given[0]}: given without --coordinator_address (or --distributed): "
                         "each process would train alone")
    if coordinator:
        if num_processes is None or process_id is None:
            raise InputError("--coordinator_address: needs --num_processes and --process_id")
        if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator):
            raise InputError(f"--coordinator_address: {coordinator!r} is not host:port")
    if num_processes is not None and num_processes < 1:
        raise InputError(f"--num_processes: must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and \
            not 0 <= process_id < num_processes:
        raise InputError(f"--process_id: must be in [0, {num_processes}), got {process_id}")
    for name, value in (("--init_timeout", init_timeout),
                        ("--heartbeat_timeout", heartbeat_timeout)):
        if value < 1:
            raise InputError(f"{name}: must be >= 1 second, got {value}")
    return bool(coordinator) or distributed


def _die(reason: str) -> None:
    # On a line of its own: a progress bar may have left the cursor mid-line.
    os.write(2, f"\nerror: process {_STATE.get('process_id', '?')}: {reason}\n".encode())
    os._exit(EXIT_PEER_LOST)


def _verdict() -> str:
    """Which process went silent, from the watchdog's view (used when jax aborts first)."""
    now, me = time.monotonic(), _STATE["process_id"]
    if me != 0 and (now - _STATE["coordinator_ok"] > 2 * _POLL_S or not _reachable()):
        return f"lost the coordinator (process 0 at {_STATE['coordinator']})"
    stale = sorted(((now - seen, peer) for peer, seen in _STATE["last_seen"].items()
                    if peer != me), reverse=True)
    if stale and stale[0][0] > 2 * _POLL_S:
        return f"process {stale[0][1]} stopped responding ({stale[0][0]:.0f} s without heartbeat)"
    return "the distributed runtime reported a dead process or a lost coordinator"


def _reachable() -> bool:
    host, port = _STATE["coordinator"].rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
        return True
    except OSError:
        return False


def _on_abort(signum):
    _die(_STATE["starting"] if "starting" in _STATE else _verdict())


def _install_abort_handler() -> None:
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, _HANDLER_TYPE]
    handler = _HANDLER_TYPE(_on_abort)
    _handler_ref.append(handler)
    libc.signal(signal.SIGABRT, handler)


def _watch(client) -> None:
    me, n = _STATE["process_id"], _STATE["num_processes"]
    timeout, counters, beat = _STATE["heartbeat_timeout"], {}, 0
    while True:
        beat += 1
        try:
            client.key_value_set(f"dlmjax_alive/{me}", str(beat), allow_overwrite=True)
            entries = dict(client.key_value_dir_get("dlmjax_alive/"))
            _STATE["coordinator_ok"] = now = time.monotonic()
            for peer in range(n):
                value = entries.get(f"dlmjax_alive/{peer}")
                if value is not None and counters.get(peer) != value:
                    counters[peer], _STATE["last_seen"][peer] = value, now
        except Exception:  # noqa: BLE001 - an unreachable service is what is being watched
            now = time.monotonic()
        if me != 0 and now - _STATE["coordinator_ok"] > timeout:
            _die(f"lost the coordinator (process 0 at {_STATE['coordinator']}): no answer for "
                 f"{timeout} s")
        for peer, seen in _STATE["last_seen"].items():
            if peer != me and now - seen > timeout:
                _die(f"process {peer} stopped responding ({now - seen:.0f} s without heartbeat)")
        time.sleep(_POLL_S)


def initialize(coordinator, num_processes, process_id, *, init_timeout, heartbeat_timeout):
    """jax.distributed.initialize bound to the given host, plus the watchdog (PeerLostError when
    the coordinator cannot be reached within init_timeout)."""
    import jax

    kwargs = dict(initialization_timeout=int(init_timeout),
                  # jax's own detection comes later: the watchdog names the lost process first.
                  heartbeat_timeout_seconds=int(heartbeat_timeout) + 10)
    if coordinator:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes,
                      process_id=process_id, coordinator_bind_address=coordinator)
    # jax aborts the process when the coordinator cannot be reached: that becomes this line.
    where = coordinator or "the auto-detected coordinator"
    _STATE.update(process_id=process_id if process_id is not None else "?",
                  starting=f"cannot start with the coordinator at {where} within "
                           f"--init_timeout={init_timeout} s")
    _install_abort_handler()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - jax raises several types for the same failure
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerLostError(f"process {_STATE['process_id']}: {_STATE.pop('starting')}: "
                            f"{first}") from e
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    now = time.monotonic()
    _STATE.update(process_id=jax.process_index(), num_processes=jax.process_count(),
                  coordinator=coordinator or jax_distributed.global_state.coordinator_address,
                  heartbeat_timeout=heartbeat_timeout, coordinator_ok=now,
                  last_seen={peer: now for peer in range(jax.process_count())})
    del _STATE["starting"]
    threading.Thread(target=_watch, args=(client,), daemon=True, name="dlmjax-watchdog").start()


def active() -> bool:
    return "last_seen" in _STATE


_PEER_FAILURE = re.compile(r"Gloo|closed by peer|Connection reset|UNAVAILABLE|DEADLINE_EXCEEDED|"
                           r"coordination service", re.IGNORECASE)


def explain(exc: BaseException) -> None:
    """In a multi-process run, an exception that looks like a lost peer waits for the watchdog's
    verdict (which exits 3 with its line); else PeerLostError with the collective's message."""
    if not active() or not _PEER_FAILURE.search(str(exc)):
        return
    deadline = time.monotonic() + 2 * _STATE["heartbeat_timeout"] + 5
    while time.monotonic() < deadline:
        time.sleep(_POLL_S)
    first = str(exc).strip().splitlines()[0]
    raise PeerLostError(f"process {_STATE['process_id']}: a collective failed: {first}") from exc
