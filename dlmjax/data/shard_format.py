"""Writing tokenised shards: parquet (a list<int32> column) or ArrayRecord (raw id bytes).

The bytes depend only on the records and the settings, never on time or machine, so a shard
rebuilt after an interruption is identical to the one an uninterrupted run writes.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from dlmjax import fs

TOKEN_DTYPES = ("uint16", "uint32", "int32")



def check_dtype(token_dtype: str) -> np.dtype:
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"data.token_dtype={token_dtype!r} must be one of {TOKEN_DTYPES}")
    return np.dtype(token_dtype).newbyteorder("<")


def encode_shard(
    records: Sequence[np.ndarray],
    *,
    shard_format: str,
    token_field: str = "tokens",
    token_dtype: str = "uint32",
    row_group_size: int | None = None,
) -> bytes:
    """The bytes of a parquet or ArrayRecord shard holding `records` (deterministic)."""
    if shard_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        lengths = np.array([len(r) for r in records], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = np.concatenate(records).astype(np.int32) if records else np.zeros(0, np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        sink = io.BytesIO()
        pq.write_table(pa.table({token_field: column}), sink, row_group_size=row_group_size)
        return sink.getvalue()
    if shard_format == "array_record":
        from array_record.python.array_record_module import ArrayRecordWriter

        dtype = check_dtype(token_dtype)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "shard.array_record")
            # group_size:1 keeps every record individually addressable (cheap random access).
            writer = ArrayRecordWriter(path, "group_size:1")
            for r in records:
                writer.write(np.asarray(r).astype(dtype).tobytes())
            writer.close()
            with open(path, "rb") as f:
                return f.read()
    raise ValueError(f"shard format {shard_format!r} must be 'parquet' or 'array_record'")


def write_token_shard(
    path: str,
    docs: Iterable[np.ndarray],
    *,
    token_field: str = "tokens",
    token_dtype: str = "uint32",
    row_group_size: int | None = None,
) -> int:
    """Writes id arrays as a .parquet or ArrayRecord shard (local or gs://); returns the count."""
    docs = [np.asarray(d) for d in docs]
    shard_format = "parquet" if path.endswith(".parquet") else "array_record"
    blob = encode_shard(
        docs,
        shard_format=shard_format,
        token_field=token_field,
        token_dtype=token_dtype,
        row_group_size=row_group_size,
    )
    fs.write_bytes_atomic(path, blob)
    return len(docs)
