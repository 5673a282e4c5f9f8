"""The `data` sub-config: every key the data pipeline reads, with its meaning."""

from __future__ import annotations

import ml_collections

SOURCES = ("kjv", "synthetic_markov", "synthetic_iid", "tfds", "files", "tokenized")


def default_data_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    # What to train on: "kjv" (embedded King James Bible, no download), "synthetic_markov" /
    # "synthetic_iid" (known entropy, infinite), "tfds" (a prepared TFDS dataset), "files" (local
    # .txt/.jsonl/.parquet text), "tokenized" (pre-tokenised ArrayRecord or parquet shards).
    cfg.source = "kjv"
    # "kjv" = the shipped 4096-token BPE, or a path to a tokenizer.json whose ids 0-3 are
    # BOS, EOS, PAD, MASK. Used to encode text sources and to decode samples.
    cfg.tokenizer = "kjv"
    # Model vocabulary V. 0 = the tokenizer's size. Text sources accept V >= tokenizer size
    # (padding,
    # e.g. to a multiple of 128); synthetic sources need V set (ids 4..V-1 are used).
    cfg.vocab_size = 0
    # tfds: dataset name ("name" or "name/config:version"), prepared in ArrayRecord or parquet
    # format.
    cfg.tfds_name = ""
    # tfds: split to train on; slicing allowed ("train[:10%]").
    cfg.train_split = "train"
    # tfds: held-out split; "" = the last `heldout_fraction` of train_split's documents.
    cfg.eval_split = ""
    # tfds/files: the text field of each example (jsonl key, parquet column; "a/b" for nested).
    cfg.text_field = "text"
    # files/tokenized: files or globs (a tuple, or one comma-separated string).
    cfg.paths = ()
    # files/tokenized: held-out files; () = the last `heldout_fraction` of `paths`' documents
    # (files)
    # or tokens (tokenized).
    cfg.eval_paths = ()
    # Share of the training data held out when no explicit held-out split/files are given.
    cfg.heldout_fraction = 0.05
    # tokenized parquet: the list<int> column holding the ids.
    cfg.token_field = "tokens"
    # tokenized ArrayRecord: dtype of the raw little-endian ids in each record
    # (uint16/uint32/int32).
    cfg.token_dtype = "uint32"
    # tokenized ArrayRecord: tokens per record when all records have the same length (pre-packed
    # rows); 0 = variable, lengths indexed once by one pass over the records (cached in cache_dir).
    cfg.record_length = 0
    # tokenized: append EOS after each record (records are documents); False when records are
    # already packed rows with documents joined by EOS.
    cfg.append_eos = False
    # synthetic_markov: successors per state (>= 2); entropy rate grows roughly like log(branching).
    cfg.markov_branching = 8
    # synthetic_iid: p(v) proportional to rank^-a over ids 4..V-1 (0 = uniform).
    cfg.iid_zipf_exponent = 1.0
    # synthetic_*: seed of the data-generating process (which chain) and of its samples.
    cfg.synthetic_seed = 0
    # Worker processes that read/tokenise/batch (0 = in the main process). Needs absl flags parsed.
    cfg.worker_count = 0
    # Threads that read rows inside each process/worker.
    cfg.read_threads = 2
    # Batches buffered ahead per process/worker.
    cfg.prefetch = 4
    # Where TFDS datasets live and where prepared local files go ("" = the TFDS default directory).
    cfg.data_dir = ""
    # Where tokenised streams and record offsets are cached ("" = keep in memory, redo each run).
    cfg.cache_dir = ""
    return cfg
