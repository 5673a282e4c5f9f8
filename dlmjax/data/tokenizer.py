"""Byte-level BPE tokenizers: train, load (local or gs://), encode documents, decode samples.

Every tokenizer the suite accepts has its special tokens at ids 0-3 (BOS, EOS, PAD, MASK), so
the diffusion code can rely on MASK_ID = 3 and the packer on EOS_ID = 1 whatever the corpus.
They are checked by id; their names are configurable (`data.special_tokens`). By default both
our names and those of the study's 131,072-token tokenizer are accepted.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from dlmjax import errors, fs

BOS_ID, EOS_ID, PAD_ID, MASK_ID = 0, 1, 2, 3
# Bracketed so that ordinary text practically never contains them: the tokenizer would otherwise
# turn a literal occurrence into the special id and the round trip would not be lossless.
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>")
# The names of ids 0-3 in the study's pre-tokenised corpus.
STUDY_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|padding|>", "<|mask|>")
KNOWN_SPECIAL_TOKENS = (SPECIAL_TOKENS, STUDY_SPECIAL_TOKENS)
NUM_SPECIAL = len(SPECIAL_TOKENS)
KJV_TOKENIZER = "kjv"


def special_token_names(spec: str | Sequence[str] = "") -> tuple[tuple[str, ...], ...]:
    """The accepted name sets of ids 0-3: `spec` as 4 names (tuple or "a,b,c,d"), or every
    known set when empty."""
    names = (
        tuple(n.strip() for n in spec.split(",") if n.strip())
        if isinstance(spec, str)
        else tuple(str(n) for n in spec)
    )
    if not names:
        return KNOWN_SPECIAL_TOKENS
    if len(names) != NUM_SPECIAL or len(set(names)) != NUM_SPECIAL:
        raise ValueError(
            f"data.special_tokens={spec!r} must name {NUM_SPECIAL} distinct tokens "
            "(ids 0-3: BOS, EOS, PAD, MASK)"
        )
    return (names,)


def check_special_tokens(
    tok: tokenizers.Tokenizer, where: str, special_tokens: str | Sequence[str] = ""
) -> None:
    """ValueError unless ids 0-3 carry one of the accepted name sets (the suite's contract)."""
    accepted = special_token_names(special_tokens)
    got = tuple(tok.id_to_token(i) for i in range(NUM_SPECIAL))
    if got not in accepted:
        expected = " or ".join(str(list(names)) for names in accepted)
        raise ValueError(
            f"{where}: special tokens at ids 0-3 are {list(got)}, expected {expected}. Ids 0-3 "
            "must be BOS, EOS, "
            "PAD, MASK (train one with tools/train_tokenizer.py); if yours uses other names for "
            "them, list them in data.special_tokens"
        )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, *, special_tokens: Sequence[str] = SPECIAL_TOKENS
) -> tokenizers.Tokenizer:
    """Trains a byte-level BPE whose ids 0-3 are `special_tokens` (BOS, EOS, PAD, MASK).

    Byte-level pre-tokenisation plus the matching decoder makes encode/decode lossless for any
    Unicode text (no unknown token exists), which is what a sampler decoding arbitrary ids needs.
    `texts` is consumed lazily, so an iterator over a corpus sample is never held in memory.
    """
    special_token_names(tuple(special_tokens))  # 4 distinct names
    if vocab_size < NUM_SPECIAL + 256:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= {NUM_SPECIAL + 256} (specials + bytes)"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tok, "trained tokenizer", tuple(special_tokens))
    return tok


def tokenizer_bytes(spec: str) -> bytes:
    """The tokenizer.json bytes of the shipped KJV tokenizer ("kjv") or of a local/gs:// file."""
    if spec == KJV_TOKENIZER:
        asset = importlib.resources.files("dlmjax.data").joinpath("assets/kjv_tokenizer.json")
        return asset.read_bytes()
    if not fs.isfile(spec):
        raise ValueError(
            f"data.tokenizer: file {spec!r} does not exist (use 'kjv' or a tokenizer.json)"
        )
    with errors.reading(spec):
        return fs.read_bytes(spec)


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def tokenizer_sha256(spec: str) -> str:
    """SHA-256 of the tokenizer.json bytes: how runs and prepared shards name their tokenizer."""
    return sha256_hex(tokenizer_bytes(spec))


def tokenizer_from_bytes(
    blob: bytes, where: str, special_tokens: str | Sequence[str] = ""
) -> tokenizers.Tokenizer:
    try:
        tok = tokenizers.Tokenizer.from_str(blob.decode("utf-8"))
    except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
        raise ValueError(f"data.tokenizer: cannot load {where}: {e}") from e
    check_special_tokens(tok, f"tokenizer {where}", special_tokens)
    return tok


def load_tokenizer(spec: str, special_tokens: str | Sequence[str] = "") -> tokenizers.Tokenizer:
    """Loads the shipped KJV tokenizer (spec "kjv") or any tokenizer.json path (local/gs://)."""
    return tokenizer_from_bytes(tokenizer_bytes(spec), repr(spec), special_tokens)


def tokenizer_fingerprint(spec: str) -> str:
    """Identifies the tokenizer in cache keys, so a changed tokenizer never reuses a cache."""
    return tokenizer_sha256(spec)


def encode_documents(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes documents to uint32 id arrays without adding any special token."""
    # The fast variant skips character offsets, which only alignment needs: same ids, ~20% less
    # time.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encodings = encode(list(texts), add_special_tokens=False)
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
