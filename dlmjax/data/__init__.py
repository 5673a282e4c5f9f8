"""Data: sources (KJV, synthetic, TFDS, local files, pre-tokenised shards), tokenizer, pipeline,
corpus preparation, and the checks a run's data must pass.

Names are imported on first use, so light tools (corpus preparation, tokenizer training, and
their worker processes) start without loading grain and jax.
"""

import importlib

_EXPORTS = {
    "dlmjax.data.checks": ("validate_data_config", "vocab_size_of"),
    "dlmjax.data.config": ("SOURCES", "default_data_config", "study_data_config"),
    "dlmjax.data.pipeline": (
        "benchmark_pipeline",
        "known_entropy",
        "make_eval_batches",
        "make_train_dataset",
        "make_train_iterator",
        "packed_rows",
    ),
    "dlmjax.data.prepare": ("benchmark_prepare", "prepare_corpus"),
    "dlmjax.data.provenance": ("record_tokenizer", "run_tokenizer"),
    "dlmjax.data.tokenizer": (
        "BOS_ID",
        "EOS_ID",
        "MASK_ID",
        "PAD_ID",
        "decode",
        "decode_batch",
        "load_tokenizer",
        "train_bpe_tokenizer",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'dlmjax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
