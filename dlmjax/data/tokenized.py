"""Pre-tokenised shards, read in place: the format large runs use (local or gs:// parquet).

A shard set is one flat token stream: the records of shard 0, then shard 1, ... (each record
followed by EOS when `append_eos`, i.e. records are documents; as they are when records are rows
of an already packed stream, such as the study's 2048-token rows). A shard is read in units -
an ArrayRecord record, a parquet row group - located by an index of token offsets, so a host
reads only the units that hold its rows and memory stays bounded by a few units whatever the
size of the shard set. The index comes from the shards' manifest.json (tools/prepare_data.py),
from file metadata when records have a fixed length, or else from one pass over the shards,
cached in `cache_dir`.

ArrayRecord: each record is the raw little-endian bytes of a 1-D id array (`token_dtype`).
Parquet: a list<int> column (`token_field`); its row-group size bounds what one read decodes.
Ids are checked against the vocabulary: at start-up where the manifest or parquet statistics
know the largest id, and on every read, so an id outside [0, vocab_size) stops the run with
the file's name instead of being clamped by the embedding lookup.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence

import numpy as np

from dlmjax import errors, fs
from dlmjax.data import files as files_lib
from dlmjax.data import manifest as manifest_lib
from dlmjax.data import packing
from dlmjax.data.shard_format import TOKEN_DTYPES, check_dtype, encode_shard, write_token_shard
from dlmjax.data.shard_index import (
    ShardLayout,
    manifest_layout,
    open_random_access,
    parquet_layout,
    record_layout,
    starts_of,
)
from dlmjax.data.tokenizer import EOS_ID

__all__ = ["TOKEN_DTYPES", "encode_shard", "write_token_shard"]
UNIT_CACHE = 4  # decoded units kept per stream (a row of S tokens spans at most a few)
OPEN_FILES = 16  # open shard readers kept per stream; the rest are reopened on demand


# ----------------------------------------------------------------------------------- stream


class ShardTokens:
    """A random-access token stream over shards; subclasses read one unit of one shard."""

    kind = "shards"
    unit_name = "unit"

    def __init__(self, layouts: Sequence[ShardLayout], *, vocab_size: int, append_eos: bool):
        self.layouts = list(layouts)
        self.vocab_size = vocab_size
        self.append_eos = append_eos
        self.shard_starts = starts_of([layout.num_tokens for layout in self.layouts])
        h = hashlib.sha256()
        for layout in self.layouts:
            h.update(f"{layout.path}|{layout.num_tokens}|{layout.num_units}".encode())
        self.digest = h.hexdigest()[:16]
        self._init_caches()

    def _init_caches(self) -> None:
        self._lock = threading.Lock()
        self._units: collections.OrderedDict = collections.OrderedDict()
        self._handles: collections.OrderedDict = collections.OrderedDict()

    def __getstate__(self):
        # Worker processes reopen files themselves; caches and locks do not travel.
        state = dict(self.__dict__)
        for key in ("_lock", "_units", "_handles"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_caches()

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def _handle(self, shard: int):
        """(reader, lock) of a shard; at most OPEN_FILES stay open (dropped ones close on GC)."""
        with self._lock:
            if shard in self._handles:
                self._handles.move_to_end(shard)
                return self._handles[shard]
        entry = (self._open(self.layouts[shard].path), threading.Lock())
        with self._lock:
            entry = self._handles.setdefault(shard, entry)
            while len(self._handles) > OPEN_FILES:
                self._handles.popitem(last=False)
        return entry

    def _unit(self, shard: int, unit: int) -> np.ndarray:
        key = (shard, unit)
        with self._lock:
            if key in self._units:
                self._units.move_to_end(key)
                return self._units[key]
        layout = self.layouts[shard]
        with errors.reading(layout.path):
            reader, lock = self._handle(shard)
            with lock:
                ids = self._load(reader, shard, unit)
        where = f"{layout.path} ({self.unit_name} {unit})"
        if len(ids) != layout.unit_length(unit):
            raise ValueError(
                f"{where}: holds {len(ids)} tokens, its index says {layout.unit_length(unit)} "
                "(the shard changed after it was indexed, or data.record_length is wrong)"
            )
        packing.check_token_range(ids, self.vocab_size, where)
        with self._lock:
            self._units[key] = ids
            while len(self._units) > UNIT_CACHE:
                self._units.popitem(last=False)
        return ids

    def read(self, start: int, stop: int) -> np.ndarray:
        pieces, position = [], start
        while position < stop:
            shard = int(np.searchsorted(self.shard_starts, position, side="right")) - 1
            local = position - int(self.shard_starts[shard])
            unit, unit_start = self.layouts[shard].locate(local)
            ids = self._unit(shard, unit)
            piece = ids[local - unit_start : local - unit_start + (stop - position)]
            pieces.append(piece)
            position += len(piece)
        return np.concatenate(pieces).astype(np.uint32) if pieces else np.zeros(0, np.uint32)

    def __repr__(self) -> str:
        # grain compares the repr of sources on restore: stable and specific to the shard set.
        first = self.layouts[0].path.rsplit("/", 1)[-1]
        return (
            f"{self.kind}({len(self.layouts)} shards from {first}, {len(self)} tokens, "
            f"append_eos={self.append_eos}, {self.digest})"
        )


class ParquetTokens(ShardTokens):
    kind = "ParquetTokens"
    unit_name = "row group"

    def __init__(self, layouts, *, token_field: str, vocab_size: int, append_eos: bool):
        self.token_field = token_field
        super().__init__(layouts, vocab_size=vocab_size, append_eos=append_eos)

    def _open(self, path: str):
        import pyarrow.parquet as pq

        return pq.ParquetFile(open_random_access(path))

    def _load(self, parquet, shard: int, unit: int) -> np.ndarray:
        import pyarrow.compute as pc

        column = parquet.read_row_group(unit, columns=[self.token_field]).column(0)
        column = column.combine_chunks()
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        if len(values) and values.min() < 0:
            raise ValueError(
                f"{self.layouts[shard].path} (row group {unit}): negative token id "
                f"{int(values.min())}"
            )
        values = values.astype(np.uint32)
        if self.append_eos:
            values = np.insert(values, np.asarray(column.offsets)[1:], EOS_ID)
        return values


class RecordTokens(ShardTokens):
    kind = "RecordTokens"
    unit_name = "record"

    def __init__(self, layouts, *, token_dtype: str, vocab_size: int, append_eos: bool):
        self.dtype = check_dtype(token_dtype)
        super().__init__(layouts, vocab_size=vocab_size, append_eos=append_eos)

    def _open(self, path: str):
        from array_record.python.array_record_module import ArrayRecordReader

        return ArrayRecordReader(path, "readahead_buffer_size:0", file_reader_buffer_size=32768)

    def _load(self, reader, shard: int, unit: int) -> np.ndarray:
        ids = np.frombuffer(reader.read([unit])[0], dtype=self.dtype)
        if self.dtype.kind == "i" and len(ids) and ids.min() < 0:
            raise ValueError(f"{self.layouts[shard].path} (record {unit}): negative token id "
                             f"{int(ids.min())}")
        if self.append_eos:
            ids = np.append(ids, np.asarray(EOS_ID, self.dtype))
        return ids


# ----------------------------------------------------------------------------------- opening


def expand_shard_paths(paths, key: str) -> list[str]:
    """Files of data.paths: globs, files, or directories with a manifest.json (all its shards)."""
    patterns = files_lib.as_path_list(paths)
    if not patterns:
        raise ValueError(f"{key} is empty: give shard files, globs or a prepared directory")
    found = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?[") and fs.isdir(pattern):
            manifest = manifest_lib.read_manifest(pattern.rstrip("/"))
            if manifest is None:
                raise ValueError(
                    f"{key}: {pattern} is a directory without {manifest_lib.MANIFEST_FILE}; "
                    f"give its shards as a glob (e.g. {pattern.rstrip('/')}/*.parquet)"
                )
            shards = manifest_lib.shard_paths(manifest)
            missing = [s for s, ok in zip(shards, files_lib.parallel_map(fs.isfile, shards))
                       if not ok]
            if missing:
                raise ValueError(f"{key}: {missing[0]} is listed in {pattern}'s manifest but "
                                 f"missing ({len(missing)} shards missing)")
            found.extend(shards)
        else:
            found.extend(files_lib.expand_paths([pattern], key))
    return found


def _settings(data_cfg, manifests: dict, files: list[str], key: str) -> dict:
    """Format of the shards: from their manifests when they have them, else from the config."""
    if not manifests:
        return {"token_field": data_cfg.token_field, "token_dtype": data_cfg.token_dtype,
                "append_eos": bool(data_cfg.append_eos), "record_length": data_cfg.record_length}
    if len(manifests) != len(files):
        bare = next(f for f in files if f not in manifests)
        raise ValueError(f"{key}: mixes shards with a manifest and without ({bare})")
    settings = {(m["token_field"], m["token_dtype"], m["append_eos"], m["row_length"])
                for m, _ in manifests.values()}
    if len(settings) > 1:
        raise ValueError(f"{key}: the shards' manifests disagree on their format: {settings}")
    token_field, token_dtype, append_eos, row_length = settings.pop()
    return {"token_field": token_field, "token_dtype": token_dtype, "append_eos": append_eos,
            "record_length": row_length}


def open_token_stream(data_cfg, paths, key: str, vocab_size: int) -> ShardTokens:
    """The token stream of the shards named by `paths` (the config key `key`)."""
    shard_files = expand_shard_paths(paths, key)
    parquet = [f.endswith(".parquet") for f in shard_files]
    if any(parquet) and not all(parquet):
        raise ValueError(f"{key}: mix of parquet and ArrayRecord shards; use one format")
    if not all(parquet) and any(fs.is_remote(f) for f in shard_files):
        raise ValueError(
            f"{key}: ArrayRecord shards cannot be read from a bucket here; mount it with gcsfuse "
            "and give the local path, or prepare parquet shards (tools/prepare_data.py "
            "--format=parquet)"
        )
    manifests = manifest_lib.manifests_of(shard_files, key)
    settings = _settings(data_cfg, manifests, shard_files, key)
    dtype = check_dtype(settings["token_dtype"])

    def layout(path: str) -> ShardLayout:
        if path in manifests:
            return manifest_layout(path, *manifests[path])
        common = {"append_eos": settings["append_eos"], "cache_dir": data_cfg.cache_dir,
                  "record_length": settings["record_length"]}
        if path.endswith(".parquet"):
            return parquet_layout(path, token_field=settings["token_field"], **common)
        return record_layout(path, dtype=dtype, **common)

    layouts = files_lib.parallel_map(layout, shard_files)
    for shard in layouts:
        if shard.max_id is not None and shard.max_id >= vocab_size:
            raise ValueError(
                f"{shard.path}: token id {shard.max_id} >= vocab_size {vocab_size}: ids must lie "
                "in [0, model.vocab_size); fix the data or the vocabulary (data.vocab_size, "
                "model.vocab_size)"
            )
    common = {"vocab_size": vocab_size, "append_eos": settings["append_eos"]}
    if all(parquet):
        return ParquetTokens(layouts, token_field=settings["token_field"], **common)
    return RecordTokens(layouts, token_dtype=settings["token_dtype"], **common)
