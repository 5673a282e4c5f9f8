"""Data: sources (KJV, synthetic, TFDS, local files, pre-tokenised shards), tokenizer, pipeline."""

from dlmjax.data.config import SOURCES, default_data_config
from dlmjax.data.pipeline import (
    benchmark_pipeline,
    known_entropy,
    make_eval_batches,
    make_train_dataset,
    make_train_iterator,
    packed_rows,
    vocab_size_of,
)
from dlmjax.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    decode,
    decode_batch,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SOURCES",
    "benchmark_pipeline",
    "decode",
    "decode_batch",
    "default_data_config",
    "known_entropy",
    "load_tokenizer",
    "make_eval_batches",
    "make_train_dataset",
    "make_train_iterator",
    "packed_rows",
    "train_bpe_tokenizer",
    "vocab_size_of",
]
