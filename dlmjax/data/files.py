"""Bring-your-own corpus: finding and reading local files.

Supported inputs: plain text (one document per line), JSONL (one object per line with a text
field) and parquet (a text column); .txt/.jsonl may be gzipped. files_builder.py turns them into
a TFDS ArrayRecord dataset.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def as_path_list(paths: str | Sequence[str]) -> list[str]:
    """Accepts a comma-separated string or a sequence (command-line configs give strings)."""
    if isinstance(paths, str):
        return [p.strip() for p in paths.split(",") if p.strip()]
    return [str(p) for p in paths]


def expand_paths(paths: str | Sequence[str], key: str) -> list[str]:
    """Expands globs to a sorted file list; ValueError naming `key` for no match or empty files."""
    patterns = as_path_list(paths)
    if not patterns:
        raise ValueError(f"{key} is empty: give files or globs")
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise ValueError(f"{key}: {pattern!r} matches no file")
        files.extend(matched)
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"{key}: {f!r} is not a file")
        if os.path.getsize(f) == 0:
            raise ValueError(f"{key}: {f!r} is empty")
    return files


def _open_text(path: str):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.endswith(".gz")
        else open(path, encoding="utf-8")
    )


def read_documents(path: str, text_field: str) -> Iterator[str]:
    """Yields the non-empty documents of one file, in file order."""
    if path.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if text_field not in schema.names:
            raise ValueError(
                f"{path}: no column data.text_field={text_field!r} (has {schema.names})"
            )
        for doc in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist():
            if doc:
                yield doc
    elif path.endswith(JSONL_SUFFIXES):
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path}:{line_no}: expected a JSON object with "
                        f"data.text_field={text_field!r}"
                    ) from e
                if doc:
                    yield doc
    elif path.endswith(TEXT_SUFFIXES):
        with _open_text(path) as f:
            for line in f:
                doc = line.rstrip("\n")
                if doc:
                    yield doc
    else:
        raise ValueError(
            f"{path}: unknown file type; use {TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES}"
        )


def files_fingerprint(files: Sequence[str], text_field: str) -> str:
    """Changes whenever a file is added, removed, rewritten or read through another field."""
    h = hashlib.sha256(text_field.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
