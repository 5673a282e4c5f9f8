"""Where the tokens of a shard lie: its units (ArrayRecord records, parquet row groups).

The layout of a shard comes from its manifest entry, from file metadata when records have a
fixed length, or from one pass over the shard (cached in `cache_dir`). Ids larger than the
vocabulary are caught here when the manifest or the parquet statistics know the largest id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import numpy as np

from dlmjax import errors, fs
from dlmjax.data import files as files_lib


@dataclasses.dataclass
class ShardLayout:
    """Where the tokens of one shard lie: its units (records or row groups) and their offsets.

    Either every unit holds `unit_tokens` tokens except possibly the last (rows of a packed
    stream: no per-unit index needed), or unit u holds [unit_starts[u], unit_starts[u + 1]).
    """

    path: str
    num_tokens: int
    num_units: int
    unit_tokens: int = 0
    unit_starts: np.ndarray | None = None
    max_id: int | None = None  # the largest id, when the manifest or metadata know it

    def locate(self, position: int) -> tuple[int, int]:
        """(unit, its first position) of a position inside the shard."""
        if self.unit_starts is None:
            unit = position // self.unit_tokens
            return unit, unit * self.unit_tokens
        unit = int(np.searchsorted(self.unit_starts, position, side="right")) - 1
        return unit, int(self.unit_starts[unit])

    def unit_length(self, unit: int) -> int:
        if self.unit_starts is None:
            return min(self.unit_tokens, self.num_tokens - unit * self.unit_tokens)
        return int(self.unit_starts[unit + 1] - self.unit_starts[unit])


def starts_of(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])


def _cached_scan(cache_dir: str, identity: str, compute) -> tuple[np.ndarray, int | None]:
    """(per-unit token counts, largest id) from one pass over a shard, cached under cache_dir
    (local or gs://) by the shard's identity (path, size, mtime) and reading settings."""
    if not cache_dir:
        return compute()
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    path = fs.join(cache_dir, f"scan-{digest}.npz")
    if fs.isfile(path):
        cached = np.load(io.BytesIO(fs.read_bytes(path)))
        max_id = int(cached["max_id"])
        return cached["lengths"], (max_id if max_id >= 0 else None)
    lengths, max_id = compute()
    buffer = io.BytesIO()
    np.savez(buffer, lengths=lengths, max_id=np.int64(-1 if max_id is None else max_id))
    fs.write_bytes_atomic(path, buffer.getvalue())
    return lengths, max_id


def open_random_access(path: str):
    """A binary file for seek-and-read access. On a bucket, without read-ahead: each read is
    one ranged request of exactly the bytes asked for (a row group), not a 5 MB block."""
    if not fs.is_remote(path):
        return open(os.path.expanduser(path), "rb")  # noqa: SIM115 - closed by its owner
    import fsspec

    return fsspec.open(path, "rb", cache_type="none").open()


def _token_leaf(metadata, token_field: str) -> int | None:
    """Index of the leaf column holding the ids of list column `token_field`."""
    for i in range(metadata.num_columns):
        if metadata.schema.column(i).path.split(".")[0] == token_field:
            return i
    return None


@errors.reads_file
def parquet_layout(path, *, token_field, append_eos, record_length, cache_dir) -> ShardLayout:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with open_random_access(path) as f:
        parquet = pq.ParquetFile(f)
        metadata = parquet.metadata
        leaf = _token_leaf(metadata, token_field)
        if leaf is None:
            raise ValueError(
                f"{path}: no column data.token_field={token_field!r} "
                f"(has {parquet.schema_arrow.names})"
            )
        rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        if record_length > 0:
            lengths = np.array(rows, dtype=np.int64) * (record_length + int(append_eos))
        else:

            def scan():
                lengths = np.zeros(len(rows), dtype=np.int64)
                for g in range(len(rows)):
                    column = parquet.read_row_group(g, columns=[token_field]).column(0)
                    counted = pc.sum(pc.list_value_length(column)).as_py() or 0
                    lengths[g] = counted + int(append_eos) * len(column)
                return lengths, None  # the statistics below give the largest id

            identity = f"parquet|{files_lib.file_identity(path)}|{token_field}|{append_eos}"
            lengths, _ = _cached_scan(cache_dir, identity, scan)
        stats = [metadata.row_group(g).column(leaf).statistics for g in range(len(rows))]
        known = all(s is not None and s.has_min_max for s in stats) and stats
        max_id = max(int(s.max) for s in stats) if known else None
    starts = starts_of(lengths)
    return ShardLayout(path, int(starts[-1]), len(rows), unit_starts=starts, max_id=max_id)


@errors.reads_file
def record_layout(path, *, dtype, append_eos, record_length, cache_dir) -> ShardLayout:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path, "readahead_buffer_size:0")
    try:
        num_records = reader.num_records()
        if record_length > 0:
            step = record_length + int(append_eos)
            return ShardLayout(path, num_records * step, num_records, unit_tokens=step)

        def scan():  # reads every record once: note the largest id on the way
            lengths, max_id = np.zeros(num_records, dtype=np.int64), -1
            for begin in range(0, num_records, 4096):
                batch = reader.read(list(range(begin, min(begin + 4096, num_records))))
                for k, record in enumerate(batch, begin):
                    ids = np.frombuffer(record, dtype=dtype)
                    lengths[k] = len(ids)
                    max_id = max(max_id, int(ids.max()) if len(ids) else -1)
            return lengths + int(append_eos), (max_id if max_id >= 0 else None)

        identity = f"array_record|{files_lib.file_identity(path)}|{dtype}|{append_eos}"
        lengths, max_id = _cached_scan(cache_dir, identity, scan)
    finally:
        reader.close()
    starts = starts_of(lengths)
    return ShardLayout(path, int(starts[-1]), num_records, unit_starts=starts, max_id=max_id)


def manifest_layout(path: str, manifest: dict, shard: dict) -> ShardLayout:
    if manifest["shard_format"] == "parquet":
        starts = starts_of(shard["row_group_tokens"])
        return ShardLayout(path, int(starts[-1]), len(shard["row_group_tokens"]),
                           unit_starts=starts, max_id=shard["max_id"])
    return ShardLayout(path, int(shard["tokens"]), int(shard["records"]),
                       unit_tokens=int(manifest["row_length"]), max_id=shard["max_id"])
