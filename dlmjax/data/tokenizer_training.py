"""Training a tokenizer of the study's size from a sample of a corpus, in bounded memory.

The documents are streamed (never collected in a list) and the stream stops after
`sample_bytes` of text, keeping one document in `sample_every` so the sample spreads over the
corpus instead of taking only its beginning. The BPE trainer then holds the sample's word
counts, so memory is bounded by the sample size, not by the corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import tokenizers

from dlmjax.data import files as files_lib
from dlmjax.data import tokenizer as tok_lib


class SampleStats:
    """What a sample consumed: documents and UTF-8 bytes of the kept ones."""

    def __init__(self):
        self.documents = 0
        self.bytes = 0


def sample_documents(
    docs: Iterable[str], *, sample_bytes: int, every: int = 1, stats: SampleStats | None = None
) -> Iterator[str]:
    """Every `every`-th document of `docs`, lazily, until `sample_bytes` of text were kept."""
    if sample_bytes <= 0 or every < 1:
        raise ValueError(f"sample_bytes={sample_bytes} must be > 0 and every={every} >= 1")
    stats = stats if stats is not None else SampleStats()
    for doc in itertools.islice(docs, 0, None, every):
        if stats.bytes >= sample_bytes:
            return
        stats.documents += 1
        stats.bytes += len(doc.encode("utf-8"))
        yield doc


def train_tokenizer_on_corpus(
    docs: Iterable[str],
    *,
    vocab_size: int,
    sample_bytes: int,
    every: int = 1,
    special_tokens: Sequence[str] = tok_lib.SPECIAL_TOKENS,
) -> tuple[tokenizers.Tokenizer, SampleStats]:
    """A byte-level BPE of exactly `vocab_size` ids (0-3 special) from a sample of `docs`."""
    stats = SampleStats()
    sample = sample_documents(docs, sample_bytes=sample_bytes, every=every, stats=stats)
    tok = tok_lib.train_bpe_tokenizer(sample, vocab_size, special_tokens=special_tokens)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the sample ({stats.documents} documents, {stats.bytes / 1e6:.1f} MB) has too few "
            f"distinct words for {vocab_size} ids: BPE stopped at {tok.get_vocab_size()}; give "
            "more text (a larger sample or corpus) or a smaller vocabulary"
        )
    return tok, stats


def corpus_documents(paths, text_field: str) -> Iterator[str]:
    """The documents of files or globs (local or gs://), in order, streamed."""
    files = files_lib.expand_paths(paths, "--input")
    return itertools.chain.from_iterable(files_lib.read_documents(p, text_field) for p in files)
