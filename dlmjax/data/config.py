"""The `data` sub-config: every key the data pipeline reads, with its meaning."""

from __future__ import annotations

import ml_collections

SOURCES = ("kjv", "synthetic_markov", "synthetic_iid", "synthetic_topics", "tfds", "files",
           "tokenized")
TEXT_SOURCES = ("kjv", "tfds", "files")
SYNTHETIC_SOURCES = ("synthetic_markov", "synthetic_iid", "synthetic_topics")


def default_data_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    # What to train on: "kjv" (embedded King James Bible, no download), "synthetic_markov" /
    # "synthetic_iid" / "synthetic_topics" (known entropy, infinite), "tfds" (a prepared TFDS
    # dataset), "files" (local .txt/.jsonl/.parquet text), "tokenized" (pre-tokenised
    # ArrayRecord or parquet shards).
    cfg.source = "kjv"
    # "kjv" = the shipped 4096-token BPE, or a tokenizer.json (local or gs://) whose ids 0-3
    # are BOS, EOS, PAD, MASK. "" = the source's own: "kjv" for text sources, the tokenizer.json
    # next to the shards' manifest for tokenized ones (none: samples print as ids). Encodes text
    # sources; decodes samples; copied into the run as workdir/tokenizer.json.
    cfg.tokenizer = ""
    # SHA-256 of the tokenizer.json the run uses. "" = filled in when training starts (and
    # written to config.json); a value pins it: any other tokenizer is an error.
    cfg.tokenizer_sha256 = ""
    # Names of the special tokens at ids 0-3 (BOS, EOS, PAD, MASK), comma-separated; they are
    # checked by id. "" = ours ("<|bos|>,<|eos|>,<|pad|>,<|mask|>") or the study's
    # ("<|begin_of_text|>,<|end_of_text|>,<|padding|>,<|mask|>").
    cfg.special_tokens = ""
    # The data's vocabulary V, which must equal model.vocab_size. 0 = the tokenizer's size (or
    # the shards' manifest's). A larger value pads the vocabulary on purpose (e.g. to a multiple
    # of 128); synthetic sources, and shards without manifest or tokenizer, need it set.
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
    # files/tokenized: files or globs, local or gs:// (a tuple, or one comma-separated string);
    # tokenized also takes a directory written by tools/prepare_data.py (its manifest.json).
    cfg.paths = ()
    # files/tokenized: held-out files; () = the last `heldout_fraction` of `paths`' documents
    # (files) or tokens (tokenized).
    cfg.eval_paths = ()
    # Share of the training data held out when no explicit held-out split/files are given.
    cfg.heldout_fraction = 0.05
    # tokenized parquet: the list<int> column holding the ids.
    cfg.token_field = "tokens"
    # tokenized ArrayRecord: dtype of the raw little-endian ids in each record
    # (uint16/uint32/int32).
    cfg.token_dtype = "uint32"
    # tokenized: tokens per record when all records have the same length (pre-packed rows: no
    # scan needed); 0 = variable, lengths indexed once by one pass (cached in cache_dir).
    cfg.record_length = 0
    # tokenized: append EOS after each record (records are documents); False when records are
    # already packed rows with documents joined by EOS. Shards with a manifest.json bring their
    # own token_field, token_dtype, record_length and append_eos.
    cfg.append_eos = False
    # synthetic_markov: successors per state (>= 2); entropy rate grows roughly like log(branching).
    cfg.markov_branching = 8
    # synthetic_markov: a row's first state, "stationary" or "successor" (of a fixed hidden state,
    # so a row's entropy per token is close to the entropy rate; see synthetic.make_markov_chain).
    cfg.markov_start = "stationary"
    # synthetic_iid: p(v) proportional to rank^-a over ids 4..V-1 (0 = uniform).
    cfg.iid_zipf_exponent = 1.0
    # synthetic_topics: rows of one hidden topic each; topic k has weight ∝ k^-a and a
    # Dirichlet(concentration) distribution over the ids (see synthetic_topics).
    cfg.num_topics = 64
    cfg.topic_zipf_exponent = 1.0
    cfg.topic_concentration = 0.1
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
    # Where tokenised streams and shard indexes are cached, local or gs:// ("" = keep in memory,
    # redo each run).
    cfg.cache_dir = ""
    return cfg


def study_data_config() -> ml_collections.ConfigDict:
    """The study's corpus: pre-tokenised shards with a 131,072-token vocabulary, whose location
    the user must give (`data.paths`): training never falls back to a toy corpus."""
    cfg = default_data_config()
    cfg.source = "tokenized"
    cfg.paths = ()  # required: e.g. gs://bucket/corpus/ (see README, "Data for the study")
    cfg.vocab_size = 0  # from the shards' manifest or tokenizer; must equal model.vocab_size
    return cfg
