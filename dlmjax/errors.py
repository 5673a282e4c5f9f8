"""Errors that name what was wrong, and the one place that turns them into a line and an exit code.

Every per-file read goes through `reading(path)`, so whatever the parser raises (a binary or
corrupt file, a torn JSON, a garbage ArrayRecord) comes back as an `InputError` naming the file.
`exit_code_for` / `guarded` are the CLI boundary of dlmjax.main and of tools/*.py: one line
`error: <path or key>: <reason>` on stderr, the traceback only with --debug.

Exit codes: 0 done, 1 failure of the machine (disk full, I/O, an internal error), 2 bad input
(a config key, a file, a flag), 3 a multi-process run lost a process or its coordinator.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import re
import sys
import traceback

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_PEER_LOST = 1, 2, 3


class InputError(ValueError):
    """Bad user input; the message starts with the path or config key."""


class ConfigError(InputError):
    """A bad config value; the message starts with the key (re-exported by dlmjax.config)."""


class PeerLostError(RuntimeError):
    """A multi-process run cannot continue: the message says which process and why."""


class NoSpaceError(OSError):
    """Disk full while writing `filename`."""

    def __init__(self, path):
        super().__init__(errno.ENOSPC, "no space left", path)

    def __str__(self):
        return f"no space left writing {self.filename}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{first} ({name})" if first else name


@contextlib.contextmanager
def reading(path: str, what: str = "read"):
    """Re-raises any failure to read or parse `path` as an InputError that names it.

    Errors that already name the file (or a config key, as ConfigError does) pass unchanged.
    """
    try:
        yield
    except (InputError, NoSpaceError, PeerLostError):
        raise
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    except Exception as e:  # noqa: BLE001 - parsers raise anything (zlib.error, ArrowInvalid...)
        if isinstance(e, ConfigError) or (isinstance(e, ValueError) and str(path) in str(e)):
            raise
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise NoSpaceError(path) from e
        raise InputError(f"{path}: cannot {what}: {_reason(e)}") from e


def reads_file(fn):
    """Decorator for fn(path, ...) that reads `path`: its failures name the path (generator
    functions too, whose errors surface while they are iterated)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(path, *args, **kwargs):
            with reading(path):
                yield from fn(path, *args, **kwargs)

        return generator

    @functools.wraps(fn)
    def wrapper(path, *args, **kwargs):
        with reading(path):
            return fn(path, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def writing(path: str):
    """Turns a full disk while writing `path` into a NoSpaceError naming it."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC and not isinstance(e, NoSpaceError):
            raise NoSpaceError(path) from e
        raise


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _written_path(text: str) -> str | None:
    """The file tensorstore names in 'Failed writing: "<path>"', cut to the checkpoint step
    directory when it lies inside orbax's temporary one."""
    match = re.search(r'Failed writing: "([^"]+)"', text)
    if not match:
        return None
    path = match.group(1)
    tmp = re.match(r"(.*?)\.orbax-checkpoint-tmp", path)
    return tmp.group(1) if tmp else path


def _no_space(exc: BaseException, where: str | None):
    """The disk-full line, when a full disk is behind `exc` (orbax and tensorstore re-raise it as
    other types, so the text is checked too)."""
    for e in _chain(exc):
        if isinstance(e, NoSpaceError):
            return str(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return f"no space left writing {e.filename or where or 'the run directory'}"
        if "No space left on device" in str(e):
            return f"no space left writing {_written_path(str(e)) or where or 'the run directory'}"
    return None


def describe(exc: BaseException, *, where: str | None = None) -> tuple[str, int]:
    """(one line without the 'error: ' prefix, exit code) for an exception at the CLI boundary.

    `where` is the directory being written (the workdir), named when a full disk hides the path.
    """
    full = _no_space(exc, where)
    if full:
        return full, EXIT_FAILURE
    if isinstance(exc, PeerLostError):
        return str(exc), EXIT_PEER_LOST
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError,
                        NotADirectoryError)):
        name = exc.filename or ""
        reason = exc.strerror or str(exc)
        return (f"{name}: {reason}" if name else str(exc)), EXIT_BAD_INPUT
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied", EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or _reason(exc)}", EXIT_FAILURE
    if isinstance(exc, KeyError):
        return f"{exc.args[0] if exc.args else '?'}: missing key (KeyError)", EXIT_FAILURE
    if type(exc).__name__ == "UsageError":  # absl's, for a wrong command line
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, ValueError):  # ConfigError, InputError and the data checks' messages
        return " ".join(str(exc).split("\n")[0:1]) or _reason(exc), EXIT_BAD_INPUT
    return _reason(exc), EXIT_FAILURE


def report(exc: BaseException, *, debug: bool = False, where: str | None = None,
           stream=None) -> int:
    """Prints `error: ...` (after the traceback with debug) and returns the exit code."""
    stream = stream or sys.stderr
    if debug:
        traceback.print_exception(exc, file=stream)
    line, code = describe(exc, where=where)
    hint = "" if debug or code == EXIT_BAD_INPUT else " (--debug shows the traceback)"
    print(f"error: {line}{hint}", file=stream, flush=True)
    return code


def guarded(fn, *args, debug: bool | None = None, where: str | None = None, **kwargs) -> int:
    """Runs fn(*args, **kwargs) at a CLI boundary: 0 when it returns, else the reported code.

    debug=None reads `--debug` (or DLMJAX_DEBUG=1) from sys.argv, for tools with their own parser.
    """
    if debug is None:
        import os

        debug = "--debug" in sys.argv or os.environ.get("DLMJAX_DEBUG") == "1"
    try:
        result = fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - this is the boundary: everything is reported
        return report(e, debug=debug, where=where)
    return result if isinstance(result, int) else 0


def run_absl(main) -> None:
    """`absl.app.run(main)` for tools/*.py, behind the same boundary: a bad flag or input exits 2
    with one line, other failures 1; --debug shows the traceback."""
    from absl import app, flags, logging

    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "Print the full traceback of an error.")
    app.define_help_flags()
    try:
        argv = flags.FLAGS(sys.argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    logging.use_absl_handler()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # as absl.app.run does: tools report with INFO lines
    sys.exit(guarded(main, argv, debug=flags.FLAGS.debug))
