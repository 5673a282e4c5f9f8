"""The grain pipeline: source -> token stream -> rows of S -> shuffle -> process shard -> batch.

Order of the training data. Epoch e visits every row of the training stream once, in the
permutation seeded by (seed + e). Global batch t is positions [t*G, (t+1)*G) of that endless
sequence (G = batch_size * process_count); process p gets the p-th slice of b = batch_size rows.
So the union of the processes' batches at step t is the batch a single process with batch G would
see: the data order does not depend on the number of hosts, each host reads only its own rows,
and the iterator state is a position, which `get_state`/`set_state` and orbax
`grain.checkpoint.CheckpointSave/Restore` carry across preemption. Synthetic sources are
infinite (row i is generated from its own key) and need no shuffle.
"""

from __future__ import annotations

import os
import sys
import time

import grain
import ml_collections
import numpy as np

from dlmjax.data import files as files_lib
from dlmjax.data import kjv, packing, synthetic, tokenized
from dlmjax.data import tokenizer as tok_lib
from dlmjax.data.config import SOURCES

TEXT_SOURCES = ("kjv", "tfds", "files")
SYNTHETIC_SOURCES = ("synthetic_markov", "synthetic_iid")
EVAL_SHUFFLE_SEED = 0  # fixed: every run evaluates on the same held-out rows
TRAIN, EVAL = "train", "eval"


def _check_source(data_cfg) -> str:
    if data_cfg.source not in SOURCES:
        raise ValueError(f"data.source={data_cfg.source!r} must be one of {SOURCES}")
    return data_cfg.source


def vocab_size_of(data_cfg) -> int:
    """The model's vocabulary size V for this data config (ids 0-3 are the special tokens)."""
    source = _check_source(data_cfg)
    if source in SYNTHETIC_SOURCES:
        if data_cfg.vocab_size <= tok_lib.NUM_SPECIAL + 2:
            raise ValueError(
                f"data.vocab_size={data_cfg.vocab_size} must be set > {tok_lib.NUM_SPECIAL + 2} "
                f"for data.source={source!r}"
            )
        return int(data_cfg.vocab_size)
    if source == "tokenized" and data_cfg.vocab_size > 0:
        return int(data_cfg.vocab_size)
    tok_size = tok_lib.load_tokenizer(data_cfg.tokenizer).get_vocab_size()
    if data_cfg.vocab_size == 0:
        return tok_size
    if data_cfg.vocab_size < tok_size:
        raise ValueError(
            f"data.vocab_size={data_cfg.vocab_size} is smaller than the tokenizer's {tok_size}"
        )
    return int(data_cfg.vocab_size)


# ------------------------------------------------------------------------------------ text


class TextField:
    """Grain map from a source record to its text ("" = the record is the text; "a/b" = nested)."""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, record) -> str:
        for key in self.field.split("/") if self.field else ():
            if not isinstance(record, dict) or key not in record:
                have = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"data.text_field={self.field!r}: no {key!r} in a record (has {have})"
                )
            record = record[key]
        return record.decode("utf-8") if isinstance(record, bytes) else str(record)


class DocRange:
    """Documents [start, stop) of a random-access source (carves held-out documents off)."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.source[self.start + index]

    def __repr__(self) -> str:
        return f"DocRange({self.source!r}, {self.start}, {self.stop})"


def _heldout_cut(num_items: int, fraction: float, what: str) -> int:
    """Index where the held-out tail starts: the last `fraction` of the items (at least one)."""
    if not 0 < fraction < 1:
        raise ValueError(f"data.heldout_fraction={fraction} must be in (0, 1)")
    if num_items < 2:
        raise ValueError(f"{what} has {num_items} items: too few to hold any out")
    return num_items - max(1, round(fraction * num_items))


def _open_tfds(data_cfg, split: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            data_cfg.tfds_name, split=split, data_dir=data_cfg.data_dir or None, download=False
        )
    except Exception as e:  # tfds raises several unrelated types for "not there"
        raise ValueError(
            f"data.tfds_name={data_cfg.tfds_name!r} split {split!r} cannot be opened from data_dir "
            f"{data_cfg.data_dir or '(tfds default)'!r}; it must be prepared beforehand with "
            f"file_format=array_record or parquet (no download happens here). Cause: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def _text_docs(data_cfg, part: str):
    """(documents, text extractor, cache description) of the train or held-out part."""
    source = data_cfg.source
    if source == "kjv":
        split = "train" if part == TRAIN else "heldout"
        return kjv.kjv_chapters(split), TextField(""), {"source": "kjv", "split": split}
    if source == "tfds":
        if not data_cfg.tfds_name:
            raise ValueError("data.tfds_name must be set for data.source='tfds'")
        description = {
            "source": "tfds",
            "name": data_cfg.tfds_name,
            "data_dir": os.path.abspath(data_cfg.data_dir) if data_cfg.data_dir else "",
            "text_field": data_cfg.text_field,
        }
        if data_cfg.eval_split:
            split = data_cfg.train_split if part == TRAIN else data_cfg.eval_split
            docs = _open_tfds(data_cfg, split)
            return (
                docs,
                TextField(data_cfg.text_field),
                {**description, "split": split, "num_docs": len(docs)},
            )
        docs = _open_tfds(data_cfg, data_cfg.train_split)
        description["split"] = data_cfg.train_split
    elif source == "files":
        train_files = files_lib.expand_paths(data_cfg.paths, "data.paths")
        eval_files = (
            files_lib.expand_paths(data_cfg.eval_paths, "data.eval_paths")
            if files_lib.as_path_list(data_cfg.eval_paths)
            else []
        )
        from dlmjax.data import files_builder

        builder = files_builder.prepare_local_files(
            train_files, eval_files, data_cfg.text_field, data_cfg.data_dir
        )
        description = {"source": "files", "dataset": builder.builder_config.name}
        if eval_files:
            split = "train" if part == TRAIN else "eval"
            return (
                builder.as_data_source(split=split),
                TextField("text"),
                {**description, "split": split},
            )
        docs = builder.as_data_source(split="train")
        description["split"] = "train"
    else:
        raise ValueError(f"data.source={source!r} is not a text source")
    cut = _heldout_cut(len(docs), data_cfg.heldout_fraction, f"data source {description}")
    start, stop = (0, cut) if part == TRAIN else (cut, len(docs))
    text_field = data_cfg.text_field if source == "tfds" else "text"
    return (
        DocRange(docs, start, stop),
        TextField(text_field),
        {**description, "range": [start, stop]},
    )


def _require_parsed_flags(data_cfg) -> None:
    """Grain worker processes read absl flags; fail early with a clear message instead."""
    from absl import flags

    if data_cfg.worker_count > 0 and not flags.FLAGS.is_parsed():
        raise ValueError(
            f"data.worker_count={data_cfg.worker_count} starts worker processes, which need absl "
            "flags parsed: run under absl.app.run or call absl.flags.FLAGS(sys.argv) first"
        )


def packed_rows(data_cfg, *, split: str, seq_len: int) -> packing.PackedRows:
    """Rows of `seq_len` tokens of the "train" or "eval" part of a text or tokenized source.

    `rows.stream` is the packed token stream (documents joined by EOS); rows.start/stop delimit
    the part, so `rows.stop - rows.start` is the part's token count.
    """
    source = _check_source(data_cfg)
    if split not in (TRAIN, EVAL):
        raise ValueError(f"split={split!r} must be {TRAIN!r} or {EVAL!r}")
    if source in SYNTHETIC_SOURCES:
        raise ValueError(f"data.source={source!r} is generated on the fly and has no packed rows")
    _require_parsed_flags(data_cfg)
    return _token_rows(data_cfg, split, seq_len, vocab_size_of(data_cfg))


def _token_rows(data_cfg, part: str, seq_len: int, vocab_size: int) -> packing.PackedRows:
    if data_cfg.source in TEXT_SOURCES:
        docs, to_text, description = _text_docs(data_cfg, part)
        stream = packing.tokenize_to_stream(
            docs,
            to_text=to_text,
            tokenizer_spec=data_cfg.tokenizer,
            description=description,
            cache_dir=data_cfg.cache_dir,
            worker_count=data_cfg.worker_count,
        )
        return packing.PackedRows(stream, seq_len)
    # Pre-tokenised shards.
    eval_given = bool(files_lib.as_path_list(data_cfg.eval_paths))
    key = "data.eval_paths" if part == EVAL and eval_given else "data.paths"
    stream = _tokenized_stream(
        data_cfg,
        data_cfg.eval_paths if key == "data.eval_paths" else data_cfg.paths,
        key,
        vocab_size,
    )
    if eval_given:
        return packing.PackedRows(stream, seq_len)
    cut = _heldout_cut(len(stream), data_cfg.heldout_fraction, f"{key} token stream")
    return packing.PackedRows(stream, seq_len, *((0, cut) if part == TRAIN else (cut, len(stream))))


def _tokenized_stream(data_cfg, paths, key: str, vocab_size: int) -> packing.TokenStream:
    shard_files = files_lib.expand_paths(paths, key)
    parquet = [f.endswith(".parquet") for f in shard_files]
    if any(parquet) and not all(parquet):
        raise ValueError(f"{key}: mix of parquet and ArrayRecord shards; use one format")
    if all(parquet):
        tokens = tokenized.parquet_tokens(shard_files, data_cfg.token_field, data_cfg.append_eos)
        packing.check_token_range(tokens, vocab_size, key)
        return packing.MemoryTokens(tokens, f"parquet-{packing.cache_key(shard_files)}")
    return tokenized.RecordTokens(
        shard_files,
        token_dtype=data_cfg.token_dtype,
        append_eos=data_cfg.append_eos,
        record_length=data_cfg.record_length,
        vocab_size=vocab_size,
        cache_dir=data_cfg.cache_dir,
    )


# ------------------------------------------------------------------------------- synthetic


class SyntheticBatches:
    """Per-process batches of an infinite synthetic stream: a grain RandomAccessDataSource.

    Batch t of process p holds global rows (t*P + p)*b ... +b, so the global batch at step t does
    not depend on the number of processes; a whole batch is generated in one vectorised pass.
    """

    def __init__(self, data_cfg, *, seq_len, batch_size, key, process_index, process_count):
        self.source = data_cfg.source
        self.seq_len, self.batch_size, self.key = seq_len, batch_size, tuple(key)
        self.process_index, self.process_count = process_index, process_count
        vocab_size = vocab_size_of(data_cfg)
        if self.source == "synthetic_markov":
            self.model = synthetic.make_markov_chain(
                vocab_size, data_cfg.markov_branching, data_cfg.synthetic_seed
            )
        else:
            self.model = synthetic.iid_distribution(vocab_size, data_cfg.iid_zipf_exponent)

    def __len__(self) -> int:
        # Effectively infinite; bounded so every global row index fits in int64.
        return sys.maxsize // (self.batch_size * self.process_count)

    def __getitem__(self, t: int) -> dict[str, np.ndarray]:
        first = (t * self.process_count + self.process_index) * self.batch_size
        row_ids = np.arange(first, first + self.batch_size)
        sample = (
            synthetic.sample_markov_rows
            if self.source == "synthetic_markov"
            else synthetic.sample_iid_rows
        )
        return {"tokens": sample(self.model, row_ids, self.seq_len, key=self.key)}

    def __repr__(self) -> str:
        return (
            f"SyntheticBatches({self.source}, key={self.key}, seq_len={self.seq_len}, "
            f"batch_size={self.batch_size}, process={self.process_index}/{self.process_count})"
        )


def known_entropy(data_cfg, seq_len: int) -> dict[str, float]:
    """True entropies (nats/token) of a synthetic source: the irreducible loss.

    entropy_rate: per token given the full past; row_entropy_per_token: of a whole row of
    `seq_len` tokens divided by seq_len (what a perfect model of independent rows achieves).
    """
    vocab_size = vocab_size_of(data_cfg)
    if data_cfg.source == "synthetic_markov":
        chain = synthetic.make_markov_chain(
            vocab_size, data_cfg.markov_branching, data_cfg.synthetic_seed
        )
        return {
            "entropy_rate": synthetic.markov_entropy_rate(chain),
            "row_entropy_per_token": synthetic.markov_row_entropy(chain, seq_len),
        }
    if data_cfg.source == "synthetic_iid":
        h = synthetic.iid_entropy(
            synthetic.iid_distribution(vocab_size, data_cfg.iid_zipf_exponent)
        )
        return {"entropy_rate": h, "row_entropy_per_token": h}
    raise ValueError(f"data.source={data_cfg.source!r} has no known entropy (synthetic only)")


# -------------------------------------------------------------------------------- pipeline


def _stack_rows(rows) -> dict[str, np.ndarray]:
    return {"tokens": np.stack(rows)}


def _check_shape_args(seq_len, batch_size, process_index, process_count) -> None:
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )


def _too_small(rows: packing.PackedRows, needed_rows: int, what: str) -> ValueError:
    have = rows.stop - rows.start
    return ValueError(
        f"{what}: found {have} tokens ({len(rows)} rows of {rows.seq_len}), need at least "
        f"{needed_rows * rows.seq_len} tokens ({needed_rows} rows of {rows.seq_len})"
    )


def make_train_dataset(
    data_cfg,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The infinite training IterDataset of this process; see the module docstring for the order."""
    _check_shape_args(seq_len, batch_size, process_index, process_count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**32)")
    source = _check_source(data_cfg)
    _require_parsed_flags(data_cfg)
    if source in SYNTHETIC_SOURCES:
        batches = SyntheticBatches(
            data_cfg,
            seq_len=seq_len,
            batch_size=batch_size,
            key=synthetic.row_key(data_cfg.synthetic_seed, synthetic.TRAIN_STREAM, seed),
            process_index=process_index,
            process_count=process_count,
        )
        ds = grain.MapDataset.source(batches)
    else:
        rows = packed_rows(data_cfg, split=TRAIN, seq_len=seq_len)
        global_batch = batch_size * process_count
        if len(rows) < global_batch:
            raise _too_small(rows, global_batch, f"data.source={source!r} training data")
        ds = (
            grain.MapDataset.source(rows)
            .shuffle(seed=seed)  # reshuffled every epoch: epoch e uses seed + e
            .repeat()
            .batch(batch_size, drop_remainder=True, batch_fn=_stack_rows)
        )[process_index::process_count]
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.prefetch)
    )
    if data_cfg.worker_count > 0:
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_cfg.worker_count, per_worker_buffer_size=data_cfg.prefetch
            )
        )
    return iter_ds


def make_train_iterator(data_cfg, **kwargs) -> grain.DatasetIterator:
    """Checkpointable iterator of {"tokens": int32 [batch_size, seq_len]}, batch_size per process.

    Takes make_train_dataset's arguments. Save/restore with `it.get_state()`/`it.set_state(state)`
    or orbax `grain.checkpoint.CheckpointSave(it)`/`CheckpointRestore(it)`.
    """
    return iter(make_train_dataset(data_cfg, **kwargs))


def make_eval_batches(
    data_cfg,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """The fixed held-out batches of this process: a lazy, re-iterable sequence of `num_batches`
    dicts {"tokens": int32 [batch_size, seq_len]}, identical for every run and training seed."""
    _check_shape_args(seq_len, batch_size, process_index, process_count)
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches} must be >= 1")
    source = _check_source(data_cfg)
    _require_parsed_flags(data_cfg)
    if source in SYNTHETIC_SOURCES:
        batches = SyntheticBatches(
            data_cfg,
            seq_len=seq_len,
            batch_size=batch_size,
            key=synthetic.row_key(data_cfg.synthetic_seed, synthetic.EVAL_STREAM),
            process_index=process_index,
            process_count=process_count,
        )
        return grain.MapDataset.source(batches)[:num_batches]
    rows = packed_rows(data_cfg, split=EVAL, seq_len=seq_len)
    needed = num_batches * batch_size * process_count
    if len(rows) < needed:
        raise _too_small(
            rows, needed, f"data.source={source!r} held-out data ({num_batches} batches)"
        )
    # A fixed shuffle so that a few batches sample the whole held-out text, not its first pages.
    ds = (
        grain.MapDataset.source(rows)
        .shuffle(seed=EVAL_SHUFFLE_SEED)
        .batch(batch_size, drop_remainder=True, batch_fn=_stack_rows)
    )
    return ds[process_index::process_count][:num_batches]


def benchmark_pipeline(
    data_cfg: ml_collections.ConfigDict | None = None,
    *,
    seq_len: int = 256,
    batch_size: int = 32,
    num_batches: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Tokens/s the training iterator delivers (default: KJV, in memory, tiny_cpu-like shape).

    setup_s (tokenising + building the iterator) is reported apart: it is paid once per run.
    """
    from dlmjax.data.config import default_data_config

    data_cfg = default_data_config() if data_cfg is None else data_cfg
    t0 = time.perf_counter()
    it = make_train_iterator(data_cfg, seq_len=seq_len, batch_size=batch_size, seed=seed)
    next(it)
    setup_s = time.perf_counter() - t0
    for _ in range(5):  # let the prefetch threads fill up
        next(it)
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    elapsed = time.perf_counter() - t0
    tokens = num_batches * batch_size * seq_len
    return {
        "pipeline_tokens_per_s": tokens / elapsed,
        "pipeline_batches_per_s": num_batches / elapsed,
        "pipeline_setup_s": setup_s,
        "seq_len": seq_len,
        "batch_size": batch_size,
    }
