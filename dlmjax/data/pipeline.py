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

import sys
import time

import grain
import ml_collections
import numpy as np

from dlmjax.data import files as files_lib
from dlmjax.data import packing, synthetic, synthetic_topics, text_sources, tokenized
from dlmjax.data.checks import check_source, resolve_tokenizer_spec, vocab_size_of
from dlmjax.data.config import SYNTHETIC_SOURCES, TEXT_SOURCES
from dlmjax.data.text_sources import EVAL, TRAIN, heldout_cut

EVAL_SHUFFLE_SEED = 0  # fixed: every run evaluates on the same held-out rows


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
    source = check_source(data_cfg)
    if split not in (TRAIN, EVAL):
        raise ValueError(f"split={split!r} must be {TRAIN!r} or {EVAL!r}")
    if source in SYNTHETIC_SOURCES:
        raise ValueError(f"data.source={source!r} is generated on the fly and has no packed rows")
    _require_parsed_flags(data_cfg)
    return _token_rows(data_cfg, split, seq_len, vocab_size_of(data_cfg))


def _token_rows(data_cfg, part: str, seq_len: int, vocab_size: int) -> packing.PackedRows:
    if data_cfg.source in TEXT_SOURCES:
        docs, to_text, description = text_sources.text_docs(data_cfg, part)
        stream = packing.tokenize_to_stream(
            docs,
            to_text=to_text,
            tokenizer_spec=resolve_tokenizer_spec(data_cfg),
            description=description,
            cache_dir=data_cfg.cache_dir,
            worker_count=data_cfg.worker_count,
            special_tokens=data_cfg.get("special_tokens", ""),
        )
        return packing.PackedRows(stream, seq_len)
    # Pre-tokenised shards, read in place.
    eval_given = bool(files_lib.as_path_list(data_cfg.eval_paths))
    key = "data.eval_paths" if part == EVAL and eval_given else "data.paths"
    paths = data_cfg.eval_paths if key == "data.eval_paths" else data_cfg.paths
    stream = tokenized.open_token_stream(data_cfg, paths, key, vocab_size)
    if eval_given:
        return packing.PackedRows(stream, seq_len)
    cut = heldout_cut(len(stream), data_cfg.heldout_fraction, f"{key} token stream")
    return packing.PackedRows(stream, seq_len, *((0, cut) if part == TRAIN else (cut, len(stream))))


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
        self.model, self._sample = _synthetic_model(data_cfg)

    def __len__(self) -> int:
        # Effectively infinite; bounded so every global row index fits in int64.
        return sys.maxsize // (self.batch_size * self.process_count)

    def __getitem__(self, t: int) -> dict[str, np.ndarray]:
        first = (t * self.process_count + self.process_index) * self.batch_size
        row_ids = np.arange(first, first + self.batch_size)
        return {"tokens": self._sample(self.model, row_ids, self.seq_len, key=self.key)}

    def __repr__(self) -> str:
        return (
            f"SyntheticBatches({self.source}, key={self.key}, seq_len={self.seq_len}, "
            f"batch_size={self.batch_size}, process={self.process_index}/{self.process_count})"
        )


def _synthetic_model(data_cfg):
    """(the source's model, its row sampler) for a synthetic data.source."""
    if data_cfg.source == "synthetic_markov":
        return _markov_chain(data_cfg), synthetic.sample_markov_rows
    if data_cfg.source == "synthetic_topics":
        return _topic_mixture(data_cfg), synthetic_topics.sample_topic_rows
    return (synthetic.iid_distribution(vocab_size_of(data_cfg), data_cfg.iid_zipf_exponent),
            synthetic.sample_iid_rows)


def _topic_mixture(data_cfg) -> synthetic_topics.TopicMixture:
    return synthetic_topics.make_topic_mixture(
        vocab_size_of(data_cfg), data_cfg.num_topics, data_cfg.topic_zipf_exponent,
        data_cfg.topic_concentration, data_cfg.synthetic_seed)


def _markov_chain(data_cfg) -> synthetic.MarkovChain:
    return synthetic.make_markov_chain(vocab_size_of(data_cfg), data_cfg.markov_branching,
                                       data_cfg.synthetic_seed, data_cfg.markov_start)


def known_entropy(data_cfg, seq_len: int) -> dict[str, float]:
    """True entropies (nats/token) of a synthetic source: the irreducible loss.

    entropy_rate: per token given the full past; row_entropy_per_token: of a whole row of
    `seq_len` tokens divided by seq_len (what a perfect model of independent rows achieves).
    """
    vocab_size = vocab_size_of(data_cfg)
    if data_cfg.source == "synthetic_markov":
        chain = _markov_chain(data_cfg)
        return {
            "entropy_rate": synthetic.markov_entropy_rate(chain),
            "row_entropy_per_token": synthetic.markov_row_entropy(chain, seq_len),
        }
    if data_cfg.source == "synthetic_topics":
        # Rows are independent: the stream's entropy rate is a row's entropy per token.
        h, standard_error = synthetic_topics.topic_row_entropy(
            _topic_mixture(data_cfg), seq_len, seed=data_cfg.synthetic_seed)
        return {"entropy_rate": h, "row_entropy_per_token": h,
                "monte_carlo_standard_error": standard_error}
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
    source = check_source(data_cfg)
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
    source = check_source(data_cfg)
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
