"""Bring-your-own corpus: finding and reading text files, local or in a bucket (`gs://`).

Supported inputs: plain text (one document per line), JSONL (one object per line with a text
field) and parquet (a text column, read one row group at a time); .txt/.jsonl may be gzipped.
files_builder.py turns them into a TFDS ArrayRecord dataset; prepare.py into tokenised shards.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence

from dlmjax import errors, fs

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
IO_THREADS = 16  # bucket metadata requests are latency-bound: issue them in parallel


def as_path_list(paths: str | Sequence[str]) -> list[str]:
    """Accepts a comma-separated string or a sequence (command-line configs give strings)."""
    if isinstance(paths, str):
        return [p.strip() for p in paths.split(",") if p.strip()]
    return [str(p) for p in paths]


def parallel_map(fn: Callable, items: Sequence) -> list:
    """fn over items in threads, results in order (for per-file metadata of many shards)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def expand_paths(paths: str | Sequence[str], key: str) -> list[str]:
    """Expands globs (local or gs://) to a sorted file list, keeping the patterns' order;
    ValueError naming `key` for a pattern without match or an empty file."""
    patterns = as_path_list(paths)
    if not patterns:
        raise ValueError(f"{key} is empty: give files or globs")
    files = []
    for pattern in patterns:
        matched = fs.glob(pattern)
        if not matched:
            raise ValueError(f"{key}: {pattern!r} matches no file")
        files.extend(matched)

    def size_or_none(f: str):
        return fs.size(f) if fs.isfile(f) else None

    for f, size in zip(files, parallel_map(size_or_none, files)):
        if size is None:
            raise ValueError(f"{key}: {f!r} is not a file")
        if size == 0:
            raise ValueError(f"{key}: {f!r} is empty")
    return files


def file_identity(path: str) -> str:
    """Path, size and modification time: changes when the file is rewritten."""
    if fs.is_remote(path):
        st = fs.path(path).stat()
        return f"{path}|{st.length}|{st.mtime}"
    st = os.stat(os.path.expanduser(path))
    return f"{os.path.abspath(os.path.expanduser(path))}|{st.st_size}|{st.st_mtime_ns}"


class CountingReader(io.RawIOBase):
    """A binary file wrapper that counts the bytes read from it (progress of compressed input)."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_text(raw: CountingReader, path: str):
    binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else io.BufferedReader(raw)
    return io.TextIOWrapper(binary, encoding="utf-8")


@errors.reads_file
def read_documents(
    path: str, text_field: str, progress: Callable[[int], None] | None = None
) -> Iterator[str]:
    """Yields the non-empty documents of one file (local or gs://), in file order.

    `progress(n)` is told the number of file bytes read so far (compressed bytes for .gz).
    """
    if not path.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES):
        raise ValueError(
            f"{path}: unknown file type; use {TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES}"
        )
    report = progress or (lambda n: None)
    if path.endswith(PARQUET_SUFFIXES):
        yield from _parquet_documents(path, text_field, report)
        return
    raw = CountingReader(fs.open_file(path, "rb"))
    try:
        with _open_text(raw, path) as f:
            for line_no, line in enumerate(f, 1):
                report(raw.count)
                if path.endswith(TEXT_SUFFIXES):
                    doc = line.rstrip("\n")
                elif not line.strip():
                    continue
                else:
                    try:
                        doc = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(
                            f"{path}:{line_no}: expected a JSON object with "
                            f"data.text_field={text_field!r}"
                        ) from e
                if doc:
                    yield doc
        report(raw.count)
    finally:
        raw.close()


def _parquet_documents(path: str, text_field: str, report) -> Iterator[str]:
    import pyarrow.parquet as pq

    with fs.open_file(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if text_field not in names:
            raise ValueError(f"{path}: no column data.text_field={text_field!r} (has {names})")
        size, groups = fs.size(path), parquet.num_row_groups
        # One row group at a time: memory stays bounded whatever the file's size.
        for group in range(groups):
            docs = parquet.read_row_group(group, columns=[text_field]).column(0).to_pylist()
            report(size * (group + 1) // groups)
            yield from (doc for doc in docs if doc)


def files_fingerprint(files: Sequence[str], text_field: str) -> str:
    """Changes whenever a file is added, removed, rewritten or read through another field."""
    h = hashlib.sha256(text_field.encode())
    for identity in parallel_map(file_identity, list(files)):
        h.update(identity.encode())
    return h.hexdigest()[:16]
