"""Trains a byte-level BPE tokenizer (ids 0-3: BOS, EOS, PAD, MASK) and writes tokenizer.json.

  python tools/train_tokenizer.py --kjv --vocab_size=4096 \
      --output=dlmjax/data/assets/kjv_tokenizer.json
  python tools/train_tokenizer.py --input='gs://BUCKET/corpus/*.jsonl.gz' --text_field=text \
      --vocab_size=131072 --sample_mb=2000 --sample_every=10 --special_tokens=study \
      --output=gs://BUCKET/tokenizer.json

The study's size is 131,072 ids. Training reads a sample of the corpus (--sample_mb of text,
one document in --sample_every), streamed, so memory is bounded by the sample, not the corpus;
it fails with a clear message when the sample has too few distinct words to reach the size.
"""

import sys

from absl import app, flags, logging

from dlmjax import fs
from dlmjax.data import kjv, tokenizer, tokenizer_training

_INPUT = flags.DEFINE_list("input", [], "Text files or globs (.txt, .jsonl, .parquet; .gz ok).")
_KJV = flags.DEFINE_bool("kjv", False, "Train on the training split of the shipped KJV corpus.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key / parquet column of the text.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size, specials included.")
_SAMPLE_MB = flags.DEFINE_float("sample_mb", 2000.0, "MB of text the sample keeps at most.")
_SAMPLE_EVERY = flags.DEFINE_integer("sample_every", 1, "Keep one document in this many.")
_SPECIAL = flags.DEFINE_string(
    "special_tokens", "ours",
    "Names of ids 0-3: 'ours' (<|bos|>, ...), 'study' (<|begin_of_text|>, ...) or 4 names.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write tokenizer.json (local or gs://).",
                              required=True)


def _special_tokens(spec):
    named = {"ours": tokenizer.SPECIAL_TOKENS, "study": tokenizer.STUDY_SPECIAL_TOKENS}
    return named.get(spec) or tokenizer.special_token_names(spec)[0]


def main(argv):
    del argv
    if _KJV.value == bool(_INPUT.value):
        raise app.UsageError("give exactly one of --kjv and --input")
    try:
        docs = (kjv.kjv_chapters("train") if _KJV.value
                else tokenizer_training.corpus_documents(_INPUT.value, _TEXT_FIELD.value))
        tok, stats = tokenizer_training.train_tokenizer_on_corpus(
            docs, vocab_size=_VOCAB_SIZE.value, sample_bytes=int(_SAMPLE_MB.value * 1e6),
            every=_SAMPLE_EVERY.value, special_tokens=_special_tokens(_SPECIAL.value))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    fs.write_text_atomic(_OUTPUT.value, tok.to_str(pretty=True))
    logging.info("wrote %s: %d ids from %d documents (%.1f MB)", _OUTPUT.value,
                 tok.get_vocab_size(), stats.documents, stats.bytes / 1e6)


if __name__ == "__main__":
    from dlmjax import errors

    errors.run_absl(main)
