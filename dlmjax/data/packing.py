"""Token streams and fixed-length rows over them.

Design: every source becomes one flat token stream (documents joined by EOS) and row i of a
pipeline is stream[i*S:(i+1)*S]. Rows are then a random-access data source: shuffling, sharding
by process, resuming after preemption and the held-out split are all plain index arithmetic,
and a checkpointed iterator is just a position. Text is tokenised and packed once per
(source, tokenizer) - in memory for small corpora such as KJV, or into a cache file that is
memory-mapped - and pre-tokenised shards are read in place (tokenized.py).
The final partial row of a stream (fewer than S tokens) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import grain
import numpy as np

from dlmjax import fs
from dlmjax.data import tokenizer as tok_lib

DOCS_PER_ENCODE_CALL = 64


class TokenStream(Protocol):
    """A random-access flat token stream."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class MemoryTokens:
    """A stream held in memory (small text corpora)."""

    def __init__(self, tokens: np.ndarray, name: str):
        self.tokens = tokens
        self.name = name

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.tokens[start:stop]

    def __repr__(self) -> str:
        return f"MemoryTokens({self.name})"


class FileTokens:
    """A stream in a raw uint32 cache file, memory-mapped on first read.

    Pickling sends only the path, so worker processes map the file themselves instead of receiving
    a copy of the whole stream.
    """

    def __init__(self, path: str):
        self.path = path
        self._num_tokens = os.path.getsize(path) // 4
        self._tokens = None

    def __len__(self) -> int:
        return self._num_tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=np.uint32, mode="r")
        return np.asarray(self._tokens[start:stop])

    def __getstate__(self):
        return {"path": self.path, "_num_tokens": self._num_tokens, "_tokens": None}

    def __repr__(self) -> str:
        return f"FileTokens({os.path.basename(self.path)})"


class PackedRows:
    """Rows of `seq_len` tokens over stream[start:stop]: a grain RandomAccessDataSource.

    `start`/`stop` carve train and held-out parts out of one stream without copying it.
    """

    def __init__(self, stream: TokenStream, seq_len: int, start: int = 0, stop: int | None = None):
        self.stream = stream
        self.seq_len = seq_len
        self.start = start
        self.stop = len(stream) if stop is None else stop
        self._num_rows = (self.stop - self.start) // seq_len

    def __len__(self) -> int:
        return self._num_rows

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._num_rows:
            raise IndexError(f"row {index} out of range [0, {self._num_rows})")
        begin = self.start + index * self.seq_len
        return self.stream.read(begin, begin + self.seq_len).astype(np.int32)

    def __repr__(self) -> str:
        # grain compares the repr of sources when restoring checkpoints: keep it stable and
        # specific.
        return (
            f"PackedRows({self.stream!r}, seq_len={self.seq_len}, start={self.start}, "
            f"stop={self.stop})"
        )


def check_token_range(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """ValueError naming `where` when an id is outside [0, vocab_size): the embedding lookup
    would silently clamp it."""
    if len(tokens) == 0:
        return
    hi = int(tokens.max())
    if hi >= vocab_size:
        raise ValueError(
            f"{where}: token id {hi} >= vocab_size {vocab_size}: ids must lie in "
            "[0, model.vocab_size); fix the data or the vocabulary (data.vocab_size, "
            "model.vocab_size)"
        )


class _EncodeWithEos:
    """Grain map: a list of documents -> their ids, each followed by EOS, as one uint32 array.

    Loads the tokenizer lazily so that only the spec (a short string) is pickled to workers.
    """

    def __init__(self, tokenizer_spec: str, special_tokens=""):
        self.tokenizer_spec = tokenizer_spec
        self.special_tokens = special_tokens
        self._tok = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self._tok is None:
            self._tok = tok_lib.load_tokenizer(self.tokenizer_spec, self.special_tokens)
        eos = np.array([tok_lib.EOS_ID], dtype=np.uint32)
        pieces = []
        for ids in tok_lib.encode_documents(self._tok, texts):
            pieces.extend((ids, eos))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)

    def __getstate__(self):
        return {**self.__dict__, "_tok": None}


def _encoded_chunks(
    docs, to_text: Callable[[object], str], encode: _EncodeWithEos, worker_count: int
) -> Iterable[np.ndarray]:
    """Tokenises `docs` (len + getitem) in document order with grain, optionally in workers."""
    ds = (
        grain.MapDataset.source(docs)
        .map(to_text)
        .batch(DOCS_PER_ENCODE_CALL, batch_fn=list)
        .map(encode)
        .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
    )
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


def cache_key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def tokenize_to_stream(
    docs,
    *,
    to_text: Callable[[object], str],
    tokenizer_spec: str,
    description: dict,
    cache_dir: str,
    worker_count: int,
    special_tokens="",
) -> TokenStream:
    """Tokenises + packs documents into one stream, EOS after each document.

    With `cache_dir` the stream is written once to a file named by a hash of `description` (which
    must identify the documents) and the tokenizer; a local cache file is memory-mapped on later
    calls, one in a bucket is read back into memory.
    """
    if len(docs) == 0:
        raise ValueError(f"data source {description} has no documents")
    key = cache_key({**description, "tokenizer": tok_lib.tokenizer_fingerprint(tokenizer_spec)})
    name = f"{description.get('source', 'text')}-{key}"
    encode = _EncodeWithEos(tokenizer_spec, special_tokens)
    if not cache_dir:
        chunks = list(_encoded_chunks(docs, to_text, encode, worker_count))
        return MemoryTokens(np.concatenate(chunks), name)
    path = fs.join(cache_dir, f"tokens-{name}.u32")
    if fs.is_remote(path):
        if not fs.isfile(path):
            chunks = list(_encoded_chunks(docs, to_text, encode, worker_count))
            fs.write_bytes_atomic(path, np.concatenate(chunks).astype("<u4").tobytes())
        return MemoryTokens(np.frombuffer(fs.read_bytes(path), dtype="<u4"), name)
    path = fs.absolute(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Write to a temporary file and rename, so a preempted preparation never leaves a
        # truncated stream that a later run would silently use.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in _encoded_chunks(docs, to_text, encode, worker_count):
                    f.write(chunk.astype("<u4").tobytes())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return FileTokens(path)


def stream_to_array(stream: TokenStream) -> np.ndarray:
    return stream.read(0, len(stream))
