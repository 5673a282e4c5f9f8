"""Tokenises a text corpus into packed shards that `data.source=tokenized` reads.

  python tools/prepare_data.py --input='corpus/*.jsonl.gz' --text_field=text \
      --tokenizer=tokenizer.json --output=gs://BUCKET/corpus-tok --workers=16
  python tools/prepare_data.py --input=dlmjax/data/assets/kjv_chapters.txt.gz --tokenizer=kjv \
      --output=runs/kjv-tok --row_length=128

Inputs: .txt (one document per line), .jsonl (a text field), .parquet (a text column); .gz
allowed; local or gs://. Output: part-NNNNN.parquet (or .array_record) shards of `row_length`-
token rows, manifest.json and tokenizer.json. Train on them with
--config.data.source=tokenized --config.data.paths=OUTPUT. The same inputs and flags give
byte-identical shards whatever --workers; an interrupted run (Ctrl-C, kill -9) continues where
it stopped when run again. See dlmjax/data/prepare.py.
"""

import sys

from absl import app, flags, logging

from dlmjax.data import prepare

_INPUT = flags.DEFINE_list("input", [], "Text files or globs (local or gs://).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (local or gs://).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json (local or gs://) or 'kjv'.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Tokenising processes (one core each).")
_FORMAT = flags.DEFINE_enum("format", "parquet", list(prepare.SHARD_FORMATS), "Shard format.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key / parquet column of the text.")
_ROW_LENGTH = flags.DEFINE_integer("row_length", 2048, "Tokens per record (row).")
_SHARD_MB = flags.DEFINE_float("shard_mb", 256.0, "MB of input text per shard.")
_ROWS_PER_GROUP = flags.DEFINE_integer("rows_per_row_group", 16,
                                       "Parquet: rows per row group (what one read decodes).")
_TOKEN_FIELD = flags.DEFINE_string("token_field", "tokens", "Parquet: name of the id column.")
_TOKEN_DTYPE = flags.DEFINE_string("token_dtype", "auto", "ArrayRecord: uint16, uint32 or auto.")
_SPECIAL = flags.DEFINE_string("special_tokens", "",
                               "Names of ids 0-3, comma-separated ('' = ours or the study's).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard an earlier preparation in --output.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _INPUT.value or not _OUTPUT.value or not _TOKENIZER.value:
        raise app.UsageError("--input, --output and --tokenizer are required")
    try:
        manifest = prepare.prepare_corpus(
            _INPUT.value, _OUTPUT.value, _TOKENIZER.value, workers=_WORKERS.value,
            overwrite=_OVERWRITE.value, text_field=_TEXT_FIELD.value, shard_format=_FORMAT.value,
            row_length=_ROW_LENGTH.value, shard_mb=_SHARD_MB.value,
            rows_per_row_group=_ROWS_PER_GROUP.value, token_field=_TOKEN_FIELD.value,
            token_dtype=_TOKEN_DTYPE.value, special_tokens=_SPECIAL.value)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        sys.exit(130)
    logging.info("train on it with --config.data.source=tokenized --config.data.paths=%s",
                 _OUTPUT.value)
    print(f"{manifest['documents']} documents, {manifest['tokens']} tokens, "
          f"{len(manifest['shards'])} shards, {manifest['bytes_per_token']:.3f} bytes/token "
          f"-> {_OUTPUT.value}")


if __name__ == "__main__":
    from dlmjax import errors

    errors.run_absl(main)
