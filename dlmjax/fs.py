"""One path layer for local paths and buckets (`gs://...`), through etils.epath.

Every file the suite reads or writes (workdir, checkpoints, metrics, TensorBoard events, configs,
samples, eval results, tokenizers, data globs, caches) goes through these functions, so a path
may be local or `gs://bucket/...` anywhere. epath serves `gs://` with gcsfs; orbax writes
checkpoints to `gs://` natively. Paths are passed around as strings.

Object stores have no append and no cheap rename (on GCS a rename is a copy plus a delete), but
an object upload is atomic: a reader sees the old object or the whole new one. So
`write_text_atomic` uploads directly on a bucket and writes a temporary file plus `os.replace`
locally, and logs that grow (metrics.jsonl) are rewritten whole rather than appended to.
"""

from __future__ import annotations

import errno
import glob as glob_lib
import os
import re
import tempfile

from etils import epath

from dlmjax import errors

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_WILDCARD = re.compile(r"[*?\[]")


def is_remote(path: str) -> bool:
    """True for `scheme://...` paths (gs://, s3://), False for local ones."""
    return bool(_SCHEME.match(str(path)))


def path(p: str) -> epath.Path:
    return epath.Path(os.path.expanduser(str(p)) if not is_remote(p) else str(p))


def absolute(p: str) -> str:
    """An absolute local path (orbax needs one), or the remote path unchanged."""
    return str(p) if is_remote(p) else os.path.abspath(os.path.expanduser(str(p)))


def join(base: str, *parts: str) -> str:
    return str(path(base).joinpath(*parts)) if parts else str(base)


def exists(p: str) -> bool:
    return path(p).exists()


def isdir(p: str) -> bool:
    return path(p).is_dir()


def isfile(p: str) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def size(p: str) -> int:
    return path(p).stat().length


def makedirs(p: str) -> None:
    path(p).mkdir(parents=True, exist_ok=True)


def open_file(p: str, mode: str = "r"):
    """A file object (text or binary by `mode`); appending is not offered (buckets lack it)."""
    if "a" in mode:
        raise ValueError(f"{p}: append mode is not supported; rewrite the file instead")
    return path(p).open(mode)


def read_text(p: str) -> str:
    return path(p).read_text()


def read_bytes(p: str) -> bytes:
    return path(p).read_bytes()


def write_text_atomic(p: str, text: str) -> None:
    write_bytes_atomic(p, text.encode("utf-8"))


def write_bytes_atomic(p: str, data: bytes) -> None:
    """Readers see the old content or the new, never a torn file."""
    if is_remote(p):
        path(p).write_bytes(data)  # one object upload: atomic on the store's side
        return
    p = absolute(p)
    directory = os.path.dirname(p)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(p)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide shards from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # "no space left writing <p>"
            raise errors.NoSpaceError(p) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy(src: str, dst: str) -> None:
    path(src).copy(path(dst), overwrite=True)


def remove(p: str) -> None:
    q = path(p)
    if q.is_dir():
        q.rmtree()
    elif q.exists():
        q.unlink()


def listdir(p: str) -> list[str]:
    """Names (not paths) in a directory, sorted; [] when it does not exist."""
    q = path(p)
    return sorted(child.name for child in q.iterdir()) if q.is_dir() else []


def glob(pattern: str) -> list[str]:
    """Sorted paths matching a glob (`*`, `?`, `[..]`; `**` only locally), local or in a bucket."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(os.path.expanduser(pattern), recursive=True))
    if not _WILDCARD.search(pattern):
        return [pattern] if exists(pattern) else []
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    first = next(i for i, part in enumerate(parts) if _WILDCARD.search(part))
    if first == 0:
        raise ValueError(f"{pattern}: a wildcard in the bucket name is not supported")
    base = path(f"{scheme}://{'/'.join(parts[:first])}")
    return sorted(str(m) for m in base.glob("/".join(parts[first:])))


def create_exclusive(p: str, data: bytes) -> None:
    """Writes `data` to a new file; FileExistsError if `p` exists (atomic create-if-absent).

    Locally a hard link of a complete temporary file (O_EXCL semantics, never a torn file); in a
    bucket one upload with the precondition "no live generation" (GCS ifGenerationMatch=0).
    """
    if is_remote(p):
        import fsspec

        filesystem, _ = fsspec.core.url_to_fs(str(p))
        try:
            filesystem.pipe_file(str(p), data, mode="create")
        except FileExistsError:
            raise
        except OSError as e:  # gcsfs reports the failed precondition (HTTP 412) as an OSError
            if "412" in str(e) or "recondition" in str(e):
                raise FileExistsError(f"{p}: exists") from None
            raise
        return
    p = absolute(p)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(p), prefix=f".{os.path.basename(p)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, p)  # fails with FileExistsError when another process got there first
    finally:
        os.remove(tmp)
