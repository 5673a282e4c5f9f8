"""What a run's data must satisfy before anything is compiled, and what its vocabulary is.

`validate_data_config` is called once for --mode=train and --mode=eval: the shards or files are
given (`data.paths`), the tokenizer is found, carries the special tokens at ids 0-3 and is the one
the shards were prepared with (manifest hash), and the data's vocabulary equals
`model.vocab_size`: a model with more ids than the data would spend output (and, with uniform
noise, noise) on ids that never occur, and one with fewer would index out of range.
"""

from __future__ import annotations

import dataclasses

from dlmjax import fs
from dlmjax.data import files as files_lib
from dlmjax.data import manifest as manifest_lib
from dlmjax.data import tokenizer as tok_lib
from dlmjax.data.config import SOURCES, SYNTHETIC_SOURCES, TEXT_SOURCES

README_SECTION = 'the README section "Data for the study"'
MODES_WITH_DATA = ("train", "eval")


def check_source(data_cfg) -> str:
    if data_cfg.source not in SOURCES:
        raise ValueError(f"data.source={data_cfg.source!r} must be one of {SOURCES}")
    return data_cfg.source


def _special(data_cfg):
    return data_cfg.get("special_tokens", "")


def shard_manifest(paths) -> dict | None:
    """The manifest of tokenised shards named by `paths` (directories or globs), if they have one.

    Several directories must agree on the tokenizer; the first manifest is returned.
    """
    directories = []
    for pattern in files_lib.as_path_list(paths):
        wildcard = any(c in pattern for c in "*?[")
        if not wildcard and fs.isdir(pattern):
            directories.append(pattern.rstrip("/"))
        elif not any(c in manifest_lib.parent(pattern) for c in "*?["):
            directories.append(manifest_lib.parent(pattern))
        else:
            directories.extend(manifest_lib.parent(f) for f in fs.glob(pattern))
    manifests = [m for d in dict.fromkeys(directories) if (m := manifest_lib.read_manifest(d))]
    hashes = {(m["tokenizer_sha256"], m["vocab_size"]) for m in manifests}
    if len(hashes) > 1:
        raise ValueError(f"data.paths: shards prepared with different tokenizers: {hashes}")
    return manifests[0] if manifests else None


def resolve_tokenizer_spec(data_cfg, manifest: dict | None = None) -> str | None:
    """The tokenizer a data config uses: data.tokenizer, else the source's own (None: none)."""
    if data_cfg.tokenizer:
        return data_cfg.tokenizer
    source = check_source(data_cfg)
    if source in TEXT_SOURCES:
        return tok_lib.KJV_TOKENIZER
    if source == "tokenized" and files_lib.as_path_list(data_cfg.paths):
        manifest = manifest or shard_manifest(data_cfg.paths)
        return manifest_lib.tokenizer_next_to(manifest) if manifest else None
    return None


@dataclasses.dataclass(frozen=True)
class DataVocabulary:
    size: int  # V of the data (data.vocab_size when set, else the tokenizer's or manifest's)
    tokenizer: str | None  # the tokenizer spec in use, None when there is none
    tokenizer_sha256: str  # "" without a tokenizer
    origin: str  # where `size` comes from, for messages


def data_vocabulary(data_cfg) -> DataVocabulary:
    """The data's vocabulary and tokenizer, cross-checked against the shards' manifest."""
    source = check_source(data_cfg)
    if source in SYNTHETIC_SOURCES:
        if data_cfg.vocab_size <= tok_lib.NUM_SPECIAL + 2:
            raise ValueError(
                f"data.vocab_size={data_cfg.vocab_size} must be set > {tok_lib.NUM_SPECIAL + 2} "
                f"for data.source={source!r}"
            )
        return DataVocabulary(int(data_cfg.vocab_size), None, "", "data.vocab_size")
    manifest = None
    if source == "tokenized" and files_lib.as_path_list(data_cfg.paths):
        manifest = shard_manifest(data_cfg.paths)
    spec = resolve_tokenizer_spec(data_cfg, manifest)
    sha, natural, origin = "", None, ""
    if spec is not None:
        blob = tok_lib.tokenizer_bytes(spec)
        sha = tok_lib.sha256_hex(blob)
        tok = tok_lib.tokenizer_from_bytes(blob, repr(spec), _special(data_cfg))
        natural, origin = tok.get_vocab_size(), f"tokenizer {spec}"
    if manifest is not None:
        where = fs.join(manifest["directory"], manifest_lib.MANIFEST_FILE)
        if spec is not None and manifest["tokenizer_sha256"] != sha:
            raise ValueError(
                f"data.tokenizer: {spec} (sha256 {sha[:12]}...) is not the tokenizer the shards "
                f"were prepared with ({where}: sha256 {manifest['tokenizer_sha256'][:12]}...); "
                "leave data.tokenizer empty to use the tokenizer.json stored with the shards"
            )
        if natural is None:
            natural, origin = int(manifest["vocab_size"]), where
    pinned = data_cfg.get("tokenizer_sha256", "")
    if pinned and pinned != sha:
        raise ValueError(
            f"data.tokenizer_sha256={pinned} but the tokenizer in use ({spec}) has sha256 "
            f"{sha or '(none)'}"
        )
    if data_cfg.vocab_size > 0:
        if natural is not None and data_cfg.vocab_size < natural:
            raise ValueError(
                f"data.vocab_size={data_cfg.vocab_size} is smaller than the tokenizer's {natural} "
                f"({origin})"
            )
        return DataVocabulary(int(data_cfg.vocab_size), spec, sha, "data.vocab_size")
    if natural is None:
        raise ValueError(
            "data.vocab_size: the vocabulary of the shards in data.paths is unknown (no "
            "manifest.json next to them and no data.tokenizer): set data.tokenizer to their "
            "tokenizer.json, or data.vocab_size"
        )
    return DataVocabulary(int(natural), spec, sha, origin)


def vocab_size_of(data_cfg) -> int:
    """The data's vocabulary size V (ids 0-3 are the special tokens); model.vocab_size must be V."""
    return data_vocabulary(data_cfg).size


def _missing_paths_message(source: str) -> str:
    if source == "files":
        return (
            "data.paths: not set. data.source='files' reads your text corpus: give "
            "--config.data.paths='corpus/*.jsonl' (.txt one document per line, .jsonl with a "
            "data.text_field key, .parquet with a text column; .gz allowed; local or gs://)."
        )
    return (
        "data.paths: not set. This experiment trains on the study's pre-tokenised corpus "
        "(data.source='tokenized'), whose location you must give: --config.data.paths=... as "
        "parquet shards with a list<int> column data.token_field='tokens' or ArrayRecord "
        "shards of raw uint32 ids, e.g. 'gs://BUCKET/corpus/*.parquet', or a directory "
        f"written by tools/prepare_data.py. See {README_SECTION} for where the corpus and its "
        "131,072-token tokenizer come from and how to prepare your own. To try the experiment "
        "on the shipped King James Bible instead: --config.data.source=kjv "
        "--config.model.vocab_size=4096."
    )


def validate_data_config(data_cfg, *, model_vocab_size: int, mode: str) -> DataVocabulary | None:
    """ValueError (message starting with the config key) when the data cannot feed this model.

    Only train and eval read data; other modes (describe, sample) return None unchecked.
    """
    if mode not in MODES_WITH_DATA:
        return None
    source = check_source(data_cfg)
    if source in ("tokenized", "files") and not files_lib.as_path_list(data_cfg.paths):
        raise ValueError(_missing_paths_message(source))
    vocab = data_vocabulary(data_cfg)
    if vocab.size > model_vocab_size:
        raise ValueError(
            f"model.vocab_size={model_vocab_size} is smaller than the data's vocabulary of "
            f"{vocab.size} ({vocab.origin}; data.tokenizer / data.vocab_size)"
        )
    if vocab.size < model_vocab_size:
        raise ValueError(
            f"model.vocab_size={model_vocab_size} is larger than the data's vocabulary of "
            f"{vocab.size} ({vocab.origin}): the model would spend its output, and uniform noise, "
            f"on ids the data never holds. Set --config.model.vocab_size={vocab.size}, or "
            f"--config.data.vocab_size={model_vocab_size} to pad the vocabulary on purpose"
        )
    return vocab
