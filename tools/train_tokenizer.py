"""Trains a byte-level BPE tokenizer (ids 0-3: BOS, EOS, PAD, MASK) and writes tokenizer.json.

  python tools/train_tokenizer.py --kjv --vocab_size=4096 \
      --output=dlmjax/data/assets/kjv_tokenizer.json
  python tools/train_tokenizer.py --input='corpus/*.jsonl' --text_field=text --vocab_size=32768 \
      --output=my_tokenizer.json
"""

import itertools

from absl import app, flags, logging

from dlmjax.data import files, kjv, tokenizer

_INPUT = flags.DEFINE_list("input", [], "Text files or globs (.txt, .jsonl, .parquet; .gz ok).")
_KJV = flags.DEFINE_bool("kjv", False, "Train on the training split of the shipped KJV corpus.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key / parquet column of the text.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size, specials included.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write tokenizer.json.", required=True)


def main(argv):
    del argv
    if _KJV.value == bool(_INPUT.value):
        raise app.UsageError("give exactly one of --kjv and --input")
    if _KJV.value:
        texts = kjv.kjv_chapters("train")
    else:
        paths = files.expand_paths(_INPUT.value, "--input")
        texts = itertools.chain.from_iterable(
            files.read_documents(p, _TEXT_FIELD.value) for p in paths
        )
    tok = tokenizer.train_bpe_tokenizer(texts, _VOCAB_SIZE.value)
    tok.save(_OUTPUT.value)
    logging.info("wrote %s (%d tokens)", _OUTPUT.value, tok.get_vocab_size())


if __name__ == "__main__":
    app.run(main)
