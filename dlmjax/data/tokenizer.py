"""Byte-level BPE tokenizers: train, load, encode documents, decode sampler output.

Every tokenizer we train or accept reserves ids 0-3 for the special tokens below, so the
diffusion code can rely on MASK_ID = 3 and the packer on EOS_ID = 1 whatever the corpus.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS_ID, EOS_ID, PAD_ID, MASK_ID = 0, 1, 2, 3
# Bracketed so that ordinary text practically never contains them: the tokenizer would otherwise
# turn a literal occurrence into the special id and the round trip would not be lossless.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>")
NUM_SPECIAL = len(SPECIAL_TOKENS)
KJV_TOKENIZER = "kjv"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
    """Trains a byte-level BPE whose ids 0-3 are BOS, EOS, PAD, MASK.

    Byte-level pre-tokenisation plus the matching decoder makes encode/decode lossless for any
    Unicode text (no unknown token exists), which is what a sampler decoding arbitrary ids needs.
    """
    if vocab_size < NUM_SPECIAL + 256:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= {NUM_SPECIAL + 256} (specials + bytes)"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tok, "trained tokenizer")
    return tok


def check_special_tokens(tok: tokenizers.Tokenizer, where: str) -> None:
    """Raises ValueError unless ids 0-3 are the special tokens (the contract of the whole suite)."""
    for want_id, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got != want_id:
            raise ValueError(
                f"{where}: special token {token!r} has id {got}, expected {want_id}; "
                "train it with tools/train_tokenizer.py so ids 0-3 are BOS, EOS, PAD, MASK"
            )


def load_tokenizer(spec: str) -> tokenizers.Tokenizer:
    """Loads the shipped KJV tokenizer (spec "kjv") or any tokenizer.json path."""
    if spec == KJV_TOKENIZER:
        asset = importlib.resources.files("dlmjax.data").joinpath("assets/kjv_tokenizer.json")
        tok = tokenizers.Tokenizer.from_str(asset.read_text(encoding="utf-8"))
    else:
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise ValueError(
                f"tokenizer: file {spec!r} does not exist (use 'kjv' or a tokenizer.json)"
            )
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
            raise ValueError(f"tokenizer: cannot load {spec!r}: {e}") from e
    check_special_tokens(tok, f"tokenizer {spec!r}")
    return tok


def tokenizer_fingerprint(spec: str) -> str:
    """The serialised tokenizer; part of cache keys so a changed tokenizer never reuses a cache."""
    return load_tokenizer(spec).to_str()


def encode_documents(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes documents to uint32 id arrays without adding any special token."""
    encodings = tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]


def decode(tok: tokenizers.Tokenizer, ids: Iterable[int]) -> str:
    """Decodes sampler output, dropping special tokens and ids beyond the tokenizer's vocabulary.

    Ids beyond the tokenizer exist when the model's vocabulary is padded (vocab_size > tokenizer).
    """
    n = tok.get_vocab_size()
    kept = [int(i) for i in np.asarray(ids).reshape(-1) if NUM_SPECIAL <= int(i) < n]
    return tok.decode(kept, skip_special_tokens=True)


def decode_batch(tok: tokenizers.Tokenizer, ids_BxL: np.ndarray) -> list[str]:
    """Decodes each row of a [B, L] id array (see `decode`)."""
    return [decode(tok, row) for row in np.asarray(ids_BxL)]
