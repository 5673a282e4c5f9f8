"""Pre-tokenised shards: the format large runs use.

ArrayRecord: one record per document or per pre-packed row, each the raw little-endian bytes of a
1-D id array (`token_dtype`). Read in place with random access, so each host reads only the rows
it trains on. Parquet: a list<int> column (`token_field`); loaded into memory, meant for corpora
that fit in RAM. With `append_eos` every record is followed by EOS (records are documents);
without it records are concatenated as they are (records are already packed rows, e.g. 2048-token
rows with documents joined by EOS).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np

from dlmjax.data import packing
from dlmjax.data.tokenizer import EOS_ID

TOKEN_DTYPES = ("uint16", "uint32", "int32")


def write_token_shard(
    path: str,
    docs: Iterable[np.ndarray],
    *,
    token_field: str = "tokens",
    token_dtype: str = "uint32",
) -> int:
    """Writes id arrays as a .parquet or ArrayRecord shard; returns the number of records."""
    docs = [np.asarray(d) for d in docs]
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({token_field: [d.astype(np.int64).tolist() for d in docs]}), path)
    else:
        from array_record.python.array_record_module import ArrayRecordWriter

        # group_size:1 keeps every record individually addressable (cheap random access).
        writer = ArrayRecordWriter(path, "group_size:1")
        for d in docs:
            writer.write(d.astype(np.dtype(token_dtype).newbyteorder("<")).tobytes())
        writer.close()
    return len(docs)


def _check_dtype(token_dtype: str) -> np.dtype:
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"data.token_dtype={token_dtype!r} must be one of {TOKEN_DTYPES}")
    return np.dtype(token_dtype).newbyteorder("<")


def parquet_tokens(files: Sequence[str], token_field: str, append_eos: bool) -> np.ndarray:
    """All records of parquet shards as one uint32 stream (vectorised: no per-row Python)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for path in files:
        if token_field not in pq.read_schema(path).names:
            raise ValueError(f"{path}: no column data.token_field={token_field!r}")
        column = pq.read_table(path, columns=[token_field]).column(token_field).combine_chunks()
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        if len(values) and values.min() < 0:
            raise ValueError(f"{path}: negative token id {int(values.min())}")
        values = values.astype(np.uint32)
        if append_eos:
            ends = np.asarray(column.offsets)[1:]
            values = np.insert(values, ends, EOS_ID)
        parts.append(values)
    return np.concatenate(parts)


class RecordTokens:
    """A stream over ArrayRecord shards, read in place.

    Record k covers stream[offsets[k]:offsets[k+1]]. With `record_length` > 0 the offsets are
    implicit (no scan); otherwise they are computed by one pass over the records and cached.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        token_dtype: str,
        append_eos: bool,
        record_length: int,
        vocab_size: int,
        cache_dir: str,
    ):
        from grain.sources import ArrayRecordDataSource

        self.files = list(files)
        self.dtype = _check_dtype(token_dtype)
        self.append_eos = append_eos
        self.record_length = record_length
        self.vocab_size = vocab_size
        self.source = ArrayRecordDataSource(self.files)
        self.num_records = len(self.source)
        step = record_length + int(append_eos)
        self.offsets = None if record_length > 0 else self._scan_offsets(cache_dir)
        self._num_tokens = self.num_records * step if record_length > 0 else int(self.offsets[-1])

    def _scan_offsets(self, cache_dir: str) -> np.ndarray:
        h = hashlib.sha256(f"{self.dtype}|{self.append_eos}".encode())
        for f in self.files:
            st = os.stat(f)
            h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
        path = os.path.join(cache_dir, f"offsets-{h.hexdigest()[:20]}.npy") if cache_dir else ""
        if path and os.path.exists(path):
            return np.load(path)
        lengths = np.fromiter(
            (len(self.source[k]) // self.dtype.itemsize for k in range(self.num_records)),
            dtype=np.int64,
            count=self.num_records,
        )
        offsets = np.concatenate([[0], np.cumsum(lengths + int(self.append_eos))])
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            np.save(path + ".tmp.npy", offsets)
            os.replace(path + ".tmp.npy", path)
        return offsets

    def __len__(self) -> int:
        return self._num_tokens

    def _record(self, k: int) -> np.ndarray:
        ids = np.frombuffer(self.source[k], dtype=self.dtype)
        if self.record_length > 0 and len(ids) != self.record_length:
            raise ValueError(
                f"record {k} of {self.files} has {len(ids)} tokens, data.record_length="
                f"{self.record_length}"
            )
        packing.check_token_range(ids, self.vocab_size, f"record {k} of {self.files}")
        if self.append_eos:
            ids = np.append(ids, np.asarray(EOS_ID, self.dtype))
        return ids

    def _record_start(self, k: int) -> int:
        if self.offsets is None:
            return k * (self.record_length + int(self.append_eos))
        return int(self.offsets[k])

    def _record_of(self, position: int) -> int:
        if self.offsets is None:
            return position // (self.record_length + int(self.append_eos))
        return int(np.searchsorted(self.offsets, position, side="right")) - 1

    def read(self, start: int, stop: int) -> np.ndarray:
        pieces, position, k = [], start, self._record_of(start)
        while position < stop:
            record, begin = self._record(k), self._record_start(k)
            pieces.append(record[position - begin : stop - begin])
            position = begin + len(record)
            k += 1
        return np.concatenate(pieces).astype(np.uint32)

    def __repr__(self) -> str:
        names = ",".join(os.path.basename(f) for f in self.files)
        return f"RecordTokens({names}, dtype={self.dtype.name}, append_eos={self.append_eos})"
